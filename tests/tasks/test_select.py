"""Model-based selection (tasks/select.py): the classifier keeps a global top fraction or a threshold and drops the
rest with their scores, a loaded model scores as it does outside the stage, the reference LM knows its text, and a
reference source's held-out documents are never trained on. The reference is the standard library's docstrings,
the "crawl" Python's own pydoc pages as plain text: real text on every machine."""
import json
import math
import pydoc
import random

import numpy as np
import pyarrow.parquet as pq
import pytest

from model.reference_lm import LMParams, load_reference_lm, perplexities, train_reference_lm
from tasks.classifier import ClassifierParams, load_classifier, positive_scores, train_classifier
from tasks.config import Config, SelectConfig, SourceConfig
from tasks.dedup import SCHEMA as DEDUP_SCHEMA
from tasks.select import SelectStage, band_of, kept_by_cutoff, top_fraction_cutoff
from tasks.tokenizer import train_bpe, validation_hash
from tests.helpers import run_stage, write_dataset

MODULES = ["json", "textwrap", "string", "collections", "itertools", "functools", "re", "random", "statistics",
           "fractions", "decimal", "heapq", "bisect", "csv", "difflib", "shlex", "base64", "hashlib", "zipfile",
           "tarfile", "gzip", "calendar", "datetime", "pathlib", "shutil", "tempfile", "glob", "fnmatch", "argparse",
           "logging", "unittest", "doctest", "inspect", "dataclasses", "enum", "typing", "abc", "copy", "pprint",
           "operator"]
SOURCES = [SourceConfig(name="web", inputs=["x"], format="warc"),
           SourceConfig(name="docstrings", inputs=["y"], format="jsonl", val_docs=40)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(reference docstrings, pydoc pages cut into ~1,500-character pieces)."""
    from flows.demo_data import write_docstrings

    path = write_docstrings(tmp_path_factory.mktemp("doc") / "docstrings.jsonl")
    docstrings = [json.loads(line)["text"] for line in path.read_text().splitlines()]
    pages = []
    for name in MODULES:
        text = pydoc.render_doc(__import__(name), renderer=pydoc.plaintext)
        pages += [text[i:i + 1500] for i in range(0, min(len(text), 12_000), 1500)]
    return docstrings, pages


def dataset(tmp_path, corpus, shard_docs=150, shuffle=True):
    docstrings, pages = corpus
    rows = ([{"doc_id": f"doc-{i:04d}", "source": "docstrings", "text": t} for i, t in enumerate(docstrings)]
            + [{"doc_id": f"web-{i:04d}", "source": "web", "text": t} for i, t in enumerate(pages)])
    if shuffle:  # both sources spread over every unit (else the first units hold only the reference)
        random.Random(0).shuffle(rows)
    return write_dataset(tmp_path / "in", DEDUP_SCHEMA, rows, stage="dedup", shard_docs=shard_docs), rows


def select(tmp_path, corpus, name="out", shuffle=True, **settings):
    inp, rows = dataset(tmp_path, corpus, shuffle=shuffle)
    cfg = SelectConfig.model_validate({"reference": "docstrings", "shard_max_docs": 120, **settings})
    stage = SelectStage(cfg, SOURCES)
    kept, dropped, facts = run_stage(stage, inp, tmp_path / name)
    return stage, rows, kept, dropped, facts, tmp_path / name


def test_top_fraction_cutoff_keeps_exactly_the_fraction_and_breaks_ties_by_doc_id():
    scores = np.array([0.9, 0.5, 0.5, 0.5, 0.1, 0.7], dtype=np.float32)
    ids = ["f", "e", "b", "c", "a", "d"]
    cut = top_fraction_cutoff(scores, ids, 0.5)  # 3 of 6: f, d, then the smallest doc_id among the 0.5s
    assert cut == (pytest.approx(0.5), "b")
    assert [i for i, k in zip(ids, kept_by_cutoff(scores, ids, cut)) if k] == ["f", "b", "d"]
    # a non-ASCII doc_id orders by code point, as the reduce's Arrow sort does; a NaN score is never kept
    assert kept_by_cutoff(np.array([0.5, 0.5, np.nan]), ["é", "Z", "a"], (0.5, "f")).tolist() == [False, True, False]
    assert top_fraction_cutoff(scores, ids, 0.01)[1] == "f"  # at least one
    assert top_fraction_cutoff(np.array([]), [], 0.5) is None
    assert band_of(1.0, (2.0, 3.0)) == "head" and band_of(2.5, (2.0, 3.0)) == "middle" and band_of(9, (2, 3)) == "tail"


def test_the_classifier_keeps_the_global_top_fraction_and_drops_the_rest_with_their_scores(tmp_path, corpus):
    stage, rows, kept, dropped, facts, out = select(tmp_path, corpus, classifier={"enabled": True, "epochs": 20})
    web = [r for r in rows if r["source"] == "web"]
    kept_web = [r for r in kept if r["source"] == "web"]
    assert len(kept_web) == math.ceil(0.5 * len(web)) and len(dropped) == len(web) - len(kept_web)
    assert len({r["doc_id"] for r in kept}) == len(kept)
    # over the whole dataset, not per unit: every kept page outscores every dropped one
    scores = {r["doc_id"]: r["quality_score"] for r in kept_web}
    dropped_scores = [float(d["detail"].split()[0].split(":")[1]) for d in dropped]
    assert min(scores.values()) >= max(dropped_scores) - 1e-4
    assert all(d["reason"] == "quality_classifier" and d["detail"].startswith("quality_classifier:")
               and d["source"] == "web" for d in dropped)
    # the reference source skips select (curated), unscored
    docs = [r for r in kept if r["source"] == "docstrings"]
    assert len(docs) == sum(r["source"] == "docstrings" for r in rows) and all(r["quality_score"] is None for r in docs)
    assert facts["docs_scored"] == len(web)
    # the model, and what it trained on: never a document tokenize will hold out of the reference
    sample = pq.read_table(out / "models" / "classifier_sample.parquet").to_pylist()
    held = sorted((r for r in rows if r["source"] == "docstrings"), key=lambda r: (validation_hash(r["doc_id"]),
                                                                                   r["doc_id"]))[:40]
    assert not {r["doc_id"] for r in held} & {s["doc_id"] for s in sample}
    assert {s["label"] for s in sample} == {"reference", "crawl"} and {s["split"] for s in sample} == {"train", "val"}
    models = json.loads((out / "models" / "models.json").read_text())["classifier"]
    assert models["val_auc"] > 0.9 and models["train_positive"] + models["val_positive"] == \
        models["train_negative"] + models["val_negative"]  # balanced classes
    again = run_stage(SelectStage(stage.config, SOURCES), tmp_path / "in", tmp_path / "again")[0]
    assert [r["doc_id"] for r in again] == [r["doc_id"] for r in kept]  # seeded: the same selection


def test_a_threshold_keeps_what_scores_at_least_it(tmp_path, corpus):
    _, rows, kept, dropped, _, _ = select(tmp_path, corpus, shuffle=False,  # units with nothing to score too
                                          classifier={"enabled": True, "epochs": 20, "keep": "threshold",
                                                      "threshold": 0.6})
    assert len(kept) + len(dropped) == len(rows)
    web = [r for r in kept if r["source"] == "web"]
    assert web and dropped
    assert all(r["quality_score"] >= 0.6 for r in web)
    assert all(float(d["detail"].split()[0].split(":")[1]) < 0.6 for d in dropped)


def test_a_loaded_model_scores_as_it_does_outside_the_stage(tmp_path, corpus):
    docstrings, pages = corpus
    model_file = tmp_path / "theirs.bin"
    train_classifier(docstrings[::2], pages[::2], model_file, ClassifierParams(epochs=10, seed=5))
    stage, rows, kept, dropped, _, out = select(tmp_path, corpus, classifier={"enabled": True, "model": str(model_file),
                                                                              "keep": "threshold", "threshold": 0.5})
    expected = positive_scores(load_classifier(model_file), [r["text"] for r in rows if r["source"] == "web"])
    by_id = {r["doc_id"]: s for r, s in zip([r for r in rows if r["source"] == "web"], expected)}
    assert all(r["quality_score"] == pytest.approx(by_id[r["doc_id"]], abs=1e-6) for r in kept if r["source"] == "web")
    assert len([r for r in kept if r["source"] == "web"]) == int((expected >= 0.5).sum())
    assert not (out / "models" / "classifier_sample.parquet").exists()  # it trained on nothing here


def test_the_reference_lm_finds_its_own_kind_of_text_likelier(tmp_path, corpus):
    docstrings, pages = corpus
    train, held = docstrings[:-60], docstrings[-60:]
    tok = train_bpe(train, 1024, ["<|bos|>"])
    bos = tok.token_to_id("<|bos|>")
    encode = lambda texts: [[bos, *e.ids] for e in tok.encode_batch(texts)]  # noqa: E731
    facts = train_reference_lm(encode(train), LMParams(vocab_size=tok.get_vocab_size(), depth=1, d_model=64,
                                                       seq_len=128, batch_size=8, steps=150), tmp_path / "lm")
    assert facts["final_loss"] < facts["first_loss"] - 2
    lm = load_reference_lm(tmp_path / "lm", "cpu")
    rng = random.Random(0)
    shuffled = [" ".join(rng.sample(t.split(), len(t.split()))) for t in held]
    own, mixed, other = (perplexities(lm, encode(x)) for x in (held, shuffled, pages[:60]))
    assert np.median(own) < np.median(mixed) and np.median(own) < np.median(other)
    # the same document scores the same alone and in a batch of others (padding is ignored)
    alone = perplexities(lm, encode(held[:1]))
    assert alone[0] == pytest.approx(own[0], rel=1e-4)
    # perplexity is exp(mean NLL in nats) over the scored tokens
    ids = encode(held[:1])[0][:129]
    import torch
    with torch.no_grad():
        nll = lm(torch.tensor([ids[:-1]]), torch.tensor([ids[1:]]))
    assert alone[0] == pytest.approx(math.exp(float(nll)), rel=1e-4)


def test_the_perplexity_filter_keeps_each_sources_head_and_middle(tmp_path, corpus):
    settings = {"perplexity": {"enabled": True, "vocab_size": 1024, "depth": 1, "d_model": 64, "seq_len": 128,
                               "batch_size": 8, "steps": 60, "device": "cpu"}}
    stage, rows, kept, dropped, facts, out = select(tmp_path, corpus, **settings)
    web = [r for r in rows if r["source"] == "web"]
    kept_web = [r for r in kept if r["source"] == "web"]
    assert abs(len(kept_web) - 2 / 3 * len(web)) <= 2
    assert all(d["reason"] == "perplexity" and " tail " in d["detail"] for d in dropped)
    assert max(r["perplexity"] for r in kept_web) <= min(float(d["detail"].split()[0].split(":")[1])
                                                          for d in dropped) + 0.1
    lm = json.loads((out / "models" / "models.json").read_text())["perplexity"]
    assert lm["docs"] > 0 and (out / "models" / "reference_lm" / "lm_sample.parquet").exists()


def test_decontaminate_reads_dedup_when_select_is_off():
    from flows.pipeline import effective_upstream

    off = Config()
    on = Config.model_validate({"ingest": {"inputs": ["x"]}, "sources": [{"name": "books", "inputs": ["b"],
                                                                          "format": "text"}],
                                "select": {"reference": "books", "classifier": {"enabled": True}}})
    assert effective_upstream(off, "decontaminate") == "dedup" and effective_upstream(on, "decontaminate") == "select"
    assert effective_upstream(off, "ingest") is None
    with pytest.raises(ValueError, match="reference"):
        SelectConfig.model_validate({"classifier": {"enabled": True}})
    with pytest.raises(ValueError, match="not configured"):
        Config.model_validate({"select": {"reference": "nope"}})
