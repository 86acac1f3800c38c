"""Ingestion: WARC 1.0/1.1/0.17/0.18, ARC and WET files (gzip or plain) into Parquet shards of HTML documents.

One unit is one input file. Every record either becomes a document or a counted skip with a reason
(``record_request``, ``not_html``, ``payload_too_large``, ``read_error`` …); a damaged region of a file is skipped
by resynchronising on the next record, so one bad record never costs the rest of the file. A file that is not an
archive at all fails its unit with a message naming the file.

    from tasks.ingest import IngestStage
    stage = IngestStage(cfg.ingest)
    units = stage.plan(stage.sources())
"""
from __future__ import annotations

import codecs
import hashlib
import io
import re
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Iterator
from urllib.parse import urlsplit

import fsspec
import pyarrow as pa
from warcio.archiveiterator import ArchiveIterator
from warcio.recordloader import ArcWarcRecordLoader

from tasks.config import IngestConfig, stable_hash
from tasks.shards import DropLog, ShardResult, ShardWriter
from tasks.stage import Source, Stage, Unit, UnitFailed

SCHEMA = pa.schema([
    ("doc_id", pa.string()),
    ("url", pa.string()),
    ("host", pa.string()),
    ("warc_file", pa.string()),
    ("warc_offset", pa.int64()),
    ("fetch_time", pa.timestamp("us", tz="UTC")),
    ("http_status", pa.int32()),
    ("content_type", pa.string()),
    ("charset", pa.string()),
    ("html", pa.large_string()),
])

MAX_RESYNCS = 10_000  # per file; past this the rest of a hopeless file is one counted skip
_ARC_HEADER = re.compile(rb"^\S+://\S* \S+ \d{14} \S+ \d+")
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)
_RECORD_START = re.compile(rb"(?m)^(WARC/[0-9.]+\r?\n|\S+://\S* \S+ \d{14} \S+ \d+\r?\n)")


# ---------------------------------------------------------------------------------------------------------------
# Input files


@dataclass(frozen=True)
class InputFile:
    uri: str
    size: int
    version: str  # mtime or ETag: what tells a changed file from the same one


def expand_inputs(patterns: list[str]) -> list[InputFile]:
    """Resolve paths, globs and fsspec URLs to a sorted file list; a pattern that matches nothing is an error."""
    files: dict[str, InputFile] = {}
    for pattern in patterns:
        fs, _, paths = fsspec.get_fs_token_paths(pattern)
        matched = [p for p in paths if fs.isfile(p)]
        if not matched:
            raise FileNotFoundError(f"ingest input {pattern!r} matches no file")
        for p in matched:
            info = fs.info(p)
            uri = fs.unstrip_protocol(p) if fs.protocol not in ("file", ("file", "local")) else p
            version = str(info.get("mtime") or info.get("ETag") or info.get("LastModified") or info.get("created"))
            files[uri] = InputFile(uri, int(info.get("size") or 0), version)
    return [files[k] for k in sorted(files)]


# ---------------------------------------------------------------------------------------------------------------
# A tolerant reader


class _SpecLoader(ArcWarcRecordLoader):
    """Parses an HTTP header block only where the WARC Content-Type says there is one (application/http).

    A response record of another type (Wayback exports label them text/html) carries the bare document; the stock
    loader would eat its first lines as HTTP headers.
    """

    _content_type = ""

    def _ensure_target_uri_format(self, rec_headers):
        self._content_type = (rec_headers.get_header("Content-Type") or "").lower()
        return super()._ensure_target_uri_format(rec_headers)

    def load_http_headers(self, rec_type, uri, stream, length):
        if rec_type == "response" and self._content_type and not self._content_type.startswith("application/http"):
            return None
        return super().load_http_headers(rec_type, uri, stream, length)


class _TolerantIterator(ArchiveIterator):
    """warcio's iterator, except that a record header met where a blank line was due is kept, not discarded.

    Common Crawl's 2008 ARC files declare a header length that swallows the separator line, so the stock
    iterator throws away the next record's header line and then fails on the HTTP status line after it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.notes: dict[str, int] = {}
        super().__init__(*args, **kwargs)
        self.loader = _SpecLoader(verify_http=False, arc2warc=True)

    def _note(self, kind: str) -> None:
        self.notes[kind] = self.notes.get(kind, 0) + 1

    def _consume_blanklines(self):
        empty_size = 0
        while True:
            line = self.reader.readline()
            if not line:
                return None, empty_size
            if line.strip():
                if not (line.startswith(b"WARC/") or _ARC_HEADER.match(line)):
                    self._note("malformed_record_boundary")
                    empty_size += len(line)
                    continue
                return line, empty_size
            empty_size += len(line)

    def _raise_invalid_gzip_err(self):
        # Several records in one gzip member cannot be replayed by offset, but they read fine.
        self._note("multi_record_gzip_member")


def _sniff(fh: IO[bytes]) -> bytes:
    head = fh.read(4096)
    fh.seek(0)
    if head[:2] == b"\x1f\x8b":
        try:
            head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head)
        except zlib.error:
            return b""
    return head.lstrip(b"\r\n")


def is_archive(fh: IO[bytes]) -> bool:
    head = _sniff(fh)
    return head.startswith(b"WARC/") or bool(_ARC_HEADER.match(head))


def _next_record_offset(fh: IO[bytes], after: int, gzipped: bool) -> int | None:
    """The offset of the next plausible record start after a damaged region (a gzip member or a header line)."""
    fh.seek(after + 1)
    pos = after + 1
    carry = b""
    while True:
        block = fh.read(1 << 20)
        if not block:
            return None
        data = carry + block
        base = pos - len(carry)
        if gzipped:
            idx = data.find(b"\x1f\x8b\x08")
            while idx != -1:
                try:  # a real member decompresses; a chance match of the magic bytes does not
                    zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[idx:idx + 512])
                    return base + idx
                except zlib.error:
                    idx = data.find(b"\x1f\x8b\x08", idx + 1)
        else:
            m = _RECORD_START.search(data)
            if m:
                return base + m.start()
        carry = data[-64:]
        pos += len(block)


# ---------------------------------------------------------------------------------------------------------------
# Decoding


def decode_html(body: bytes, declared: str | None) -> tuple[str, str, bool]:
    """Decode by BOM, then the declared charset, then a <meta> charset, then UTF-8; (text, charset, fell_back)."""
    for bom, name in ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if body.startswith(bom):
            return body.decode(name, errors="replace"), name, False
    meta = _META_CHARSET.search(body[:4096])
    for name in (declared, meta.group(1).decode("ascii", "ignore") if meta else None, "utf-8"):
        if not name:
            continue
        try:
            codec = codecs.lookup(name).name
            return body.decode(codec), codec, False
        except (LookupError, UnicodeDecodeError):
            continue
    return body.decode("cp1252", errors="replace"), "cp1252", True


def _charset_of(content_type: str | None) -> str | None:
    if not content_type:
        return None
    m = re.search(r"charset\s*=\s*[\"']?([^\s;\"']+)", content_type, re.I)
    return m.group(1) if m else None


def _fetch_time(value: str | None) -> datetime | None:
    if not value or value.lower() == "null":
        return None
    try:
        if value.isdigit() and len(value) == 14:
            return datetime.strptime(value, "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def make_doc_id(key: str) -> str:
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# The stage


class IngestStage(Stage):
    name = "ingest"
    upstream = None
    schema = SCHEMA
    size_column = "html"

    config: IngestConfig

    def sources(self) -> list[InputFile]:
        if not self.config.inputs:
            raise FileNotFoundError("ingest.inputs is empty: name the WARC/ARC/WET files to read")
        return expand_inputs(self.config.inputs)

    @staticmethod
    def sources_fingerprint(files: list[InputFile]) -> str:
        return stable_hash([[f.uri, f.size, f.version] for f in files])

    def plan(self, files: list[InputFile]) -> list[Unit]:  # type: ignore[override]
        return [Unit(i, (Source(f.uri),)) for i, f in enumerate(files)]

    def process(self, unit: Unit, writer: ShardWriter, drops: DropLog, result: ShardResult) -> None:
        uri = unit.sources[0].uri
        try:
            opened = fsspec.open(uri, "rb").open()
        except OSError as err:
            raise UnitFailed(f"ingest {unit.name}: cannot open {uri}: {err}") from err
        with opened as fh:
            if not fh.seekable():
                fh = io.BytesIO(fh.read())
            if not is_archive(fh):
                raise UnitFailed(f"ingest {unit.name}: {uri} is not a WARC, ARC or WET file")
            for record in self.records(fh, uri, drops, result):
                writer.add(record)
        result.bytes_in = _size_of(uri)

    def records(self, fh: IO[bytes], uri: str, drops: DropLog, result: ShardResult) -> Iterator[dict[str, Any]]:
        """Every document in one archive; everything else is recorded in ``drops`` with its reason."""
        gzipped = fh.read(2) == b"\x1f\x8b"
        fh.seek(0)
        notes = result.notes
        start, resyncs = 0, 0
        while start is not None:
            fh.seek(start)
            it = _TolerantIterator(fh, arc2warc=True)
            offset = start
            try:
                for rec in it:
                    offset = it.offset  # where this record starts; warcio moves it on at the next record
                    result.docs_in += 1
                    try:
                        doc = self._record(rec, uri, offset, drops, notes)
                    except Exception as err:  # one odd record must not cost the file
                        drops.add("record_error", warc_file=uri, warc_offset=offset,
                                  detail=f"{type(err).__name__}: {err}")
                        continue
                    if doc is not None:
                        yield doc
                start = None
            except Exception as err:  # truncated gzip, garbage between records, malformed headers
                result.docs_in += 1
                resyncs += 1
                start = _next_record_offset(fh, max(offset, it.offset or 0), gzipped) if resyncs < MAX_RESYNCS else None
                skipped = "rest of file" if start is None else f"bytes {offset}..{start}"
                drops.add("read_error", warc_file=uri, warc_offset=offset,
                          detail=f"{type(err).__name__}: {err}; skipped {skipped}")
            for note, count in it.notes.items():
                notes[note] = notes.get(note, 0) + count

    def _record(self, rec, uri: str, offset: int, drops: DropLog, notes: dict[str, int]) -> dict[str, Any] | None:
        cfg = self.config
        rec_type = rec.rec_type
        url = rec.rec_headers.get_header("WARC-Target-URI")
        where = {"url": url, "warc_file": uri, "warc_offset": offset}
        if rec_type == "conversion" and cfg.keep_conversions:
            mime, status, charset_decl = "text/plain", None, _charset_of(rec.content_type)
        elif rec_type == "response":
            if not url or not url.lower().startswith(("http://", "https://")):
                drops.add("not_http", **where)
                return None
            http = rec.http_headers
            if http is not None and http.statusline:
                try:
                    status = int(http.get_statuscode())
                except (TypeError, ValueError):
                    drops.add("malformed_http_headers", detail=http.statusline[:200], **where)
                    return None
                content_type = http.get_header("Content-Type")
            else:  # the payload has no HTTP header block (e.g. Wayback exports): trust the WARC Content-Type
                status, content_type = None, rec.content_type
                notes["no_http_headers"] = notes.get("no_http_headers", 0) + 1
            if cfg.http_statuses and status is not None and status not in cfg.http_statuses:
                drops.add("http_status", detail=str(status), **where)
                return None
            mime = (content_type or "").split(";")[0].strip().lower()
            if mime not in cfg.mime_types:
                drops.add("not_html", detail=mime or "(none)", **where)
                return None
            charset_decl = _charset_of(content_type)
        else:
            drops.add(f"record_{rec_type or 'unknown'}", **where)
            return None

        try:
            body = rec.content_stream().read(cfg.max_payload_bytes + 1)
        except Exception as err:  # a broken gzip/brotli/chunked body spoils this record only
            drops.add("content_decoding_error", detail=f"{type(err).__name__}: {err}", **where)
            return None
        if len(body) > cfg.max_payload_bytes:
            drops.add("payload_too_large", nbytes=len(body), detail=f"> {cfg.max_payload_bytes} bytes", **where)
            return None
        if not body.strip():
            drops.add("empty_payload", **where)
            return None
        if body[:4096].count(b"\x00") > 16 and not body.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            drops.add("binary_payload", nbytes=len(body), **where)
            return None

        record_id = rec.rec_headers.get_header("WARC-Record-ID")
        if rec.format == "warc" and record_id:
            doc_id = make_doc_id(record_id)
        else:  # ARC records have no stable id (warcio invents a random one): use the URL and the payload digest
            doc_id = make_doc_id(f"{url} {hashlib.sha1(body).hexdigest()}")
        text, charset, fell_back = decode_html(body, charset_decl)
        if fell_back:
            notes["charset_fallback"] = notes.get("charset_fallback", 0) + 1
        date = rec.rec_headers.get_header("WARC-Date")
        fetch_time = _fetch_time(date)
        if fetch_time is None:
            notes["invalid_date"] = notes.get("invalid_date", 0) + 1
        return {
            "doc_id": doc_id, "url": url, "host": (urlsplit(url).hostname or "").lower() or None,
            "warc_file": uri, "warc_offset": offset, "fetch_time": fetch_time, "http_status": status,
            "content_type": mime, "charset": charset, "html": text,
        }


def _size_of(uri: str) -> int:
    try:
        fs, _, paths = fsspec.get_fs_token_paths(uri)
        return int(fs.info(paths[0]).get("size") or 0)
    except (OSError, IndexError):
        return 0
