"""Readers for curated text: plain text, JSON Lines and Parquet files, each document a dict of ingest's columns.

Every reader streams (a compressed file is decompressed as it is read, a Parquet file a row group at a time) and
never holds more than one document, or one bounded line, in memory: a line longer than ``max_bytes`` is skipped
in pieces. What cannot be a document is a counted drop with its reason, never an error for the whole file:

- ``payload_too_large``: a document (a line, a paragraph, a file, a field) over ``max_bytes``;
- ``not_utf8``: bytes that are not UTF-8; ``bad_json`` / ``not_an_object``: a JSON line that is neither;
- ``missing_text_field`` / ``text_not_string``: the configured text field is absent or not a string;
- ``empty_payload``: nothing but white space; ``read_error``: the file ends early or is damaged (the documents
  read before are kept).

The document's place is recorded as ``warc_file`` (the file) and ``warc_offset``: the byte offset of its first line
in the (decompressed) text, or its row number in a Parquet file. Only reading is guarded: an error writing the
output (a full disk) fails the unit, and a connection or time-out error is raised again so that the unit is
retried, never recorded as a damaged file.

    with open_stream("books/b1.txt.gz") as fh:
        for doc in read_text(fh, "books/b1.txt.gz", source, drops, max_bytes=10 << 20): ...
"""
from __future__ import annotations

import io
import json
from typing import IO, Any, Iterator
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.config import SourceConfig
from tasks.inputs import make_doc_id, size_of
from tasks.remote import open_input
from tasks.shards import DropLog

CHUNK = 1 << 20


def open_stream(uri: str) -> IO[bytes]:
    """The file's bytes, decompressed by its suffix (.gz, .bz2, .zst, .xz), buffered so that lines can be read
    (zstandard's reader has no readline of its own)."""
    raw = open_input(uri, compression="infer")
    # a C-level readline: GzipFile's and BZ2File's own go through Python checks on every line (~20% of the stage)
    return raw if isinstance(raw, io.BufferedReader) else io.BufferedReader(_Readable(raw), CHUNK)


class _Readable(io.RawIOBase):
    """A raw stream over a decompressor, for io.BufferedReader. It hands on what one step of the decompressor gives
    (``read1``), so the lines before a truncated or damaged spot are read before its error is raised: a ``readinto``
    that filled the whole buffer first would lose up to a buffer's worth of them."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self._read = getattr(inner, "read1", None) or inner.read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self.inner.close()
        super().close()


def make_document(source: SourceConfig, uri: str, offset: int, text: str, *, doc_key: str | None = None,
                  url: str | None = None, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """Ingest's record for one document of curated text: content type text/plain, so extract passes it through."""
    key = f"{source.name}\0id\0{doc_key}" if doc_key is not None else f"{source.name}\0{uri}\0{offset}"
    host = (urlsplit(url).hostname or "").lower() or None if url else None
    return {"doc_id": make_doc_id(key), "url": url, "host": host, "warc_file": uri, "warc_offset": offset,
            "fetch_time": None, "http_status": None, "content_type": "text/plain", "source": source.name,
            "metadata": json.dumps(metadata, ensure_ascii=False, default=str) if metadata else None,
            "record_id": doc_key, "charset": "utf-8", "html": text}


def _lines(fh: IO[bytes], max_bytes: int, drops: DropLog, uri: str) -> Iterator[tuple[int, bytes | None]]:
    """(offset, line) for every line; a line over ``max_bytes`` is read past in pieces and given as None."""
    pos = 0
    while True:
        line = fh.readline(max_bytes + 1)
        if not line:
            return
        start = pos
        pos += len(line)
        if len(line) > max_bytes and not line.endswith(b"\n"):
            while True:  # the rest of an over-long line, a piece at a time
                piece = fh.readline(CHUNK)
                pos += len(piece)
                if not piece or piece.endswith(b"\n"):
                    break
            drops.add("payload_too_large", nbytes=pos - start, warc_file=uri, warc_offset=start,
                      detail=f"a line of {pos - start} bytes > {max_bytes}")
            yield start, None
            continue
        yield start, line


def _decode(raw: bytes, drops: DropLog, uri: str, offset: int) -> str | None:
    """UTF-8 text (a byte order mark at the start of the file dropped) with Windows line endings made \\n, as
    Python's text mode does; bytes that are not UTF-8 are a counted ``not_utf8``."""
    try:
        return raw.decode("utf-8-sig" if offset == 0 else "utf-8").replace("\r\n", "\n")
    except UnicodeDecodeError as err:
        drops.add("not_utf8", nbytes=len(raw), warc_file=uri, warc_offset=offset, detail=str(err)[:200])
        return None


def read_text(fh: IO[bytes], uri: str, source: SourceConfig, drops: DropLog,
              max_bytes: int) -> Iterator[dict[str, Any]]:
    """Documents of a plain-text file: the whole file, each blank-line-separated block, or each line."""
    split = source.text_split
    if split == "file":
        raw = fh.read(max_bytes + 1)
        if len(raw) > max_bytes:
            size = len(raw)
            while chunk := fh.read(CHUNK):
                size += len(chunk)
            drops.add("payload_too_large", nbytes=size, warc_file=uri, warc_offset=0, detail=f"> {max_bytes} bytes")
            return
        text = _decode(raw, drops, uri, 0)
        if text is not None:
            if text.strip():
                yield make_document(source, uri, 0, text)
            else:
                drops.add("empty_payload", warc_file=uri, warc_offset=0)
        return
    block: list[bytes] = []
    start, size, spoiled = 0, 0, False

    def flush() -> Iterator[dict[str, Any]]:
        if spoiled or not block:
            return
        text = _decode(b"".join(block), drops, uri, start)
        if text is not None and text.strip():
            yield make_document(source, uri, start, text.strip("\n"))

    for offset, line in _lines(fh, max_bytes, drops, uri):
        if split == "line":
            if line is not None and line.strip():
                text = _decode(line, drops, uri, offset)
                if text is not None and text.strip():
                    yield make_document(source, uri, offset, text.rstrip("\n"))
            continue
        if line is not None and not line.strip():  # a blank line ends the paragraph
            yield from flush()
            block, size, spoiled = [], 0, False
            continue
        if not block and not spoiled:
            start = offset
        if line is None:  # one over-long line spoils its paragraph (counted once, by _lines)
            block, spoiled = [], True
            continue
        if spoiled:
            continue
        size += len(line)
        if size > max_bytes:
            drops.add("payload_too_large", nbytes=size, warc_file=uri, warc_offset=start,
                      detail=f"a paragraph over {max_bytes} bytes")
            block, spoiled = [], True
            continue
        block.append(line)
    yield from flush()


def _fields(record: dict[str, Any], source: SourceConfig, drops: DropLog, uri: str, offset: int,
            nbytes: int) -> dict[str, Any] | None:
    """The document of one JSON object, or None with the reason counted."""
    where = {"warc_file": uri, "warc_offset": offset, "nbytes": nbytes}
    if source.text_field not in record or record[source.text_field] is None:
        drops.add("missing_text_field", detail=f"no {source.text_field!r}", **where)
        return None
    text = record[source.text_field]
    if not isinstance(text, str):
        drops.add("text_not_string", detail=f"{source.text_field!r} is {type(text).__name__}", **where)
        return None
    if not text.strip():
        drops.add("empty_payload", **where)
        return None
    doc_key = record.get(source.id_field) if source.id_field else None
    url = record.get(source.url_field) if source.url_field else None
    meta = {k: record[k] for k in source.metadata_fields if record.get(k) is not None}
    return make_document(source, uri, offset, text, doc_key=None if doc_key is None else str(doc_key),
                         url=url if isinstance(url, str) and url else None, metadata=meta)


def read_jsonl(fh: IO[bytes], uri: str, source: SourceConfig, drops: DropLog,
               max_bytes: int) -> Iterator[dict[str, Any]]:
    """Documents of a JSON Lines file: one object per line, its text in ``text_field``."""
    for offset, line in _lines(fh, max_bytes, drops, uri):
        if line is None or not line.strip():
            continue
        raw = line[3:] if offset == 0 and line.startswith(b"\xef\xbb\xbf") else line  # a UTF-8 byte order mark
        try:
            record = json.loads(raw)
        except UnicodeDecodeError as err:
            drops.add("not_utf8", nbytes=len(raw), warc_file=uri, warc_offset=offset, detail=str(err)[:200])
            continue
        except ValueError as err:
            drops.add("bad_json", nbytes=len(raw), warc_file=uri, warc_offset=offset, detail=str(err)[:200])
            continue
        if not isinstance(record, dict):
            drops.add("not_an_object", nbytes=len(raw), warc_file=uri, warc_offset=offset,
                      detail=f"a JSON {type(record).__name__}")
            continue
        doc = _fields(record, source, drops, uri, offset, len(raw))
        if doc is not None:
            yield doc


def parquet_row_groups(uri: str) -> list[int]:
    """Rows in each row group of a Parquet file (its footer only is read)."""
    with open_input(uri) as fh:
        meta = pq.ParquetFile(fh).metadata
        return [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]


def read_parquet(uri: str, groups: range, source: SourceConfig, drops: DropLog, max_bytes: int,
                 schema: pa.Schema, batch_rows: int = 1024) -> Iterator[pa.RecordBatch]:
    """Documents of row groups ``groups`` of a Parquet file as record batches in ingest's ``schema``, a batch of
    rows at a time and column-wise: only the rows that are dropped, and the ids, become Python objects."""
    with open_input(uri) as fh:
        pf = pq.ParquetFile(fh)
        meta = pf.metadata
        row = sum(meta.row_group(g).num_rows for g in range(groups.start))
        present = set(pf.schema_arrow.names)
        wanted = [f for f in dict.fromkeys([source.text_field, source.id_field, source.url_field,
                                             *source.metadata_fields]) if f and f in present]
        for batch in pf.iter_batches(batch_size=batch_rows, row_groups=list(groups), columns=wanted):
            kept = _parquet_batch(batch, row, uri, source, drops, max_bytes, schema)
            row += batch.num_rows
            if kept is not None and kept.num_rows:
                yield kept


def _parquet_batch(batch: pa.RecordBatch, first: int, uri: str, source: SourceConfig, drops: DropLog,
                   max_bytes: int, schema: pa.Schema) -> pa.RecordBatch | None:
    n = batch.num_rows
    places = np.arange(first, first + n, dtype=np.int64)
    names = batch.schema.names
    field = source.text_field
    if field not in names or not (pa.types.is_string(batch.schema.field(field).type)
                                  or pa.types.is_large_string(batch.schema.field(field).type)):
        reason = "missing_text_field" if field not in names else "text_not_string"
        detail = f"no {field!r}" if field not in names else f"{field!r} is {batch.schema.field(field).type}"
        for place in places.tolist():
            drops.add(reason, warc_file=uri, warc_offset=place, detail=detail)
        return None
    text = batch.column(field)
    sizes = pc.fill_null(pc.binary_length(text), 0).to_numpy(zero_copy_only=False)
    null = pc.is_null(text).to_numpy(zero_copy_only=False)
    big = sizes > max_bytes
    blank = ~null & ~big & pc.fill_null(pc.equal(pc.utf8_trim_whitespace(text), ""), True).to_numpy(
        zero_copy_only=False)
    for reason, mask, detail in (("missing_text_field", null, f"no {field!r}"),
                                 ("payload_too_large", big, f"> {max_bytes} bytes"), ("empty_payload", blank, None)):
        for i in np.flatnonzero(mask).tolist():
            drops.add(reason, nbytes=int(sizes[i]), warc_file=uri, warc_offset=int(places[i]), detail=detail)
    good = ~(null | big | blank)
    if not good.any():
        return None
    batch = batch.filter(pa.array(good))
    places = places[good]
    count = batch.num_rows

    def column(name: str | None) -> list[Any] | None:
        return batch.column(name).to_pylist() if name and name in batch.schema.names else None

    ids = column(source.id_field)
    keys = [None if v is None else str(v) for v in ids] if ids is not None else [None] * count
    doc_ids = [make_doc_id(f"{source.name}\0id\0{k}" if k is not None else f"{source.name}\0{uri}\0{p}")
               for k, p in zip(keys, places.tolist())]
    urls = column(source.url_field) or [None] * count
    urls = [u if isinstance(u, str) and u else None for u in urls]
    hosts = [(urlsplit(u).hostname or "").lower() or None if u else None for u in urls]
    meta_columns = {k: column(k) for k in source.metadata_fields if k in batch.schema.names}
    metadata = [json.dumps(m, ensure_ascii=False, default=str) if m else None
                for m in ({k: v[i] for k, v in meta_columns.items() if v[i] is not None} for i in range(count))]
    constant = lambda value, kind: pa.array([value] * count, kind)  # noqa: E731
    arrays = {"doc_id": pa.array(doc_ids, pa.string()), "url": pa.array(urls, pa.string()),
              "host": pa.array(hosts, pa.string()), "warc_file": constant(uri, pa.string()),
              "warc_offset": pa.array(places, pa.int64()), "fetch_time": pa.nulls(count, pa.timestamp("us", tz="UTC")),
              "http_status": pa.nulls(count, pa.int32()), "content_type": constant("text/plain", pa.string()),
              "source": constant(source.name, pa.string()), "metadata": pa.array(metadata, pa.string()),
              "record_id": pa.array(keys, pa.string()), "charset": constant("utf-8", pa.string()),
              "html": batch.column(field).cast(pa.large_string())}
    return pa.RecordBatch.from_arrays([arrays[f.name].cast(f.type) for f in schema], schema=schema)


def read_curated(part: Any, source: SourceConfig, writer: Any, drops: DropLog, result: Any, max_bytes: int,
                 schema: pa.Schema) -> None:
    """Ingest's unit over one text, jsonl or parquet file (``part``: a ``tasks.sharded.Source``, row groups
    [start, stop) of a Parquet file). A file that cannot be opened, or stops being readable, is a counted
    ``read_error`` and the documents read before it are kept."""
    counted = drops.total()
    if source.format == "parquet":
        for batch in _guarded(_parquet_part(part, source, drops, max_bytes, schema), drops, part.uri):
            result.docs_in += batch.num_rows
            writer.add_batch(batch)
    else:
        for doc in _guarded(_text_part(part, source, drops, max_bytes), drops, part.uri):
            result.docs_in += 1
            writer.add(doc)
    result.docs_in += drops.total() - counted
    result.bytes_in = size_of(part.uri) if part.start == 0 else 0


def _parquet_part(part: Any, source: SourceConfig, drops: DropLog, max_bytes: int,
                  schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    if part.stop is None:  # planning could not read its footer: say why, as a read error
        parquet_row_groups(part.uri)
    yield from read_parquet(part.uri, range(part.start, part.stop or 0), source, drops, max_bytes, schema)


def _text_part(part: Any, source: SourceConfig, drops: DropLog, max_bytes: int) -> Iterator[dict[str, Any]]:
    with open_stream(part.uri) as fh:
        reader = read_text if source.format == "text" else read_jsonl
        yield from reader(fh, part.uri, source, drops, max_bytes)


def _guarded(items: Iterator[Any], drops: DropLog, uri: str) -> Iterator[Any]:
    """The reader's items until it fails; a damaged or unopenable file ends as one ``read_error``. Errors of the
    consumer (the shard writer) are not caught here, and neither are connection and time-out errors, which a
    retry may get past."""
    while True:
        try:
            item = next(items)
        except StopIteration:
            return
        except (ConnectionError, TimeoutError):
            raise
        except Exception as err:  # damaged compression, a file cut short, not Parquet at all, not there
            drops.add("read_error", warc_file=uri, detail=f"{type(err).__name__}: {err}"[:500])
            return
        yield item
