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
sequences share their common prefix (the few-shot examples and the question): it runs once, and each sequence's
own tokens run as a tail that reads the prefix's keys and values, as from a KV cache, so no attention is spent
between choices; sequences that the left crop left with nothing in common run alone, causally. Only the positions
that predict a scored token go through the output projection and softmax. Choices of one token after one context
(boolq) cost one pass. ``centered`` and ``core_score`` aggregate: centered accuracy =
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
class _Segment:
    """A run of tokens to put through the model: a prefix (run causally from position 0), or the tail of one
    sequence, which attends to the prefix segment ``parent`` and then to itself."""

    tokens: list[int]
    positions: list[int]
    parent: int | None = None
    tails: list[int] = field(default_factory=list)  # of a prefix: its tail segments


Span = tuple[int, int, list[tuple[int, int]], list[int]]  # (item, choice, [(segment, index)], the scored tokens)


def _segments(items: list[Scored], pair_per_token: float) -> tuple[list[_Segment], list[Span]]:
    """The segments to run, and each sequence's scored span as (item, choice, [(segment, index) predicting each
    token], the tokens).

    An item's sequences share their common prefix (the few-shot examples and the question) when that is cheaper
    than running each alone: the prefix is one segment and each sequence's own tokens a tail that reads the
    prefix's keys and values (a KV cache), so the prefix is computed once and no attention is spent between
    choices. Sequences cropped from the left by different amounts share nothing and run alone, as causal rows.
    A sequence's last token is never run (it predicts nothing scored), so choices of one token after a shared
    context (boolq's " yes" / " no") cost a single pass over the context. Every token sees the same tokens at the
    same positions as in its own sequence, so the scores are those of running each sequence alone (tested).
    ``pair_per_token``: what one attention (query, key) pair costs next to one token's projections and MLP."""
    segments: list[_Segment] = []
    spans = []
    for i, it in enumerate(items):
        shared = common_length(it.tokens, "left") if len(it.tokens) > 1 else 0
        own = [max(0, len(t) - 1 - shared) for t in it.tokens]  # 0: a choice that ends inside the prefix
        together = shared * shared / 2 + sum(c * (shared + c) for c in own) + pair_per_token * (shared + sum(own))
        alone = sum((shared + c) ** 2 / 2 for c in own) + pair_per_token * sum(shared + c for c in own)
        if shared and together < alone:
            prefix = len(segments)
            segments.append(_Segment(it.tokens[0][:shared], list(range(shared))))
            for j, t in enumerate(it.tokens):
                tail = None
                if len(t) - 1 > shared:
                    tail = len(segments)
                    segments.append(_Segment(t[shared:len(t) - 1], list(range(shared, len(t) - 1)), prefix))
                    segments[prefix].tails.append(tail)
                s, e = it.starts[j], it.ends[j]
                # the token at position p is predicted at p - 1: in the prefix, or in this sequence's tail
                at = [(prefix, p - 1) if p - 1 < shared else (tail, p - 1 - shared) for p in range(s, e)]
                spans.append((i, j, at, t[s:e]))
        else:
            for j, t in enumerate(it.tokens):
                seg = len(segments)
                segments.append(_Segment(t[:len(t) - 1], list(range(len(t) - 1))))
                s, e = it.starts[j], it.ends[j]
                spans.append((i, j, [(seg, p - 1) for p in range(s, e)], t[s:e]))
    return segments, spans


def _tail_mask(tails: list[_Segment], prefix_len: list[int], prefix_width: int, tail_width: int) -> torch.Tensor:
    """(tails, 1, tail_width, prefix_width + tail_width), True where a tail token may attend a key: its prefix's
    real tokens, and its own earlier or equal tokens. A padding position sees itself only (it is never read)."""
    mask = torch.zeros(len(tails), 1, tail_width, prefix_width + tail_width, dtype=torch.bool)
    causal = torch.ones(tail_width, tail_width, dtype=torch.bool).tril()
    pads = torch.arange(tail_width)
    for r, (tail, p) in enumerate(zip(tails, prefix_len)):
        n = len(tail.tokens)
        mask[r, 0, :n, :p] = True
        mask[r, 0, :n, prefix_width:prefix_width + n] = causal[:n, :n]
        mask[r, 0, pads[n:], prefix_width + pads[n:]] = True
    return mask


@torch.no_grad()
def score(model: torch.nn.Module, items: list[Scored], *, batch_rows: int = 32, pad: int = 0,
          device: torch.device | str = "cpu", autocast=None, batch_tokens: int | None = None) -> list[ItemResult]:
    """Score prepared items: their segments (``_segments``) in right-padded batches, longest first, of at most
    ``batch_rows`` prefixes and ``batch_tokens`` padded tokens (default: no bound on a GPU, ``CPU_BATCH_TOKENS``
    on a CPU), each prefix with its tails.

    With Crucible's GPT (``hidden_with_prefix`` and ``head``) an item's sequences share their prefix and only the
    positions that predict a span token go through the output projection, softmax and argmax. Any other module
    gets each whole sequence alone and its logits are read at those positions."""
    packed = hasattr(model, "hidden_with_prefix") and hasattr(model, "head")
    if packed:
        segments, spans = _segments(items, 6.0 * getattr(getattr(model, "cfg", None), "d_model", 768))
    else:
        segments = [_Segment(t, list(range(len(t)))) for it in items for t in it.tokens]
        spans, k = [], 0
        for i, it in enumerate(items):
            for j, t in enumerate(it.tokens):
                s, e = it.starts[j], it.ends[j]
                spans.append((i, j, [(k, p - 1) for p in range(s, e)], t[s:e]))
                k += 1
    def size(k: int) -> int:  # a prefix's tokens and its tails'
        return len(segments[k].tokens) + sum(len(segments[t].tokens) for t in segments[k].tails)

    prefixes = sorted((k for k, seg in enumerate(segments) if seg.parent is None), key=lambda k: -size(k))
    if batch_tokens is None:  # a CPU gains nothing from wide batches
        batch_tokens = 1 << 30 if torch.device(device).type == "cuda" else CPU_BATCH_TOKENS
    batches: list[list[int]] = []
    b = 0
    while b < len(prefixes):  # rows run longest first, so a batch holds about one length
        chunk, width = [], 0
        while b < len(prefixes) and len(chunk) < batch_rows:
            k = prefixes[b]
            cost = size(k)
            if chunk and (len(chunk) + 1) * max(width, cost) > batch_tokens:
                break
            chunk.append(k)
            width = max(width, cost)
            b += 1
        batches.append(chunk)
    wanted: dict[int, list[tuple[int, int, int, int]]] = {}  # batch -> [(span, offset in it, segment, index)]
    seg_batch = {}
    for n, chunk in enumerate(batches):
        for k in chunk:
            seg_batch[k] = n
            for t in segments[k].tails:
                seg_batch[t] = n
    for n_span, (_, _, at, _) in enumerate(spans):
        for o, (seg, idx) in enumerate(at):
            wanted.setdefault(seg_batch[seg], []).append((n_span, o, seg, idx))
    nll_of: dict[tuple[int, int], float] = {}
    hit_of: dict[tuple[int, int], bool] = {}
    for n, chunk in enumerate(batches):
        tails = [t for k in chunk for t in segments[k].tails]
        p_width = max(len(segments[k].tokens) for k in chunk)
        t_width = max((len(segments[t].tokens) for t in tails), default=0)
        prefix = torch.full((len(chunk), p_width), pad, dtype=torch.long)
        tail = torch.full((len(tails), t_width), pad, dtype=torch.long)
        tail_pos = torch.zeros((len(tails), t_width), dtype=torch.long)
        row_of = {k: r for r, k in enumerate(chunk)}
        for r, k in enumerate(chunk):
            prefix[r, :len(segments[k].tokens)] = torch.tensor(segments[k].tokens, dtype=torch.long)
        for r, t in enumerate(tails):
            row_of[t] = r
            tail[r, :len(segments[t].tokens)] = torch.tensor(segments[t].tokens, dtype=torch.long)
            tail_pos[r, :len(segments[t].tokens)] = torch.tensor(segments[t].positions, dtype=torch.long)
        flat, targets = [], []
        for n_span, o, seg, idx in wanted.get(n, []):
            r = row_of[seg]
            flat.append(r * p_width + idx if segments[seg].parent is None else len(chunk) * p_width + r * t_width + idx)
            targets.append(spans[n_span][3][o])
        flat_t = torch.tensor(flat, device=device)
        with autocast if autocast is not None else nullcontext():
            if packed:
                ref = torch.tensor([row_of[segments[t].parent] for t in tails], dtype=torch.long)
                mask = _tail_mask([segments[t] for t in tails],
                                  [len(segments[segments[t].parent].tokens) for t in tails], p_width, t_width)
                hp, ht = model.hidden_with_prefix(prefix.to(device), tail.to(device), tail_pos.to(device),
                                                  ref.to(device), mask.to(device))
                logits = model.head(torch.cat((hp.flatten(0, 1), ht.flatten(0, 1)))[flat_t])
            else:
                logits = model(prefix.to(device)).flatten(0, 1)[flat_t]
        logits = logits.float()
        target_t = torch.tensor(targets, device=device)
        nll = F.cross_entropy(logits, target_t, reduction="none").cpu().tolist()
        hit = (logits.argmax(-1) == target_t).cpu().tolist()
        for (n_span, o, _, _), loss, ok in zip(wanted.get(n, []), nll, hit):
            nll_of[(n_span, o)] = loss
            hit_of[(n_span, o)] = ok
    span_loss, span_exact = {}, {}
    for n_span, (i, j, at, span) in enumerate(spans):
        losses = [nll_of[(n_span, o)] for o in range(len(at))]
        span_loss[(i, j)] = sum(losses) / len(losses)
        span_exact[(i, j)] = all(hit_of[(n_span, o)] for o in range(len(at)))
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
