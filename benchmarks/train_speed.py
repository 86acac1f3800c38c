"""Training throughput: tokens/s and MFU of one optimizer step of the GPT, as model/train.py runs it.

    python benchmarks/train_speed.py                          # CPU: a depth-4 model, fp32
    python benchmarks/train_speed.py --depth 12 --seq-len 1024 --batch 16 --compile   # GPU: ~124M, bf16

Random token ids (throughput does not depend on the data; the loader's own speed is in tokenize_speed.py).
Each step is forward, backward, global-norm clipping and a fused AdamW step with the training run's parameter
groups, under bf16 autocast on CUDA. The first ``--warmup`` steps (compilation, allocator) are not timed; the
figures are medians over ``--steps`` timed steps. MFU = (6 x non-embedding parameters + 12 x depth x d_model x
seq_len) FLOPs per token x tokens/s / the GPU's bf16 dense peak (model/train.py's PEAK_FLOPS). A CPU has no
published peak, so there the reference is measured: the best FLOP/s of a 2048 x 2048 fp32 matmul on the same threads
(an achievable peak, which flatters MFU against a datasheet one).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.gpt import GPT, GPTConfig  # noqa: E402
from model.train import param_groups, peak_flops  # noqa: E402


def matmul_peak(device: torch.device, n: int = 2048, repeats: int = 10) -> float:
    """The best FLOP/s of an n x n fp32 matmul: a measured stand-in for a peak the device does not publish."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=None)
    ap.add_argument("--vocab", type=int, default=50304, help="GPT-2's, padded to a multiple of 64 (default)")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8, help="rows per step")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=args.vocab, depth=args.depth, d_model=args.d_model, seq_len=args.seq_len)
    model = GPT(cfg).to(device)
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-4, betas=(0.9, 0.95), eps=1e-8,
                            fused=device.type == "cuda")
    step_model = torch.compile(model) if args.compile else model
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    x = torch.randint(0, args.vocab, (args.batch, args.seq_len), device=device)
    y = torch.randint(0, args.vocab, (args.batch, args.seq_len), device=device)

    times = []
    for i in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with autocast:
            loss = step_model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)

    tokens = args.batch * args.seq_len
    seconds = statistics.median(times)
    rate = tokens / seconds
    flops = model.flops_per_token(args.seq_len)
    peak = peak_flops(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; dtype {'bf16 autocast' if device.type == 'cuda' else 'fp32'}; "
          f"compile {args.compile}")
    print(f"model: depth {cfg.depth}, d_model {cfg.d_model}, heads {cfg.n_heads}, vocab {cfg.vocab_size}, "
          f"{model.num_params() / 1e6:.1f} M parameters ({model.num_params(embeddings=False) / 1e6:.1f} M "
          f"non-embedding), {flops / 1e6:.1f} MFLOPs per token")
    print(f"batch {args.batch} x {args.seq_len} = {tokens:,} tokens per step; median of {args.steps} steps: "
          f"{seconds * 1000:.1f} ms")
    print(f"tokens/s: {rate:,.0f}")
    if peak:
        print(f"MFU: {flops * rate / peak:.1%} of {peak / 1e12:.0f} TFLOP/s")
    else:
        measured = matmul_peak(device)
        print(f"MFU: {flops * rate / measured:.1%} of a measured fp32 matmul peak of {measured / 1e9:.0f} GFLOP/s "
              "(no published peak for this device)")
    if device.type == "cuda":
        print(f"peak memory: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
