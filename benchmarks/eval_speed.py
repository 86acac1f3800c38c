"""Evaluation throughput: CORE items/s batched against one sequence at a time, on the same items.

    python benchmarks/eval_speed.py                       # ../shared/benchmarks, 40 items per task, depth-4 model
    python benchmarks/eval_speed.py --items 100 --depth 12 --seq-len 1024   # on a GPU

The model is a randomly initialised GPT (scores do not depend on the weights' quality) and the tokenizer a BPE
trained on the benchmark texts themselves (vocab 4096), encoded with tiktoken. Both runs score exactly the same
prepared sequences (shots, delimiters, left crop as in the evaluate stage); "one at a time" is a forward pass per
sequence (batch_rows = 1), "batched" packs --batch-rows sequences per pass, right-padded. Predictions and losses
are checked equal. Medians of --repeats.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.core import fewshot, render, score, sequences  # noqa: E402
from model.gpt import GPT, GPTConfig  # noqa: E402
from tasks.evalsets import TASKS, contamination_text, ensure_smoke, item_kind, read_items  # noqa: E402
from tasks.tokenizer import TiktokenEncoder, train_bpe  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmarks", type=Path, default=SHARED if SHARED.is_dir() else None)
    ap.add_argument("--items", type=int, default=40, help="items per task")
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch-rows", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    bench = args.benchmarks
    if bench is None:
        bench = Path("work/benchmarks/smoke")
        ensure_smoke(bench)

    tasks = {}
    for name, spec in TASKS.items():
        path = bench / f"{name}.jsonl"
        if path.exists():
            items = read_items(path)
            random.Random(1337).shuffle(items)
            tasks[name] = (spec, items[: args.items])
    texts = [contamination_text(it) for _, items in tasks.values() for it in items]
    tok = train_bpe(iter(texts), 4096, ["<|bos|>"])
    encode = TiktokenEncoder(tok).encode_batch
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.get_vocab_size(), depth=args.depth, seq_len=args.seq_len)).to(device).eval()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()

    prepared = []
    for name, (spec, items) in tasks.items():
        kind = item_kind(items[0])
        for i, item in enumerate(items):
            prompts = render(kind, item, spec.delimiter, fewshot(items, i, spec.shots))
            prepared.append(sequences(kind, prompts, encode, 0, args.seq_len, gold=item.get("gold")))
    n_seq = sum(len(p.tokens) for p in prepared)
    n_tok = sum(len(t) for p in prepared for t in p.tokens)
    print(f"{len(prepared)} items ({len(tasks)} tasks x <= {args.items}), {n_seq} sequences, {n_tok:,} tokens; "
          f"model depth {args.depth}, {model.num_params() / 1e6:.1f} M parameters, on {device}")

    timings: dict[str, list[float]] = {"one": [], "batched": []}
    results = {}
    for _ in range(args.repeats):
        for label, rows in (("one", 1), ("batched", args.batch_rows)):
            t0 = time.perf_counter()
            results[label] = score(model, prepared, batch_rows=rows, device=device, autocast=autocast)
            if device.type == "cuda":
                torch.cuda.synchronize()
            timings[label].append(time.perf_counter() - t0)
    same = all(a.prediction == b.prediction and all(abs(x - y) < 1e-3 for x, y in zip(a.losses, b.losses))
               for a, b in zip(results["one"], results["batched"]))
    one, batched = statistics.median(timings["one"]), statistics.median(timings["batched"])
    print(f"{'':28}{'items/s':>10}{'s':>8}")
    print(f"{'one sequence at a time':28}{len(prepared) / one:>10.1f}{one:>8.2f}")
    print(f"{f'batched ({args.batch_rows} rows)':28}{len(prepared) / batched:>10.1f}{batched:>8.2f}")
    print(f"batched / one at a time: {one / batched:.2f}x; predictions and losses identical: {same}")


if __name__ == "__main__":
    main()
