"""FastWARC's fast path (tasks/warc_fast.py) against the tolerant warcio reader: the same documents, drops, notes
and counts on every file, whichever reader took each gzip member."""
from __future__ import annotations

import gzip
import io
from pathlib import Path

import pytest

import tasks.records as records
from tasks.config import IngestConfig
from tasks.shards import DropLog, ShardResult
from tasks.warc import gzip_members
from tasks.warc_fast import parse_member
from tests.bad_inputs import write_bad_corpus
from tests.bombs import write_bomb_warcs
from tests.conftest import shared_path
from tests.helpers import page, write_cc2008_arc, write_mixed_warc, write_pages_warc


def read(path: Path, monkeypatch, *, fast: bool, **cfg):
    """Everything ingest makes of one archive: documents, drop rows, notes and documents read."""
    with monkeypatch.context() as m:
        if not fast:
            m.setattr(records, "parse_member", lambda data: None)
        drops, result = DropLog(), ShardResult("unit")
        with open(path, "rb") as fh:
            docs = list(records.ArchiveReader(IngestConfig(inputs=[str(path)], **cfg)).records(
                fh, str(path), drops, result))
    return docs, drops.rows, result.notes, result.docs_in


def fast_members(path: Path) -> tuple[int, int]:
    """(members FastWARC takes, members) of a gzip archive."""
    with open(path, "rb") as fh:
        members = [m for m in gzip_members(fh) if not m.damage]
    return sum(parse_member(m.data) is not None for m in members), len(members)


def assert_same(path: Path, monkeypatch, **cfg) -> None:
    fast, tolerant = read(path, monkeypatch, fast=True, **cfg), read(path, monkeypatch, fast=False, **cfg)
    assert fast[3] == tolerant[3] and fast[2] == tolerant[2], path
    assert fast[1] == tolerant[1], path
    assert fast[0] == tolerant[0], path


def test_every_shared_crawl_file_reads_the_same_and_goes_fast(monkeypatch):
    warc = shared_path("corpora", "warc")
    files = sorted(p for p in warc.rglob("*") if p.is_file() and ".warc" in p.name or p.suffix == ".arc")
    assert len(files) >= 19
    for path in files:
        assert_same(path, monkeypatch)
        if path.name.endswith(".gz"):
            took, members = fast_members(path)
            assert took == members, path  # every member of these real crawls is a clean one


def test_the_bad_input_corpus_and_the_bombs_read_the_same(tmp_path, monkeypatch):
    files = list(write_bad_corpus(tmp_path / "bad").values())
    bombs = write_bomb_warcs(tmp_path / "bombs")
    files += [bombs["br"], bombs["gzip"], bombs["gzip2"], write_mixed_warc(tmp_path / "m.warc.gz"),
              write_mixed_warc(tmp_path / "m.warc", gzip_records=False), write_pages_warc(tmp_path / "p.warc.gz", 30),
              write_cc2008_arc(tmp_path / "old.arc", [page(f"Old {i}").encode() for i in range(3)])]
    for path in files:
        assert_same(path, monkeypatch, max_payload_bytes=20_000)
    took, members = fast_members(tmp_path / "m.warc.gz")
    assert 0 < took == members


def member(warc_headers: str, block: bytes, tail: bytes = b"\r\n\r\n", version: bytes = b"WARC/1.0") -> bytes:
    head = version + b"\r\n" + warc_headers.replace("\n", "\r\n").encode("latin-1")
    if "Content-Length" not in warc_headers:
        head += b"Content-Length: %d\r\n" % len(block)
    return gzip.compress(head + b"\r\n" + block + tail)


HTML = page("Quirks").encode()


def http(status: bytes = b"HTTP/1.1 200 OK", headers: bytes = b"Content-Type: text/html; charset=utf-8\r\n",
         body: bytes = HTML) -> bytes:
    return status + b"\r\n" + headers + b"\r\n" + body


def response(uri: str, block: bytes, content_type: str = "application/http; msgtype=response", extra: str = "",
             **kw) -> bytes:
    return member(f"WARC-Type: response\nWARC-Record-ID: <urn:uuid:{abs(hash((uri, block))):x}>\n"
                  f"WARC-Target-URI: {uri}\nWARC-Date: 2024-05-01T12:00:00Z\nContent-Type: {content_type}\n{extra}",
                  block, **kw)


QUIRKS = {  # name -> (gzip member, whether FastWARC takes it)
    "clean": (response("http://q.example.org/clean", http()), True),
    "wget brackets": (response("<http://q.example.org/wget>", http()), True),
    "space in uri": (response("http://q.example.org/a b", http()), True),
    "WARC/0.18": (response("http://q.example.org/old", http(), version=b"WARC/0.18"), True),
    "WARC/1.1": (response("http://q.example.org/new", http(), version=b"WARC/1.1"), True),
    "no reason phrase": (response("http://q.example.org/noreason", http(b"HTTP/1.1 200")), True),
    "HTTP/2": (response("http://q.example.org/h2", http(b"HTTP/2 200")), True),
    "404": (response("http://q.example.org/404", http(b"HTTP/1.1 404 Not Found")), True),
    "folded header": (response("http://q.example.org/fold", http(
        headers=b"Content-Type: text/html;\r\n charset=latin1\r\n", body="Café".encode("latin-1") * 50)), True),
    "duplicate content-type": (response("http://q.example.org/dup", http(
        headers=b"Content-Type: image/png\r\nContent-Type: text/html\r\n")), True),
    "latin-1 header bytes": (response("http://q.example.org/latin", http(
        headers=b"Content-Type: text/html; charset=\xe9\r\n")), True),
    "chunked": (response("http://q.example.org/chunked", http(
        headers=b"Content-Type: text/html\r\nTransfer-Encoding: chunked\r\n",
        body=b"%x\r\n" % len(HTML) + HTML + b"\r\n0\r\n\r\n")), True),
    "gzip body": (response("http://q.example.org/gz", http(
        headers=b"Content-Type: text/html\r\nContent-Encoding: gzip\r\n", body=gzip.compress(HTML))), True),
    "html without http block": (response("http://q.example.org/wayback", HTML, content_type="text/html"), True),
    "empty response": (response("http://q.example.org/empty", b""), True),
    "dns record": (response("dns:q.example.org", b"q.example.org. 300 IN A 127.0.0.1\n",
                            content_type="text/dns"), True),
    "no WARC-Type": (member("WARC-Target-URI: http://q.example.org/untyped\n", http()), True),
    "revisit": (member("WARC-Type: revisit\nWARC-Target-URI: http://q.example.org/r\n", b""), True),
    "bare LF http block": (response("http://q.example.org/lf", http().replace(b"\r\n", b"\n")), False),
    "lowercase status": (response("http://q.example.org/lower", http(b"http/1.1 200 OK")), False),
    "no status line": (response("http://q.example.org/nostatus", b"Content-Type: text/html\r\n\r\n" + HTML), False),
    "length too long": (response("http://q.example.org/long", http(), extra="Content-Length: 99999\n"), False),
    "length too short": (response("http://q.example.org/short", http(), extra="Content-Length: 60\n"), False),
    "length not a number": (response("http://q.example.org/nan", http(), extra="Content-Length: 1_2\n"), False),
    "two records in a member": (gzip.decompress(response("http://q.example.org/one", http())) +
                                gzip.decompress(response("http://q.example.org/two", http())), False),
    "bytes after the record": (response("http://q.example.org/tail", http(), tail=b"\r\n\r\njunk\r\n"), False),
    "blank lines first": (b"\r\n" + gzip.decompress(response("http://q.example.org/lead", http())), False),
    "record inside the payload": (response("http://q.example.org/outer", http(body=HTML + b"\r\n\r\n" + gzip.decompress(
        response("http://q.example.org/inner", http())))), True),
    "WARC/2.0": (response("http://q.example.org/v2", http(), version=b"WARC/2.0"), False),
}


@pytest.mark.parametrize("name", list(QUIRKS))
def test_a_quirky_member_reads_the_same_either_way(tmp_path, monkeypatch, name):
    data, goes_fast = QUIRKS[name]
    if not data.startswith(b"\x1f\x8b"):
        data = gzip.compress(data)
    assert (parse_member(gzip.decompress(data)) is not None) == goes_fast
    path = tmp_path / "q.warc.gz"
    path.write_bytes(QUIRKS["clean"][0] + data + gzip.compress(gzip.decompress(QUIRKS["404"][0])))
    assert_same(path, monkeypatch)
    docs = read(path, monkeypatch, fast=True)[0]
    assert "http://q.example.org/clean" in {d["url"] for d in docs}  # the file reads on past the quirk


def test_fast_records_read_like_warcio_ones():
    rec = parse_member(gzip.decompress(QUIRKS["wget brackets"][0]))
    assert rec.rec_headers.get_header("WARC-Target-URI") == "http://q.example.org/wget"
    assert rec.rec_headers.get_header("warc-type") == "response" and rec.format == "warc"
    assert rec.http_headers.statusline == "200 OK" and rec.http_headers.get_statuscode() == "200"
    assert rec.http_headers.get_header("content-type") == "text/html; charset=utf-8"
    assert rec.raw_stream.read() == HTML
    assert parse_member(gzip.decompress(QUIRKS["html without http block"][0])).http_headers is None
    assert parse_member(b"not a record") is None and parse_member(io.BytesIO(b"").read()) is None


def test_a_record_inside_a_fast_payload_is_counted_and_read_again(tmp_path, monkeypatch):
    path = tmp_path / "overrun.warc.gz"
    path.write_bytes(QUIRKS["record inside the payload"][0])
    docs, drops, _, docs_in = read(path, monkeypatch, fast=True)
    assert [d["reason"] for d in drops] == ["content_length_overrun"]
    assert [d["url"] for d in docs] == ["http://q.example.org/inner"] and docs_in == 2
