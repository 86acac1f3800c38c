"""A corpus of broken crawl data, generated: every way a WARC or a page is known to go wrong, a few good pages
among them, one file per kind so a failure names its cause."""
from __future__ import annotations

import gzip
import os
import random
import zlib
from pathlib import Path

from warcio.warcwriter import WARCWriter

from tests.helpers import page, prose, prose_html, response


def _warc(path: Path, write, *, gzipped: bool = True) -> Path:
    with open(path, "wb") as fh:
        write(WARCWriter(fh, gzip=gzipped))
    return path


def _good(w: WARCWriter, tag: str, n: int = 2) -> None:
    for i in range(n):
        response(w, f"http://good.example.org/{tag}/{i}", prose_html(prose(zlib.crc32(tag.encode()) % 1000 + i, 20)))


def write_bad_corpus(directory: Path) -> dict[str, Path]:
    """Write the corpus into ``directory``; returns name -> file."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}

    # a gzip WARC cut off in the middle of a record
    full = _warc(d / "truncated.warc.gz", lambda w: (_good(w, "truncated", 4)))
    data = full.read_bytes()
    full.write_bytes(data[: int(len(data) * 0.7)])
    files["truncated"] = full

    # garbage bytes between gzip members, and at the end
    def garbage(w: WARCWriter) -> None:
        _good(w, "garbage-a")
        w.out.write(os.urandom(777))
        _good(w, "garbage-b")
        w.out.write(b"\x00" * 100 + b"not a warc record\r\n\r\n")
    files["garbage"] = _warc(d / "garbage.warc.gz", garbage)

    # uncompressed records whose Content-Length lies: too long, too short, not a number
    def lengths(w: WARCWriter) -> None:
        _good(w, "lengths-a")
    plain = _warc(d / "lengths.warc", lengths, gzipped=False)
    body = page("Lying length").encode()
    http = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 99\r\n\r\n" + body
    for declared in (str(len(http) + 5000), str(len(http) // 2), "twelve"):
        plain.write_bytes(plain.read_bytes() + (
            "WARC/1.0\r\nWARC-Type: response\r\nWARC-Record-ID: <urn:uuid:%s>\r\n"
            "WARC-Target-URI: http://lies.example.org/%s\r\nWARC-Date: 2024-05-01T12:00:00Z\r\n"
            "Content-Type: application/http; msgtype=response\r\nContent-Length: %s\r\n\r\n"
            % (random.Random(declared).getrandbits(64), declared, declared)).encode() + http + b"\r\n\r\n")
    with open(plain, "ab") as fh:
        _good(WARCWriter(fh, gzip=False), "lengths-b")
    files["lengths"] = plain

    # dates: null, invalid, missing, a far-future one
    def dates(w: WARCWriter) -> None:
        for i, date in enumerate(["null", "not-a-date", None, "2999-13-45T99:99:99Z"]):
            response(w, f"http://dates.example.org/{i}", prose_html(prose(300 + i, 20)), warc_date=date)
    files["dates"] = _warc(d / "dates.warc.gz", dates)

    # charsets: wrong, unknown, missing, and a BOM that disagrees with the header
    def charsets(w: WARCWriter) -> None:
        text = prose_html(prose(400, 20)).decode().replace("The", "Thé")
        response(w, "http://cs.example.org/latin-said-utf8", text.encode("latin-1"),
                 content_type="text/html; charset=utf-8")
        response(w, "http://cs.example.org/utf8-said-sjis", text.encode(), content_type="text/html; charset=shift_jis")
        response(w, "http://cs.example.org/unknown", text.encode(), content_type="text/html; charset=x-no-such")
        response(w, "http://cs.example.org/missing", text.encode("cp1252"), content_type="text/html")
        response(w, "http://cs.example.org/bom", b"\xff\xfe" + text.encode("utf-16-le"),
                 content_type="text/html; charset=utf-8")
    files["charsets"] = _warc(d / "charsets.warc.gz", charsets)

    # binary bodies that say they are HTML
    def binary(w: WARCWriter) -> None:
        rng = random.Random(7)
        response(w, "http://bin.example.org/random", bytes(rng.getrandbits(8) for _ in range(20000)))
        response(w, "http://bin.example.org/png", b"\x89PNG\r\n\x1a\n" + bytes(rng.getrandbits(8) for _ in range(5000)))
        response(w, "http://bin.example.org/gzip-twice", gzip.compress(gzip.compress(page("Twice").encode())),
                 extra_headers=[("Content-Encoding", "gzip")])
        response(w, "http://bin.example.org/bad-gzip", b"\x1f\x8b\x08\x00garbage",
                 extra_headers=[("Content-Encoding", "gzip")])
    files["binary"] = _warc(d / "binary.warc.gz", binary)

    # a 50 MB page, and one nested 100,000 elements deep
    def large(w: WARCWriter) -> None:
        para = b"<p>" + b"A very long page that goes on and on about nothing in particular. " * 20 + b"</p>\n"
        response(w, "http://large.example.org/50mb",
                 b"<html><body>" + para * (50 * 2**20 // len(para)) + b"</body></html>")
        deep = "<html><body>" + "<div>" * 100_000 + prose(500, 20) + "</div>" * 100_000 + "</body></html>"
        response(w, "http://large.example.org/deep", deep.encode())
        _good(w, "large")
    files["large"] = _warc(d / "large.warc.gz", large)

    # empty documents: no body, an empty page, whitespace, markup with no text
    def empty(w: WARCWriter) -> None:
        for i, body in enumerate([b"", b"<html></html>", b"   \n\t  ", b"<html><body><div><span></span></div>"
                                  b"<script>var x = 1;</script></body></html>"]):
            response(w, f"http://empty.example.org/{i}", body)
        _good(w, "empty")
    files["empty"] = _warc(d / "empty.warc.gz", empty)
    return files


def broken_benchmark(directory: Path) -> Path:
    """A benchmark file in the CORE format whose line 2 is JSON cut short (the rest are good)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / "copa.jsonl"
    good = '{"query": "The glass fell off the table, therefore", "choices": ["it shattered.", "it sang."], "gold": 0}'
    path.write_text("\n".join([good, good[:40], good]) + "\n")
    return path
