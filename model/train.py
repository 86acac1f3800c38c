"""Pretraining: a ``torchrun`` entry point (DDP; NCCL on GPU, gloo on CPU) that resumes exactly.

    torchrun --nproc-per-node 2 -m model.train --config work/train/<key>/args.json
    python -m model.train --config args.json            # one process

``args.json`` holds a ``TrainArgs``. Everything the run writes goes under ``out_dir``:

- ``metrics.jsonl`` (rank 0): one line per step (loss, lr, grad norm, tokens, tokens/s, MFU on a GPU with a known
  peak, peak GPU memory or, on CPU, peak RSS) and one per validation (val loss, bits per byte); the orchestrator
  ingests it into the warehouse;
- ``estimates.json``: parameters N, tokens D, 6ND FLOPs, tokens per parameter against Chinchilla's ~20, and the
  training memory estimate (16 bytes per parameter plus activations);
- ``checkpoints/step-NNNNNNN/``: ``model.pt``, ``optimizer.pt`` and ``state.json`` (step, tokens, the loader's
  state, RNG states, validation, the args and the model config), written under a temporary name and renamed;
  every ``checkpoint_every`` steps, when validation improves (``best.json`` names it) and at the end
  (``final.json``).

A run started again with the same ``out_dir`` resumes from its newest checkpoint: model, optimizer, schedule step,
loader position and RNG states, so a run killed with SIGKILL continues on exactly the loss curve of an unbroken run
(on CPU with a fixed seed; tested). Metric lines past the checkpoint are dropped on resume.

Optimizer: AdamW (beta1 0.9, beta2 0.95, eps 1e-8) with decoupled weight decay (lr * lambda * theta) on the
Linear weight matrices only, not on embeddings or norms. Schedule: linear warmup, then cosine decay to
``min_lr_ratio * lr`` (or warmup-stable-decay). Gradients are clipped by their global norm. bf16 autocast on CUDA,
fp32 on CPU. Gradient accumulation reaches ``total_batch_tokens``; the global batch holds the same rows whatever
the number of ranks (see ``model.data``).

Why one module of ~540 lines: like nanochat's base_train.py, the training loop reads top to bottom in one file
(arguments, setup, schedule, step, validation, checkpoint and exact resume share the loop's state); the model, the
data loader and the scoring are modules of their own.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist

from model.data import IGNORE, TrainLoader, ValLoader
from model.gpt import GPT, GPTConfig
from tasks.atomic import atomic_write_text
from tasks.config import TrainConfig
from tasks.procs import die_with_parent, exit_now
from tasks.token_shards import read_token_manifest

# bf16 dense peak FLOP/s per GPU, by a substring of torch.cuda.get_device_name()
PEAK_FLOPS = {"H200": 989e12, "H100 NVL": 835e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12}
CHINCHILLA_TOKENS_PER_PARAM = 20


_TRAIN = TrainConfig()


@dataclass
class TrainArgs:
    """The [train] section (tasks/config.py TrainConfig, which documents each setting) as the ranks read it, plus
    where to read and write. Its defaults ARE that section's: one definition per setting (a test holds them equal)."""

    data_dir: str
    out_dir: str
    model: dict[str, Any] = field(default_factory=dict)  # GPTConfig fields; vocab_size comes from the data
    seed: int = _TRAIN.seed
    device: str = _TRAIN.device
    batch_size: int = _TRAIN.batch_size
    seq_len: int = _TRAIN.seq_len
    total_batch_tokens: int | None = _TRAIN.total_batch_tokens
    max_steps: int = _TRAIN.max_steps
    max_seconds: float | None = _TRAIN.max_seconds
    lr: float = _TRAIN.lr
    min_lr_ratio: float = _TRAIN.min_lr_ratio
    warmup_steps: int = _TRAIN.warmup_steps
    schedule: Literal["cosine", "wsd"] = _TRAIN.schedule
    decay_fraction: float = _TRAIN.decay_fraction
    weight_decay: float = _TRAIN.weight_decay
    beta1: float = _TRAIN.beta1
    beta2: float = _TRAIN.beta2
    eps: float = _TRAIN.eps
    grad_clip: float = _TRAIN.grad_clip
    eval_every: int = _TRAIN.eval_every
    eval_batches: int | None = _TRAIN.eval_batches
    checkpoint_every: int = _TRAIN.checkpoint_every
    keep_checkpoints: int = _TRAIN.keep_checkpoints
    compile: bool = _TRAIN.compile
    dtype: Literal["auto", "bf16", "fp32"] = _TRAIN.dtype
    fsdp: bool = _TRAIN.fsdp
    buffer_docs: int = _TRAIN.buffer_docs

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> "TrainArgs":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown training arguments: {', '.join(unknown)}")
        return cls(**value)


def lr_at(args: TrainArgs, step: int) -> float:
    """Linear warmup over warmup_steps, then cosine (or stable-then-linear) decay to min_lr_ratio * lr."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    floor = args.lr * args.min_lr_ratio
    if args.schedule == "wsd":
        decay_start = args.max_steps * (1 - args.decay_fraction)
        if step < decay_start:
            return args.lr
        frac = (step - decay_start) / max(1, args.max_steps - decay_start)
        return args.lr - (args.lr - floor) * min(1.0, frac)
    frac = (step - args.warmup_steps) / max(1, args.max_steps - args.warmup_steps)
    return floor + 0.5 * (args.lr - floor) * (1 + math.cos(math.pi * min(1.0, frac)))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay the Linear weight matrices; not embeddings (nor a head tied to them) and not norm weights."""
    embed_ids = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay, other, seen = [], [], set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen:  # a tied weight appears twice
                continue
            seen.add(id(p))
            if isinstance(module, torch.nn.Linear) and name == "weight" and id(p) not in embed_ids:
                decay.append(p)
            else:
                other.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]


def token_bytes(tokenizer_json: Path, vocab_size: int) -> torch.Tensor:
    """UTF-8 bytes of every token id (0 for special tokens): byte-level BPE maps one character to one byte."""
    spec = json.loads(Path(tokenizer_json).read_text())
    out = torch.zeros(vocab_size, dtype=torch.int64)
    special = {t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
    for token, i in spec["model"]["vocab"].items():
        if i < vocab_size and i not in special:
            out[i] = len(token)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Distributed set-up


@dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device_name: str = "auto") -> Dist:
    """This process's rank, world and device from torchrun's environment; joins the process group if world > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() if device_name == "auto" else device_name.startswith("cuda")
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    return Dist(rank, world, local, device)


def all_sum(values: list[float], d: Dist) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=d.device)
    if d.world > 1:
        dist.all_reduce(t)
    return t.tolist()


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints


def checkpoints(out_dir: Path) -> list[Path]:
    """Finished checkpoints, oldest first (a directory exists only once it is complete)."""
    return sorted((out_dir / "checkpoints").glob("step-*[0-9]"))


def rng_state() -> dict[str, Any]:
    """Every generator's state as tensors, ints, floats and strings only, so that it loads with
    ``torch.load(weights_only=True)`` (no pickled numpy arrays or tuples of arbitrary objects)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                        "gauss_next": gauss_next}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, fsdp: bool) -> tuple[dict, dict]:
    """Unsharded model and optimizer state dicts (gathered to CPU under FSDP)."""
    if not fsdp:
        return model.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
    return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, model_state: dict,
                    optim_state: dict, fsdp: bool) -> None:
    if not fsdp:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optim_state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
                   options=StateDictOptions(full_state_dict=True))


def save_checkpoint(out_dir: Path, step: int, model_state: dict, optim_state: dict, state: dict[str, Any],
                    reason: str, keep: int) -> Path:
    """Write step-NNNNNNN atomically (a temporary directory renamed); prune old periodic checkpoints."""
    root = out_dir / "checkpoints"
    final = root / f"step-{step:07d}"
    if final.exists():
        return final
    tmp = root / f".tmp-step-{step:07d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(model_state, tmp / "model.pt")
    torch.save(optim_state, tmp / "optimizer.pt")
    torch.save(rng_state(), tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps({**state, "reason": reason}, indent=1, default=str))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    os.replace(tmp, final)
    protected = {json.loads(p.read_text())["checkpoint"] for p in (out_dir / "best.json", out_dir / "final.json")
                 if p.exists()} | {final.name}
    periodic = [c for c in checkpoints(out_dir) if c.name not in protected]
    for old in periodic[:-keep] if keep > 0 else periodic:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=1, default=str))


class Metrics:
    """metrics.jsonl, appended by rank 0 and truncated to the resumed step on resume."""

    def __init__(self, path: Path, main: bool, resume_step: int) -> None:
        self.path, self.main = path, main
        if main and path.exists():
            kept = [line for line in path.read_text().splitlines() if _step_of(line) <= resume_step]
            _write_json_lines(path, kept)
        self.fh = open(path, "a") if main else None

    def write(self, **row: Any) -> None:
        if self.fh is not None:
            self.fh.write(json.dumps(row) + "\n")
            self.fh.flush()

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()


def _step_of(line: str) -> float:
    """The step of a metrics line; a torn line (the process was killed mid-write) sorts after every step, so a
    resume drops it, as the orchestrator's reader skips it."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def _write_json_lines(path: Path, lines: list[str]) -> None:
    atomic_write_text(path, "".join(line + "\n" for line in lines))


# ---------------------------------------------------------------------------------------------------------------
# Training


def estimates(model: GPT, args: TrainArgs, tokens_per_step: int) -> dict[str, Any]:
    n = model.num_params()
    n_body = model.num_params(embeddings=False)
    d = tokens_per_step * args.max_steps
    cfg = model.cfg
    # activations per layer, bytes, for 2-byte activations without recomputation (Korthikanti et al. 2022),
    # with flash attention's memory (no T^2 score matrix): about 34 * batch * seq * d_model
    act = 34 * args.batch_size * args.seq_len * cfg.d_model * cfg.depth
    return {"params": n, "params_non_embedding": n_body, "tokens": d, "train_flops_6nd": 6 * n * d,
            "flops_per_token": model.flops_per_token(args.seq_len), "tokens_per_param": d / n,
            "chinchilla_tokens_per_param": CHINCHILLA_TOKENS_PER_PARAM,
            "chinchilla_optimal_tokens": CHINCHILLA_TOKENS_PER_PARAM * n,
            "memory_params_optimizer_bytes": 16 * n, "memory_activations_bytes_per_rank": act,
            "memory_estimate_bytes_per_rank": 16 * n + act}


@torch.no_grad()
def validate(model: torch.nn.Module, data_dir: str | Path, *, batch_size: int, seq_len: int, d: Dist,
             tbytes: torch.Tensor, separator: int, autocast, max_batches: int | None = None) -> dict[str, float]:
    """Val loss (mean NLL in nats over every target), perplexity = exp(val loss), and bits per byte = total NLL in
    nats over text targets / (ln 2 x their UTF-8 bytes), special tokens excluded; summed over all ranks. With more
    than one source in the val split, also ``val_loss/<source>`` and ``val_bpb/<source>`` for each."""
    was_training = model.training
    model.eval()
    loader = ValLoader(data_dir, batch_size=batch_size, seq_len=seq_len, rank=d.rank, world_size=d.world)
    k = len(loader.sources)
    tb = tbytes.cpu()
    sums = torch.zeros((4, k + 1), dtype=torch.float64)  # nll, count, nll_text, bytes; per source, then all
    for i, (x, y, src) in enumerate(loader.with_sources()):
        if max_batches is not None and i >= max_batches:
            break
        x, y = x.to(d.device), y.to(d.device)
        with autocast:
            losses = model(x, y, reduction="none").float().cpu().double()
        y, src = y.cpu(), src.clamp(min=0)
        real = y != IGNORE
        nbytes = tb[y.clamp(min=0)].double()
        text = real & (y != separator) & (nbytes > 0)
        for row, mask, values in ((0, real, losses), (1, real, torch.ones_like(losses)), (2, text, losses),
                                  (3, text, nbytes)):
            sums[row, :k] += torch.bincount(src[mask], weights=values[mask], minlength=k)[:k]
    sums[:, k] = sums[:, :k].sum(dim=1)
    totals = all_sum(sums.flatten().tolist(), d)
    sums = torch.tensor(totals, dtype=torch.float64).view(4, k + 1)
    model.train(was_training)

    def figures(col: int) -> tuple[float, float]:
        nll, count, nll_text, nb = sums[:, col].tolist()
        return nll / max(count, 1), nll_text / (math.log(2) * max(nb, 1))

    loss, bpb = figures(k)
    out = {"val_loss": loss, "val_ppl": math.exp(min(loss, 700.0)), "val_bpb": bpb,
           "val_tokens": float(sums[1, k]), "val_bytes": float(sums[3, k])}
    if k > 1:
        for col, name in enumerate(loader.sources):
            out[f"val_loss/{name}"], out[f"val_bpb/{name}"] = figures(col)
    return out


def evaluate(model: torch.nn.Module, args: TrainArgs, d: Dist, tbytes: torch.Tensor, separator: int,
             autocast) -> dict[str, float]:
    return validate(model, args.data_dir, batch_size=args.batch_size, seq_len=args.seq_len, d=d, tbytes=tbytes,
                    separator=separator, autocast=autocast, max_batches=args.eval_batches)


def train(args: TrainArgs) -> dict[str, Any]:
    d = setup(args.device)
    out = Path(args.out_dir)
    if d.main:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        # A checkpoint write that a kill cut short left its temporary directory: nothing will finish it.
        for stale in (out / "checkpoints").glob(".tmp-step-*"):
            shutil.rmtree(stale, ignore_errors=True)
    manifest = read_token_manifest(Path(args.data_dir))
    vocab, separator = int(manifest["vocab_size"]), int(manifest["separator_id"])
    cfg = GPTConfig(**{"seq_len": args.seq_len, **args.model, "vocab_size": vocab})
    rows_per_step = args.total_batch_tokens // args.seq_len if args.total_batch_tokens else args.batch_size * d.world
    if rows_per_step % (args.batch_size * d.world):
        raise ValueError(f"total_batch_tokens {args.total_batch_tokens} is not a multiple of batch_size x seq_len x "
                         f"ranks = {args.batch_size * args.seq_len * d.world}")
    accum = rows_per_step // (args.batch_size * d.world)
    tokens_per_step = rows_per_step * args.seq_len

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    model = GPT(cfg).to(d.device)
    bf16 = d.device.type == "cuda" and args.dtype in ("auto", "bf16")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else nullcontext()
    loader = TrainLoader(args.data_dir, batch_size=args.batch_size, seq_len=args.seq_len, rank=d.rank,
                         world_size=d.world, seed=args.seed, buffer_docs=args.buffer_docs, device=d.device)
    tbytes = token_bytes(Path(args.data_dir) / manifest["tokenizer"], vocab).to(d.device)
    if args.eval_every and not manifest["splits"].get("val", {}).get("docs"):
        if d.main:
            print("warning: the val split is empty, so there is no validation (raise tokenize.val_fraction)",
                  flush=True)
        args.eval_every = 0
    fsdp = args.fsdp and d.world > 1

    wrapped: torch.nn.Module = model
    if fsdp:
        from torch.distributed.fsdp import fully_shard
        for block in model.layers:
            fully_shard(block)
        fully_shard(model)
    elif d.world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[d.local_rank] if d.device.type == "cuda" else None)
    # built after sharding, so that it holds the sharded parameters
    optimizer = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr,
                                  betas=(args.beta1, args.beta2), eps=args.eps, fused=d.device.type == "cuda")

    step, tokens, best = 0, 0, None
    found = checkpoints(out)
    if found:
        last = found[-1]
        state = json.loads((last / "state.json").read_text())
        load_full_state(model, optimizer, torch.load(last / "model.pt", map_location="cpu"),
                        torch.load(last / "optimizer.pt", map_location="cpu"), fsdp)
        loader.load_state_dict(state["loader"])
        set_rng_state(torch.load(last / "rng.pt", weights_only=True))
        step, tokens, best = state["step"], state["tokens"], state.get("best_val_bpb")
        if d.main:
            print(f"resuming from {last.name}: step {step}, {tokens:,} tokens", flush=True)
    if args.compile:
        wrapped = torch.compile(wrapped)
    metrics = Metrics(out / "metrics.jsonl", d.main, step)
    if d.main:
        est = estimates(model, args, tokens_per_step)
        est.update(accum_steps=accum, world_size=d.world, tokens_per_step=tokens_per_step, model=cfg.to_dict(),
                   device=str(d.device), dtype="bf16" if bf16 else "fp32")
        _write_json(out / "estimates.json", est)
        print(f"model {est['params'] / 1e6:.2f} M params, {tokens_per_step:,} tokens per step "
              f"({accum} micro-steps x {d.world} ranks), {est['tokens_per_param']:.2f} tokens per parameter",
              flush=True)

    peak = peak_flops(d.device)
    flops_per_token = model.flops_per_token(args.seq_len)
    started = time.time()

    def state_for(val: dict[str, float] | None) -> dict[str, Any]:
        return {"step": step, "tokens": tokens, "loader": loader.state_dict(), "val": val, "best_val_bpb": best,
                "args": asdict(args), "model": cfg.to_dict(), "data_dir": args.data_dir,
                "tokenizer_sha256": manifest["tokenizer_sha256"], "world_size": d.world}

    def checkpoint(reason: str, val: dict[str, float] | None = None) -> None:
        model_state, optim_state = full_state(model, optimizer, fsdp)  # collective under FSDP: every rank
        if d.main:
            path = save_checkpoint(out, step, model_state, optim_state, state_for(val), reason,
                                   args.keep_checkpoints)
            print(f"checkpoint {path.name} ({reason})", flush=True)
        if d.world > 1:
            dist.barrier()

    val, val_step = None, None
    while step < args.max_steps:
        if args.max_seconds is not None and time.time() - started > args.max_seconds:
            if d.main:
                print(f"stopping at step {step}: max_seconds {args.max_seconds} reached", flush=True)
            break
        t0 = time.perf_counter()
        lr = lr_at(args, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = 0.0
        for micro in range(accum):
            x, y = next(loader)
            sync = micro == accum - 1 or d.world == 1 or args.fsdp
            with (nullcontext() if sync else wrapped.no_sync()), autocast:
                loss = wrapped(x, y) / accum
            loss.backward()
            loss_sum += loss.item()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        grad_norm = (norm.full_tensor() if hasattr(norm, "full_tensor") else norm).item()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens += tokens_per_step
        if d.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        loss_mean = all_sum([loss_sum], d)[0] / d.world
        rate = tokens_per_step / seconds
        row = {"step": step, "loss": loss_mean, "lr": lr, "grad_norm": grad_norm, "tokens": tokens,
               "tokens_per_s": rate, "seconds": seconds}
        if peak:
            row["mfu"] = flops_per_token * rate / (peak * d.world)
        if d.device.type == "cuda":
            row["peak_memory_bytes"] = torch.cuda.max_memory_allocated(d.device)
        else:  # the process's peak resident set (Linux reports KiB)
            row["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        metrics.write(**row)
        if d.main and (step % 10 == 0 or step == 1):
            print(f"step {step}/{args.max_steps} loss {loss_mean:.4f} lr {lr:.2e} grad_norm {grad_norm:.3f} "
                  f"{rate:,.0f} tok/s" + (f" mfu {row['mfu']:.1%}" if peak else ""), flush=True)
        if args.eval_every and step % args.eval_every == 0:
            val = evaluate(wrapped, args, d, tbytes, separator, autocast)
            val_step = step
            metrics.write(step=step, **val)
            if d.main:
                print(f"step {step} val loss {val['val_loss']:.4f} bpb {val['val_bpb']:.4f}", flush=True)
            if best is None or val["val_bpb"] < best:
                best = val["val_bpb"]
                checkpoint("best", val)
                if d.main:
                    _write_json(out / "best.json", {"checkpoint": f"step-{step:07d}", "val_bpb": best})
        if args.checkpoint_every and step % args.checkpoint_every == 0:
            checkpoint("periodic", val)

    if args.eval_every and val_step != step:
        val = evaluate(wrapped, args, d, tbytes, separator, autocast)
        metrics.write(step=step, **val)
        if d.main:
            print(f"final val loss {val['val_loss']:.4f} bpb {val['val_bpb']:.4f}", flush=True)
    checkpoint("final", val)
    if d.main:
        _write_json(out / "final.json", {"checkpoint": f"step-{step:07d}", "step": step, "tokens": tokens,
                                         "val": val, "seconds": time.time() - started})
    metrics.close()
    if d.world > 1:
        dist.destroy_process_group()
    return {"step": step, "tokens": tokens, "val": val}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Train the GPT on a tokenize dataset (run it under torchrun).")
    ap.add_argument("--config", required=True, help="a JSON file of TrainArgs")
    ns = ap.parse_args(argv)
    args = TrainArgs.from_json(json.loads(Path(ns.config).read_text()))
    try:
        train(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    # A rank never outlives its launcher (torchrun, or crucible without it): killed with SIGKILL, the launcher
    # cannot stop it, and it would go on appending steps to metrics.jsonl.
    die_with_parent()
    main()
    exit_now()  # written and closed: skip a teardown that can abort (tasks/procs.py)
