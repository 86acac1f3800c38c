"""The data mixture: how many times one pass of training uses each document, so each source gets its share.

A source has a ``weight`` (a target share of the training tokens) or ``epochs`` (how many times a pass uses each of
its documents; 1 when neither is set). With T_s the source's training tokens (each document once):

- sources with epochs contribute e_s x T_s tokens, F in all; the weighted ones share what is left, so one pass
  holds M = F / (1 - W) tokens, W the weights' sum (when every source has a weight, W = 1 and M = the tokens of
  all sources once: the mixture reweights without growing);
- a weighted source's epochs are e_s = w_s x M / T_s;
- every document of the source is used floor(e_s) times, plus once more for the documents first in a fixed
  pseudo-random order (a hash of doc_id and seed) until the fraction's tokens are reached. So down-sampling keeps
  a fixed subset, up-sampling repeats every document, and the realised share is off the target by at most one
  document's tokens.

The repeat counts are written per training shard to ``_mixture.parquet`` (one row per shard, a list of uint16
counts in document order), listed in the dataset manifest so that the dataset's fingerprint follows the mixture.
The loader (``model.data.TrainLoader``) visits each document that many times per pass, in its seeded order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.shards import write_parquet_atomic
from tasks.tokenizer import seeded_hash

MIXTURE_FILE = "_mixture.parquet"
MAX_REPEATS = np.iinfo(np.uint16).max


@dataclass
class SourceMix:
    """One source's part of the mixture."""

    name: str
    tokens: int                 # training tokens, each document once
    docs: int
    target_share: float | None  # its weight, if it has one
    epochs: float               # planned passes over its tokens
    tokens_used: int = 0        # realised: sum of repeats x tokens
    share: float = 0.0
    repeats_min: int = 0        # the fewest and most times a pass uses one of its documents
    repeats_max: int = 0


def plan_epochs(tokens: dict[str, int], weights: dict[str, float], epochs: dict[str, float]) -> dict[str, float]:
    """Passes per source: ``epochs`` where set (default 1), and for weighted sources what reaches their share."""
    fixed = {s: epochs.get(s, 1.0) for s in tokens if s not in weights}
    total_fixed = sum(e * tokens[s] for s, e in fixed.items())
    weighted = {s: w for s, w in weights.items() if tokens.get(s)}
    share_left = 1.0 - sum(weighted.values())
    if not weighted:
        return fixed
    if share_left <= 1e-9 or total_fixed == 0:
        mixture = sum(tokens[s] for s in weighted) + total_fixed  # every source weighted: same size, reweighted
        scale = sum(weighted.values())
        planned = {s: w / scale * mixture / tokens[s] for s, w in weighted.items()}
    else:
        mixture = total_fixed / share_left
        planned = {s: w * mixture / tokens[s] for s, w in weighted.items()}
    return {**fixed, **planned, **{s: 0.0 for s in weights if s not in weighted and s in tokens}}


def _rank(doc_ids: list[str], seed: int) -> np.ndarray:
    return np.array([seeded_hash("mix", seed, d) for d in doc_ids], dtype=np.uint64)


def choose_repeats(lengths: np.ndarray, doc_ids: list[str], epochs: float, seed: int) -> np.ndarray:
    """Each document's uses per pass: floor(epochs) for all, one more for a hash-ordered prefix that makes up the
    fraction (the prefix ends where its tokens come closest to the fraction's)."""
    base = min(int(math.floor(epochs)), MAX_REPEATS)
    repeats = np.full(len(lengths), base, dtype=np.uint16)
    target = (epochs - math.floor(epochs)) * float(lengths.sum())
    if target <= 0 or not len(lengths) or base >= MAX_REPEATS:
        return repeats
    order = np.argsort(_rank(doc_ids, seed), kind="stable")
    cum = np.cumsum(lengths[order].astype(np.float64))
    k = int(np.searchsorted(cum, target))  # cum[k] is the first prefix at or past the target
    if k >= len(cum):
        k = len(cum) - 1
    elif k > 0 and abs(cum[k - 1] - target) <= abs(cum[k] - target):
        k -= 1
    if k == 0 and abs(cum[0] - target) > target:  # even one document overshoots more than none
        return repeats
    repeats[order[:k + 1]] += 1
    return repeats


def build_mixture(shards: list[tuple[str, list[str], list[str | None], np.ndarray]], weights: dict[str, float],
                  epochs: dict[str, float], seed: int) -> tuple[dict[str, np.ndarray], list[SourceMix]]:
    """Repeats per training shard (name -> uint16 per document) and each source's figures, from the shards'
    (name, doc_ids, sources, token lengths)."""
    by_source: dict[str, list[tuple[str, int]]] = {}
    for name, _, sources, _ in shards:
        for i, s in enumerate(sources):
            by_source.setdefault(s or "", []).append((name, i))
    lengths = {name: lens for name, _, _, lens in shards}
    ids = {name: doc_ids for name, doc_ids, _, _ in shards}
    tokens = {s: int(sum(lengths[n][i] for n, i in refs)) for s, refs in by_source.items()}
    planned = plan_epochs(tokens, {s: w for s, w in weights.items() if s in tokens},
                          {s: e for s, e in epochs.items() if s in tokens})
    repeats = {name: np.zeros(len(doc_ids), dtype=np.uint16) for name, doc_ids, _, _ in shards}
    mixes = []
    for s, refs in sorted(by_source.items()):
        lens = np.array([lengths[n][i] for n, i in refs], dtype=np.int64)
        chosen = choose_repeats(lens, [ids[n][i] for n, i in refs], planned.get(s, 1.0), seed)
        for (n, i), r in zip(refs, chosen):
            repeats[n][i] = r
        mixes.append(SourceMix(s, tokens[s], len(refs), weights.get(s), planned.get(s, 1.0),
                               int((lens * chosen).sum()), repeats_min=int(chosen.min()) if len(chosen) else 0,
                               repeats_max=int(chosen.max()) if len(chosen) else 0))
    used = sum(m.tokens_used for m in mixes)
    for m in mixes:
        m.share = m.tokens_used / used if used else 0.0
    return repeats, mixes


def write_mixture(out_dir: Path, repeats: dict[str, np.ndarray]) -> Path:
    table = pa.table({"shard": pa.array(sorted(repeats), pa.string()),
                      "repeats": pa.array([repeats[n] for n in sorted(repeats)], pa.list_(pa.uint16()))})
    path = Path(out_dir) / MIXTURE_FILE
    write_parquet_atomic(table, path)
    return path


def read_mixture(dataset_dir: Path) -> dict[str, np.ndarray] | None:
    """Shard name -> repeats per document, or None for a dataset without a mixture (each document once)."""
    path = Path(dataset_dir) / MIXTURE_FILE
    if not path.is_file():
        return None
    table = pq.read_table(path)
    return {n: np.asarray(r, dtype=np.int64) for n, r in zip(table["shard"].to_pylist(),
                                                              table["repeats"].to_pylist())}


def mixture_summary(mixes: list[SourceMix]) -> dict[str, Any]:
    return {m.name: {"tokens": m.tokens, "docs": m.docs, "target_share": m.target_share, "epochs": m.epochs,
                     "tokens_used": m.tokens_used, "share": m.share, "repeats_min": m.repeats_min,
                     "repeats_max": m.repeats_max} for m in mixes}
