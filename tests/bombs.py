"""Decompression bombs and oversized inputs, and a peak-memory probe that runs each through real Crucible code in
a fresh process:

    python -m tests.bombs ingest FILE.warc.gz ...      # prints {"drops": ..., "notes": ..., "peak_rss_mib": ...}
    python -m tests.bombs crawl URL [URL ...]          # crawls each URL (a LocalSite) and prints the outcomes
    python -m tests.bombs benchmarks DIR               # loads a benchmark directory

Each payload is small on the wire and 1 GiB (or 100 MB) once decoded; the bodies are made once per process.
"""
from __future__ import annotations

import functools
import json
import resource
import sys
import tempfile
import zlib
from pathlib import Path

import brotli

GIB = 2**30
_CHUNK = b" " * 2**24


@functools.lru_cache(maxsize=None)
def gzip_bomb() -> bytes:
    """1 GiB of spaces as one gzip stream: about 1 MB."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    return b"".join([c.compress(_CHUNK) for _ in range(GIB // len(_CHUNK))] + [c.flush()])


@functools.lru_cache(maxsize=None)
def brotli_bomb() -> bytes:
    """1 GiB of HTML-looking text as brotli: a few hundred bytes to a few KB."""
    c = brotli.Compressor(quality=5)
    chunk = b"<div>bomb</div>" * (2**24 // 15)
    parts = [c.process(chunk) for _ in range(GIB // len(chunk))]
    return b"".join(parts + [c.finish()])


@functools.lru_cache(maxsize=None)
def double_gzip_bomb() -> bytes:
    """The gzip bomb gzipped again (Content-Encoding: gzip, gzip): under 2 KB for 1 GiB."""
    return zlib.compress(gzip_bomb(), 9, wbits=31)


def write_bomb_warcs(directory: Path) -> dict[str, Path]:
    """One WARC per bomb: br, gzip and 'gzip, gzip' Content-Encodings, and a WARC record whose own gzip member
    inflates to 1 GiB; each file also holds one good page, which must survive."""
    from warcio.warcwriter import WARCWriter

    from tests.helpers import prose, prose_html, response

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, encoding, body in [("br", "br", brotli_bomb()), ("gzip", "gzip", gzip_bomb()),
                                 ("gzip2", "gzip, gzip", double_gzip_bomb())]:
        path = d / f"bomb-{name}.warc.gz"
        with open(path, "wb") as fh:
            w = WARCWriter(fh, gzip=True)
            response(w, f"http://bomb.example.org/{name}", body, extra_headers=[("Content-Encoding", encoding)])
            response(w, f"http://good.example.org/{name}", prose_html(prose(700 + len(name), 20)))
        files[name] = path
    files["member"] = _member_bomb(d / "bomb-member.warc.gz")
    return files


def _member_bomb(path: Path) -> Path:
    """A record-per-member WARC whose first record is 1 GiB uncompressed, then a good record."""
    from warcio.warcwriter import WARCWriter

    from tests.helpers import prose, prose_html, response

    http = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n"
    header = ("WARC/1.1\r\nWARC-Type: response\r\nWARC-Record-ID: <urn:uuid:00000000-0000-4000-8000-000000000b0b>\r\n"
              "WARC-Target-URI: http://bomb.example.org/member\r\nWARC-Date: 2024-05-01T12:00:00Z\r\n"
              "Content-Type: application/http; msgtype=response\r\n"
              f"Content-Length: {len(http) + GIB}\r\n\r\n").encode()
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    with open(path, "wb") as fh:
        fh.write(c.compress(header + http))
        for _ in range(GIB // len(_CHUNK)):
            fh.write(c.compress(_CHUNK))
        fh.write(c.compress(b"\r\n\r\n") + c.flush())
        response(WARCWriter(fh, gzip=True), "http://good.example.org/member", prose_html(prose(777, 20)))
    return path


def peak_rss_mib() -> float:
    """This process's peak resident memory. VmHWM belongs to the address space exec made; getrusage's ru_maxrss
    would also carry the parent's size at fork (Linux keeps it across exec)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _ingest(paths: list[str]) -> dict:
    import pyarrow.parquet as pq

    from tasks.config import IngestConfig
    from tasks.ingest import IngestStage
    from tasks.sharded import run_unit

    stage = IngestStage(IngestConfig(inputs=paths))
    out = Path(tempfile.mkdtemp(prefix="bomb-ingest-"))
    drops, notes, urls = {}, {}, []
    for unit in stage.plan(stage.sources()):
        res = run_unit(stage, unit, out)
        for k, v in res.drops.items():
            drops[k] = drops.get(k, 0) + v
        for k, v in res.notes.items():
            notes[k] = notes.get(k, 0) + v
        urls += [r["url"] for f in res.files for r in pq.read_table(out / f.name, columns=["url"]).to_pylist()]
    return {"drops": drops, "notes": notes, "urls": sorted(urls)}


def _crawl(urls: list[str]) -> dict:
    from urllib.parse import urlsplit

    from tasks.config import CrawlConfig
    from tasks.crawl import CrawlStage

    netloc = urlsplit(urls[0]).netloc
    cfg = CrawlConfig(seeds=urls, private_hosts=[netloc], delay_s=0, timeout_s=5, retries=0, max_depth=0,
                      max_page_bytes=5 * 2**20)
    result = CrawlStage(cfg).run(Path(tempfile.mkdtemp(prefix="bomb-crawl-")), {})
    return {"outcomes": {r["url"]: [r["outcome"], r["detail"]] for r in result.log_rows()}}


def _benchmarks(directory: str) -> dict:
    """Build the decontaminate index over a benchmark directory, as the stage does."""
    from tasks.evalsets import BenchmarkError, benchmark_files
    from tasks.decontaminate import ItemIndex

    try:
        index = ItemIndex.build(benchmark_files(Path(directory)), 13, 8)
        return {"items": dict(index.items)}
    except BenchmarkError as err:
        return {"error": str(err)[:500]}


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    result = {"ingest": _ingest, "crawl": _crawl, "benchmarks": _benchmarks}[mode](
        args[0] if mode == "benchmarks" else args)
    result["peak_rss_mib"] = round(peak_rss_mib(), 1)
    print(json.dumps(result))
