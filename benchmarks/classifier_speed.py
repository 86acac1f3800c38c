"""Scoring speed of the fastText quality classifier: the select stage and ``tasks.classifier.positive_scores``
against bare ``model.predict`` on the same texts (the floor: fastText's own batched predict).

    python benchmarks/classifier_speed.py                 # Gutenberg paragraphs vs WikiText from ../shared
    python benchmarks/classifier_speed.py --repeats 9

A model is trained first (books as positives, WikiText as negatives, ~6,000 paragraphs), then each scores the same
100,000 paragraphs, alternating, one thread. Bare predict gets the texts already folded to one line each, as
fastText needs, and its time includes ``fasttext.load_model`` (a script scoring a corpus loads the model too);
positive_scores folds them itself and picks P(__label__hq) with the model loaded. "select stage" is the whole stage
on those texts written as a dedup dataset of 2,000-document shards, with the model file given
(``classifier.model``: loaded once; hashed for the key on the first run only, then remembered by its stat, so the
first repeat's extra cost is printed apart), one worker: read the shards, score, write the scores, the global top-half cut-off, and
write the kept half with its scores and the dropped half's drop log. The stage should reach >= 0.8x of bare
predict. Prints medians and the ratios.
"""
from __future__ import annotations

import argparse
import fasttext
import gzip
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.classifier import ClassifierParams, fasttext_line, load_classifier, positive_scores, train_classifier  # noqa: E402
from tasks.config import SelectConfig, SourceConfig  # noqa: E402
from tasks.dedup import SCHEMA as DEDUP_SCHEMA  # noqa: E402
from tasks.select import SelectStage, _models as select_models  # noqa: E402
from tasks.stage import Input, StageContext  # noqa: E402
from tests.helpers import write_dataset  # noqa: E402

ENGLISH = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "english"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--texts", type=int, default=100_000)
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
        os.environ["CRUCIBLE_CACHE_DIR"] = str(Path(tmp) / "cache")
        metrics = train_classifier(paragraphs[:3000], wiki[:3000], Path(tmp) / "m.bin", ClassifierParams())
        model = load_classifier(Path(tmp) / "m.bin")
        model_mb = (Path(tmp) / "m.bin").stat().st_size / 1e6
        time.sleep(2.1)  # the hash cache remembers only files older than two seconds
        lines = [fasttext_line(t) for t in texts]
        rows = [{"doc_id": f"d{i:06d}", "source": "web", "text": t} for i, t in enumerate(texts)]
        data = write_dataset(Path(tmp) / "in", DEDUP_SCHEMA, rows, stage="dedup", shard_docs=2000)
        cfg = SelectConfig.model_validate({"classifier": {"enabled": True, "model": str(Path(tmp) / "m.bin")}})
        timings: dict[str, list[float]] = {"bare": [], "scores": [], "select": []}
        for repeat in range(args.repeats):
            t0 = time.perf_counter()
            fasttext.load_model(str(Path(tmp) / "m.bin")).predict(lines, k=-1)
            timings["bare"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            positive_scores(model, texts)
            timings["scores"].append(time.perf_counter() - t0)
            stage = SelectStage(cfg, [SourceConfig(name="web", inputs=["x"])])
            select_models.clear()  # each repeat loads the model again, as a new process would
            out = Path(tmp) / f"out-{repeat}"
            t0 = time.perf_counter()
            stage.execute(StageContext(Path(tmp), log=lambda m: None), Input("bench", ["bench"], {"uri": str(data)}),
                          out, f"bench-{repeat}")
            timings["select"].append(time.perf_counter() - t0)
    mb = sum(len(t.encode()) for t in texts) / 1e6
    print(f"model: val AUC {metrics['val_auc']:.3f}, accuracy {metrics['val_accuracy']:.3f}; "
          f"{len(texts):,} texts, {mb:.1f} MB; median of {args.repeats}, one thread")
    for name, label in (("bare", "bare load_model + predict"), ("scores", "positive_scores"),
                        ("select", "select stage (read, score, keep)")):
        s = statistics.median(timings[name])
        print(f"{label:34}{len(texts) / s:>12,.0f} docs/s{mb / s:>8.1f} MB/s")
    bare = statistics.median(timings["bare"])
    print(f"the first select run also hashed the model ({model_mb:.0f} MB) for its key: "
          f"{timings['select'][0] - statistics.median(timings['select'][1:] or timings['select']):+.2f} s once")
    print(f"positive_scores / bare predict: {bare / statistics.median(timings['scores']):.2f}x")
    print(f"select stage / bare predict: {bare / statistics.median(timings['select']):.2f}x")


if __name__ == "__main__":
    main()
