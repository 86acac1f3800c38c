"""Cleaning throughput: extract, language and quality stages against the bare library calls, on 1 and 2 workers.

    python benchmarks/cleaning_speed.py                 # the real pages in ../shared/corpora/warc
    python benchmarks/cleaning_speed.py --repeats 3

The documents are the HTML responses of the shared WARC files, ingested once. "bare" is the library call in a
plain loop (``trafilatura.extract(html, url=url, include_comments=False)``, its text only; langid classify); "stage" is run_unit over the stage's units, with shard
reading and writing, manifests and drop logs. Two workers are two processes for both (extraction already runs in a
child process per worker thread, so the stage's 2-worker figure uses two threads). Language and quality run over the
extracted texts --copies times over, in 16 units, so that per-unit costs weigh as they do on a real corpus. Bare and
stage runs alternate and the figures are medians. Quality has no library floor: its figure is milliseconds per
document. The "2 vs 1 worker" line is the scaling of each: on a shared 2-core machine the library itself rarely
reaches 2x, so read the stage's scaling next to the bare one.
"""
from __future__ import annotations

import argparse
import glob
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq
import trafilatura

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.config import ExtractConfig, IngestConfig, LanguageConfig, QualityConfig  # noqa: E402
from tasks.extract import ExtractStage  # noqa: E402
from tasks.extractors import extract, pool_for  # noqa: E402
from tasks.ingest import IngestStage  # noqa: E402
from tasks.language import LanguageStage, classify  # noqa: E402
from tasks.quality import QualityFilter, QualityStage  # noqa: E402
from tasks.shards import ShardFile, ShardResult, read_dataset_manifest, write_dataset_manifest  # noqa: E402
from tasks.sharded import run_unit  # noqa: E402

WARC = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "warc"


def run_stage(stage, input_dir: Path, workers: int, pool: str) -> tuple[float, Path, int]:
    units = stage.plan(input_dir)
    out = Path(tempfile.mkdtemp())
    # one worker runs in this process, like the bare loop; more are a pool of threads or processes
    executor = ThreadPoolExecutor if pool == "threads" or workers == 1 else ProcessPoolExecutor
    # each worker loads its libraries (and its extraction child) before the clock starts
    with executor(workers, initializer=_warm, initargs=(stage,)) as ex:
        list(ex.map(_warm, [stage] * workers))
        t0 = time.perf_counter()
        results = list(ex.map(run_unit, [stage] * len(units), units, [out] * len(units)))
    seconds = time.perf_counter() - t0
    write_dataset_manifest(out, stage.name, "bench", results)
    return seconds, out, sum(r.docs_in for r in results)


def _warm(stage) -> None:
    if isinstance(stage, ExtractStage):
        list(pool_for(stage.config).map([("<html><body><p>warm up</p></body></html>", None)]))
    elif isinstance(stage, LanguageStage):
        classify("warm up")


def _extract_one(args):
    html, url = args
    return trafilatura.extract(html, url=url, include_comments=False)


def _crucible_extract_one(args):
    html, url = args
    return extract(html, url, ExtractConfig())


def _classify_one(text):
    return classify(text)


def _load(fn, item) -> None:
    fn(item)


def bare(fn, items, workers: int) -> float:
    """A plain loop (1 worker) or a process pool; models and caches load before the clock starts, as the stage's
    long-lived workers have them loaded."""
    if workers == 1:
        fn(items[0])
        t0 = time.perf_counter()
        for item in items:
            fn(item)
        return time.perf_counter() - t0
    with ProcessPoolExecutor(workers, initializer=_load, initargs=(fn, items[0])) as ex:
        list(ex.map(_load, [fn] * workers, items[:workers]))
        t0 = time.perf_counter()
        list(ex.map(fn, items, chunksize=8))
        return time.perf_counter() - t0


def replicate(src: Path, copies: int) -> Path:
    """The dataset in src, ``copies`` times over, as a new sealed dataset: a bigger workload from the same pages."""
    out = Path(tempfile.mkdtemp())
    files = []
    for c in range(copies):
        for f in read_dataset_manifest(src).files:
            name = f"part-{c:05d}-{f.name.split('-', 1)[1]}"
            shutil.copyfile(src / f.name, out / name)
            files.append(ShardFile(name, f.rows, f.bytes, f"{c}:{f.sha256}"))
    result = ShardResult("part-00000", files=files)
    write_dataset_manifest(out, "replica", "bench", [result])
    (out / "part-00000.json").unlink(missing_ok=True)
    return out


def compare(label: str, bare_fn, items, stage_fn, workers_list=(1, 2), repeats: int = 3) -> Path:
    """Interleaved repeats of bare and stage runs; prints medians, stage/bare and the 2-worker scaling."""
    medians, out = {}, None
    for workers in workers_list:
        b, s = [], []
        for _ in range(repeats):
            b.append(bare(bare_fn, items, workers))
            seconds, out, _ = stage_fn(workers)
            s.append(seconds)
        medians[workers] = statistics.median(b), statistics.median(s)
        bm, sm = medians[workers]
        print(f"{label:26}{workers:>8}{len(items) / bm:>13.1f}{len(items) / sm:>14.1f}{bm / sm:>12.2f}")
    (b1, s1), (b2, s2) = medians[1], medians[2]
    print(f"{'':26}{'2 vs 1 worker:':>21}{b1 / b2:>6.2f}x{s1 / s2:>13.2f}x")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=["extract", "language", "quality"], action="append",
                        help="run only these parts (repeatable); extraction output feeds the others")
    parser.add_argument("--copies", type=int, default=6,
                        help="language and quality run over the extracted pages this many times over (default 6)")
    args = parser.parse_args()
    if not WARC.exists():
        sys.exit(f"{WARC} is absent: the real pages live in ../shared beside the checkout")
    tmp = Path(tempfile.mkdtemp())
    patterns = [str(WARC / "**" / p) for p in ("*.warc", "*.warc.gz", "*.arc")]
    ingest = IngestStage(IngestConfig(inputs=[f for p in patterns for f in glob.glob(p, recursive=True)],
                                      shard_max_docs=40))
    results = [run_unit(ingest, u, tmp / "ingest") for u in ingest.plan(ingest.sources())]
    write_dataset_manifest(tmp / "ingest", "ingest", "bench", results)
    rows = [r for f in sorted((tmp / "ingest").glob("part-*-*.parquet")) for r in pq.read_table(f).to_pylist()]
    pages = [(r["html"], r["url"]) for r in rows]

    print(f"{len(pages)} pages; medians of {args.repeats} interleaved runs; "
          f"language and quality see the extracted texts {args.copies} times over")
    print(f"{'':26}{'workers':>8}{'bare docs/s':>13}{'stage docs/s':>14}{'stage/bare':>12}")
    only = set(args.only or ["extract", "language", "quality"])
    extract_stage = ExtractStage(ExtractConfig(shard_max_docs=20))
    if "extract" in only:
        pairs = [((_crucible_extract_one(page)[1] or "").strip(), (_extract_one(page) or "").strip()) for page in pages]
        same = sum(ours == bare_text for ours, bare_text in pairs)
        print(f"extract: the stage's text (stripped, as the stage writes it) is bare trafilatura.extract's on "
              f"{same} of {len(pages)} pages")
        extract_dir = compare("extract (trafilatura)", _extract_one, pages,
                              lambda w: run_stage(extract_stage, tmp / "ingest", w, "threads"), repeats=args.repeats)
    else:
        extract_dir = run_stage(extract_stage, tmp / "ingest", 2, "threads")[1]
    extracted = replicate(extract_dir, args.copies)
    texts = [r["text"] for f in sorted(extracted.glob("part-*-*.parquet")) for r in pq.read_table(f).to_pylist()]
    language_stage = LanguageStage(LanguageConfig(keep={"en": 0.65}, shard_max_docs=-(-len(texts) // 16)))
    run_language = lambda w: run_stage(language_stage, extracted, w, "processes")  # noqa: E731
    language_dir = (compare("language (langid)", _classify_one, texts, run_language, repeats=args.repeats)
                    if "language" in only else run_language(2)[1])
    if "quality" not in only:
        return
    kept = [r["text"] for f in sorted(language_dir.glob("part-*-*.parquet")) for r in pq.read_table(f).to_pylist()]
    rules = QualityFilter(QualityConfig())
    quality_stage = QualityStage(QualityConfig(shard_max_docs=-(-len(kept) // 16)))
    bare_ms, stage_ms = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for text in kept:
            rules.apply(text)
        bare_ms.append(1000 * (time.perf_counter() - t0) / len(kept))
        s, _, n = run_stage(quality_stage, language_dir, 1, "threads")
        stage_ms.append(1000 * s / n)
    print(f"quality rules: {statistics.median(bare_ms):.2f} ms/doc bare, {statistics.median(stage_ms):.2f} ms/doc "
          f"as a stage on 1 worker ({len(kept)} English documents, mean {sum(map(len, kept)) / len(kept):,.0f} "
          f"characters)")


if __name__ == "__main__":
    main()
