"""Dedup speed: MinHash signatures/s of the stage against datasketch, then clustering 1M signatures out of core.

    python benchmarks/dedup_speed.py                      # both parts
    python benchmarks/dedup_speed.py --docs 2000 --cluster-docs 0
    python benchmarks/dedup_speed.py --docs 200000 --words 350 --cluster-docs 0 --no-loop --repeats 1
    python benchmarks/dedup_speed.py --docs 0 --cluster-docs 1000000

Signatures, on passages of the Gutenberg books in ../shared/corpora/english (word 5-gram shingles, 112 perms), of
800 words (~4.5 KB) and of 350 words (~2 KB, a typical short web page) by default:
- "update loop": one ``MinHash.update`` per shingle (the datasketch README way);
- "bare bulk": ``MinHash.bulk`` over the shingles (bytes, datasketch's default sha1 hash);
- "stage": the dedup stage's scan over Parquet units: normalizing, shingling, signatures, band keys, writing.
The stage should reach >= 1.0x of bare bulk at both lengths.

Clustering: synthetic signatures (random, with 10% planted near-copies), written as the scan writes them, are
clustered by the reduce step (tasks/dedup_cluster.py) in a child process with DuckDB's memory_limit; the wall time
and the child's peak RSS are printed.
"""
from __future__ import annotations

import argparse
import gzip
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.config import DedupConfig  # noqa: E402
from tasks.dedup import DedupStage, band_hashes  # noqa: E402
from tasks.ngrams import normalized_words  # noqa: E402
from tasks.quality import SCHEMA  # noqa: E402
from tasks.sharded import run_scan  # noqa: E402

BOOKS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "english" / "gutenberg" / "train"


def passages(n: int, words: int = 800) -> list[str]:
    rng = random.Random(1)
    out = []
    books = sorted(BOOKS.glob("*.txt.gz"))
    texts = [gzip.decompress(b.read_bytes()).decode("utf-8", "replace").split() for b in books]
    while len(out) < n:
        t = rng.choice(texts)
        start = rng.randrange(0, max(1, len(t) - words))
        out.append(" ".join(t[start:start + words]))
    return out


def shingle_bytes(text: str, n: int = 5) -> list[bytes]:
    w = normalized_words(text)
    return list({" ".join(w[i:i + n]).encode() for i in range(max(len(w) - n + 1, 1))})


def signatures_part(docs: int, repeats: int, words: int, loop_too: bool = True) -> None:
    from datasketch import MinHash

    from tests.helpers import write_dataset

    texts = passages(docs, words)
    cfg = DedupConfig(incremental=False, shard_max_docs=max(docs // 4, 1))
    tmp = Path(tempfile.mkdtemp())
    up = write_dataset(tmp / "in", SCHEMA, [{"doc_id": f"d{i}", "text": t} for i, t in enumerate(texts)],
                       stage="quality", shard_docs=cfg.shard_max_docs)
    stage = DedupStage(cfg)
    units = stage.plan(up)

    def loop() -> None:
        for t in texts:
            m = MinHash(num_perm=cfg.num_perm, seed=cfg.seed)
            for s in shingle_bytes(t):
                m.update(s)

    def bulk() -> None:
        MinHash.bulk([shingle_bytes(t) for t in texts], num_perm=cfg.num_perm, seed=cfg.seed)

    def scan() -> None:
        out = Path(tempfile.mkdtemp())
        for u in units:
            run_scan(stage, u, out)

    methods = [("update loop", loop)] if loop_too else []
    methods += [("bare bulk", bulk), ("stage", scan)]
    times: dict[str, list[float]] = {name: [] for name, _ in methods}
    for _ in range(repeats):
        for name, fn in methods:
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    kb = sum(len(t.encode()) for t in texts) / len(texts) / 1000
    print(f"signatures: {docs:,} passages of {words} words (~{kb:.1f} KB), {cfg.num_perm} permutations, "
          f"median of {repeats}")
    for name, seconds in med.items():
        print(f"  {name:12} {docs / seconds:10,.0f} signatures/s  ({med['bare bulk'] / seconds:.2f}x bare bulk)")


def write_synthetic(directory: Path, docs: int, cfg: DedupConfig, unit_docs: int = 100_000) -> None:
    """Scan output for ``docs`` documents: random signatures, 10% of them near-copies (8 of 112 values changed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(1)
    for u, start in enumerate(range(0, docs, unit_docs)):
        n = min(unit_docs, docs - start)
        sigs = rng.integers(0, 2**32, size=(n, cfg.num_perm), dtype=np.uint32)
        copies = rng.random(n) < 0.1
        sources = rng.integers(0, n, size=n)
        sigs[copies] = sigs[sources[copies]]
        cols = rng.integers(0, cfg.num_perm, size=(int(copies.sum()), 8))
        rows = np.nonzero(copies)[0]
        sigs[rows[:, None], cols] = rng.integers(0, 2**32, size=cols.shape, dtype=np.uint32)
        ids = np.array([f"d{start + i:09d}" for i in range(n)], dtype=object)
        name = f"part-{u:05d}"
        pq.write_table(pa.table({
            "doc_id": ids, "exact_hash": [f"h{start + i}" for i in range(n)],
            "priority": np.zeros(n, dtype=np.int32), "length": np.full(n, 1000, dtype=np.int64), "unit": [name] * n,
            "sig": pa.FixedSizeListArray.from_arrays(pa.array(sigs.ravel()), cfg.num_perm)}),
            directory / f"docs-{name}.parquet")
        keys = band_hashes(sigs, cfg.bands, cfg.rows)
        pq.write_table(pa.table({"doc_id": np.repeat(ids, cfg.bands),
                                 "band": np.tile(np.arange(cfg.bands, dtype=np.int16), n),
                                 "band_hash": keys.ravel()}), directory / f"bands-{name}.parquet")


def cluster_child(directory: str) -> None:
    from tasks.dedup_cluster import cluster_documents

    cfg = DedupConfig()
    d = Path(directory)
    t0 = time.perf_counter()
    facts = cluster_documents(docs=sorted(d.glob("docs-*.parquet")), bands=sorted(d.glob("bands-*.parquet")),
                              out_dir=d / "decisions", exact=True, near=True, threshold=cfg.threshold,
                              memory_limit=cfg.memory_limit, state_dir=None, state_name="bench")
    print(f"  clustered in {time.perf_counter() - t0:.1f}s: {facts['near_duplicates']:,} near-duplicates in "
          f"{facts['clusters']:,} clusters, {facts['candidate_pairs']:,} candidate pairs, "
          f"{facts['verified_pairs']:,} verified", flush=True)


def cluster_part(docs: int) -> None:
    cfg = DedupConfig()
    d = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    write_synthetic(d, docs, cfg)
    print(f"clustering {docs:,} synthetic signatures (10% planted near-copies; memory_limit {cfg.memory_limit}); "
          f"written in {time.perf_counter() - t0:.1f}s")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--cluster-child", str(d)], check=True)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    print(f"  wall {time.perf_counter() - t0:.1f}s including start-up, peak RSS {peak:.2f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=2000, help="passages for the signature figures (0: skip)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--words", default="800,350", help="passage lengths in words, comma-separated")
    parser.add_argument("--no-loop", action="store_true", help="leave out the slow MinHash.update loop")
    parser.add_argument("--cluster-docs", type=int, default=1_000_000, help="synthetic signatures (0: skip)")
    parser.add_argument("--cluster-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cluster_child:
        return cluster_child(args.cluster_child)
    if args.docs:
        if not BOOKS.exists():
            sys.exit(f"{BOOKS} is absent: the books live in ../shared beside the checkout")
        for words in (int(w) for w in args.words.split(",")):
            signatures_part(args.docs, args.repeats, words, not args.no_loop)
    if args.cluster_docs:
        cluster_part(args.cluster_docs)


if __name__ == "__main__":
    main()
