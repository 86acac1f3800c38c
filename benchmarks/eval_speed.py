"""Evaluation throughput: CORE items/s of the evaluate stage's scoring against running every sequence alone.

    python benchmarks/eval_speed.py                       # ../shared/benchmarks, 40 items per task, depth-4 model
    python benchmarks/eval_speed.py --items 100 --depth 12 --seq-len 1024   # on a GPU

The model is a randomly initialised GPT (scores do not depend on the weights' quality) and the tokenizer a BPE
trained on the benchmark texts themselves (vocab 4096), encoded with tiktoken. Every mode scores exactly the same
prepared sequences (shots, delimiters, left crop as in the evaluate stage):
- "each sequence alone": one forward pass per sequence over all its positions, logits read at the scored ones
  (what lm-evaluation-harness does per request, without its single-token caching);
- "each sequence, batched": the same, --batch-rows sequences per pass, right-padded;
- "packed (the stage)": ``model.core.score`` as the evaluate stage runs it: an item's sequences in one row that
  holds their shared prefix once, the output projection only at scored positions, CPU batches of at most
  ``CPU_BATCH_TOKENS`` tokens.
- "lm-evaluation-harness": with ``lm_eval`` importable (install it beside Crucible, e.g. in a venv made with
  ``--system-site-packages``: ``pip install lm-eval``), the same model exported as a Hugging Face Llama
  (``model.export``) and scored by lm-eval's own ``HFLM._loglikelihood_tokens`` on exactly the same token sequences
  (context = the tokens before the scored span, continuation = the span), with its batching, longest-first order
  and single-token caching; predictions follow CORE's rules from its log-likelihoods (lowest mean loss; greedy for
  language modelling). Without lm_eval the mode is skipped.
Predictions must be identical and losses equal within 1e-3. Medians of --repeats, alternating.
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

from model.core import _segments, fewshot, render, score, sequences  # noqa: E402
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

    class Alone(torch.nn.Module):
        """The model without ``hidden``/``head``: score() then runs each sequence alone and reads its logits."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.inner(ids)

    lm_eval = harness(model, tok, prepared, args)

    packed_tokens = sum(len(s.tokens) for s in _segments(prepared, 6.0 * model.cfg.d_model)[0])
    print(f"packed: {packed_tokens:,} tokens run ({packed_tokens / n_tok:.0%} of the sequences' tokens)")
    modes = {"each sequence alone": (Alone(model), 1), f"each sequence, batched ({args.batch_rows})":
             (Alone(model), args.batch_rows), "packed (the stage)": (model, args.batch_rows)}
    runs = {label: (lambda scorer=scorer, rows=rows: score(scorer, prepared, batch_rows=rows, device=device,
                                                           autocast=autocast)) for label, (scorer, rows) in modes.items()}
    if lm_eval is not None:
        runs["lm-evaluation-harness"] = lm_eval
    timings: dict[str, list[float]] = {label: [] for label in runs}
    results = {}
    for _ in range(args.repeats):
        for label, run in runs.items():
            t0 = time.perf_counter()
            results[label] = run()
            if device.type == "cuda":
                torch.cuda.synchronize()
            timings[label].append(time.perf_counter() - t0)
    base = results["each sequence alone"]
    same = all(a.prediction == b.prediction and all(abs(x - y) < 1e-3 for x, y in zip(a.losses, b.losses))
               for other in results.values() for a, b in zip(base, other))
    alone = statistics.median(timings["each sequence alone"])
    print(f"{'':34}{'items/s':>10}{'s':>8}{'vs alone':>10}")
    for label in runs:
        t = statistics.median(timings[label])
        print(f"{label:34}{len(prepared) / t:>10.1f}{t:>8.2f}{alone / t:>9.2f}x")
    print(f"predictions identical and losses within 1e-3 across modes: {same}")
    if lm_eval is not None:
        ratio = statistics.median(timings["lm-evaluation-harness"]) / statistics.median(timings["packed (the stage)"])
        print(f"the stage vs lm-evaluation-harness on the same sequences and model: {ratio:.2f}x")


def harness(model: GPT, tok, prepared: list, args) -> object | None:
    """lm-evaluation-harness's HFLM on the same model (exported) and the same token sequences, or None."""
    try:
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        print("lm-evaluation-harness: not installed (pip install lm-eval), skipped")
        return None
    import hashlib
    import json
    import tempfile

    from model.core import ItemResult
    from model.export import export

    work = Path(tempfile.mkdtemp(prefix="eval-speed-"))
    data, ckpt = work / "data", work / "checkpoints" / "step-0000000"
    data.mkdir(parents=True)
    ckpt.mkdir(parents=True)
    blob = tok.to_str()
    (data / "tokenizer.json").write_text(blob)
    (data / "_tokens.json").write_text(json.dumps({"tokenizer": "tokenizer.json", "separator_id": 0,
                                                   "tokenizer_sha256": hashlib.sha256(blob.encode()).hexdigest()}))
    torch.save(model.state_dict(), ckpt / "model.pt")
    (ckpt / "state.json").write_text(json.dumps({"model": model.cfg.to_dict(), "data_dir": str(data), "step": 0,
                                                 "tokens": 0}))
    exported = export(ckpt, work / "hf")
    lm = HFLM(pretrained=str(exported), device="cuda" if torch.cuda.is_available() else "cpu",
              batch_size=args.batch_rows, max_length=args.seq_len, dtype="float32")
    requests, owners = [], []
    for i, item in enumerate(prepared):
        for j, (t, s, e) in enumerate(zip(item.tokens, item.starts, item.ends)):
            requests.append((("", ""), t[:s], t[s:e]))
            owners.append((i, j, e - s))

    def run() -> list:
        out = lm._loglikelihood_tokens(requests, disable_tqdm=True)
        loss: dict[tuple[int, int], float] = {}
        greedy: dict[tuple[int, int], bool] = {}
        for (i, j, n), (logprob, is_greedy) in zip(owners, out):
            loss[(i, j)], greedy[(i, j)] = -logprob / n, bool(is_greedy)
        results = []
        for i, item in enumerate(prepared):
            if item.kind == "language_modelling":
                results.append(ItemResult(i, int(greedy[(i, 0)]), greedy[(i, 0)], [loss[(i, 0)]]))
            else:
                per = [loss[(i, j)] for j in range(len(item.tokens))]
                pred = min(range(len(per)), key=per.__getitem__)
                results.append(ItemResult(i, pred, pred == item.gold, per))
        return results

    return run

if __name__ == "__main__":
    main()
