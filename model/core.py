"""CORE-style benchmark scoring (the DCLM / nanochat protocol) in plain torch, tokenizer-agnostic.

Items come in three kinds (``tasks.evalsets``): multiple choice, schema and language modelling. For each item:

- **Few-shot examples** are ``shots`` other items drawn with ``random.Random(1234 + i)`` (i: the item's position
  after the task's seeded shuffle), each rendered solved and followed by a blank line.
- **Sequences** start with the separator (BOS) token; a sequence longer than the model's context is cropped from
  the left.
- **Multiple choice**: one sequence per choice; the scored span starts at the first token where the choices differ
  and runs to each sequence's end; the prediction is the choice with the lowest mean cross-entropy on its span.
- **Schema**: one sequence per context option; the scored span is the common token suffix (the shared
  continuation); lowest mean cross-entropy wins.
- **Language modelling**: correct only when greedy argmax reproduces every continuation token.

Sequences of many items are batched together, longest first so that a batch holds similar lengths, and
right-padded: attention is causal, so padding after a sequence never changes a score (tested). An item's
sequences are packed into one row that holds their shared prefix (the few-shot examples and the question) once,
each choice seeing the prefix and itself at its own positions; only the positions that predict a scored token go
through the output projection and softmax. Choices of one token after one context (boolq) cost one pass. ``centered`` and ``core_score`` aggregate: centered accuracy =
(accuracy - baseline) / (1 - baseline), and CORE-7 is their unweighted mean over the 7 tasks.
"""
from __future__ import annotations

import random
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

Encode = Callable[[list[str]], list[list[int]]]


# ---------------------------------------------------------------------------------------------------------------
# Prompts


def shot_texts(kind: str, delimiter: str, shots: Sequence[dict[str, Any]]) -> list[str]:
    """Each few-shot example rendered solved, followed by a blank line (a prompt starts with them all)."""
    if kind == "multiple_choice":
        return [f"{s['query']}{delimiter}{s['choices'][s['gold']]}\n\n" for s in shots]
    if kind == "schema":
        return [f"{s['context_options'][s['gold']]}{delimiter}{s['continuation']}\n\n" for s in shots]
    if kind == "language_modelling":
        return [f"{s['context'].strip()}{delimiter}{s['continuation']}\n\n" for s in shots]
    raise ValueError(f"unknown item kind {kind!r}")


def render(kind: str, item: dict[str, Any], delimiter: str, shots: Sequence[dict[str, Any]] = ()) -> list[str]:
    """The prompts of one item: one per choice (multiple choice), per context option (schema), or the pair
    (context without, context with continuation) for language modelling."""
    prefix = "".join(shot_texts(kind, delimiter, shots))
    if kind == "multiple_choice":
        return [f"{prefix}{item['query']}{delimiter}{choice}" for choice in item["choices"]]
    if kind == "schema":
        return [f"{prefix}{option}{delimiter}{item['continuation']}" for option in item["context_options"]]
    without = f"{prefix}{item['context'].strip()}{delimiter}"
    # a trailing space would be merged into the continuation's first token: score from a clean prefix
    return [without.strip(), without + item["continuation"]]


def fewshot(items: Sequence[dict[str, Any]], index: int, shots: int) -> list[dict[str, Any]]:
    """``shots`` other items, drawn deterministically for item ``index``."""
    if shots <= 0:
        return []
    others = [j for j in range(len(items)) if j != index]
    return [items[j] for j in random.Random(1234 + index).sample(others, min(shots, len(others)))]


def shots_kept(kind: str, delimiter: str, shots: Sequence[dict[str, Any]], cropped: int, encode: Encode) -> int:
    """How many of a prompt's few-shot examples survive whole when ``cropped`` tokens are cut from its left (after
    <|bos|>): each example's tokens are counted alone, a close estimate (BPE rarely merges across a blank line)."""
    if not cropped or not shots:
        return len(shots)
    cut, kept = cropped - 1, len(shots)
    for n in (len(t) for t in encode(shot_texts(kind, delimiter, shots))):
        if cut <= 0:
            break
        cut -= n
        kept -= 1
    return kept


def common_length(seqs: Sequence[Sequence[int]], side: str) -> int:
    """Tokens shared by every sequence at the start (side 'left') or the end ('right')."""
    n = min(len(s) for s in seqs)
    for i in range(n):
        at = i if side == "left" else -1 - i
        if any(s[at] != seqs[0][at] for s in seqs[1:]):
            return i
    return n


@dataclass
class Scored:
    """The token sequences of one item and, per sequence, the span [start, end) whose tokens are scored."""

    kind: str
    tokens: list[list[int]]
    starts: list[int]
    ends: list[int]
    gold: int | None = None
    cropped: int = 0  # tokens cut from the left of its longest sequence (0: the whole prompt fits the context)


def sequences(kind: str, prompts: list[str], encode: Encode, bos: int, max_len: int,
              gold: int | None = None) -> Scored:
    """Tokenize an item's prompts (BOS first), find the scored spans, and crop from the left to ``max_len``."""
    tokens = [[bos, *t] for t in encode(prompts)]
    if kind == "multiple_choice":
        start = common_length(tokens, "left")
        spans = [(start, len(t)) for t in tokens]
    elif kind == "schema":
        suffix = common_length(tokens, "right")
        spans = [(len(t) - suffix, len(t)) for t in tokens]
    else:
        without, with_ = tokens
        if with_[:len(without)] != without or len(with_) <= len(without):
            # the tokenizer merged across the boundary: score the tokens after the shared prefix
            shared = common_length([without, with_], "left")
            without = with_[:shared]
        tokens = [with_]
        spans = [(len(without), len(with_))]
    out = Scored(kind, [], [], [], gold, cropped=max(0, max(len(t) for t in tokens) - max_len))
    for t, (s, e) in zip(tokens, spans):
        crop = max(0, len(t) - max_len)
        out.tokens.append(t[crop:])
        out.starts.append(max(1, s - crop))  # position 0 has no prediction: a span starts at 1 at the earliest
        out.ends.append(e - crop)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Scoring


@dataclass
class ItemResult:
    index: int
    prediction: int
    correct: bool
    losses: list[float] = field(default_factory=list)  # per choice / option: mean cross-entropy over its span


CPU_BATCH_TOKENS = 1024  # measured: one long packed row per pass is fastest on a CPU (benchmarks/eval_speed.py)


@dataclass
class _Row:
    """One row to run: the tokens, each one's position in its own sequence and the packed sequence it belongs to
    (-1: the shared prefix), and the spans read from it as (item, choice, row indices predicting, targets)."""

    tokens: list[int]
    positions: list[int]
    owner: list[int]
    spans: list[tuple[int, int, list[int], list[int]]]


def _rows(items: list[Scored]) -> list[_Row]:
    """The rows to run: an item's sequences packed into one row that holds their common prefix once, then each
    sequence's own tokens. A sequence's last token is never run (it predicts nothing scored), so choices of one
    token after a shared context (boolq's " yes" / " no") cost a single pass over the context. Packing is exact:
    every token sees the same tokens at the same positions as in its own sequence (cropped ones included, since
    the prefix is the tokens the cropped sequences share)."""
    rows = []
    for i, it in enumerate(items):
        shared = common_length(it.tokens, "left")
        tokens, positions, owner = list(it.tokens[0][:shared]), list(range(shared)), [-1] * shared
        spans = []
        for j, t in enumerate(it.tokens):
            first = len(tokens)
            own = t[shared:len(t) - 1]
            tokens += own
            positions += range(shared, shared + len(own))
            owner += [j] * len(own)
            s, e = it.starts[j], it.ends[j]
            # the token at position p is predicted at p - 1: in the prefix, or in this sequence's own tokens
            at = [p - 1 if p - 1 < shared else first + p - 1 - shared for p in range(s, e)]
            spans.append((i, j, at, t[s:e]))
        rows.append(_Row(tokens, positions, owner, spans))
    return rows


def _packed_mask(chunk: list[_Row], width: int) -> torch.Tensor:
    """(rows, 1, width, width), True where a query may attend a key: earlier or equal positions of the shared
    prefix or of its own sequence. A padding position sees itself only (it is never read)."""
    mask = torch.zeros(len(chunk), 1, width, width, dtype=torch.bool)
    eye = torch.eye(width, dtype=torch.bool)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    for r, row in enumerate(chunk):
        n = len(row.tokens)
        owner = torch.tensor(row.owner)
        same = (owner[:, None] == owner[None, :]) | (owner[None, :] == -1)
        mask[r, 0, :n, :n] = same & causal[:n, :n]
        mask[r, 0, n:, n:] = eye[n:, n:]
    return mask


@torch.no_grad()
def score(model: torch.nn.Module, items: list[Scored], *, batch_rows: int = 32, pad: int = 0,
          device: torch.device | str = "cpu", autocast=None, batch_tokens: int | None = None) -> list[ItemResult]:
    """Score prepared items, packing their rows into right-padded batches of at most ``batch_rows``.

    An item's sequences share one row (``_rows``) when the model takes ``positions`` and ``mask`` (Crucible's GPT:
    ``hidden`` and ``head``); only the positions that predict a span token go through the output projection,
    softmax and argmax. Any other module gets each sequence alone and its logits are read at those positions.
    Rows run longest first, so a batch holds about one length, and a batch holds at most ``batch_rows`` rows and
    ``batch_tokens`` padded tokens (default: no bound on a GPU, ``CPU_BATCH_TOKENS`` on a CPU)."""
    packed = hasattr(model, "hidden") and hasattr(model, "head")
    if packed:
        rows = _rows(items)
    else:
        rows = [_Row(t, list(range(len(t))), [0] * len(t),
                     [(i, j, list(range(it.starts[j] - 1, it.ends[j] - 1)), t[it.starts[j]:it.ends[j]])])
                for i, it in enumerate(items) for j, t in enumerate(it.tokens)]
    rows.sort(key=lambda r: -len(r.tokens))
    if batch_tokens is None:  # a CPU gains nothing from wide batches, and the packed rows' masks grow as width^2
        batch_tokens = 1 << 30 if torch.device(device).type == "cuda" else CPU_BATCH_TOKENS
    span_loss: dict[tuple[int, int], float] = {}
    span_exact: dict[tuple[int, int], bool] = {}
    b = 0
    while b < len(rows):
        width = len(rows[b].tokens)  # the longest of its batch
        chunk = rows[b:b + max(1, min(batch_rows, batch_tokens // max(width, 1)))]
        b += len(chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        positions = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, row in enumerate(chunk):
            ids[r, :len(row.tokens)] = torch.tensor(row.tokens, dtype=torch.long)
            positions[r, :len(row.tokens)] = torch.tensor(row.positions, dtype=torch.long)
        at_row, at_pos, targets, owners = [], [], [], []
        for r, row in enumerate(chunk):
            for i, j, at, span in row.spans:
                at_row += [r] * len(at)
                at_pos += at
                targets += span
                owners.append((i, j, len(span)))
        rows_t, pos_t = torch.tensor(at_row, device=device), torch.tensor(at_pos, device=device)
        with autocast if autocast is not None else nullcontext():
            if packed:
                h = model.hidden(ids.to(device), positions.to(device), _packed_mask(chunk, width).to(device))
                logits = model.head(h[rows_t, pos_t])
            else:
                logits = model(ids.to(device))[rows_t, pos_t]
        logits = logits.float()
        target_t = torch.tensor(targets, device=device)
        nll = F.cross_entropy(logits, target_t, reduction="none").cpu()
        hit = (logits.argmax(-1) == target_t).cpu()
        k = 0
        for i, j, n in owners:
            span_loss[(i, j)] = nll[k:k + n].mean().item()
            span_exact[(i, j)] = bool(hit[k:k + n].all())
            k += n
    results = []
    for i, it in enumerate(items):
        if it.kind == "language_modelling":
            ok = span_exact[(i, 0)]
            results.append(ItemResult(i, int(ok), ok, [span_loss[(i, 0)]]))
        else:
            per = [span_loss[(i, j)] for j in range(len(it.tokens))]
            pred = min(range(len(per)), key=per.__getitem__)
            results.append(ItemResult(i, pred, pred == it.gold, per))
    return results


def centered(accuracy: float, baseline: float) -> float:
    """(accuracy - baseline) / (1 - baseline): 0 at chance, 1 when perfect, negative below chance."""
    return (accuracy - baseline) / (1.0 - baseline)


def core_score(centered_by_task: dict[str, float]) -> float:
    """The unweighted mean of the tasks' centered accuracies (CORE-7 over the 7 tasks)."""
    return sum(centered_by_task.values()) / len(centered_by_task)


# ---------------------------------------------------------------------------------------------------------------
# Samples


@torch.no_grad()
def generate(model: torch.nn.Module, prompt: list[int], max_new: int, *, temperature: float = 0.0,
             seed: int = 0, max_len: int | None = None, stop: int | None = None) -> list[int]:
    """Greedy (temperature 0) or sampled continuation token ids, without a KV cache (fine for short samples)."""
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    ids = list(prompt)
    out: list[int] = []
    for _ in range(max_new):
        window = ids[-max_len:] if max_len else ids
        logits = model(torch.tensor([window], device=device))[0, -1].float().cpu()
        if temperature <= 0:
            nxt = int(logits.argmax())
        else:
            nxt = int(torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=gen))
        if stop is not None and nxt == stop:
            break
        ids.append(nxt)
        out.append(nxt)
    return out
