"""Builders for test inputs: small WARC and ARC files written with warcio, record by record."""
from __future__ import annotations

import gzip
import io
import uuid
from pathlib import Path

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

import brotli

PAGE = ("<html><head><title>{title}</title></head><body><nav>Home | About | Contact</nav>"
        "<article><h1>{title}</h1>{paras}</article><footer>Copyright 2024</footer></body></html>")


def page(title: str, n_paras: int = 4) -> str:
    para = ("<p>The committee reviewed the proposal for the new library building on {t} and agreed that the "
            "reading rooms should stay open late during the examination weeks, because students had asked "
            "for quiet places to work in the evenings.</p>")
    return PAGE.format(title=title, paras="".join(para.format(t=f"{title} day {i}") for i in range(n_paras)))


def response(writer: WARCWriter, url: str, body: bytes, *, content_type: str = "text/html; charset=utf-8",
             status: str = "200 OK", extra_headers: list[tuple[str, str]] | None = None,
             warc_date: str | None = "2024-05-01T12:00:00Z", record_id: str | None = None) -> None:
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))] + (extra_headers or [])
    http = StatusAndHeaders(status, headers, protocol="HTTP/1.1")
    warc_headers = {"WARC-Date": warc_date} if warc_date else {}
    if record_id:  # else warcio draws a random one (and the doc_id, so the validation split, with it)
        warc_headers["WARC-Record-ID"] = record_id
    rec = writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=http,
                                    warc_headers_dict=warc_headers)
    writer.write_record(rec)


def request(writer: WARCWriter, url: str) -> None:
    http = StatusAndHeaders(f"GET {url} HTTP/1.1", [("Host", "example.com")], is_http_request=True)
    writer.write_record(writer.create_warc_record(url, "request", payload=io.BytesIO(b""), http_headers=http))


def write_mixed_warc(path: Path, *, gzip_records: bool = True) -> Path:
    """One of each case the ingest stage must keep or skip, in one file."""
    with open(path, "wb") as fh:
        w = WARCWriter(fh, gzip=gzip_records)
        w.write_record(w.create_warcinfo_record(path.name, {"software": "crucible-tests"}))
        request(w, "http://example.com/a")
        response(w, "http://example.com/a", page("Alpha").encode())
        response(w, "http://example.com/latin", page("Café ñandú").encode("latin-1"),
                 content_type="text/html; charset=ISO-8859-1")
        response(w, "http://example.com/gz", gzip.compress(page("Gzipped").encode()),
                 extra_headers=[("Content-Encoding", "gzip")])
        response(w, "http://example.com/br", brotli.compress(page("Brotli").encode()),
                 extra_headers=[("Content-Encoding", "br")])
        response(w, "http://example.com/img.png", b"\x89PNG\r\n\x1a\n" + bytes(200), content_type="image/png")
        response(w, "http://example.com/missing", b"<html>not here</html>", status="404 Not Found")
        response(w, "http://example.com/big", page("Big", 400).encode())
        response(w, "http://example.com/nodate", page("No date").encode(), warc_date="null")
        rec = w.create_revisit_record("http://example.com/a", digest="sha1:AAAA", refers_to_uri="http://example.com/a",
                                      refers_to_date="2024-05-01T12:00:00Z")
        w.write_record(rec)
        w.write_record(w.create_warc_record("http://example.com/a", "metadata", payload=io.BytesIO(b"via: x"),
                                            warc_content_type="application/warc-fields"))
    return path


def write_pages_warc(path: Path, n: int, *, start: int = 0, paras: int = 4) -> Path:
    with open(path, "wb") as fh:
        w = WARCWriter(fh, gzip=True)
        for i in range(start, start + n):
            response(w, f"http://site{i % 7}.example.org/page/{i}", page(f"Page number {i}", paras).encode())
    return path


def arc_record(url: str, body: bytes, date: str = "20080509190241") -> bytes:
    http = b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + body
    return f"{url} 10.0.0.1 {date} text/html {len(http)}\n".encode() + http + b"\n"


def write_cc2008_arc(path: Path, bodies: list[bytes]) -> Path:
    """An ARC file laid out like Common Crawl's 2008 ones: the filedesc length swallows the separator line."""
    desc = b"1 0 CommonCrawl\nURL IP-address Archive-date Content-type Archive-length\n\n"
    out = f"filedesc://{path.name} 0.0.0.0 20080619093439 text/plain {len(desc)}\n".encode() + desc
    for i, body in enumerate(bodies):
        out += arc_record(f"http://arc.example.com/{i}", body)
    path.write_bytes(out)
    return path


def write_dataset(directory: Path, schema, rows: list[dict], *, stage: str = "upstream",
                  shard_docs: int = 1000) -> Path:
    """A sealed dataset of ``rows`` (missing columns are null), as an upstream stage would have left it."""
    from tasks.shards import DropLog, ShardResult, ShardWriter, finish_unit, write_dataset_manifest

    results = []
    for start in range(0, max(len(rows), 1), shard_docs):
        unit = f"part-{start // shard_docs:05d}"
        w = ShardWriter(directory, unit, schema, max_docs=shard_docs, max_bytes=10**9)
        for row in rows[start:start + shard_docs]:
            w.add(row)
        results.append(finish_unit(directory, ShardResult(unit), w, DropLog()))
    write_dataset_manifest(directory, stage, "test", results)
    return directory


def run_stage(stage, input_dir: Path, out_dir: Path, key: str = "test-key"):
    """A Parquet-writing stage's own ``execute`` on a sealed upstream dataset, in this process (StageContext, no
    Prefect); returns (kept rows, dropped rows, the reduce step's facts or None)."""
    import json

    import pyarrow.parquet as pq

    from tasks.shards import read_dataset_manifest
    from tasks.sharded import ReduceStage
    from tasks.stage import Input, StageContext

    out_dir = Path(out_dir)
    ctx = StageContext(out_dir.parent, log=lambda message: None)
    stage.execute(ctx, Input("test-input", ["upstream"], {"uri": str(input_dir)}), out_dir, key)
    manifest = read_dataset_manifest(out_dir)
    kept = [r for f in manifest.files for r in pq.read_table(out_dir / f.name).to_pylist()]
    dropped = [r for name in manifest.drops_files for r in pq.read_table(out_dir / name).to_pylist()]
    facts = None
    if isinstance(stage, ReduceStage):
        facts = json.loads((ReduceStage.scratch_dir(out_dir) / "reduce.json").read_text())
    return kept, dropped, facts


TINY_TRAIN = {"model": {"depth": 1, "d_model": 32}, "seq_len": 32, "batch_size": 2, "max_steps": 3, "eval_every": 3,
              "checkpoint_every": 2, "warmup_steps": 1}  # a train section that runs in seconds on CPU


def prose(seed: int, sentences: int = 14) -> str:
    """Paragraphs of plain English sentences that pass the quality rules and differ from page to page."""
    import random

    rng = random.Random(seed)
    nouns = ("river harbour council teacher garden window market letter engine village bridge winter doctor "
             "kitchen forest station library painter soldier orchard").split()
    verbs = "opened carried watched painted repaired counted followed answered visited described".split()
    extras = "slowly quietly early together carefully again later gladly often rarely".split()
    out = []
    for _ in range(sentences):
        out.append(f"The {rng.choice(nouns)} of the {rng.choice(nouns)} {rng.choice(verbs)} the "
                   f"{rng.choice(nouns)} {rng.choice(extras)}, and the {rng.choice(nouns)} {rng.choice(verbs)} "
                   f"it with the {rng.choice(nouns)}.")
    return "\n\n".join(" ".join(out[i:i + 3]) for i in range(0, len(out), 3))


def prose_html(text: str) -> bytes:
    paras = "".join(f"<p>{p}</p>" for p in text.split("\n\n"))
    return f"<html><head><title>t</title></head><body><article>{paras}</article></body></html>".encode()


def write_prose_warc(path: Path, n: int) -> Path:
    """n pages of distinct prose that pass the quality rules and dedup, so a pipeline has documents to train on. Their
    record IDs (so doc_ids, so the validation split) are the same every time."""
    with open(path, "wb") as fh:
        w = WARCWriter(fh, gzip=True)
        for i in range(n):
            url = f"http://site{i % 3}.example.org/prose/{i}"
            response(w, url, prose_html(prose(i, 30)), record_id=f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, url)}>")
    return path
