"""The whole data path, ingest -> token shards, through Prefect, against the sum of the bare library calls.

    python benchmarks/data_path.py                 # the real archives in ../shared/corpora/warc, 1 and 2 workers
    python benchmarks/data_path.py --repeats 3 --copies 2
    python benchmarks/data_path.py --only same-files   # ingest -> quality against datatrove's figure

"stage": `pipeline_flow` over ingest, extract, language, quality, dedup, decontaminate and tokenize, exactly as
`crucible run --from ingest --to tokenize` runs it (Prefect tasks on the thread runner, Parquet shards, manifests,
drop logs, the warehouse, the local Prefect server it starts: flows/server.py, without Prefect's services), in a
fresh work directory each time; every run starts its own extraction children and language/quality processes
(tasks/extractors.py, tasks/docpool.py), as a `crucible run` does. "bare": the library calls that do the same
document work, chained in plain loops: warcio (iterate, read each HTML response), ``trafilatura.extract`` (its
text only, the stage's settings), langid, datasketch MinHash.bulk over word 5-grams, tokenizers BPE training and
tiktoken encoding, on the documents each step keeps. The stage does more than the bare chain (the quality rules, the
duplicate clustering, the benchmark n-gram lookup, which have no library floor), so the ratio bounds its overhead
from above. Stock warcio stops at the first damaged record of a file, so the bare chain reads fewer documents
than ingest does: the ratio is of documents per second. Two bare workers are a process pool over the documents.
Runs alternate; figures are medians. Each stage run also reports the CPU seconds of every process it used (the
Prefect server, extraction children and language/quality workers with it): over the machine's cores they bound
how fast two workers can be, whatever they overlap. Beside them, the share of both cores that two workers kept busy,
the share "two workers >= 1.8x one" would need, and how much faster two processes are than one here on work with
no serial part at all (the bare pages through trafilatura, page by page): the machine's own ceiling. And the time
of a rerun whose every stage is a cache hit.

"same files": ingest -> extract -> language -> quality through Prefect on the 17 WARC/WAT/WET files (not the two
ARC files, which datatrove cannot read), at 1 and 2 workers, against datatrove 0.10.1's WarcReader -> Trafilatura ->
GopherQualityFilter -> JsonlWriter on the same files, run alternately in this process when datatrove is importable
(it is not a dependency: install it beside Crucible, e.g. ``python -m venv --system-site-packages /tmp/dt &&
/tmp/dt/bin/pip install datatrove==0.10.1 python-magic faust-cchardet spacy``, and run this script with that
python); without it, against the documents/s it measured here before (``DATATROVE``). The ratio is of wall time on
the same files: each counts its documents its own way (datatrove reads every response that libmagic calls HTML).
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import io
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows import configure_prefect  # noqa: E402

WARC = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "warc"
STAGES = ["ingest", "extract", "language", "quality", "dedup", "decontaminate", "tokenize"]
# Where datatrove is not installed: its documents read per second (WarcReader -> Trafilatura -> GopherQualityFilter
# -> JsonlWriter, datatrove 0.10.1 with spaCy) on the 17 WARC/WAT/WET files of ../shared/corpora/warc, measured by
# same_files on this 2-core machine just after midnight on 2026-12-04, a quiet hour (19.8 / 27.6 late on 2026-12-03;
# 16.0 / 21.9 and 11.2 / 14.6 at busier hours; issue 22's 26.9 / 34.2 could not be reproduced here). The machine's
# load moves it: install datatrove to compare side by side.
DATATROVE = {1: 20.3, 2: 28.6}


def inputs(copies: int, tmp: Path) -> list[str]:
    files = sorted(f for p in ("*.warc", "*.warc.gz", "*.arc") for f in glob.glob(str(WARC / "**" / p), recursive=True))
    if copies == 1:
        return files
    out = []
    for c in range(copies):  # the same archives under other names: more work, same kind
        for i, f in enumerate(files):
            dst = tmp / "copies" / f"{c}-{i}-{Path(f).name}"
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(Path(f).read_bytes())
            out.append(str(dst))
    return out


def _pages(path: str) -> list[tuple[str, str]]:
    from tasks.ingest import decode_html
    from tasks.warc import read_payload
    from warcio.archiveiterator import ArchiveIterator

    pages = []
    with open(path, "rb") as fh, contextlib.redirect_stderr(io.StringIO()):  # warcio's warnings on damaged records
        try:
            for rec in ArchiveIterator(fh, arc2warc=True):
                if rec.rec_type != "response" or rec.http_headers is None:
                    continue
                if "html" not in (rec.http_headers.get_header("Content-Type") or ""):
                    continue
                body = read_payload(rec, 10 * 2**20)
                if body.strip():
                    pages.append((decode_html(body, None)[0], rec.rec_headers.get_header("WARC-Target-URI")))
        except Exception:  # stock warcio stops at the first damaged record; the stage goes on (its extra work)
            pass
    return pages


def _extract(page: tuple[str, str]) -> str | None:
    """Bare ``trafilatura.extract`` of one (html, url) page, with the stage's settings."""
    import trafilatura

    return trafilatura.extract(page[0], url=page[1], include_comments=False)


def _document(page: tuple[str, str]):
    """extract -> language -> MinHash for one page; the text if it is kept."""
    from datasketch import MinHash
    from tasks.language import classify

    text = _extract(page)
    if not text:
        return None
    lang, _score = classify(text)
    words = text.split()
    grams = [" ".join(words[i:i + 5]).encode() for i in range(max(1, len(words) - 4))]
    MinHash.bulk([grams], num_perm=112)
    return text if lang == "en" else None


def bare(files: list[str], workers: int, vocab: int) -> tuple[float, int]:
    from tasks.tokenizer import TiktokenEncoder, train_bpe

    t0 = time.perf_counter()
    if workers == 1:
        pages = [p for f in files for p in _pages(f)]
        texts = [_document(p) for p in pages]
    else:
        with ProcessPoolExecutor(workers) as ex:
            pages = [p for ps in ex.map(_pages, files) for p in ps]
            texts = list(ex.map(_document, pages, chunksize=4))
    kept = [t for t in texts if t]
    tok = train_bpe(kept, vocab, ["<|bos|>"])
    TiktokenEncoder(tok).encode_batch(kept)
    return time.perf_counter() - t0, len(pages)


def parallel_ceiling(files: list[str], repeats: int) -> float:
    """How much faster two processes are than one on this machine for work with no serial part at all: the bare
    chain's pages through ``trafilatura.extract``, costliest first, one page at a time, on a pool of 1 and then 2
    processes already started (alternating, median). Two workers of the pipeline cannot scale better than this."""
    pages = sorted((p for f in files for p in _pages(f)), key=lambda p: -len(p[0]))
    pools = {n: ProcessPoolExecutor(n) for n in (1, 2)}
    seconds: dict[int, list[float]] = {1: [], 2: []}
    try:
        for pool in pools.values():  # started and trafilatura imported before anything is timed
            list(pool.map(_extract, pages[-4:]))
        for _ in range(repeats):
            for n, pool in pools.items():
                t0 = time.perf_counter()
                list(pool.map(_extract, pages, chunksize=1))
                seconds[n].append(time.perf_counter() - t0)
    finally:
        for pool in pools.values():
            pool.shutdown()
    return statistics.median(seconds[1]) / statistics.median(seconds[2])


def cpu_seconds() -> float:
    """CPU seconds this process and every process under it have used (the Prefect server, extraction children,
    language/quality workers), those ended and waited for included."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:4])  # user, system, and the ended children's
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:  # ended meanwhile
            pass
    return total


def stage(files: list[str], workers: int, tmp: Path, n: int, stages: list[str] = STAGES,
          measure: dict[str, float] | None = None) -> tuple[float, int]:
    """``stages`` through Prefect in a fresh work directory: (seconds, documents ingested). With ``measure``,
    also the CPU seconds it took (every process) and the seconds of a rerun of the same config, all cache hits."""
    from flows.pipeline import pipeline_flow
    from tasks import docpool, extractors
    from tasks.config import parse_config
    from warehouse.lineage import Warehouse

    docpool.shutdown()  # each run starts its worker processes, as a `crucible run` does
    extractors.shutdown()

    cfg = parse_config({"paths": {"work_dir": str(tmp / f"work-{len(stages)}-{workers}-{n}")},
                        "runner": {"kind": "threads", "workers": workers},
                        # smaller units balance two workers better on 338 pages (50-page units are 7, and one
                        # worker idles while the other runs the 7th), but 20-page ones made the whole run slower
                        # here (1.12x -> 1.02x datatrove at 1 worker; Prefect's task runs cost only ~11 ms a unit)
                        "ingest": {"inputs": files, "shard_max_docs": 200},
                        "extract": {"shard_max_docs": 50}, "quality": {"c4_drop_curly_bracket": False}})
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    run_id = pipeline_flow(cfg, stages, "manual", None)
    seconds = time.perf_counter() - t0
    if measure is not None:
        measure["cpu"] = cpu_seconds() - cpu0
        docpool.shutdown()  # as a new `crucible run` would find it: no worker processes yet
        extractors.shutdown()
        t1 = time.perf_counter()
        pipeline_flow(cfg, stages, "manual", None)
        measure["rerun"] = time.perf_counter() - t1
    runs = Warehouse(cfg.warehouse_path).stage_runs(run_id)
    if measure is not None:
        measure["extract"] = next(s["seconds"] for s in runs if s["stage"] == "extract")
    return seconds, next(s["docs_out"] for s in runs if s["stage"] == "ingest")


def datatrove_run(files: list[str], workers: int, tmp: Path, n: int) -> tuple[float, int] | None:
    """datatrove's WarcReader -> Trafilatura -> GopherQualityFilter -> JsonlWriter on the same files, its defaults
    (one task per file): (seconds, documents its reader read), or None where datatrove is not importable."""
    try:
        from datatrove.executor import LocalPipelineExecutor
        from datatrove.pipeline.extractors import Trafilatura
        from datatrove.pipeline.filters import GopherQualityFilter
        from datatrove.pipeline.readers import WarcReader
        from datatrove.pipeline.writers import JsonlWriter
        from loguru import logger
    except ImportError:
        return None
    import json
    import os

    logger.remove()  # its per-task tables go to stderr; the figures are read from its stats file
    src = tmp / "datatrove-in"
    if not src.exists():  # one folder of links: its reader takes a folder
        src.mkdir()
        for i, f in enumerate(files):
            os.symlink(f, src / f"{i:03d}-{Path(f).name}")
    out = tmp / f"datatrove-{workers}-{n}"
    quiet, saved = os.open(os.devnull, os.O_WRONLY), os.dup(2)  # its worker processes log to stderr too
    os.dup2(quiet, 2)
    try:
        t0 = time.perf_counter()
        LocalPipelineExecutor(pipeline=[WarcReader(str(src), glob_pattern="*"), Trafilatura(), GopherQualityFilter(),
                                        JsonlWriter(str(out / "out"))],
                              tasks=len(files), workers=workers, logging_dir=str(out / "logs")).run()
        seconds = time.perf_counter() - t0
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(quiet)
    stats = json.loads((out / "logs" / "stats.json").read_text())
    return seconds, stats[0]["stats"]["documents"]["total"]


def same_files(files: list[str], repeats: int, tmp: Path) -> None:
    """ingest -> quality on the WARC/WET files datatrove reads, against datatrove itself on them (run here when it
    is importable, else its figure measured on this machine, ``DATATROVE``)."""
    warc = sorted({f for p in ("*.warc", "*.warc.gz", "*.wat.gz", "*.wet.gz")
                   for f in glob.glob(str(WARC / "**" / p), recursive=True)})
    print(f"\ningest -> quality on the {len(warc)} WARC/WAT/WET files datatrove can read (it cannot read the ARC "
          f"files); medians of {repeats} alternating runs")
    seconds: dict[tuple[str, int], list[float]] = {}
    docs: dict[str, int] = {}
    for n in range(repeats):
        for workers in (1, 2):
            t, docs["crucible"] = stage(warc, workers, tmp, n, STAGES[:4])  # ingest -> extract -> language -> quality
            seconds.setdefault(("crucible", workers), []).append(t)
            peer = datatrove_run(warc, workers, tmp, n)
            if peer is not None:
                seconds.setdefault(("datatrove", workers), []).append(peer[0])
                docs["datatrove"] = peer[1]
    print(f"{'workers':>8}{'crucible s':>12}{'docs':>6}{'docs/s':>8}{'datatrove s':>13}{'docs':>6}{'docs/s':>8}"
          f"{'time ratio':>12}")
    for workers in (1, 2):
        t = statistics.median(seconds[("crucible", workers)])
        if ("datatrove", workers) in seconds:
            p = statistics.median(seconds[("datatrove", workers)])
            print(f"{workers:>8}{t:>12.1f}{docs['crucible']:>6}{docs['crucible'] / t:>8.1f}{p:>13.1f}"
                  f"{docs['datatrove']:>6}{docs['datatrove'] / p:>8.1f}{p / t:>11.2f}x")
        else:
            print(f"{workers:>8}{t:>12.1f}{docs['crucible']:>6}{docs['crucible'] / t:>8.1f}{'(not installed)':>13}"
                  f"{'':>6}{DATATROVE[workers]:>8.1f}{docs['crucible'] / t / DATATROVE[workers]:>11.2f}x (docs/s)")
    for name in ("crucible", "datatrove"):
        if (name, 1) in seconds:
            one, two = statistics.median(seconds[(name, 1)]), statistics.median(seconds[(name, 2)])
            print(f"{name} 2 vs 1 worker: {one / two:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--copies", type=int, default=1, help="the archives this many times over")
    parser.add_argument("--only", choices=["path", "same-files"], help="one of the two comparisons [default: both]")
    args = parser.parse_args()
    if not WARC.exists():
        sys.exit(f"{WARC} is absent: the real archives live in ../shared beside the checkout")
    tmp = Path(tempfile.mkdtemp(prefix="crucible-datapath-"))
    configure_prefect(tmp)
    import logging

    logging.getLogger("crucible").setLevel(logging.WARNING)
    from flows.server import prefect_api

    from tasks.config import TokenizeConfig

    files = inputs(args.copies, tmp)
    vocab = TokenizeConfig().vocab_size
    print(f"{len(files)} archive files; medians of {args.repeats} alternating runs")
    print(f"{'workers':>8}{'docs':>7}{'bare s':>8}{'docs':>7}{'stage s':>8}{'bare docs/s':>13}{'stage docs/s':>14}"
          f"{'stage/bare':>12}")
    medians = {}
    with prefect_api(tmp / "prefect-server"):  # the server `crucible run` starts (flows/server.py)
        stage(files, 1, tmp, -1)  # warm: the first flow run pays Prefect's start-up
        if args.only == "same-files":
            same_files(files, args.repeats, tmp)
            return
        for workers in (1, 2):
            b, s, cpu, rerun, extract, docs_b, docs_s = [], [], [], [], [], 0, 0
            for n in range(args.repeats):
                seconds, docs_b = bare(files, workers, vocab)
                b.append(seconds)
                measured: dict[str, float] = {}
                seconds, docs_s = stage(files, workers, tmp, n, measure=measured)
                s.append(seconds)
                cpu.append(measured["cpu"])
                rerun.append(measured["rerun"])
                extract.append(measured["extract"])
            bm, sm = statistics.median(b), statistics.median(s)
            medians[workers] = (bm, sm, statistics.median(cpu), statistics.median(rerun), statistics.median(extract))
            print(f"{workers:>8}{docs_b:>7}{bm:>8.1f}{docs_s:>7}{sm:>8.1f}{docs_b / bm:>13.1f}{docs_s / sm:>14.1f}"
                  f"{(docs_s / sm) / (docs_b / bm):>11.2f}x", flush=True)
        (b1, s1, c1, r1, e1), (b2, s2, c2, r2, e2) = medians[1], medians[2]
        print(f"2 vs 1 worker: bare {b1 / b2:.2f}x, stage {s1 / s2:.2f}x (the extract stage {e1:.1f} / {e2:.1f} s, "
              f"{e1 / e2:.2f}x; the rest of the run {s1 - e1:.1f} / {s2 - e2:.1f} s, {(s1 - e1) / (s2 - e2):.2f}x)")
        # however well two workers overlap, a run cannot take less than its CPU seconds over the machine's cores
        cores = os.cpu_count() or 1
        print(f"stage CPU seconds (all processes): {c1:.1f} at 1 worker in {s1:.1f} s, {c2:.1f} at 2 workers in "
              f"{s2:.1f} s; on {cores} cores 2 workers can be at most {s1 * cores / max(c2, 1e-9):.2f}x one")
        # what the cores delivered: the 2-worker run's CPU seconds over its cores x seconds, against the share that
        # 1.8x would need, and against what work with no serial part at all gets from two processes here
        print(f"cores busy at 2 workers: {c2 / (cores * s2):.0%}; 1.8x one worker would need "
              f"{c2 / (cores * s1 / 1.8):.0%}; work with no serial part (trafilatura.extract alone, page by page) "
              f"scales {parallel_ceiling(files, args.repeats):.2f}x on 2 processes here")
        print(f"rerun, every stage a cache hit: {r1:.1f} s (1 worker), {r2:.1f} s (2 workers)")
        if args.only is None:
            same_files(files, args.repeats, tmp)


if __name__ == "__main__":
    main()
