"""Dedup quality: natural near-duplicate book editions, and planted near-duplicates at known Jaccard.

    python benchmarks/dedup_quality.py
    python benchmarks/dedup_quality.py --sources 400 --seed 2

1. ../shared/corpora/neardup/gutenberg_editions/pairs.tsv: every near_duplicate pair must end in one cluster and no
   not_duplicate pair may.
2. Planted: passages of real books (../shared/corpora/english/gutenberg) each get an edited copy (words replaced
   at random) whose exact word-5-gram Jaccard with the original is measured. All originals and copies go through
   the dedup stage (scan, reduce, process) with the default config. Per Jaccard bucket: recall = copies clustered
   with their original; precision = of the documents clustered with a copy, the share that is its original.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import random
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.config import DedupConfig  # noqa: E402
from tasks.dedup import DedupStage, shingles  # noqa: E402
from tasks.quality import SCHEMA  # noqa: E402
from tasks.shards import write_dataset_manifest  # noqa: E402
from tasks.sharded import run_reduce, run_scan, run_unit  # noqa: E402

CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"
BUCKETS = [(0.5, 0.6), (0.6, 0.7), (0.7, 0.8), (0.8, 0.9), (0.9, 1.0), (1.0, 1.01)]


def clusters(docs: dict[str, str], cfg: DedupConfig) -> dict[str, str]:
    """doc_id -> cluster id, from the dedup stage's own decisions."""
    from tests.helpers import write_dataset

    tmp = Path(tempfile.mkdtemp())
    rows = [{"doc_id": d, "text": t} for d, t in docs.items()]
    up = write_dataset(tmp / "in", SCHEMA, rows, stage="quality", shard_docs=500)
    stage = DedupStage(cfg)
    out = tmp / "out"
    units = stage.plan(up)
    run_reduce(stage, out, [run_scan(stage, u, out) for u in units], "bench")
    write_dataset_manifest(out, "dedup", "bench", [run_unit(stage, u, out) for u in units])
    found = {}
    for f in (stage.scratch_dir(out) / "decisions").glob("*.parquet"):
        for r in pq.read_table(f, columns=["doc_id", "cluster_id"]).to_pylist():
            found[r["doc_id"]] = r["cluster_id"]
    return found


def jaccard(a: str, b: str) -> float:
    sa, sb = set(shingles(a, 5).tolist()), set(shingles(b, 5).tolist())
    return len(sa & sb) / len(sa | sb)


def editions(cfg: DedupConfig) -> None:
    pairs_file = CORPORA / "neardup" / "gutenberg_editions" / "pairs.tsv"
    with open(pairs_file, newline="") as fh:
        pairs = list(csv.DictReader(fh, delimiter="\t"))
    texts = {}
    for p in pairs:
        for key in ("doc_a", "doc_b"):
            texts[p[key]] = gzip.decompress((CORPORA / p[key]).read_bytes()).decode("utf-8", "replace")
    found = clusters(texts, cfg)
    print(f"gutenberg editions ({pairs_file.relative_to(CORPORA.parent)}):")
    ok = 0
    for p in pairs:
        together = found[p["doc_a"]] == found[p["doc_b"]]
        right = together == (p["label"] == "near_duplicate")
        ok += right
        print(f"  {p['label']:15} J={float(p['jaccard_word5gram']):.3f}  clustered={str(together):5}  "
              f"{'ok' if right else 'WRONG'}  {Path(p['doc_a']).name}")
    print(f"  {ok}/{len(pairs)} pairs right")


def planted(cfg: DedupConfig, sources: int, seed: int) -> None:
    rng = random.Random(seed)
    books = sorted((CORPORA / "english" / "gutenberg" / "train").glob("*.txt.gz"))
    passages = []
    for book in books:
        words = gzip.decompress(book.read_bytes()).decode("utf-8", "replace").split()
        middle = words[len(words) // 5: 4 * len(words) // 5]  # away from the licence boilerplate
        blocks = range(0, max(len(middle) - 400, 1), 400)  # disjoint blocks: passages must not overlap
        for start in rng.sample(blocks, min(len(blocks), sources // len(books) + 1)):
            passages.append(" ".join(middle[start:start + rng.randint(200, 400)]))
    rng.shuffle(passages)
    passages = passages[:sources]
    docs, truth = {}, {}
    for i, text in enumerate(passages):
        words = text.split()
        edits = int(len(words) * rng.choice([0, 0.005, 0.01, 0.02, 0.03, 0.04, 0.06, 0.08]))
        for k in rng.sample(range(len(words)), edits):
            words[k] = f"zq{rng.randrange(10**6)}"
        copy = " ".join(words)
        docs[f"orig-{i:05d}"], docs[f"copy-{i:05d}"] = text, copy
        truth[f"copy-{i:05d}"] = (f"orig-{i:05d}", jaccard(text, copy))
    found = clusters(docs, cfg)
    members = defaultdict(set)
    for d, c in found.items():
        members[c].add(d)
    print(f"\nplanted near-duplicates: {sources} book passages of 200-400 words, one edited copy each; "
          f"{cfg.bands} bands x {cfg.rows} rows, threshold {cfg.threshold}")
    print(f"  {'Jaccard':>12}{'pairs':>8}{'recall':>9}{'precision':>11}")
    summary = {"tp": 0, "fp": 0, "pairs": 0, "found": 0}
    for lo, hi in BUCKETS:
        copies = [c for c, (_, j) in truth.items() if lo <= j < hi]
        if not copies:
            continue
        tp = fp = hits = 0
        for c in copies:
            orig = truth[c][0]
            partners = members[found[c]] - {c}
            hits += orig in partners
            tp += orig in partners
            fp += len(partners - {orig})
        label = "1.0" if lo == 1.0 else f"[{lo:.1f}, {hi:.1f})"
        precision = tp / (tp + fp) if tp + fp else float("nan")
        print(f"  {label:>12}{len(copies):>8}{hits / len(copies):>9.3f}{precision:>11.3f}")
        if lo >= 0.8:
            summary["pairs"] += len(copies)
            summary["found"] += hits
        summary["tp"] += tp
        summary["fp"] += fp
    print(f"  recall at J >= 0.8: {summary['found'] / max(summary['pairs'], 1):.3f} (target >= 0.95); "
          f"precision overall: {summary['tp'] / max(summary['tp'] + summary['fp'], 1):.3f} (target >= 0.99)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sources", type=int, default=1500, help="planted originals (default 1500)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if not CORPORA.exists():
        sys.exit(f"{CORPORA} is absent: the corpora live in ../shared beside the checkout")
    cfg = DedupConfig(incremental=False)
    editions(cfg)
    planted(cfg, args.sources, args.seed)


if __name__ == "__main__":
    main()
