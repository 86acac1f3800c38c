"""Finding benchmark items in documents: the same normalisation on both sides, several segments per item, and a
coverage score per hit.

Normalisation (``match_words``): NFKC, casefold, the usual labels blanked out ("Question:", "Answer:", "Q:", "A:",
"Option 1:", "(B)", "B)", "1." at a line's start, COPA's "What was the cause?", Winogrande's "_"), hyphens and
slashes split words, and every other punctuation mark dropped, so "doesn't" and "doesn’t" are one word.

Segments (``item_segments``): a copy may hold the item as the harness renders it, as its benchmark file shows it,
or only in part, so each item is indexed several ways:
- ``full``: the item as read, question + gold answer (Winogrande: the sentence with its answer filled in; LAMBADA:
  the passage and its last word; COPA: the premise without the connector only the prompt has, then the answer);
- ``prompt``: the question as the harness prompts it, connector and all, then the gold answer;
- ``listing`` (and ``prompt_listing``, with the prompt's connector): the question followed by every choice in
  order (a copy that lists the options);
- ``question``: the question (or passage) alone; ``passage``: BoolQ's passage without its question;
- ``choice_<i>``: each choice alone (only long ones can be matched: a PIQA solution);
- ``blank``: Winogrande's sentence with the blank, as the dataset prints it.

A document contains an item when, for one of its segments, it holds at least ``min_coverage`` of that segment's
distinct word n-grams (the share of an item's n-grams found in one document, as GPT-3 and lm-evaluation-harness's
decontamination measure overlap); the score of the hit is that share. An item shorter than n words (its full or
prompt segment) is found only whole: anywhere in the text from ``min_words`` words, and at any length when it
fills whole lines by itself (a quiz's "Q: Which reflects light? A: mirror", over one line or a few), so that a
short fact inside a sentence of one's own is not taken for a copy. Common text is told from a
leak by the item's own structure: a boilerplate phrase shares one or two n-grams with an item, a copy most of them,
however many pages the copy is on.
"""
from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tasks.evalsets import MULTIPLE_CHOICE, SCHEMA, item_kind, read_items
from tasks.ngrams import ngram_hashes, word_hashes

_LABELS = re.compile(r"""
      (?<![\w])(?:questions?|answers?|ans|q|a|options?|choices?|solutions?|sol|goal|premise|hypothesis|passage
                 |context|sentence|alternatives?|correct)\s*\d{0,2}\s*[:：]
    | (?<![\w])[(\[][a-h1-9][)\]](?![\w])
    | (?<![\w(\[])[a-h1-9][).:](?=\s|$)
    | ^[ \t]*(?:\d{1,3}|[ivx]{1,4})[.)](?=\s)
    | what\s+(?:was|is)\s+the\s+(?:cause|effect)\s*\?
    | what\s+happened\s+as\s+a\s+result\s*\?
    | (?<![\w])_+(?![\w])
""", re.IGNORECASE | re.MULTILINE | re.VERBOSE)
_TOKEN = re.compile(r"[^\s\-‐‑‒–—―/\\]+")  # hyphens, dashes and slashes split words
_NEWLINE = re.compile(r"\n")
_PUNCT = re.compile(r"[\W_]+")
_ASCII_PUNCT = str.maketrans("", "", string.punctuation)
_CONNECTOR = re.compile(r"[\s,;:]+(?:because|therefore|so)\s*$", re.IGNORECASE)


def match_words(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """The words a match is made of, and the character span in ``NFC(text)`` each came from (for cutting)."""
    text = unicodedata.normalize("NFC", text)
    blanked = _LABELS.sub(lambda m: " " * len(m.group()), text)
    words, spans = [], []
    for m in _TOKEN.finditer(blanked):
        token = m.group()
        if token.isascii():  # the common case, without the regex
            word = token.translate(_ASCII_PUNCT).lower()
        else:
            word = _PUNCT.sub("", unicodedata.normalize("NFKC", token).casefold())
        if word:
            words.append(word)
            spans.append(m.span())
    return words, spans


def line_ranges(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """[start, end) word ranges of each line that has words (``spans`` from ``match_words(text)``)."""
    if not spans:
        return []
    text = unicodedata.normalize("NFC", text)
    breaks = np.array([m.start() for m in _NEWLINE.finditer(text)], dtype=np.int64)
    line_of = np.searchsorted(breaks, np.array([s for s, _ in spans], dtype=np.int64))
    starts = np.flatnonzero(np.diff(line_of, prepend=-1))
    ends = np.append(starts[1:], len(spans))
    return list(zip(starts.tolist(), ends.tolist()))


def _words(text: str) -> list[str]:
    return match_words(text)[0]


def item_segments(item: dict[str, Any]) -> dict[str, list[str]]:
    """The item's segments (see the module docstring), each as normalised words."""
    kind = item_kind(item)
    if kind == MULTIPLE_CHOICE:
        question = _words(_CONNECTOR.sub("", item["query"]))
        choices = [_words(c) for c in item["choices"]]
        prompt = _words(item["query"])
        listed = [w for c in choices for w in c]
        segments = {"full": question + choices[item["gold"]], "listing": question + listed, "question": question,
                    "prompt": prompt + choices[item["gold"]], "prompt_listing": prompt + listed}
        segments |= {f"choice_{i}": c for i, c in enumerate(choices)}  # a long choice (a PIQA solution) alone
        passage, asked, _ = item["query"].rpartition("Question:")
        if passage.strip():  # BoolQ's passage alone (its question is a few generic words)
            segments["passage"] = _words(passage)
        return segments
    if kind == SCHEMA:
        options = [_words(o) for o in item["context_options"]]
        prefix = []
        for column in zip(*options):
            if len(set(column)) > 1:
                break
            prefix.append(column[0])
        rest = _words(item["continuation"])
        return {"full": options[item["gold"]] + rest, "blank": prefix + rest}
    context = _words(item["context"])
    return {"full": context + _words(item["continuation"]), "question": context}


@dataclass
class Hit:
    ref: int                    # index into ItemIndex.refs
    segment: str
    score: float                # the share of the segment's n-grams found (1.0 for a short item found whole)
    n: int
    positions: list[int]        # word positions of the matching n-grams in the document


@dataclass
class ItemIndex:
    """Sorted n-gram hashes of every item segment with the segment each belongs to, and short items whole."""

    ngram: int
    min_coverage: float
    min_words: int
    hashes: np.ndarray                       # sorted uint64 n-gram hashes
    owners: np.ndarray                       # segment id per hash
    totals: np.ndarray                       # distinct n-grams per segment
    whole: dict[int, tuple[np.ndarray, np.ndarray]]   # length m -> (sorted hashes of whole short items, segment)
    segments: list[tuple[int, str]]          # segment id -> (ref, kind)
    refs: list[tuple[str, int]]              # (task, item index in its file)
    items: Counter = field(default_factory=Counter)      # task -> items read
    too_short: Counter = field(default_factory=Counter)  # task -> items too short to check at all
    short: Counter = field(default_factory=Counter)      # task -> items under ngram words (found only whole)

    @classmethod
    def build(cls, files: list[Path], ngram: int = 8, min_words: int = 5, min_coverage: float = 0.5) -> "ItemIndex":
        grams: list[np.ndarray] = []
        owners: list[np.ndarray] = []
        totals: list[int] = []
        whole: dict[int, list[tuple[int, int]]] = defaultdict(list)
        segments: list[tuple[int, str]] = []
        refs: list[tuple[str, int]] = []
        items, too_short, short_items = Counter(), Counter(), Counter()
        for f in files:
            for i, item in enumerate(read_items(f)):
                items[f.stem] += 1
                ref = len(refs)
                refs.append((f.stem, i))
                checked = False
                seen: set[tuple[str, ...]] = set()
                parts = item_segments(item)
                if len(parts["full"]) < ngram:
                    short_items[f.stem] += 1
                for kind, words in parts.items():
                    if tuple(words) in seen:
                        continue
                    seen.add(tuple(words))
                    if len(words) >= ngram:
                        h = np.unique(ngram_hashes(word_hashes(words), ngram))
                    elif kind in ("full", "prompt") and len(words) >= 2:
                        h = None
                    else:
                        continue
                    sid = len(segments)
                    segments.append((ref, kind))
                    checked = True
                    if h is None:
                        whole[len(words)].append((int(ngram_hashes(word_hashes(words), len(words))[0]), sid))
                        totals.append(1)
                    else:
                        grams.append(h)
                        owners.append(np.full(len(h), sid, dtype=np.int64))
                        totals.append(len(h))
                if not checked:
                    too_short[f.stem] += 1  # a one-word item
        h = np.concatenate(grams) if grams else np.empty(0, np.uint64)
        o = np.concatenate(owners) if owners else np.empty(0, np.int64)
        order = np.argsort(h, kind="stable")
        short = {}
        for m, pairs in whole.items():
            arr = np.array(pairs, dtype=np.uint64)
            k = np.argsort(arr[:, 0], kind="stable")
            short[m] = (arr[k, 0], arr[k, 1].astype(np.int64))
        return cls(ngram, min_coverage, min_words, h[order], o[order], np.array(totals, dtype=np.int64), short, segments, refs,
                   items, too_short, short_items)

    def find(self, words: list[str], lines: list[tuple[int, int]] | None = None) -> list[Hit]:
        """The items these words contain (``lines``: their line ranges): per item, its best segment's hit."""
        hashes = word_hashes(words)
        best: dict[int, Hit] = {}
        grams = ngram_hashes(hashes, self.ngram)
        if len(grams) and len(self.hashes):
            uniq = np.unique(grams)
            lo = np.searchsorted(self.hashes, uniq, side="left")
            hi = np.searchsorted(self.hashes, uniq, side="right")
            found = hi > lo
            if found.any():
                counts = hi[found] - lo[found]
                starts = lo[found]
                offsets = np.repeat(starts - np.concatenate(([0], np.cumsum(counts)[:-1])), counts)
                idx = offsets + np.arange(counts.sum())
                segs = self.owners[idx]
                which = np.repeat(uniq[found], counts)
                seg_ids, matched = np.unique(segs, return_counts=True)
                score = matched / self.totals[seg_ids]
                for sid, s in zip(seg_ids[score >= self.min_coverage], score[score >= self.min_coverage]):
                    ref, kind = self.segments[sid]
                    if ref in best and best[ref].score >= s:
                        continue
                    positions = np.nonzero(np.isin(grams, which[segs == sid]))[0]
                    best[ref] = Hit(ref, kind, float(s), self.ngram, [int(p) for p in positions])
        def short(m: int, grams: np.ndarray, positions: np.ndarray) -> None:
            table, owner = self.whole[m]
            lo = np.searchsorted(table, grams, side="left")
            hi = np.searchsorted(table, grams, side="right")
            for k in np.nonzero(hi > lo)[0]:
                for j in range(lo[k], hi[k]):
                    ref, kind = self.segments[int(owner[j])]
                    if ref not in best:
                        best[ref] = Hit(ref, kind, 1.0, m, [int(positions[k])])

        for m in self.whole:
            if m >= self.min_words:  # anywhere
                grams = ngram_hashes(hashes, m)
                if len(grams):
                    short(m, grams, np.arange(len(grams)))
        lines = lines or []
        for i, (start, _) in enumerate(lines):  # whole lines, one or a few, holding nothing else
            for j in range(i, len(lines)):
                m = lines[j][1] - start
                if m >= self.min_words:
                    break
                if m in self.whole:
                    short(m, ngram_hashes(hashes[start:start + m], m), np.array([start]))
        return sorted(best.values(), key=lambda h: h.ref)

    @property
    def checked(self) -> int:
        return sum(self.items.values()) - sum(self.too_short.values())
