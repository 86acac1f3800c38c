"""WARC files: a tolerant WARC/ARC reader (gzip archives member by member, plain ones record by record, past
damage), and the crawler's rotating WARC 1.1 writer.

Common Crawl and other crawlers write one gzip member per record, so a corrupt or truncated member costs one
record: ``gzip_members`` splits a file into members (and damaged regions) as it streams, inflating each at most
``MAX_MEMBER_BYTES`` deep. ``TolerantIterator`` is warcio's iterator made to keep a record header found where a blank
line was due (Common Crawl's 2008 ARC files) and to tolerate several records in one member. ``read_payload``
undoes transfer and content encodings with a cap on the decoded bytes (tasks/encodings.py). The ingest stage
(tasks/ingest.py) drives these and turns every record into a document or a counted skip.
"""
from __future__ import annotations

import io
import os
import re
import zlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Callable, Iterator
from urllib.parse import urlsplit

from warcio.archiveiterator import ArchiveIterator
from warcio.bufferedreaders import ChunkedDataReader
from warcio.recordloader import ArcWarcRecordLoader
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from tasks.encodings import decode_all

MAX_RESYNCS = 10_000  # per file; past this the rest of a hopeless file is one counted skip
MAX_MEMBER_BYTES = 64 * 2**20  # a larger gzip member means the file is one gzip stream (or a bomb): streamed
GZIP_MAGIC = b"\x1f\x8b\x08"
PIECE = 64 * 1024  # compressed bytes fed to the inflater at a time: most records fit in one piece
ARC_HEADER = re.compile(rb"^\S+://\S* \S+ \d{14} \S+ \d+")
# A whole WARC record header inside a payload: the record's Content-Length ran over the records that follow it.
EMBEDDED_RECORD = re.compile(rb"\r?\n\r?\nWARC/1\.[01]\r\n(?:[A-Za-z-]+: [^\r\n]*\r\n){1,30}?Content-Length: \d+\r\n")
RECORD_START = re.compile(rb"(?m)^(WARC/[0-9.]+\r?\n|\S+://\S* \S+ \d{14} \S+ \d+\r?\n)")


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


class Overrun(Exception):
    """Raised for a record whose declared length swallowed the records after it (already counted as a drop)."""


class TolerantIterator(ArchiveIterator):
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
                if not (line.startswith(b"WARC/") or ARC_HEADER.match(line)):
                    self._note("malformed_record_boundary")
                    empty_size += len(line)
                    continue
                return line, empty_size
            empty_size += len(line)

    def _raise_invalid_gzip_err(self):
        # Several records in one gzip member cannot be replayed by offset, but they read fine.
        self._note("multi_record_gzip_member")


class Unseekable(io.RawIOBase):
    """A forward-only view of a stream, so the reader does not try to seek a gzip stream."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, b) -> int:
        data = self._stream.read(len(b))
        b[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        if offset == 0 and whence == 0:
            return 0
        raise io.UnsupportedOperation("forward-only stream")


def sniff(fh: IO[bytes]) -> bytes:
    head = fh.read(4096)
    fh.seek(0)
    if head[:2] == b"\x1f\x8b":
        try:
            head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head)
        except zlib.error:
            return b""
    return head.lstrip(b"\r\n")



def is_archive(fh: IO[bytes]) -> bool:
    head = sniff(fh)
    return head.startswith(b"WARC/") or bool(ARC_HEADER.match(head))


def next_header_offset(fh: IO[bytes], after: int) -> int | None:
    """In an uncompressed stream, the offset of the next line that starts a WARC or ARC record."""
    fh.seek(after + 1)
    pos, carry = after + 1, b""
    while True:
        block = fh.read(1 << 20)
        if not block:
            return None
        data = carry + block
        m = RECORD_START.search(data, 1 if pos - len(carry) == after + 1 else 0)
        if m:
            return pos - len(carry) + m.start()
        carry = data[-256:]
        pos += len(block)


@dataclass
class Member:
    """One gzip member of a record-per-member archive, or a damaged region between members."""

    offset: int
    data: bytes = b""
    damage: str | None = None  # 'garbage' | 'corrupt' | 'truncated'
    end: int = 0


def gzip_members(fh: IO[bytes], block: int = 1 << 20, max_member: int = MAX_MEMBER_BYTES) -> Iterator[Member]:
    """Split a .gz archive into its members, streaming; damaged regions come out as Members with ``damage`` set.

    WARC and ARC files compress each record as its own gzip member, so a corrupt or truncated member costs one
    record, and garbage between members is skipped by finding the next member header. A member that inflates past
    ``max_member`` raises ``SingleStream``: the whole file is one gzip stream and must be read as a stream.
    """
    buf = bytearray()
    pos = 0  # index in buf of the next unread byte
    base = 0  # file offset of buf[0]
    at_eof = False
    corrupt_at: int | None = None  # file offset of a member that failed to inflate, while we look past it

    def fill(n: int) -> None:
        """Make at least n unread bytes available (fewer at end of file); compact the buffer when that is cheap."""
        nonlocal at_eof, pos, base
        if len(buf) - pos >= n or at_eof:
            return
        if pos:
            del buf[:pos]
            base += pos
            pos = 0
        while len(buf) < n and not at_eof:
            chunk = fh.read(max(block, n - len(buf)))
            if not chunk:
                at_eof = True
            buf.extend(chunk)

    while True:
        fill(PIECE)
        if pos >= len(buf):
            return
        if buf[pos:pos + 3] != GZIP_MAGIC or corrupt_at is not None:
            start = base + pos if corrupt_at is None else corrupt_at
            while True:  # skip to the next real member header
                idx = buf.find(GZIP_MAGIC, pos + 1)
                if idx != -1:
                    pos = idx
                    fill(PIECE)
                    if _inflates(bytes(buf[pos:pos + 512])):
                        break
                    continue
                pos = max(len(buf) - 2, pos + 1)
                if at_eof:
                    pos = len(buf)
                    break
                fill(PIECE)
            yield Member(start, damage="garbage" if corrupt_at is None else "corrupt", end=base + pos)
            corrupt_at = None
            continue
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out: list[bytes] = []
        size, used = 0, pos
        damage = None
        while not inflater.eof:
            if used >= len(buf):
                if at_eof:
                    damage = "truncated"
                    break
                offset = used - pos
                fill(offset + block)
                used = pos + offset
                continue
            view = memoryview(buf)[used:used + PIECE]
            used += len(view)
            try:  # bounded output: one piece of a bomb could otherwise inflate to 1000x its size
                data = inflater.decompress(view, max_member - size + 1)
            except zlib.error:
                damage = "corrupt"
                break
            finally:
                view.release()
            out.append(data)
            size += len(data)
            if size > max_member:
                raise SingleStream(base + pos)
            used -= len(inflater.unconsumed_tail)  # none is left unless the output filled max_length
        if damage == "truncated":
            yield Member(base + pos, damage=damage, end=base + used)
            return
        if damage == "corrupt":  # look for the next member header past this one; report the region once
            corrupt_at = base + pos
            continue
        used -= len(inflater.unused_data)
        yield Member(base + pos, b"".join(out), end=base + used)
        pos = used


class SingleStream(Exception):
    """The archive is one gzip stream, not a member per record."""


def _inflates(head: bytes) -> bool:
    try:
        zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head)
        return True
    except zlib.error:
        return False



def read_payload(rec, limit: int) -> bytes:
    """The payload with transfer and content encodings undone, at most ``limit`` DECODED bytes.

    The record's raw bytes are de-chunked and decoded here (tasks/encodings.py), not by warcio, so a small
    compressed body that inflates to gigabytes costs at most ``limit`` bytes of memory; stacked compressions raise
    EncodingRefused.
    """
    http = rec.http_headers
    raw = rec.raw_stream
    if http is not None and (http.get_header("Transfer-Encoding") or "").strip().lower() == "chunked":
        raw = ChunkedDataReader(raw, decomp_type=None)
    header = http.get_header("Content-Encoding") if http is not None else None
    body, _ = decode_all(header, iter(lambda: raw.read(PIECE), b""), limit)
    return body


class RotatingWarcWriter:
    """WARC 1.1 files of about ``max_bytes`` each, written under a temporary name and renamed when closed.

    A file is rotated before the next record is written, not after the last one, so that everything the caller
    logs about a record happens before the file closes; ``on_close(path)`` runs after the file is synced and before
    it is renamed to ``path`` (the crawler writes that file's log part there).
    """

    def __init__(self, out_dir: Path, prefix: str, max_bytes: int,
                 on_close: Callable[[Path], None] | None = None) -> None:
        self.out_dir, self.prefix, self.max_bytes = out_dir, prefix, max_bytes
        self.on_close = on_close
        self.finished: list[Path] = []
        self._fh: Any = None
        self._writer: WARCWriter | None = None
        self._path: Path | None = None

    def _open(self) -> None:
        self._path = self.out_dir / f"{self.prefix}-{len(self.finished):05d}.warc.gz"
        self._fh = open(self.out_dir / f".tmp-{self._path.name}", "wb")
        self._writer = WARCWriter(self._fh, gzip=True, warc_version="WARC/1.1")

    def write(self, url: str, request_headers: list[tuple[str, str]], status_line: str,
              response_headers: list[tuple[str, str]], body: bytes, when: datetime) -> tuple[str, int]:
        """Archive one request/response pair; returns (final file name, response record offset)."""
        if self._fh is not None and self._fh.tell() >= self.max_bytes:
            self._close_current()
        if self._writer is None:
            self._open()
        w = self._writer
        date = when.strftime("%Y-%m-%dT%H:%M:%SZ")
        target = urlsplit(url)
        path = target.path + (f"?{target.query}" if target.query else "")
        request = StatusAndHeaders(f"GET {path} HTTP/1.1", request_headers, is_http_request=True)
        w.write_record(w.create_warc_record(url, "request", payload=io.BytesIO(b""), http_headers=request,
                                            warc_headers_dict={"WARC-Date": date}))
        offset = self._fh.tell()
        response = StatusAndHeaders(status_line, response_headers, protocol="HTTP/1.1")
        w.write_record(w.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=response,
                                            warc_headers_dict={"WARC-Date": date}))
        return self._path.name, offset

    def _close_current(self) -> None:
        if self._fh is None:
            return
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        if self.on_close is not None:
            self.on_close(self._path)
        (self.out_dir / f".tmp-{self._path.name}").replace(self._path)
        self.finished.append(self._path)
        self._fh = self._writer = self._path = None

    def close(self) -> list[Path]:
        self._close_current()
        return self.finished
