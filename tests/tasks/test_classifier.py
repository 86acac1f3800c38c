"""The fastText quality classifier: trained on two real kinds of text it separates them on held-out documents,
deterministically, and a saved model scores exactly as the trained one."""
import json

import numpy as np
import pytest

from tasks.classifier import (ClassifierParams, fasttext_line, load_classifier, positive_scores, roc_auc,
                              train_classifier)
from tests.conftest import shared_path
from tests.helpers import prose


@pytest.fixture(scope="module")
def docstrings(tmp_path_factory):
    """The installed standard library's docstrings (real text on every machine), as the demo writes them."""
    from flows.demo_data import write_docstrings

    path = write_docstrings(tmp_path_factory.mktemp("doc") / "docstrings.jsonl")
    return [json.loads(line)["text"] for line in path.read_text().splitlines()]


def test_roc_auc_matches_the_pairwise_definition():
    rng = np.random.default_rng(0)
    scores, labels = rng.integers(0, 5, 60).astype(float), rng.random(60) < 0.4
    pairs = [(1.0 if p > n else 0.5 if p == n else 0.0) for p in scores[labels] for n in scores[~labels]]
    assert roc_auc(scores, labels) == pytest.approx(np.mean(pairs))


def test_a_classifier_separates_docstrings_from_prose_and_saves_exactly(tmp_path, docstrings):
    negatives = [prose(i, 12) for i in range(len(docstrings))]
    params = ClassifierParams(epochs=5, seed=3)
    metrics = train_classifier(docstrings, negatives, tmp_path / "q.bin", params)
    assert metrics["val_positive"] > 20 and metrics["val_auc"] > 0.95 and metrics["val_accuracy"] > 0.9
    again = train_classifier(docstrings, negatives, tmp_path / "q2.bin", params)
    assert again["val_auc"] == metrics["val_auc"]  # one thread and a seed: the same model
    model = load_classifier(tmp_path / "q.bin")
    texts = docstrings[:5] + negatives[:5]
    scores = positive_scores(model, texts)
    assert scores.dtype == np.float32 and (scores[:5] > scores[5:].max()).all()
    assert np.array_equal(scores, positive_scores(load_classifier(tmp_path / "q2.bin"), texts))


def test_every_kind_of_line_break_becomes_one_line_as_dclm_joins_them(tmp_path, docstrings):
    """fastText reads a line per example: CRLF, form feed, U+2028 and friends are all joined with a space (DCLM's
    ``" ".join(text.strip().splitlines())``), and only max_chars characters are read."""
    text = "  First line.\r\nSecond\x0bline\x0c\x1c third\x85 fourth\u2028fifth\u2029 sixth\n\n"
    assert fasttext_line(text) == "First line. Second line   third  fourth fifth  sixth"
    assert fasttext_line("abc\ndef", max_chars=5) == "abc d"
    model_path = tmp_path / "q.bin"
    train_classifier(docstrings[:200], [prose(i, 12) for i in range(200)], model_path, ClassifierParams(epochs=1))
    scores = positive_scores(load_classifier(model_path), [text, "", "\n\n", docstrings[0]])
    assert scores.shape == (4,) and ((scores >= 0) & (scores <= 1)).all()


def test_bad_models_and_one_class_are_refused(tmp_path):
    with pytest.raises(ValueError, match="both classes"):
        train_classifier(["some text"], ["   "], tmp_path / "x.bin")
    with pytest.raises(FileNotFoundError):
        load_classifier(tmp_path / "missing.bin")


def test_books_against_wikitext_on_the_shared_corpora(tmp_path):
    import gzip

    books = sorted(shared_path("corpora", "english", "gutenberg", "train").glob("*.txt.gz"))[:20]
    wiki = shared_path("corpora", "english", "wikitext2", "valid.txt").read_text(encoding="utf-8")
    paragraphs = [p for b in books for p in gzip.open(b, "rt", encoding="utf-8").read().split("\n\n")
                  if len(p.split()) > 20]
    articles = [p for p in wiki.split("\n \n") if len(p.split()) > 20]
    metrics = train_classifier(paragraphs[:3000], articles[:3000], tmp_path / "b.bin", ClassifierParams(seed=1))
    assert metrics["val_auc"] > 0.95
