"""A fastText quality classifier, DCLM's recipe: positives from a reference text, negatives from the crawl.

The building block of model-based selection (issue 21): train on labelled lines (word bigrams, a few epochs, one
thread so a seed gives the same model), check it on a held-out slice of both classes (accuracy and ROC AUC), save
it atomically, load it (ours or a downloaded one, such as DCLM's ``openhermes_reddit`` model), and score texts as
the probability of the positive label. fastText reads one line per example, so a text's lines are joined with
single spaces as DCLM's scorer does (``" ".join(text.strip().splitlines())``: a DCLM model sees what it trained
on), and only its first ``max_chars`` characters are read.

    metrics = train_classifier(reference_texts, crawl_texts, Path("quality.bin"), ClassifierParams(seed=0))
    model = load_classifier(Path("quality.bin"))
    scores = positive_scores(model, texts)                  # numpy float32, P(positive) per text
"""
from __future__ import annotations

import hashlib
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from tasks.atomic import atomic_file

POSITIVE, NEGATIVE = "__label__hq", "__label__cc"


@dataclass(frozen=True)
class ClassifierParams:
    epochs: int = 5
    lr: float = 0.1
    word_ngrams: int = 2
    dim: int = 100
    min_count: int = 1
    val_fraction: float = 0.1
    max_chars: int = 10_000
    seed: int = 0


def fasttext_line(text: str, max_chars: int = 10_000) -> str:
    """One example line: the text's first ``max_chars`` characters, its lines joined by spaces (DCLM's
    preprocessing; fastText's own tokenizer splits words on the remaining white space)."""
    return " ".join(text[:max_chars].strip().splitlines())


def _order(n: int, seed: int, salt: str) -> np.ndarray:
    digest = hashlib.blake2b(f"{salt}:{seed}".encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "big")).permutation(n)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """The probability that a random positive outscores a random negative (ties count half)."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    pos, neg = labels.sum(), (~labels).sum()
    if not pos or not neg:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def train_classifier(positives: Iterable[str], negatives: Iterable[str], out: Path,
                     params: ClassifierParams = ClassifierParams()) -> dict[str, Any]:
    """Train on the two classes (empty texts left out), hold out ``val_fraction`` of each, save the model to ``out``
    atomically; returns the sample sizes, the held-out accuracy and ROC AUC, and ``held_out``: the positions of
    the held-out texts in ``positives`` ("reference") and ``negatives`` ("crawl")."""
    import fasttext

    pos = [(i, line) for i, line in enumerate(fasttext_line(t, params.max_chars) for t in positives) if line]
    neg = [(i, line) for i, line in enumerate(fasttext_line(t, params.max_chars) for t in negatives) if line]
    if not pos or not neg:
        raise ValueError(f"a classifier needs both classes: {len(pos)} positive and {len(neg)} negative texts")
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "val": []}
    held_out: dict[str, list[int]] = {}
    for label, lines in ((POSITIVE, pos), (NEGATIVE, neg)):
        order = _order(len(lines), params.seed, label)
        held = int(round(len(lines) * params.val_fraction)) if len(lines) > 1 else 0
        splits["val"] += [(label, lines[i][1]) for i in order[:held]]
        splits["train"] += [(label, lines[i][1]) for i in order[held:]]
        held_out["reference" if label == POSITIVE else "crawl"] = sorted(int(lines[i][0]) for i in order[:held])
    train = [splits["train"][i] for i in _order(len(splits["train"]), params.seed, "train")]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "train.txt"
        data.write_text("".join(f"{label} {line}\n" for label, line in train), encoding="utf-8")
        model = fasttext.train_supervised(str(data), epoch=params.epochs, lr=params.lr, wordNgrams=params.word_ngrams,
                                          dim=params.dim, minCount=params.min_count, thread=1, seed=params.seed,
                                          verbose=0)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(Path(out)) as tmp_path:
        model.save_model(str(tmp_path))
    metrics: dict[str, Any] = {"train_positive": sum(1 for lab, _ in train if lab == POSITIVE),
                               "train_negative": sum(1 for lab, _ in train if lab == NEGATIVE),
                               "val_positive": sum(1 for lab, _ in splits["val"] if lab == POSITIVE),
                               "val_negative": sum(1 for lab, _ in splits["val"] if lab == NEGATIVE),
                               "params": asdict(params), "held_out": held_out}
    if splits["val"]:
        labels = np.array([lab == POSITIVE for lab, _ in splits["val"]])
        scores = positive_scores(model, [line for _, line in splits["val"]], params.max_chars)
        metrics["val_accuracy"] = float(((scores >= 0.5) == labels).mean())
        metrics["val_auc"] = roc_auc(scores, labels)
    return metrics


def load_classifier(path: Path) -> Any:
    """A saved fastText model (.bin); it must have the positive label ``__label__hq`` (DCLM's models do)."""
    import fasttext

    if not Path(path).is_file():
        raise FileNotFoundError(f"no fastText model at {path}")
    model = fasttext.load_model(str(path))
    if POSITIVE not in model.get_labels():
        raise ValueError(f"{path}: the model's labels are {model.get_labels()}, it has no {POSITIVE}")
    return model


def positive_scores(model: Any, texts: list[str], max_chars: int = 10_000) -> np.ndarray:
    """P(positive) of each text, in one batched ``predict`` over all labels."""
    if not texts:
        return np.empty(0, dtype=np.float32)
    labels, probs = model.predict([fasttext_line(t, max_chars) for t in texts], k=-1)
    if len(model.get_labels()) == 2 and all(len(names) == 2 for names in labels):  # the usual binary model
        first = np.fromiter((names[0] == POSITIVE for names in labels), dtype=bool, count=len(texts))
        both = np.asarray(probs, dtype=np.float32).reshape(len(texts), 2)
        return np.where(first, both[:, 0], both[:, 1]).astype(np.float32)
    out = np.empty(len(texts), dtype=np.float32)
    for i, (names, values) in enumerate(zip(labels, probs)):
        out[i] = next((float(v) for n, v in zip(names, values) if n == POSITIVE), 0.0)
    return out


__all__ = ["ClassifierParams", "POSITIVE", "NEGATIVE", "train_classifier", "load_classifier", "positive_scores",
           "roc_auc", "fasttext_line"]
