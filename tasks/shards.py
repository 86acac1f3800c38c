"""Parquet shards: atomic writes, per-unit manifests, dataset manifests and fingerprints.

A stage's output directory holds ``part-NNNNN-KKK.parquet`` data shards, ``part-NNNNN.drops.parquet`` (one row per
dropped document, with its reason) and ``part-NNNNN.json`` manifests. A unit is finished when its manifest exists:
a rerun skips it. Every file is written under a temporary name and renamed, so a killed run never leaves a
half-written shard behind a final name. ``_dataset.json`` lists the finished shards and the dataset fingerprint.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.atomic import atomic_file, atomic_write_bytes, atomic_write_json, file_sha256  # noqa: F401 (re-exported)
from tasks.procs import check_stop

DATASET_MANIFEST = "_dataset.json"
COMPRESSION = "zstd"
ROW_GROUP_ROWS = 1000


# ---------------------------------------------------------------------------------------------------------------
# Atomic files


def write_parquet_atomic(table: pa.Table, path: Path, *, group_by: str | None = None,
                         compression: str = COMPRESSION) -> None:
    """Write a Parquet file atomically. With ``group_by`` (a column the table is sorted by) every distinct value
    gets row groups of its own, so a reader can fetch one value's rows from the row-group statistics alone.
    ``compression="none"`` suits scratch files that are read once and deleted."""
    with atomic_file(path) as tmp:
        if group_by is None or not table.num_rows:
            pq.write_table(table, tmp, compression=compression, row_group_size=ROW_GROUP_ROWS)
        else:
            keys = table.column(group_by).to_numpy()
            cuts = [0, *(np.nonzero(keys[1:] != keys[:-1])[0] + 1).tolist(), len(keys)]
            with pq.ParquetWriter(tmp, table.schema, compression=compression) as writer:
                for start, stop in zip(cuts[:-1], cuts[1:]):
                    writer.write_table(table.slice(start, stop - start), row_group_size=ROW_GROUP_ROWS)



def remove_temp_files(directory: Path) -> int:
    """Delete the leftovers of a killed writer; they never carry a final name, so nothing reads them."""
    removed = 0
    for tmp in directory.glob(".tmp-*"):
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


# ---------------------------------------------------------------------------------------------------------------
# Results of one unit of work


@dataclass
class ShardFile:
    name: str
    rows: int
    bytes: int
    sha256: str


@dataclass
class ShardResult:
    """What one unit produced: small enough to pass between processes and into the warehouse."""

    unit: str
    files: list[ShardFile] = field(default_factory=list)
    drops_file: str | None = None
    docs_in: int = 0
    docs_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    drops: dict[str, int] = field(default_factory=dict)
    drop_bytes: dict[str, int] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)  # kept records with a repaired defect, by kind
    stats: dict[str, int] = field(default_factory=dict)  # other per-unit figures (tokens written), summed per stage
    inputs: dict[str, list[Any]] = field(default_factory=dict)  # input uri -> [bytes, sha256] where streamed whole
    seconds: float = 0.0
    resumed: bool = False
    reused: bool = False  # adopted from an earlier dataset that ran the same unit on the same input

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> "ShardResult":
        value = dict(value)
        value["files"] = [ShardFile(**f) for f in value.get("files", [])]
        return cls(**value)


def unit_manifest_path(out_dir: Path, unit: str) -> Path:
    return out_dir / f"{unit}.json"


def read_unit_manifest(out_dir: Path, unit: str) -> ShardResult | None:
    """The finished result of a unit, or None when it has not finished (or its files were lost)."""
    path = unit_manifest_path(out_dir, unit)
    try:
        result = ShardResult.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    for f in result.files:
        shard = out_dir / f.name
        if not shard.exists() or shard.stat().st_size != f.bytes:
            return None
    result.resumed = True
    return result


# ---------------------------------------------------------------------------------------------------------------
# Writing a unit's output


class DropLog:
    """One row per dropped record: the reason always, the doc_id, file and place where the record had them, and
    its source (the record's, else ``self.source``: ingest sets it to the source of the file it reads)."""

    SCHEMA = pa.schema([
        ("doc_id", pa.string()), ("reason", pa.string()), ("bytes", pa.int64()), ("source", pa.string()),
        ("url", pa.string()), ("warc_file", pa.string()), ("warc_offset", pa.int64()), ("detail", pa.string()),
        ("text", pa.large_string()),  # the dropped document itself, where the stage is asked to keep it
    ])

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        self.source: str | None = None
        self._tables: list[pa.Table] = []  # batches added whole, in order with the rows

    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, reason: str, *, doc_id: str | None = None, nbytes: int = 0, url: str | None = None,
            warc_file: str | None = None, warc_offset: int | None = None, detail: str | None = None,
            text: str | None = None, source: str | None = None) -> None:
        check_stop()
        self.counts[reason] += 1
        self.bytes[reason] += nbytes
        self.rows.append({"doc_id": doc_id, "reason": reason, "bytes": nbytes, "source": source or self.source,
                          "url": url,
                          "warc_file": warc_file, "warc_offset": warc_offset,
                          "detail": detail[:500] if detail else None, "text": text})


    def add_record(self, reason: str, row: dict[str, Any], **extra: Any) -> None:
        """Drop a record that carries the source columns (every stage after ingest)."""
        self.add(reason, doc_id=row.get("doc_id"), url=row.get("url"), warc_file=row.get("warc_file"),
                 warc_offset=row.get("warc_offset"), source=row.get("source"), **extra)

    def add_batch(self, batch: pa.RecordBatch | pa.Table, reasons: list[str], details: list[str | None],
                  nbytes: np.ndarray) -> None:
        """Drop every record of ``batch`` (it carries the source columns) at once, without a Python dict per row:
        ``reasons``, ``details`` and ``nbytes`` give each its reason, detail and size."""
        check_stop()
        if not batch.num_rows:
            return
        nbytes = np.asarray(nbytes, dtype=np.int64)
        for reason, size in zip(reasons, nbytes.tolist()):
            self.counts[reason] += 1
            self.bytes[reason] += size
        if self.rows:  # keep the order: rows added before this batch go first
            self._tables.append(pa.Table.from_pylist(self.rows, schema=self.SCHEMA))
            self.rows = []
        n = batch.num_rows
        cols = {name: batch.column(name).cast(self.SCHEMA.field(name).type) if name in batch.schema.names
                else pa.nulls(n, self.SCHEMA.field(name).type)
                for name in ("doc_id", "source", "url", "warc_file", "warc_offset")}
        if self.source is not None:
            cols["source"] = pc.fill_null(cols["source"], self.source)
        self._tables.append(pa.table({
            "doc_id": cols["doc_id"], "reason": pa.array(reasons, pa.string()), "bytes": pa.array(nbytes),
            "source": cols["source"], "url": cols["url"], "warc_file": cols["warc_file"],
            "warc_offset": cols["warc_offset"], "detail": pa.array([d[:500] if d else None for d in details],
                                                                   pa.string()),
            "text": pa.nulls(n, pa.large_string())}, schema=self.SCHEMA))

    def table(self) -> pa.Table | None:
        """Every drop, in the order added; None when there are none."""
        parts = [*self._tables, *([pa.Table.from_pylist(self.rows, schema=self.SCHEMA)] if self.rows else [])]
        return pa.concat_tables(parts) if parts else None


class ShardWriter:
    """Buffers records and writes bounded Parquet shards: a new shard starts past max_docs or max_bytes.

    Records come one at a time as dicts (``add``) or as Arrow record batches in the writer's schema
    (``add_batch``, which avoids converting every row to Python and back); the order they came in is kept.
    """

    def __init__(self, out_dir: Path, unit: str, schema: pa.Schema, *, max_docs: int, max_bytes: int,
                 size_column: str | None = None) -> None:
        self.out_dir, self.unit, self.schema = out_dir, unit, schema
        self.max_docs, self.max_bytes, self.size_column = max_docs, max_bytes, size_column
        self.files: list[ShardFile] = []
        self._rows: list[dict[str, Any]] = []
        self._batches: list[pa.RecordBatch] = []
        self._buffered_docs = 0
        self._buffered_bytes = 0
        self.docs_out = 0
        self.bytes_out = 0

    def _full_for(self, size: int) -> bool:
        return bool(self._buffered_docs) and (self._buffered_docs >= self.max_docs
                                              or self._buffered_bytes + size > self.max_bytes)

    def add(self, record: dict[str, Any]) -> None:
        check_stop()  # a unit cut short by Ctrl-C never writes its manifest
        size = len(record[self.size_column] or "") if self.size_column else 0
        if self._full_for(size):
            self.flush()
        self._rows.append(record)
        self._buffered_docs += 1
        self._buffered_bytes += size
        self.docs_out += 1
        self.bytes_out += size

    def add_batch(self, batch: pa.RecordBatch) -> None:
        check_stop()  # a unit cut short by Ctrl-C never writes its manifest
        if self._rows:  # keep the order: rows added before this batch go first
            self._batches.append(pa.RecordBatch.from_pylist(self._rows, schema=self.schema))
            self._rows = []
        if self.size_column:
            sizes = pc.fill_null(pc.utf8_length(batch.column(self.size_column)), 0).to_numpy().astype(np.int64)
        else:
            sizes = np.zeros(batch.num_rows, dtype=np.int64)
        while batch.num_rows:
            if self._full_for(int(sizes[0])):
                self.flush()
            room = self.max_docs - self._buffered_docs
            fit = int(np.searchsorted(np.cumsum(sizes), self.max_bytes - self._buffered_bytes, side="right"))
            take = min(room, fit) if self._buffered_docs else max(1, min(room, fit))
            if take == 0:
                self.flush()
                continue
            piece_bytes = int(sizes[:take].sum())
            self._batches.append(batch.slice(0, take))
            self._buffered_docs += take
            self._buffered_bytes += piece_bytes
            self.docs_out += take
            self.bytes_out += piece_bytes
            batch, sizes = batch.slice(take), sizes[take:]

    def flush(self) -> None:
        if not self._buffered_docs:
            return
        batches = self._batches + ([pa.RecordBatch.from_pylist(self._rows, schema=self.schema)] if self._rows else [])
        name = f"{self.unit}-{len(self.files):03d}.parquet"
        path = self.out_dir / name
        write_parquet_atomic(pa.Table.from_batches(batches, schema=self.schema), path)
        self.files.append(ShardFile(name, self._buffered_docs, path.stat().st_size, file_sha256(path)))
        self._rows, self._batches, self._buffered_docs, self._buffered_bytes = [], [], 0, 0


def finish_unit(out_dir: Path, result: ShardResult, writer: ShardWriter, drops: DropLog) -> ShardResult:
    """Flush the last shard, write the drop log, then the manifest that marks the unit finished."""
    writer.flush()
    result.files = writer.files
    result.docs_out, result.bytes_out = writer.docs_out, writer.bytes_out
    result.drops, result.drop_bytes = dict(drops.counts), dict(drops.bytes)
    table = drops.table()
    if table is not None:
        name = f"{result.unit}.drops.parquet"
        write_parquet_atomic(table, out_dir / name)
        result.drops_file = name
    atomic_write_json(unit_manifest_path(out_dir, result.unit), result.to_json())
    return result


# ---------------------------------------------------------------------------------------------------------------
# Datasets


@dataclass
class DatasetManifest:
    stage: str
    stage_key: str
    files: list[ShardFile]
    drops_files: list[str]
    fingerprint: str
    records: int
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def fingerprint(files: list[ShardFile]) -> str:
    """A content hash over the dataset's shards: names and sha256s, in name order."""
    digest = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.name):
        digest.update(f"{f.name}\t{f.sha256}\n".encode())
    return digest.hexdigest()


def write_dataset_manifest(out_dir: Path, stage: str, stage_key: str, results: list[ShardResult]) -> DatasetManifest:
    """Seal a dataset: list its shards, hash them together, and delete files no manifest claims."""
    files = sorted((f for r in results for f in r.files), key=lambda f: f.name)
    drops_files = sorted(r.drops_file for r in results if r.drops_file)
    claimed = {f.name for f in files} | set(drops_files) | {f"{r.unit}.json" for r in results}
    for stray in out_dir.glob("part-*"):
        if stray.name not in claimed:  # output of a unit the plan no longer has, or of a killed attempt
            stray.unlink(missing_ok=True)
    remove_temp_files(out_dir)
    manifest = DatasetManifest(stage, stage_key, files, drops_files, fingerprint(files),
                               sum(f.rows for f in files), sum(f.bytes for f in files))
    atomic_write_json(out_dir / DATASET_MANIFEST, manifest.to_json())
    return manifest


def read_dataset_manifest(directory: Path) -> DatasetManifest:
    path = Path(directory) / DATASET_MANIFEST
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"dataset {directory} is not complete: {DATASET_MANIFEST} is missing") from None
    value["files"] = [ShardFile(**f) for f in value["files"]]
    return DatasetManifest(**value)


def iter_batches(path: Path, columns: list[str] | None = None, start: int = 0, stop: int | None = None,
                 batch_rows: int = 256) -> Iterator[pa.RecordBatch]:
    """Rows start..stop of one shard as record batches, one row group at a time, so a large shard never sits
    whole in memory."""
    pf = pq.ParquetFile(path)
    stop = pf.metadata.num_rows if stop is None else stop
    row = 0
    for rg in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(rg).num_rows
        if row + n <= start:
            row += n
            continue
        if row >= stop:
            break
        table = pf.read_row_group(rg, columns=columns)
        lo, hi = max(start - row, 0), min(stop - row, n)
        yield from table.slice(lo, hi - lo).to_batches(batch_rows)
        row += n


def group_batches(batches: Iterator[pa.RecordBatch], min_rows: int) -> Iterator[list[pa.RecordBatch]]:
    """Consecutive batches in groups of at least ``min_rows`` rows (the last may have fewer): a unit that reads
    many small shards hands its per-document work out in chunks worth sending (tasks/docpool.py), and still writes
    batch by batch as it read them (the Parquet bytes follow the batches)."""
    group: list[pa.RecordBatch] = []
    rows = 0
    for batch in batches:
        group.append(batch)
        rows += batch.num_rows
        if rows >= min_rows:
            yield group
            group, rows = [], 0
    if group:
        yield group


def iter_rows(path: Path, columns: list[str] | None = None, start: int = 0, stop: int | None = None,
              batch_rows: int = 256) -> Iterator[dict[str, Any]]:
    """Rows start..stop of one shard as dicts, read a batch at a time."""
    for batch in iter_batches(path, columns, start, stop, batch_rows):
        yield from batch.to_pylist()
