"""Stages over shards: plan units of work, run each unit into bounded shards, seal the dataset.

The kinds of stage most of the pipeline is made of (tasks/stage.py has the contract all stages meet):

- ``ShardedStage``: per unit of upstream rows, ``process`` writes kept records and drops (extract, language,
  quality; ingest, whose units are input files);
- ``ReduceStage``: a parallel ``scan``, one whole-dataset ``reduce``, then ``process`` per unit (dedup,
  decontaminate, tokenize).

Both run and test without Prefect:

    stage = ExtractStage(cfg.extract)
    results = [run_unit(stage, u, out_dir) for u in stage.plan(upstream_dir)]
    write_dataset_manifest(out_dir, stage.name, key, results)

or whole, as the pipeline does: ``stage.execute(StageContext(work_dir), stage.read_input(ctx, upstream), ...)``.
"""
from __future__ import annotations

import json
import os
import shutil
from abc import abstractmethod
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.procs import check_stop
from tasks.shards import (DropLog, ShardResult, ShardWriter, atomic_write_json, finish_unit, group_batches,
                          iter_batches, iter_rows, read_dataset_manifest, read_unit_manifest, remove_temp_files,
                          unit_manifest_path, write_dataset_manifest)
from tasks.stage import (FULL_DISK, Dataset, Input, Records, Stage, StageContext, StageResult, UnitFailed,  # noqa: F401
                         describe_os_error,
                         file_artifact)


@dataclass(frozen=True)
class Source:
    """A slice of input: rows [start, stop) of a shard, a whole input file (stop None), or row groups
    [start, stop) of a Parquet input file; ``origin`` names the [[sources]] entry an input file belongs to."""

    uri: str
    start: int = 0
    stop: int | None = None
    origin: str | None = None


@dataclass(frozen=True)
class Unit:
    """One Prefect task's worth of work; it writes the shards ``part-<index>-*.parquet``. It is unit ``index`` of
    ``of`` in its plan (a stage that scatters documents across units, like tokenize, needs both)."""

    index: int
    sources: tuple[Source, ...]
    of: int = 1
    cost: int = 0  # about the bytes it reads: the task runner is handed the costliest units first

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}"

    def describe(self) -> str:
        first = self.sources[0].uri if self.sources else "?"
        more = f" (+{len(self.sources) - 1} more)" if len(self.sources) > 1 else ""
        return f"{self.name} <- {first}{more}"


class ShardedStage(Stage):
    """A stage whose units each read a slice of the input and write bounded shards. Subclasses set ``schema``
    and implement ``process``; the dataset is the units' shards, sealed by a manifest with its fingerprint."""

    schema: ClassVar[pa.Schema]
    size_column: ClassVar[str | None] = None  # the column whose length bounds a shard's bytes
    dataset_format: ClassVar[str] = "parquet"

    @classmethod
    def code_roots(cls) -> list[str]:
        return [cls.__module__, __name__]

    def cached(self, ctx: StageContext, key: str, out_dir: Path) -> dict[str, Any] | None:
        """The recorded dataset, when its manifest and every shard it lists are still on disk at their sizes."""
        hit = ctx.warehouse.dataset_by_key(key) if ctx.warehouse is not None else None
        if hit is None:
            return None
        directory = Path(hit["uri"])
        try:
            manifest = read_dataset_manifest(directory)
        except (FileNotFoundError, ValueError):
            return None  # recorded, but its files are gone: compute it again
        intact = all((directory / f.name).is_file() and (directory / f.name).stat().st_size == f.bytes
                     for f in manifest.files)
        return hit if intact and manifest.fingerprint == hit["fingerprint"] else None

    def execute(self, ctx: StageContext, inp: Input, out_dir: Path, key: str) -> StageResult:
        t0 = time.perf_counter()
        units = self.plan(inp.dir)
        prepare_output(out_dir)
        results = self.run_units(ctx, units, out_dir)
        return self.seal(ctx, inp, units, results, out_dir, key, t0)

    def run_units(self, ctx: StageContext, units: list[Unit], out_dir: Path) -> list[ShardResult]:
        return [ShardResult.from_json(r) for r in ctx.map("", unit_step, self, units, out_dir)]

    def seal(self, ctx: StageContext, inp: Input, units: list[Unit], results: list[ShardResult], out_dir: Path,
             key: str, t0: float) -> StageResult:
        """Write the dataset manifest and total up what the units counted."""
        manifest = write_dataset_manifest(out_dir, self.name, key, results)
        drops, drop_bytes, notes, stats = Counter(), Counter(), Counter(), Counter()
        for r in results:
            drops.update(r.drops)
            drop_bytes.update(r.drop_bytes)
            notes.update(r.notes)
            stats.update(r.stats)
        resumed = sum(r.resumed and not r.reused for r in results)
        reused = sum(r.reused for r in results)
        output = Dataset(f"{self.name}-{key[:12]}", self.name, key, str(out_dir), self.dataset_format,
                         manifest.fingerprint,
                         [(str(out_dir / f.name), f.rows, f.bytes, f.sha256) for f in manifest.files], inp.dataset_ids)
        message = (f"{self.name}: {manifest.records} records in {len(manifest.files)} shards from {len(units)} units"
                   f"{f' ({resumed} resumed)' if resumed else ''}{f' ({reused} reused)' if reused else ''}, "
                   f"{sum(drops.values())} dropped, {time.perf_counter() - t0:.1f}s")
        return StageResult(output=output, units=len(units), units_resumed=resumed, shards_out=len(manifest.files),
                           docs_in=sum(r.docs_in for r in results), docs_out=manifest.records, bytes_in=inp.bytes,
                           bytes_out=manifest.bytes, drops=dict(drops), drop_bytes=dict(drop_bytes),
                           notes=dict(notes), metrics=self.stat_metrics(dict(stats)), message=message,
                           by_source=self.count_by_source(out_dir, manifest))

    def count_by_source(self, out_dir: Path, manifest: Any) -> dict[str, dict[str, Any]]:
        """Per source: documents kept (from the shards' ``source`` column) and dropped by reason (from the drop
        logs); documents in = the two together. Only the small columns are read."""
        if "source" not in self.schema.names:
            return {}
        out: dict[str, dict[str, Any]] = {}

        def entry(name: str | None) -> dict[str, Any]:
            return out.setdefault(name or "", {"docs_in": 0, "docs_out": 0, "drops": {}})

        for f in manifest.files:
            column = pq.read_table(out_dir / f.name, columns=["source"]).column("source")
            for item in pc.value_counts(column).to_pylist():
                entry(item["values"])["docs_out"] += item["counts"]
        for name in manifest.drops_files:
            table = pq.read_table(out_dir / name, columns=["source", "reason", "bytes"])
            if "source" not in table.column_names:
                continue
            grouped = table.group_by(["source", "reason"]).aggregate([("bytes", "count"), ("bytes", "sum")])
            for row in grouped.to_pylist():
                drops = entry(row["source"])["drops"]
                docs, nbytes = drops.get(row["reason"], (0, 0))
                drops[row["reason"]] = (docs + row["bytes_count"], nbytes + (row["bytes_sum"] or 0))
        for counts in out.values():
            counts["docs_in"] = counts["docs_out"] + sum(d for d, _ in counts["drops"].values())
        return out

    def stat_metrics(self, stats: dict[str, float]) -> list[tuple[int | None, str, float]]:
        """The units' summed ``result.stats`` as whole-stage metrics named ``<stage>.<stat>``."""
        return [(None, f"{self.name}.{k}", float(v)) for k, v in sorted(stats.items())]

    # -- planning ------------------------------------------------------------------------------------------------

    def plan(self, input_dir: Path) -> list[Unit]:
        """Cut the upstream dataset into units of at most shard_max_docs rows, whatever its shard sizes.

        Consecutive small shards share a unit and large shards are split, so every downstream task has about the
        same amount of work however unevenly the upstream files were sized.
        """
        manifest = read_dataset_manifest(input_dir)
        target = self.config.shard_max_docs
        units: list[Unit] = []
        current: list[Source] = []
        filled = cost = 0
        for f in manifest.files:
            start = 0
            while start < f.rows:
                take = min(target - filled, f.rows - start)
                current.append(Source(str(Path(input_dir) / f.name), start, start + take))
                start += take
                filled += take
                cost += f.bytes * take // f.rows
                if filled == target:
                    units.append(Unit(len(units), tuple(current), cost=cost))
                    current, filled, cost = [], 0, 0
        if current:
            units.append(Unit(len(units), tuple(current), cost=cost))
        return [replace(u, of=len(units)) for u in units]

    def input_rows(self, unit: Unit, columns: list[str] | None = None) -> Iterator[dict[str, Any]]:
        for src in unit.sources:
            yield from iter_rows(Path(src.uri), columns, src.start, src.stop)

    def input_batches(self, unit: Unit, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        for src in unit.sources:
            yield from iter_batches(Path(src.uri), columns, src.start, src.stop)

    def input_batch_groups(self, unit: Unit, min_rows: int) -> Iterator[list[pa.RecordBatch]]:
        """The unit's record batches in groups of at least ``min_rows`` rows (``group_batches``)."""
        return group_batches(self.input_batches(unit), min_rows)

    # -- work ----------------------------------------------------------------------------------------------------

    @abstractmethod
    def process(self, unit: Unit, writer: ShardWriter, drops: DropLog, result: ShardResult) -> None:
        """Read the unit's input, ``writer.add`` each kept record, ``drops.add`` each dropped one."""


def run_unit(stage: ShardedStage, unit: Unit, out_dir: Path) -> ShardResult:
    """Run one unit, or return its recorded result when a previous attempt finished it."""
    out_dir = Path(out_dir)
    done = read_unit_manifest(out_dir, unit.name)
    if done is not None:
        return done
    check_stop()  # after Ctrl-C, units not yet started are left for the rerun
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    writer = ShardWriter(out_dir, unit.name, stage.schema, max_docs=stage.config.shard_max_docs,
                         max_bytes=stage.config.shard_max_bytes, size_column=stage.size_column)
    drops = DropLog()
    result = ShardResult(unit.name)
    try:
        stage.process(unit, writer, drops, result)
        result.seconds = time.perf_counter() - t0
        return finish_unit(out_dir, result, writer, drops)
    except UnitFailed:
        raise
    except OSError as err:
        raise UnitFailed(f"{stage.name} {unit.describe()}: {describe_os_error(err, out_dir)}") from err
    except Exception as err:
        raise UnitFailed(f"{stage.name} {unit.describe()}: {type(err).__name__}: {err}") from err


def unit_step(stage: ShardedStage, unit: Unit, out_dir: Path) -> dict[str, Any]:
    """``run_unit`` with a JSON-able result, as a task runner (threads, processes, Dask) hands it back."""
    return run_unit(stage, unit, Path(out_dir)).to_json()


def scan_step(stage: ReduceStage, unit: Unit, out_dir: Path) -> dict[str, Any]:
    return run_scan(stage, unit, Path(out_dir))


class ReduceStage(ShardedStage):
    """A stage with a whole-dataset step between two parallel passes (dedup clustering, contamination counts).

    1. ``scan`` runs per unit, in parallel, and writes what the reduce needs into ``scratch_dir(out_dir)``;
    2. ``reduce`` runs once over every scan's output and writes its decisions there too;
    3. ``process`` runs per unit as in every stage, reading those decisions.

    Each step records its completion (``scan-<unit>.json``, ``reduce.json``), so a killed run resumes where it was.
    """

    SCRATCH = "_reduce"

    @staticmethod
    def scratch_dir(out_dir: Path) -> Path:
        return Path(out_dir) / ReduceStage.SCRATCH

    @abstractmethod
    def scan(self, unit: Unit, scratch: Path) -> dict[str, Any]:
        """Write this unit's part of the reduce's input under ``scratch``; return small JSON-able facts."""

    @abstractmethod
    def reduce(self, scratch: Path, scans: list[dict[str, Any]], stage_key: str) -> dict[str, Any]:
        """Decide over the whole dataset; return counts to report (JSON-able)."""

    def after_reduce(self, scratch: Path) -> None:
        """Delete what only the reduce needed (it runs once the reduce is recorded as done)."""

    def record_files(self, out_dir: Path) -> dict[str, Path]:
        """Parquet files for the warehouse to load when the stage finishes: table name -> file."""
        return {}

    def artifacts(self, out_dir: Path) -> list[Path]:
        """Files the stage made besides its shards (a tokenizer), each recorded as a dataset with its hash."""
        return []

    def finalize(self, out_dir: Path) -> None:
        """Runs once the dataset manifest is sealed: write derived manifests, delete scratch only process needed."""

    def execute(self, ctx: StageContext, inp: Input, out_dir: Path, key: str) -> StageResult:
        t0 = time.perf_counter()
        units = self.plan(inp.dir)
        prepare_output(out_dir)
        scans = ctx.map("scan", scan_step, self, units, out_dir)
        facts = ctx.call(f"{self.name}:reduce", run_reduce, self, out_dir, scans, key)
        ctx.say(f"{self.name}: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in facts.items() if "." not in k))
        result = self.seal(ctx, inp, units, self.run_units(ctx, units, out_dir), out_dir, key, t0)
        self.finalize(out_dir)
        result.metrics += [(None, f"{self.name}.{k}", float(v)) for k, v in sorted(facts.items())
                           if isinstance(v, (int, float))]
        result.records = [Records(table, [path], announce=True) for table, path in self.record_files(out_dir).items()]
        for path in self.artifacts(out_dir):  # e.g. the tokenizer: a dataset of its own, with its hash
            made = file_artifact(path, inp.dataset_ids)
            result.datasets.append(made)
            ctx.say(f"{self.name}: {made.stage} {path} sha256 {made.fingerprint[:12]}")
        return result


def run_scan(stage: ReduceStage, unit: Unit, out_dir: Path) -> dict[str, Any]:
    """Scan one unit, or return the recorded result of a scan that finished before."""
    scratch = stage.scratch_dir(out_dir)
    done = scratch / f"scan-{unit.name}.json"
    if done.is_file():
        return json.loads(done.read_text())
    check_stop()
    scratch.mkdir(parents=True, exist_ok=True)
    for stale in scratch.glob(f".tmp-*{unit.name}*"):  # a killed attempt's; other units' scans may be writing theirs
        stale.unlink(missing_ok=True)
    try:
        facts = stage.scan(unit, scratch)
    except Exception as err:
        raise UnitFailed(f"{stage.name} scan {unit.describe()}: {type(err).__name__}: {err}") from err
    atomic_write_json(done, {"unit": unit.name, **facts})
    return {"unit": unit.name, **facts}


def run_reduce(stage: ReduceStage, out_dir: Path, scans: list[dict[str, Any]], stage_key: str) -> dict[str, Any]:
    """The reduce step, once; its record makes a rerun skip it."""
    scratch = stage.scratch_dir(out_dir)
    done = scratch / "reduce.json"
    if done.is_file():
        return json.loads(done.read_text())
    remove_temp_files(scratch)
    facts = stage.reduce(scratch, sorted(scans, key=lambda s: s["unit"]), stage_key)
    atomic_write_json(done, facts)
    stage.after_reduce(scratch)
    return facts


class UnitIndex:
    """Finished units by a key of their own (settings, code and the exact input, e.g. one WARC file's hash), so
    that a later dataset whose input only grew takes over the units it shares with an earlier one instead of
    running them again. One small JSON file per key, written atomically."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def record(self, key: str, out_dir: Path, unit: str) -> None:
        atomic_write_json(self.directory / f"{key}.json", {"dir": str(out_dir), "unit": unit})

    def adopt(self, key: str, out_dir: Path, unit: Unit) -> ShardResult | None:
        """Hard-link (or copy) the shards and drop log of an earlier finished unit with this key into ``out_dir``
        as ``unit``, and write its manifest; None when there is none, or its files are gone."""
        try:
            found = json.loads((self.directory / f"{key}.json").read_text())
        except (OSError, ValueError):
            return None
        earlier_dir, earlier = Path(found["dir"]), found["unit"]
        if earlier_dir == Path(out_dir) and earlier == unit.name:
            return None  # its own: run_unit finds it
        done = read_unit_manifest(earlier_dir, earlier)
        if done is None:
            return None
        rename = {f.name: unit.name + f.name[len(earlier):] for f in done.files}
        if done.drops_file:
            rename[done.drops_file] = unit.name + done.drops_file[len(earlier):]
        for old, new in rename.items():
            _link_or_copy(earlier_dir / old, Path(out_dir) / new)
        adopted = replace(done, unit=unit.name, files=[replace(f, name=rename[f.name]) for f in done.files],
                          drops_file=rename.get(done.drops_file) if done.drops_file else None, resumed=False,
                          reused=True)
        atomic_write_json(unit_manifest_path(Path(out_dir), unit.name), adopted.to_json())
        return adopted


def _link_or_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".tmp-{dst.name}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def prepare_output(out_dir: Path) -> None:
    """Before any unit starts: make the directory and delete what killed writers left (theirs alone)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_temp_files(out_dir)
    if ReduceStage.scratch_dir(out_dir).is_dir():
        remove_temp_files(ReduceStage.scratch_dir(out_dir))
