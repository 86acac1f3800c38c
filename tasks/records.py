"""An archive's records into documents: every record of a WARC, ARC or WET file becomes a document or a counted
skip with its reason, and a damaged region costs only itself.

``ArchiveReader.records`` splits a gzip archive into its members (tasks/warc.py's ``gzip_members``, which reports
corrupt, truncated and garbage regions) and reads each member with FastWARC when it holds one clean record
(tasks/warc_fast.py), else with the tolerant warcio reader, which resynchronises on the next record header after a
parse error; ARC and uncompressed files always go the tolerant way. Both readers hand ``_record`` an object with
warcio's attributes, so the classification (response or not, HTTP status, MIME type, payload size and encodings,
charset) is one piece of code: the documents and the drops are the same whichever reader took a member.

    reader = ArchiveReader(IngestConfig(...))
    with open("crawl.warc.gz", "rb") as fh:
        for doc in reader.records(fh, "crawl.warc.gz", drops, result): ...
"""
from __future__ import annotations

import gzip
import hashlib
import io
from typing import IO, Any, Iterator
from urllib.parse import urlsplit

from tasks.charsets import charset_of as _charset_of, decode_html, fetch_time as _fetch_time, looks_binary
from tasks.config import IngestConfig
from tasks.encodings import EncodingRefused
from tasks.inputs import make_doc_id
from tasks.shards import DropLog, ShardResult
from tasks.warc import (ARC_HEADER, EMBEDDED_RECORD, GZIP_MAGIC, MAX_MEMBER_BYTES, MAX_RESYNCS, Overrun, SingleStream,
                        TolerantIterator, Unseekable, gzip_members, next_header_offset, read_payload, sniff)
from tasks.warc_fast import parse_member


class ArchiveReader:
    """Reads archives with ingest's settings (``IngestConfig``: MIME types, HTTP statuses, payload limit …)."""

    def __init__(self, config: IngestConfig) -> None:
        self.config = config

    def unusable(self, body: bytes, drops: DropLog, where: dict[str, Any]) -> bool:
        """Count a payload that is too large, empty or binary as a drop with its reason; True if it was one."""
        limit = self.config.max_payload_bytes
        if len(body) > limit:
            drops.add("payload_too_large", nbytes=len(body), detail=f"> {limit} bytes", **where)
        elif not body.strip():
            drops.add("empty_payload", **where)
        elif looks_binary(body):
            drops.add("binary_payload", nbytes=len(body), **where)
        else:
            return False
        return True

    def records(self, fh: IO[bytes], uri: str, drops: DropLog, result: ShardResult) -> Iterator[dict[str, Any]]:
        """Every document in one archive; everything else is recorded in ``drops`` with its reason."""
        # An ARC record read as WARC gets a random WARC-Record-ID from warcio: never an identity to key on.
        arc = bool(ARC_HEADER.match(sniff(fh)))
        if fh.read(3) != GZIP_MAGIC:
            fh.seek(0)
            yield from self._plain_records(fh, uri, 0, drops, result, arc=arc)
            return
        fh.seek(0)
        try:
            for member in gzip_members(fh, max_member=MAX_MEMBER_BYTES):
                if member.damage:
                    result.docs_in += 1
                    drops.add("read_error", warc_file=uri, warc_offset=member.offset,
                              detail=f"{member.damage} gzip data, bytes {member.offset}..{member.end} skipped")
                elif arc or (fast := parse_member(member.data)) is None:
                    yield from self._plain_records(io.BytesIO(member.data), uri, member.offset, drops, result,
                                                   exact_offsets=False, arc=arc)
                else:
                    yield from self._fast_record(fast, member, uri, drops, result)
        except SingleStream as single:
            result.notes["single_gzip_stream"] = result.notes.get("single_gzip_stream", 0) + 1
            fh.seek(single.args[0])
            with gzip.GzipFile(fileobj=fh) as stream:
                yield from self._plain_records(Unseekable(stream), uri, single.args[0], drops, result,
                                               exact_offsets=False, arc=arc)

    def _fast_record(self, rec: Any, member: Any, uri: str, drops: DropLog,
                     result: ShardResult) -> Iterator[dict[str, Any]]:
        """The one record of a member FastWARC parsed, as ``_plain_records`` would read it."""
        try:
            doc = self._read_record(rec, uri, member.offset, drops, result)
        except Overrun:  # a record header inside the payload: the tolerant reader reads on from there
            data = io.BytesIO(member.data)
            start = next_header_offset(data, 0)
            if start is not None:
                yield from self._plain_records(data, uri, member.offset, drops, result, exact_offsets=False,
                                               start=start)
            return
        if doc is not None:
            yield doc

    def _read_record(self, rec: Any, uri: str, where: int, drops: DropLog, result: ShardResult,
                     arc: bool = False) -> dict[str, Any] | None:
        """One record, from either reader: a document, or None with the record counted (a note for a record that is
        not a document, a drop with its reason for one that is). Raises Overrun for the caller to read on."""
        notes = result.notes
        if not self._is_document(rec):  # a request, warcinfo, revisit…: a record, not a document
            kind = f"record_{rec.rec_type or 'unknown'}"
            notes[kind] = notes.get(kind, 0) + 1
            return None
        result.docs_in += 1
        try:
            return self._record(rec, uri, where, drops, notes, arc)
        except Overrun:
            raise
        except Exception as err:  # one odd record must not cost the file
            drops.add("record_error", warc_file=uri, warc_offset=where, detail=f"{type(err).__name__}: {err}")
            return None

    def _plain_records(self, fh: IO[bytes], uri: str, base: int, drops: DropLog, result: ShardResult,
                       exact_offsets: bool = True, arc: bool = False, start: int | None = 0,
                       ) -> Iterator[dict[str, Any]]:
        """Records of an uncompressed archive stream from ``start``; after a parse error, resume at the next
        record header.

        ``base`` is the stream's offset in the file. Inside a gzip member every record gets the member's offset,
        the position a reader seeks to.
        """
        notes = result.notes
        resyncs = 0
        while start is not None:
            fh.seek(start)
            it = TolerantIterator(fh, arc2warc=True)
            offset = start
            try:
                start = None
                for rec in it:
                    offset = it.offset  # where this record starts; warcio moves it on at the next record
                    try:
                        doc = self._read_record(rec, uri, base + offset if exact_offsets else base, drops, result,
                                                arc)
                    except Overrun:  # its Content-Length swallowed the records after it: read those again
                        start = next_header_offset(fh, offset) if fh.seekable() else None
                        if start is not None:
                            break
                        continue
                    if doc is not None:
                        yield doc
            except Exception as err:  # garbage between records, malformed headers, a stream cut short
                result.docs_in += 1
                resyncs += 1
                seekable = fh.seekable() if hasattr(fh, "seekable") else False
                nxt = next_header_offset(fh, max(offset, it.offset or 0)) if seekable and resyncs < MAX_RESYNCS \
                    else None
                skipped = "the rest" if nxt is None else f"up to offset {base + nxt}"
                drops.add("read_error", warc_file=uri, warc_offset=base + offset if exact_offsets else base,
                          detail=f"{type(err).__name__}: {err}; skipped {skipped}")
                start = nxt
            for note, count in it.notes.items():
                notes[note] = notes.get(note, 0) + count

    def _is_document(self, rec) -> bool:
        """A record that can hold a document: an HTTP response (ARC records read as responses), or a WET
        conversion record when ``keep_conversions`` is on. The rest are counted by type in the funnel's notes."""
        return rec.rec_type == "response" or (rec.rec_type == "conversion" and self.config.keep_conversions)

    def _record(self, rec, uri: str, offset: int, drops: DropLog, notes: dict[str, int],
                arc: bool = False) -> dict[str, Any] | None:
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
        else:  # _is_document keeps these out; a caller that did not ask is told plainly
            raise ValueError(f"a {rec_type} record is not a document")

        try:
            body = read_payload(rec, cfg.max_payload_bytes + 1)
        except EncodingRefused as err:
            drops.add(err.reason, detail=str(err), **where)
            return None
        except Exception as err:  # a broken gzip/brotli/chunked body spoils this record only
            drops.add("content_decoding_error", detail=f"{type(err).__name__}: {err}", **where)
            return None
        embedded = EMBEDDED_RECORD.search(body) if b"WARC/1." in body else None
        if embedded is not None:
            drops.add("content_length_overrun", nbytes=len(body), **where,
                      detail=f"a record header {embedded.start()} bytes into the payload: the declared length "
                             "ran over the records after it, which are read again")
            raise Overrun()
        if self.unusable(body, drops, where):
            return None

        record_id = rec.rec_headers.get_header("WARC-Record-ID")
        if not arc and rec.format == "warc" and record_id:
            doc_id = make_doc_id(record_id)
        else:  # ARC records have no stable id (warcio invents a random one): use the URL and the payload digest
            doc_id, record_id = make_doc_id(f"{url} {hashlib.sha1(body).hexdigest()}"), None
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
            "content_type": mime, "record_id": record_id,
            "charset": charset, "html": text, "source": None, "metadata": None,
        }
