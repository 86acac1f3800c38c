"""Cleaning throughput: extract, language and quality stages against the bare library calls, on 1 and 2 workers.

    python benchmarks/cleaning_speed.py                 # the real pages in ../shared/corpora/warc
    python benchmarks/cleaning_speed.py --repeats 3

The documents are the HTML responses of the shared WARC files, ingested once. "bare" is the library call in a
plain loop (trafilatura.bare_extraction, langid classify); "stage" is run_unit over the stage's units, with shard
writing, manifests and drop logs. Two workers are two processes for both (extraction already runs in a child
process per unit, so the stage's 2-worker figure uses two threads). Quality has no library floor: its figure is
milliseconds per document. Prints medians and ratios.
"""
from __future__ import annotations

import argparse
import glob
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.config import ExtractConfig, IngestConfig, LanguageConfig, QualityConfig  # noqa: E402
from tasks.extract import ExtractStage, extract, extractor_for  # noqa: E402
from tasks.ingest import IngestStage  # noqa: E402
from tasks.language import LanguageStage, classify  # noqa: E402
from tasks.quality import QualityFilter, QualityStage  # noqa: E402
from tasks.shards import write_dataset_manifest  # noqa: E402
from tasks.stage import run_unit  # noqa: E402

WARC = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "warc"


def run_stage(stage, input_dir: Path, workers: int, pool: str) -> tuple[float, Path, int]:
    units = stage.plan(input_dir)
    out = Path(tempfile.mkdtemp())
    executor = ThreadPoolExecutor if pool == "threads" else ProcessPoolExecutor
    with executor(workers) as ex:
        list(ex.map(_warm, [stage] * workers))  # each worker loads its libraries (and extraction child) once
        t0 = time.perf_counter()
        results = list(ex.map(run_unit, [stage] * len(units), units, [out] * len(units)))
    seconds = time.perf_counter() - t0
    write_dataset_manifest(out, stage.name, "bench", results)
    return seconds, out, sum(r.docs_in for r in results)


def _warm(stage) -> None:
    if isinstance(stage, ExtractStage):
        extractor_for(stage.config)("<html><body><p>warm up</p></body></html>", None)
    elif isinstance(stage, LanguageStage):
        classify("warm up")


def _extract_one(args):
    html, url = args
    return extract(html, url, ExtractConfig())


def _classify_one(text):
    return classify(text)


def bare(fn, items, workers: int) -> float:
    fn(items[0])  # load models and caches before the clock starts, as the stage's long-lived workers have
    t0 = time.perf_counter()
    if workers == 1:
        for item in items:
            fn(item)
    else:
        with ProcessPoolExecutor(workers) as ex:
            list(ex.map(fn, items, chunksize=8))
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
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

    print(f"{len(pages)} documents, median of {args.repeats}")
    print(f"{'':26}{'workers':>8}{'bare docs/s':>13}{'stage docs/s':>14}{'stage/bare':>12}")
    extract_dir = None
    for workers in (1, 2):
        b = statistics.median(bare(_extract_one, pages, workers) for _ in range(args.repeats))
        runs = [run_stage(ExtractStage(ExtractConfig(shard_max_docs=40)), tmp / "ingest", workers, "threads")
                for _ in range(args.repeats)]
        s = statistics.median(r[0] for r in runs)
        extract_dir = runs[0][1]
        print(f"{'extract (trafilatura)':26}{workers:>8}{len(pages) / b:>13.1f}{len(pages) / s:>14.1f}{b / s:>12.2f}")
    texts = [r["text"] for f in sorted(extract_dir.glob("part-*-*.parquet")) for r in pq.read_table(f).to_pylist()]
    language_dir = None
    for workers in (1, 2):
        b = statistics.median(bare(_classify_one, texts, workers) for _ in range(args.repeats))
        runs = [run_stage(LanguageStage(LanguageConfig(keep={"en": 0.65}, shard_max_docs=40)), extract_dir, workers,
                          "processes") for _ in range(args.repeats)]
        s = statistics.median(r[0] for r in runs)
        language_dir = runs[0][1]
        print(f"{'language (langid)':26}{workers:>8}{len(texts) / b:>13.1f}{len(texts) / s:>14.1f}{b / s:>12.2f}")
    kept = [r["text"] for f in sorted(language_dir.glob("part-*-*.parquet")) for r in pq.read_table(f).to_pylist()]
    rules = QualityFilter(QualityConfig())
    t0 = time.perf_counter()
    for text in kept:
        rules.apply(text)
    rules_s = time.perf_counter() - t0
    s, _, n = run_stage(QualityStage(QualityConfig(shard_max_docs=40)), language_dir, 1, "threads")
    print(f"quality rules: {1000 * rules_s / len(kept):.2f} ms/doc bare, {1000 * s / n:.2f} ms/doc as a stage "
          f"({len(kept)} English documents, mean {sum(map(len, kept)) / len(kept):,.0f} characters)")


if __name__ == "__main__":
    main()
