"""A small reference language model for perplexity filtering (CCNet's recipe, with Crucible's own GPT for KenLM).

CCNet scores every document with a 5-gram KenLM trained on Wikipedia and keeps the low-perplexity head. KenLM's
Python package only queries models; training one needs its C++ ``lmplz``, which no registry here installs. So
select trains this: the project's GPT (model/gpt.py), a couple of layers, on token rows cut from the reference
text, with AdamW (beta2 0.95), linear warmup, cosine decay and global-norm clipping, as model/train.py does. It
scores a document by the mean NLL of its first ``seq_len`` tokens, perplexity = exp(mean NLL in nats), in batches
of documents of similar length, on the GPU when there is one. On CPU both run on one intra-op thread
(``reproducible``): MKL's multi-threaded kernels round differently from one process to the next, and a run killed
in select must write, when run again, the same model and the same perplexities to the last bit.

    lm = train_reference_lm(token_lists, LMParams(vocab_size=4096), out_dir)   # saves model.pt + lm.json
    ppl = perplexities(lm, token_lists_to_score)                              # numpy float64, one per document
"""
from __future__ import annotations

import json
import math
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from model.gpt import GPT, GPTConfig, IGNORE
from model.train import param_groups
from tasks.atomic import atomic_file


@dataclass(frozen=True)
class LMParams:
    vocab_size: int
    depth: int = 2
    d_model: int = 128
    seq_len: int = 256
    batch_size: int = 16
    steps: int = 300
    lr: float = 3e-3
    warmup_steps: int = 20
    weight_decay: float = 0.1
    seed: int = 0
    device: str = "auto"


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


_threads_lock = threading.Lock()
_threads_users = 0
_threads_before = 0


@contextmanager
def reproducible(device: torch.device) -> Iterator[None]:
    """On CPU, torch on one thread while inside (shared by the threads inside at once; the count before comes back
    when the last leaves): two fresh processes training the same model on two threads gave two different models in
    about one run in three (first-step gradient norms differing in the 7th digit), on one thread never."""
    global _threads_users, _threads_before
    if device.type != "cpu":
        yield
        return
    with _threads_lock:
        if _threads_users == 0:
            _threads_before = torch.get_num_threads()
        _threads_users += 1
        torch.set_num_threads(1)  # this thread's OpenMP regions and MKL's
    try:
        yield
    finally:
        with _threads_lock:
            _threads_users -= 1
            if _threads_users == 0:
                torch.set_num_threads(_threads_before)


def _config(p: LMParams) -> GPTConfig:
    return GPTConfig(vocab_size=p.vocab_size, depth=p.depth, d_model=p.d_model, n_heads=max(1, p.d_model // 64),
                     seq_len=p.seq_len)


def _rows(docs: Sequence[Sequence[int]], seq_len: int) -> torch.Tensor:
    """The documents laid end to end and cut into rows of seq_len + 1 tokens (input and shifted target)."""
    flat = np.fromiter((t for d in docs for t in d), dtype=np.int64)
    n = (len(flat) - 1) // seq_len
    if n < 1:
        raise ValueError(f"the reference holds {len(flat)} tokens, fewer than one row of {seq_len + 1}")
    idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    return torch.from_numpy(flat[idx])


def train_reference_lm(docs: Sequence[Sequence[int]], params: LMParams, out_dir: Path) -> dict[str, Any]:
    """Train on the documents' tokens (each starting with the separator), save ``model.pt`` and ``lm.json`` in
    ``out_dir`` atomically; returns what lm.json records (the settings, rows, the first and last training loss)."""
    device = pick_device(params.device)
    with reproducible(device):
        return _train(docs, params, out_dir, device)


def _train(docs: Sequence[Sequence[int]], params: LMParams, out_dir: Path, device: torch.device) -> dict[str, Any]:
    torch.manual_seed(params.seed)
    rows = _rows(docs, params.seq_len)
    gen = torch.Generator().manual_seed(params.seed)
    model = GPT(_config(params)).to(device)
    opt = torch.optim.AdamW(param_groups(model, params.weight_decay), lr=params.lr, betas=(0.9, 0.95), eps=1e-8)
    losses = []
    model.train()
    for step in range(params.steps):
        lr = (params.lr * (step + 1) / params.warmup_steps if step < params.warmup_steps else
              params.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * (step - params.warmup_steps)
                                                       / max(1, params.steps - params.warmup_steps)))))
        for group in opt.param_groups:
            group["lr"] = lr
        batch = rows[torch.randint(len(rows), (params.batch_size,), generator=gen)].to(device)
        loss = model(batch[:, :-1], batch[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(out_dir / "model.pt") as tmp:
        torch.save({k: v.cpu() for k, v in model.state_dict().items()}, tmp)
    tail = losses[-min(20, len(losses)):]
    facts = {"params": asdict(params), "rows": len(rows), "tokens": int(rows.numel()),
             "first_loss": losses[0], "final_loss": float(np.mean(tail)), "device": str(device)}
    with atomic_file(out_dir / "lm.json") as tmp:
        tmp.write_text(json.dumps(facts, indent=1))
    return facts


def load_reference_lm(out_dir: Path, device: str = "auto") -> GPT:
    facts = json.loads((Path(out_dir) / "lm.json").read_text())
    params = LMParams(**{**facts["params"], "device": device})
    model = GPT(_config(params))
    model.load_state_dict(torch.load(Path(out_dir) / "model.pt", map_location="cpu", weights_only=True))
    return model.to(pick_device(device)).eval()


@torch.no_grad()
def perplexities(model: GPT, docs: Sequence[Sequence[int]], batch_tokens: int = 16_384) -> np.ndarray:
    """exp(mean NLL in nats) of each document's first seq_len + 1 tokens (its first token, the separator, is only
    context); NaN for a document of fewer than two tokens. Documents are batched by length, padding ignored."""
    device = next(model.parameters()).device
    with reproducible(device):
        return _perplexities(model, docs, batch_tokens, device)


def _perplexities(model: GPT, docs: Sequence[Sequence[int]], batch_tokens: int, device: torch.device) -> np.ndarray:
    seq = model.cfg.seq_len
    docs = [list(d[:seq + 1]) for d in docs]
    out = np.full(len(docs), np.nan)
    order = sorted((i for i, d in enumerate(docs) if len(d) >= 2), key=lambda i: len(docs[i]))
    start = 0
    while start < len(order):
        width = len(docs[order[start]]) - 1
        end = start
        while end < len(order) and (end - start + 1) * (len(docs[order[end]]) - 1) <= max(batch_tokens, width):
            end += 1
        chunk = order[start:end]
        width = max(len(docs[i]) for i in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        targets = torch.full((len(chunk), width - 1), IGNORE, dtype=torch.long)
        for r, i in enumerate(chunk):
            d = torch.tensor(docs[i], dtype=torch.long)
            ids[r, :len(d)] = d
            targets[r, :len(d) - 1] = d[1:]
        nll = model(ids[:, :-1].to(device), targets.to(device), reduction="none").double().sum(1).cpu().numpy()
        counts = (targets != IGNORE).sum(1).numpy()
        out[chunk] = np.exp(nll / counts)
        start = end
    return out


__all__ = ["LMParams", "train_reference_lm", "load_reference_lm", "perplexities", "pick_device"]
