"""Ingestion throughput: the ingest stage against bare warcio iteration over the same files.

    python benchmarks/ingest.py                      # ../shared/corpora/warc, 5 repeats
    python benchmarks/ingest.py --repeats 9 PATH...  # your own WARC/ARC files

Bare iteration opens each file with warcio's ArchiveIterator and reads every record's decoded content stream:
the least work any ingester must do. The stage additionally classifies, decodes charsets, builds doc_ids and writes
zstd Parquet shards with manifests. Prints medians over the repeats (one process, one core) and the ratio.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

from warcio.archiveiterator import ArchiveIterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.config import IngestConfig  # noqa: E402
from tasks.ingest import IngestStage  # noqa: E402
from tasks.sharded import run_unit  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "warc"


def bare(files: list[str]) -> int:
    records = 0
    for path in files:  # warcio prints its warnings; keep them out of the table
        with open(path, "rb") as fh, contextlib.redirect_stderr(io.StringIO()):
            try:
                for rec in ArchiveIterator(fh, arc2warc=True):
                    rec.content_stream().read()
                    records += 1
            except Exception:  # the stock reader stops at the first damaged record; so be it
                pass
    return records


def stage(files: list[str]) -> int:
    ingest = IngestStage(IngestConfig(inputs=files))
    records = 0
    with tempfile.TemporaryDirectory() as out:
        for unit in ingest.plan(ingest.sources()):
            records += run_unit(ingest, unit, Path(out)).docs_in
    return records


def timed(fn, files, repeats):
    seconds, records = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        records = fn(files)
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds), records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="*", help="WARC/ARC/WET files or globs [default: ../shared/corpora/warc]")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    patterns = args.paths or [str(SHARED / "**" / p) for p in ("*.warc", "*.warc.gz", "*.arc", "*.wet.gz")]
    files = sorted({f for p in patterns for f in glob.glob(p, recursive=True)})
    if not files:
        sys.exit(f"no input files (looked for {patterns}); pass WARC paths")
    # Stock warcio stops at the first record of Common Crawl's 2008 ARC files, so comparing on them would time
    # the stage's full read against the bare reader's early exit: those files are timed for the stage alone.
    warc = [f for f in files if not f.endswith((".arc", ".arc.gz"))]
    arc = [f for f in files if f.endswith((".arc", ".arc.gz"))]
    print(f"median of {args.repeats} runs, one process")
    print(f"{'':30}{'files':>6}{'MB':>7}{'records':>9}{'seconds':>9}{'records/s':>11}{'MB/s':>8}")
    rows = []
    if warc:
        rows += [("bare warcio (WARC/WET)", bare, warc), ("ingest stage (WARC/WET)", stage, warc)]
    if arc:
        rows += [("ingest stage (ARC)", stage, arc)]
    times = {}
    for name, fn, subset in rows:
        mb = sum(Path(f).stat().st_size for f in subset) / 1e6
        seconds, n = timed(fn, subset, args.repeats)
        times[name] = seconds
        print(f"{name:30}{len(subset):>6}{mb:>7.1f}{n:>9}{seconds:>9.3f}{n / seconds:>11,.0f}{mb / seconds:>8.1f}")
    if warc:
        ratio = times["bare warcio (WARC/WET)"] / times["ingest stage (WARC/WET)"]
        print(f"stage / bare warcio throughput on the same WARC files: {ratio:.2f}x")


if __name__ == "__main__":
    main()
