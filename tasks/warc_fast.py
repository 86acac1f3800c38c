"""FastWARC for the common case: a gzip member that holds one well-formed WARC record is parsed by
FastWARC (Rust) instead of warcio, about 4x faster per record; every other member, and every ARC or uncompressed
file, goes the tolerant way (tasks/warc.py), so what ingest keeps and counts is the same either way
(tests/tasks/test_warc_fast.py compares the two on every shared crawl file and on damaged ones).

``parse_member`` takes a member only when nothing in it needs the tolerant reader's repairs, and returns None
otherwise:

- it starts with ``WARC/1.1``, ``1.0``, ``0.18`` or ``0.17`` and its header block uses CRLF line ends;
- its Content-Length is plain digits and the record's block ends exactly there, followed by blank lines only (two
  records in one member, a declared length that lies, or bytes after the record go the tolerant way);
- a response's HTTP header block, where one is parsed, uses CRLF line ends and its status line starts ``HTTP/``.

The record it returns reads like warcio's (``rec_type``, ``rec_headers.get_header``, ``http_headers.statusline``,
``raw_stream`` …), with warcio's rules for which records have HTTP headers and how a target URI is cleaned, so the
ingest code that classifies records (tasks/records.py) runs unchanged on both.

    rec = parse_member(member.data)   # None: read this member with TolerantIterator
"""
from __future__ import annotations

from typing import Any

from fastwarc.warc import WarcRecord

HTTP_SCHEMES = ("http:", "https:")
VERSIONS = (b"WARC/1.0\r\n", b"WARC/1.1\r\n", b"WARC/0.17\r\n", b"WARC/0.18\r\n")  # warcio's, and FastWARC's


class Headers:
    """warcio's ``StatusAndHeaders`` reading interface over a FastWARC header map."""

    __slots__ = ("_map", "statusline", "protocol", "target_uri")

    def __init__(self, header_map: Any, status_line: str | None = None) -> None:
        self._map = header_map
        self.target_uri: str | None = None  # the WARC-Target-URI as warcio rewrites it, where it does
        # warcio (verify_http off) splits the status line at its first space: protocol, then the rest, stripped
        protocol, _, rest = (status_line or "").partition(" ")
        self.protocol, self.statusline = protocol, rest.strip()

    def get_header(self, name: str, default: str | None = None) -> str | None:
        value = self._map.get(name)
        if self.target_uri is not None and name.lower() == "warc-target-uri":
            value = self.target_uri
        return default if value is None else value

    def get_statuscode(self) -> str:
        return self.statusline.split(" ", 1)[0]


class FastRecord:
    """One WARC record parsed by FastWARC, read through the attributes ingest uses on warcio's records."""

    __slots__ = ("rec_type", "rec_headers", "http_headers", "content_type", "raw_stream")
    format = "warc"

    def __init__(self, rec_type: str | None, rec_headers: Headers, http_headers: Headers | None,
                 content_type: str | None, raw_stream: Any) -> None:
        self.rec_type, self.rec_headers, self.http_headers = rec_type, rec_headers, http_headers
        self.content_type, self.raw_stream = content_type, raw_stream


def _crlf_only(block: bytes) -> bool:
    return block.count(b"\n") == block.count(b"\r\n")


def parse_member(data: bytes) -> FastRecord | None:
    """The one record in a gzip member's bytes, or None when the member needs the tolerant reader."""
    if not data.startswith(VERSIONS):
        return None
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0 or not _crlf_only(data[:head_end]):
        return None
    try:
        rec = WarcRecord.from_bytes(data)
    except Exception:  # whatever FastWARC refuses, warcio reads (or counts) its own way
        return None
    headers = Headers(rec.headers)
    declared = headers.get_header("Content-Length")
    if declared is None or not (declared.isascii() and declared.isdigit()) or rec.content_length != int(declared):
        return None
    length = int(declared)
    block_start = head_end + 4
    block_end = block_start + length
    if block_end > len(data) or data[block_end:].strip():
        return None
    rec_type = headers.get_header("WARC-Type")
    content_type = headers.get_header("Content-Type")
    uri = headers.get_header("WARC-Target-URI")
    if uri is not None and (uri.startswith("<") and uri.endswith(">") or " " in uri):
        # warcio's rewrite: Wget 1.19+ writes <uri> (its bug), and a space would end the URL in a CDX line
        uri = uri[1:-1] if uri.startswith("<") and uri.endswith(">") else uri
        headers.target_uri = uri = uri.replace(" ", "%20")
    http = None
    # warcio's rule (and tasks/warc.py's _SpecLoader): a response with a body, an http(s) target and a Content-Type
    # that is application/http (or none) starts with an HTTP header block
    if rec_type == "response" and length and uri is not None and uri.startswith(HTTP_SCHEMES) and \
            (not content_type or content_type.lower().startswith("application/http")):
        http_end = data.find(b"\r\n\r\n", block_start, block_end)
        if http_end < 0 or not _crlf_only(data[block_start:http_end]) or \
                not data.startswith(b"HTTP/", block_start):
            return None
        try:
            rec.parse_http()
        except Exception:
            return None
        status_line = rec.http_headers.status_line
        if status_line is None or "\n" in status_line or "\r" in status_line:
            return None
        http = Headers(rec.http_headers, status_line)
    return FastRecord(rec_type, headers, http, content_type, rec.reader)
