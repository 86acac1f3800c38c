"""Ingestion throughput: the ingest stage against bare reading of the same files, per format.

    python benchmarks/ingest.py                      # ../shared/corpora, 5 repeats
    python benchmarks/ingest.py --repeats 9 PATH...  # your own WARC/ARC files (the curated rows need ../shared)

WARC: bare iteration opens each file with warcio's ArchiveIterator and reads every record's decoded content
stream, and the same with FastWARC's (HTTP headers parsed, every record's payload read): the least work any
ingester must do with either library. The stage additionally classifies, decodes charsets, builds doc_ids
and writes zstd Parquet shards with manifests.

Curated text (../shared/corpora/english: the Gutenberg books and WikiText-2): the books as gzipped text split by
paragraph, against a bare loop that gunzips, splits on blank lines and decodes; the same paragraphs written once as
JSON Lines and as Parquet (1,000-row groups), against bare ``json.loads`` per line and pyarrow's ``iter_batches``
to Python strings. MB/s is of the documents' text, the same for both rows of a pair. Prints medians over the
repeats (one process, one core) and the ratios.
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

from tasks.config import IngestConfig, SourceConfig  # noqa: E402
from tasks.ingest import IngestStage  # noqa: E402
from tasks.sharded import run_unit  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "warc"
ENGLISH = SHARED.parent / "english"


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


def bare_fastwarc(files: list[str]) -> int:
    from fastwarc.warc import ArchiveIterator as FastIterator

    records = 0
    for path in files:
        try:
            for rec in FastIterator(path, parse_http=True):
                rec.reader.read()
                records += 1
        except Exception:  # like stock warcio, it stops at the first record it cannot parse
            pass
    return records


def stage(files: list[str]) -> int:
    ingest = IngestStage(IngestConfig(inputs=files))
    records = 0
    with tempfile.TemporaryDirectory() as out:
        for unit in ingest.plan(ingest.sources()):
            records += run_unit(ingest, unit, Path(out)).docs_in
    return records


def curated_stage(source: SourceConfig):
    def run(files: list[str]) -> int:
        ingest = IngestStage(IngestConfig(), [source.model_copy(update={"inputs": files})])
        records = 0
        with tempfile.TemporaryDirectory() as out:
            for unit in ingest.plan(ingest.sources()):
                records += run_unit(ingest, unit, Path(out)).docs_out
        return records
    return run


def bare_paragraphs(files: list[str]) -> int:
    import gzip

    records = 0
    for path in files:
        with gzip.open(path, "rb") as fh:
            block: list[bytes] = []
            for line in fh:
                if line.strip():
                    block.append(line)
                elif block:
                    b"".join(block).decode("utf-8")
                    records, block = records + 1, []
            records += bool(block)
    return records


def bare_jsonl(files: list[str]) -> int:
    import json

    records = 0
    for path in files:
        with open(path, "rb") as fh:
            for line in fh:
                if json.loads(line)["text"]:
                    records += 1
    return records


def bare_parquet(files: list[str]) -> int:
    import pyarrow.parquet as pq

    records = 0
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(columns=["text"]):
            records += sum(1 for t in batch.column(0).to_pylist() if t)
    return records


def curated_files(tmp: Path) -> tuple[list[str], list[str], list[str], int]:
    """The books (gzipped text), and their paragraphs plus WikiText's as one JSONL and one Parquet file."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    books = sorted(str(p) for p in (ENGLISH / "gutenberg" / "train").glob("*.txt.gz"))
    if not books:
        return [], [], [], 0
    ingest = IngestStage(IngestConfig(), [SourceConfig(name="b", inputs=books, format="text",
                                                       text_split="paragraph")])
    texts = []
    out = tmp / "paras"
    for unit in ingest.plan(ingest.sources()):
        result = run_unit(ingest, unit, out)
        texts += [t for f in result.files for t in pq.read_table(out / f.name, columns=["html"])["html"].to_pylist()]
    with open(tmp / "paragraphs.jsonl", "w") as fh:
        for i, t in enumerate(texts):
            fh.write(json.dumps({"id": i, "text": t}) + "\n")
    pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), tmp / "paragraphs.parquet",
                   row_group_size=1000)
    return books, [str(tmp / "paragraphs.jsonl")], [str(tmp / "paragraphs.parquet")], sum(
        len(t.encode()) for t in texts)


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
    if warc:
        rows.insert(1, ("bare FastWARC (WARC/WET)", bare_fastwarc, warc))
    seconds: dict[str, list[float]] = {name: [] for name, _, _ in rows}
    counts = {}
    for _ in range(args.repeats):  # alternating, so a slow spell of the machine hits every row alike
        for name, fn, subset in rows:
            t0 = time.perf_counter()
            counts[name] = fn(subset)
            seconds[name].append(time.perf_counter() - t0)
    times = {name: statistics.median(s) for name, s in seconds.items()}
    for name, fn, subset in rows:
        mb = sum(Path(f).stat().st_size for f in subset) / 1e6
        n, t = counts[name], times[name]
        print(f"{name:30}{len(subset):>6}{mb:>7.1f}{n:>9}{t:>9.3f}{n / t:>11,.0f}{mb / t:>8.1f}")
    if warc:
        for floor in ("bare warcio (WARC/WET)", "bare FastWARC (WARC/WET)"):
            ratio = times[floor] / times["ingest stage (WARC/WET)"]
            print(f"stage / {floor.split(' (')[0]} throughput on the same WARC files: {ratio:.2f}x")
    with tempfile.TemporaryDirectory() as tmp:
        books, jsonl, parquet, text_bytes = curated_files(Path(tmp))
        if not books:
            return
        print(f"\ncurated text: the Gutenberg books' {text_bytes / 1e6:.1f} MB of paragraphs; MB/s of text")
        print(f"{'':30}{'files':>6}{'MB':>7}{'records':>9}{'seconds':>9}{'records/s':>11}{'MB/s':>8}")
        pairs = [("text (.txt.gz, by paragraph)", bare_paragraphs, SourceConfig(name="t", inputs=["x"], format="text",
                                                                            text_split="paragraph"), books),
                 ("jsonl", bare_jsonl, SourceConfig(name="j", inputs=["x"], format="jsonl", id_field="id"), jsonl),
                 ("parquet", bare_parquet, SourceConfig(name="p", inputs=["x"], format="parquet", id_field="id"),
                  parquet)]
        mb = text_bytes / 1e6
        for label, bare_fn, source, files in pairs:
            found = {}
            for name, fn in ((f"bare {label}", bare_fn), (f"ingest stage {label}", curated_stage(source))):
                seconds, n = timed(fn, files, args.repeats)
                found[name] = seconds
                print(f"{name[:30]:30}{len(files):>6}{mb:>7.1f}{n:>9}{seconds:>9.3f}{n / seconds:>11,.0f}"
                      f"{mb / seconds:>8.1f}")
            print(f"stage / bare throughput ({label}): {found[f'bare {label}'] / found[f'ingest stage {label}']:.2f}x")


if __name__ == "__main__":
    main()
