"""Scoring speed of the fastText quality classifier: ``tasks.classifier.positive_scores`` against bare
``model.predict`` on the same texts (the floor: fastText's own batched predict).

    python benchmarks/classifier_speed.py                 # Gutenberg paragraphs vs WikiText from ../shared
    python benchmarks/classifier_speed.py --repeats 9

A model is trained first (books as positives, WikiText as negatives, ~6,000 paragraphs), then both score the same
20,000 paragraphs, alternating, one thread. Bare predict gets the texts already folded to one line each, as
fastText needs; positive_scores folds them itself and picks P(__label__hq). Prints medians and the ratio.
"""
from __future__ import annotations

import argparse
import gzip
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.classifier import ClassifierParams, fasttext_line, load_classifier, positive_scores, train_classifier  # noqa: E402

ENGLISH = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "english"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--texts", type=int, default=20_000)
    args = parser.parse_args()
    books = sorted((ENGLISH / "gutenberg" / "train").glob("*.txt.gz"))
    if not books:
        sys.exit(f"no books under {ENGLISH}")
    paragraphs = [p for b in books for p in gzip.open(b, "rt", encoding="utf-8").read().split("\n\n")
                  if len(p.split()) > 10]
    wiki = [p for p in (ENGLISH / "wikitext2" / "valid.txt").read_text(encoding="utf-8").split("\n \n")
            if len(p.split()) > 10]
    texts = (paragraphs[3000:] + wiki[3000:])[: args.texts]
    with tempfile.TemporaryDirectory() as tmp:
        metrics = train_classifier(paragraphs[:3000], wiki[:3000], Path(tmp) / "m.bin", ClassifierParams())
        model = load_classifier(Path(tmp) / "m.bin")
        lines = [fasttext_line(t) for t in texts]
        timings: dict[str, list[float]] = {"bare": [], "stage": []}
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            model.predict(lines, k=-1)
            timings["bare"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            positive_scores(model, texts)
            timings["stage"].append(time.perf_counter() - t0)
    mb = sum(len(t.encode()) for t in texts) / 1e6
    print(f"model: val AUC {metrics['val_auc']:.3f}, accuracy {metrics['val_accuracy']:.3f}; "
          f"{len(texts):,} texts, {mb:.1f} MB; median of {args.repeats}, one thread")
    for name, label in (("bare", "bare model.predict (pre-folded)"), ("stage", "positive_scores")):
        s = statistics.median(timings[name])
        print(f"{label:34}{len(texts) / s:>12,.0f} docs/s{mb / s:>8.1f} MB/s")
    print(f"positive_scores / bare predict: {statistics.median(timings['bare']) / statistics.median(timings['stage']):.2f}x")


if __name__ == "__main__":
    main()
