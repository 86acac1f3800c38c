"""Tokenize throughput: the whole stage against the bare encoder, and the training loader's tokens/s.

    python benchmarks/tokenize_speed.py                  # ~32 MB of the books in ../shared/corpora/english
    python benchmarks/tokenize_speed.py --mb 64 --repeats 5

The documents are paragraphs of the shared Project Gutenberg books, cut into ~4 KB documents (web-page sized) and
written as a decontaminate dataset. A BPE (vocab 8192) is trained on them once; the stage then runs with that
``tokenizer_path`` so that its figure is encode plus write: scan (split, shard assignment, the scattered copy),
process (gather, shuffle, encode, Arrow IPC shards with their sha256) and the token manifest, on one worker in this
process. "bare" is the fastest encoder that gives identical ids (tiktoken's encode_ordinary_batch over an Encoding
built from the same vocabulary, one thread) on the same texts in the same unit-sized batches; every document's ids
in the shards are checked against it. Bare and stage runs alternate; figures are medians. The loader figures are
TrainLoader (best-fit packing, batch 16 x 1024) and ValLoader over the stage's output.
"""
from __future__ import annotations

import argparse
import gzip
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.data import TrainLoader, ValLoader  # noqa: E402
from tasks.config import TokenizeConfig  # noqa: E402
from tasks.decontaminate import SCHEMA  # noqa: E402
from tasks.shards import write_dataset_manifest  # noqa: E402
from tasks.sharded import run_reduce, run_scan, run_unit  # noqa: E402
from tasks.token_shards import read_token_shard  # noqa: E402
from tasks.tokenize import TokenizeStage  # noqa: E402
from tasks.tokenizer import TiktokenEncoder, TokenizersEncoder, train_bpe  # noqa: E402
from tests.helpers import write_dataset  # noqa: E402

BOOKS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "english" / "gutenberg" / "train"


def documents(mb: float, size: int = 4000) -> dict[str, str]:
    """Paragraph-aligned ~size-byte documents from the books, cycling through them until ``mb`` MB."""
    books = [(b.name.split(".")[0], gzip.decompress(b.read_bytes()).decode("utf-8", "replace").replace("\r\n", "\n"))
             for b in sorted(BOOKS.glob("*.txt.gz"))]
    if not books:
        raise SystemExit(f"no books in {BOOKS}: this benchmark needs ../shared/corpora")
    docs: dict[str, str] = {}
    total, copy = 0, 0
    while total < mb * 2**20:
        for name, text in books:
            doc, n = [], 0
            for para in text.split("\n\n"):
                doc.append(para)
                n += len(para)
                if n >= size:
                    body = "\n\n".join(doc).strip()
                    docs[f"{name}:{copy}:{len(docs)}"] = body if copy == 0 else f"[{copy}] {body}"
                    total += len(body.encode())
                    doc, n = [], 0
                    if total >= mb * 2**20:
                        return docs
        copy += 1
    return docs


def run_stage(stage: TokenizeStage, up: Path) -> tuple[float, Path]:
    out = Path(tempfile.mkdtemp(prefix="tokenize-bench-"))
    t0 = time.perf_counter()
    units = stage.plan(up)
    run_reduce(stage, out, [run_scan(stage, u, out) for u in units], "bench")
    results = [run_unit(stage, u, out) for u in units]
    write_dataset_manifest(out, stage.name, "bench", results)
    stage.finalize(out)
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=32, help="megabytes of text (default 32)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--unit-docs", type=int, default=2000, help="documents per unit (shard_max_docs)")
    args = ap.parse_args()

    from tokenizers import Tokenizer

    work = Path(tempfile.mkdtemp(prefix="tokenize-bench-"))
    docs = documents(args.mb)
    mb = sum(len(t.encode()) for t in docs.values()) / 2**20
    up = write_dataset(work / "in", SCHEMA, [{"doc_id": d, "text": t} for d, t in docs.items()],
                       stage="decontaminate", shard_docs=args.unit_docs)
    print(f"{len(docs):,} documents, {mb:.1f} MB, units of {args.unit_docs} documents, 1 worker")

    t0 = time.perf_counter()
    tok = train_bpe(iter(list(docs.values())[: len(docs) // 4]), 8192, ["<|bos|>"])
    print(f"BPE training on {mb / 4:.1f} MB (vocab 8192): {time.perf_counter() - t0:.1f} s (not in the figures below)")
    (work / "tokenizer.json").write_text(tok.to_str())
    tok = Tokenizer.from_file(str(work / "tokenizer.json"))
    stage = TokenizeStage(TokenizeConfig(tokenizer_path=work / "tokenizer.json", val_fraction=0.01,
                                         shard_max_docs=args.unit_docs))
    fast = TiktokenEncoder(tok)
    texts = list(docs.values())
    batches = [texts[i:i + args.unit_docs] for i in range(0, len(texts), args.unit_docs)]

    bare_s, stage_s, out = [], [], None
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ids = [x for b in batches for x in fast.encode_batch(b)]
        bare_s.append(time.perf_counter() - t0)
        if out is not None:
            shutil.rmtree(out)
        seconds, out = run_stage(stage, up)
        stage_s.append(seconds)

    expected = dict(zip(docs, ids))
    checked = 0
    for shard in sorted(out.glob("part-*.arrow")):
        tokens, offsets, table = read_token_shard(shard)
        for row, doc_id in enumerate(table["doc_id"].to_pylist()):
            assert tokens[offsets[row]] == 0 and tokens[offsets[row] + 1:offsets[row + 1]].tolist() == expected[doc_id]
            checked += 1
    assert checked == len(docs)
    t0 = time.perf_counter()
    slow = TokenizersEncoder(tok).encode_batch(texts[: max(1, len(texts) // 8)])
    slow_mbs = sum(len(t.encode()) for t in texts[: len(slow)]) / 2**20 / (time.perf_counter() - t0)
    assert slow == ids[: len(slow)]

    bare, staged = statistics.median(bare_s), statistics.median(stage_s)
    print(f"ids identical to the bare encoder for all {checked:,} documents")
    print(f"{'':34}{'MB/s':>8}{'s':>8}")
    print(f"{'tokenizers encode_batch (1/8th)':34}{slow_mbs:>8.1f}")
    print(f"{'bare tiktoken, 1 thread':34}{mb / bare:>8.1f}{bare:>8.2f}")
    print(f"{'tokenize stage (encode + write)':34}{mb / staged:>8.1f}{staged:>8.2f}")
    print(f"stage / bare: {bare / staged:.2f}x  (target >= 0.8x; medians of {args.repeats})")

    for name, make, n in (
            ("TrainLoader 16 x 1024", lambda: TrainLoader(out, batch_size=16, seq_len=1024, seed=1), 200),
            ("ValLoader 16 x 1024", lambda: ValLoader(out, batch_size=16, seq_len=1024), None)):
        loader = make()
        t0 = time.perf_counter()
        tokens = 0
        for i, (x, _) in enumerate(loader):
            tokens += x.numel()
            if n is not None and i + 1 == n:
                break
        rate = tokens / (time.perf_counter() - t0)
        extra = f", {loader.tokens_cropped / (tokens + loader.tokens_cropped):.0%} of tokens cropped" \
            if isinstance(loader, TrainLoader) else ""
        print(f"{name}: {rate / 1e6:.2f} M tokens/s over {tokens:,} tokens{extra}")
    manifest = (out / "_tokens.json")
    print(f"bytes per token (val): {_bytes_per_token(manifest):.2f}")
    shutil.rmtree(out)
    shutil.rmtree(work)


def _bytes_per_token(manifest: Path) -> float:
    import json

    val = json.loads(manifest.read_text())["splits"]["val"]
    return val["bytes"] / max(1, val["tokens"] - val["docs"])


if __name__ == "__main__":
    np.seterr(all="raise")
    main()
