"""Benchmark formats, the n-gram rules, both contamination policies, the smoke set and fetching it over HTTP."""
import functools
import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tasks.evalsets import (TASKS, BenchmarkError, contamination_text, fetch, item_kind, read_items, write_smoke)
from tasks.config import DecontaminateConfig
from tasks.decontaminate import DecontaminateStage, ItemIndex, cut_matches
from tasks.dedup import SCHEMA as DEDUP_SCHEMA
from tasks.ngrams import word_spans
from tests.conftest import shared_path
from tests.helpers import run_stage, write_dataset

FILLER = ("The committee met on a grey morning to review the harbour accounts, and after a long discussion about "
          "the price of timber and the state of the old sea wall it agreed to meet again in the spring. ")
ITEM_MC = {"query": "Question: Which gas do green plants absorb from the air to build sugars during photosynthesis?",
           "choices": ["oxygen", "carbon dioxide"], "gold": 1}
ITEM_SCHEMA = {"context_options": ["The lamp lit the room because the lamp", "The lamp lit the room because the room"],
               "continuation": "was switched on at dusk by the old keeper of the lighthouse.", "gold": 0}
ITEM_LM = {"context": "After the long walk across the frozen valley the travellers finally reached the little inn "
                      "and ordered bowls of hot", "continuation": "soup"}
ITEM_SHORT = {"query": "Birds can fly,", "choices": ["yes", "no"], "gold": 0}
ITEM_TEN = {"query": "The baker opened the shop early, therefore", "choices": ["bread was ready.", "no"], "gold": 0}


def bench_dir(tmp_path, **files):
    d = tmp_path / "bench"
    d.mkdir(exist_ok=True)
    for task, items in files.items():
        (d / f"{task}.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    return d


def decontaminate(tmp_path, docs: dict[str, str], name="run", **cfg):
    rows = [{"doc_id": d, "url": f"http://e.org/{d}", "text": t} for d, t in docs.items()]
    up = write_dataset(tmp_path / f"{name}-in", DEDUP_SCHEMA, rows, stage="dedup")
    stage = DecontaminateStage(DecontaminateConfig(**cfg))
    kept, dropped, facts = run_stage(stage, up, tmp_path / f"{name}-out")
    return {r["doc_id"]: r for r in kept}, {r["doc_id"]: r for r in dropped}, facts


def test_every_format_builds_question_plus_gold_answer():
    assert item_kind(ITEM_MC) == "multiple_choice"
    assert contamination_text(ITEM_MC).endswith("photosynthesis? carbon dioxide")
    assert not contamination_text(ITEM_MC).startswith("Question")  # the label is not part of the leak
    assert contamination_text(ITEM_SCHEMA) == ("The lamp lit the room because the lamp was switched on at dusk by "
                                               "the old keeper of the lighthouse.")
    assert contamination_text(ITEM_LM).endswith("bowls of hot soup")


def test_a_malformed_line_names_the_file_and_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps(ITEM_MC) + "\n{not json\n")
    with pytest.raises(BenchmarkError, match=r"bad\.jsonl:2: "):
        read_items(f)
    f.write_text(json.dumps(ITEM_MC) + "\n" + json.dumps({"query": "q", "choices": ["a", "b"], "gold": 5}) + "\n")
    with pytest.raises(BenchmarkError, match=r"bad\.jsonl:2: 'gold' must be an index into 2 options"):
        read_items(f)
    f.write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(BenchmarkError, match=r"bad\.jsonl:1: unknown item format"):
        read_items(f)


def test_short_items_use_shorter_ngrams_and_the_shortest_are_counted(tmp_path):
    d = bench_dir(tmp_path, copa=[ITEM_TEN, ITEM_SHORT])
    index = ItemIndex.build(sorted(d.glob("*.jsonl")), ngram=13, min_ngram=8)
    assert set(index.hashes) == {10}  # "the baker opened the shop early therefore bread was ready": 10 words
    assert index.too_short["copa"] == 1 and index.items["copa"] == 2
    words, _ = word_spans("Yesterday THE BAKER opened the shop early -- therefore, bread was ready! Good.")
    [(n, pos, ref)] = index.matches(words)
    assert (n, pos, index.refs[ref]) == (10, 1, ("copa", 0))


def test_drop_policy_drops_documents_with_an_item_whatever_the_case_and_punctuation(tmp_path):
    d = bench_dir(tmp_path, arc_easy=[ITEM_MC], winogrande=[ITEM_SCHEMA], lambada_openai=[ITEM_LM])
    leak = FILLER + "which GAS do green plants absorb from the air, to build sugars during photosynthesis? " \
                    "Carbon dioxide! " + FILLER
    kept, dropped, facts = decontaminate(tmp_path, {"leak": leak, "clean": FILLER * 3}, benchmarks_dir=d)
    assert set(kept) == {"clean"} and kept["clean"]["contaminated"] is False
    assert dropped["leak"]["reason"] == "contaminated" and "arc_easy#0" in dropped["leak"]["detail"]
    assert facts["contaminated_docs"] == 1 and facts["contaminated_items.arc_easy"] == 1
    assert facts["items.winogrande"] == 1 and facts["contaminated_items.winogrande"] == 0


def test_cut_policy_removes_a_window_and_keeps_the_rest(tmp_path):
    d = bench_dir(tmp_path, lambada_openai=[ITEM_LM])
    item = contamination_text(ITEM_LM)
    doc = FILLER * 4 + item + " " + FILLER * 4
    kept, dropped, _ = decontaminate(tmp_path, {"doc": doc, "many": (item + " " + FILLER) * 12,
                                                "tiny": item + " " + FILLER[:50]},
                                     benchmarks_dir=d, policy="cut", cut_window_chars=50, max_cuts=10,
                                     min_chars_after_cut=200)
    text = kept["doc"]["text"]
    assert "frozen valley" not in text and kept["doc"]["contaminated"] is True
    assert len(doc) - len(text) == pytest.approx(len(item) + 100, abs=5)
    assert dropped["many"]["reason"] == "contaminated_too_many_cuts"
    assert dropped["tiny"]["reason"] == "contaminated_too_short_after_cut"


def test_cut_windows_merge_when_they_overlap():
    text = "aaaa bbbb cccc dddd eeee ffff"
    _, spans = word_spans(text)
    out, cuts = cut_matches(text, spans, [(1, 1), (2, 1)], window=1)
    assert (out, cuts) == ("aaaa\ndddd eeee ffff", 1)


def test_ngrams_common_across_the_corpus_are_not_contamination(tmp_path):
    d = bench_dir(tmp_path, lambada_openai=[ITEM_LM])
    phrase = "the travellers finally reached the little inn and ordered bowls of hot soup"
    docs = {f"d{i}": f"{FILLER} {phrase}. {FILLER}" for i in range(4)}
    kept, dropped, facts = decontaminate(tmp_path, docs, benchmarks_dir=d, max_ngram_docs=3)
    assert set(kept) == set(docs) and facts["common_ngrams_ignored"] >= 1 and facts["hits"] == 0
    kept, dropped, facts = decontaminate(tmp_path, docs, "strict", benchmarks_dir=d, max_ngram_docs=10)
    assert not kept and facts["contaminated_docs"] == 4


def test_the_smoke_set_has_every_task_in_its_format(tmp_path):
    write_smoke(tmp_path)
    for task, spec in TASKS.items():
        items = read_items(tmp_path / f"{task}.jsonl")
        assert items and {item_kind(i) for i in items} == {spec.kind}


def test_the_real_sets_read_cleanly():
    directory = shared_path("benchmarks")
    for task, spec in TASKS.items():
        items = read_items(directory / f"{task}.jsonl")
        assert len(items) >= 100 and item_kind(items[0]) == spec.kind


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "www"
    write_smoke(root / "sets")
    (root / "broken").mkdir()
    (root / "broken" / "copa.jsonl").write_text(json.dumps(ITEM_MC) + "\n[1, 2]\n")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_fetch_downloads_and_validates_every_task(served, tmp_path):
    written = fetch(f"{served}/sets/", tmp_path / "got")
    assert sorted(p.name for p in written) == sorted(f"{t}.jsonl" for t in TASKS)
    assert read_items(tmp_path / "got" / "copa.jsonl")[0]["query"].startswith("The glass fell")
    with pytest.raises(BenchmarkError, match=r"/broken/copa\.jsonl:2: expected a JSON object"):
        fetch(f"{served}/broken", tmp_path / "got2", tasks=["copa"])
    assert not (tmp_path / "got2" / "copa.jsonl").exists()
    with pytest.raises(BenchmarkError, match="cannot fetch .*/nowhere/copa.jsonl"):
        fetch(f"{served}/nowhere", tmp_path / "got3", tasks=["copa"])
