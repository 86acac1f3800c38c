"""Benchmark formats, the n-gram rules, both contamination policies, the smoke set and fetching it over HTTP."""
import functools
import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tasks.evalsets import (TASKS, BenchmarkError, contamination_text, fetch, item_kind, read_items, write_smoke)
from tasks.config import DecontaminateConfig
from tasks.contamination import ItemIndex, match_words
from tasks.decontaminate import DecontaminateStage, cut_matches
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
    d.mkdir(parents=True, exist_ok=True)
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


ITEM_ARC_SHORT_Q = {"query": "Question: Which gas do plants absorb?", "choices": ["oxygen", "carbon dioxide",
                                                                                 "helium", "neon"], "gold": 1}
ITEM_COPA = {"query": "The man broke his toe because", "choices": ["he dropped a hammer on his foot.",
                                                                   "he got a hole in his sock."], "gold": 0}
ITEM_WINO = {"context_options": ["Sarah was a much better surgeon than Maria so Sarah",
                                 "Sarah was a much better surgeon than Maria so Maria"],
             "continuation": "always got the harder cases.", "gold": 0}
ITEM_QUIZ = {"query": "Question: Which reflects light?", "choices": ["mirror", "rock"], "gold": 0}


def flagged(tmp_path, item_sets: dict, docs: dict[str, str], name="run", **cfg) -> dict[str, set]:
    """doc -> {(task, item)} found, running the stage on ``docs`` against ``item_sets``."""
    d = bench_dir(tmp_path / name, **item_sets)
    kept, dropped, facts = decontaminate(tmp_path, docs, name, benchmarks_dir=d, **cfg)
    import pyarrow.parquet as pq

    hits = pq.read_table(tmp_path / f"{name}-out" / "_reduce" / "hits.parquet").to_pylist()
    found = {doc: set() for doc in docs}
    for h in hits:
        found[h["doc_id"]].add((h["task"], h["item"]))
    return found


def test_a_copy_that_keeps_its_labels_numbers_and_choice_letters_is_found(tmp_path):
    """The question is under 13 words, so every n-gram of the old index crossed the label gap."""
    pastes = {
        "harness": "Question: Which gas do plants absorb?\nAnswer: carbon dioxide",
        "qa": "12. Q: Which gas do plants absorb?\nA: carbon dioxide",
        "letters": "Which gas do plants absorb? (A) oxygen (B) carbon dioxide (C) helium (D) neon Answer: (B)",
        "own_line": "Which gas do plants absorb?\n\nCarbon dioxide.",
        "native": "Which gas do plants absorb?\nA. oxygen\nB. carbon dioxide\nC. helium\nD. neon\nAnswer: B",
    }
    found = flagged(tmp_path, {"arc_easy": [ITEM_ARC_SHORT_Q]},
                    {k: f"{FILLER}\n\n{v}\n\n{FILLER}" for k, v in pastes.items()} | {"clean": FILLER * 3})
    assert {k for k, v in found.items() if v} == set(pastes)


def test_copa_is_found_as_people_write_it_without_the_prompts_connector(tmp_path):
    docs = {"human": f"{FILLER} The man broke his toe. What was the cause? He dropped a hammer on his foot. {FILLER}",
            "prompt": f"{FILLER} The man broke his toe because he dropped a hammer on his foot. {FILLER}",
            "listed": f"{FILLER}\nThe man broke his toe. What was the cause?\n1) He dropped a hammer on his foot.\n"
                      f"2) He got a hole in his sock.\n{FILLER}",
            "clean": FILLER * 3}
    found = flagged(tmp_path, {"copa": [ITEM_COPA]}, docs)
    assert {k for k, v in found.items() if v} == {"human", "prompt", "listed"}


def test_winogrande_is_found_in_its_native_form_with_the_blank_and_both_options(tmp_path):
    docs = {"native": f"{FILLER}\nSarah was a much better surgeon than Maria so _ always got the harder cases.\n"
                      f"Option 1: Sarah\nOption 2: Maria\n{FILLER}",
            "filled": f"{FILLER} Sarah was a much better surgeon than Maria so Sarah always got the harder cases. "
                      f"{FILLER}",
            "clean": FILLER * 3}
    found = flagged(tmp_path, {"winogrande": [ITEM_WINO]}, docs)
    assert {k for k, v in found.items() if v} == {"native", "filled"}


def test_a_short_item_is_found_whole_on_its_own_lines_but_not_as_words_in_a_sentence(tmp_path):
    docs = {"quiz": f"{FILLER}\n\nQuestion: Which reflects light?\nAnswer: mirror\n\n{FILLER}",
            "own_lines": f"{FILLER}\n\nWhich reflects light?\n\nMirror.\n\n{FILLER}",
            "sentence": f"{FILLER} Which reflects light? Mirror glass on the wall of the hall did, said the keeper. "
                        f"{FILLER}",
            "fact": f"{FILLER} A polished mirror reflects the light of the lamp. {FILLER}"}
    d = bench_dir(tmp_path / "b", arc_easy=[ITEM_QUIZ])
    index = ItemIndex.build(sorted(d.glob("*.jsonl")))
    assert index.too_short["arc_easy"] == 0 and index.short["arc_easy"] == 1 and index.checked == 1  # counted, checked
    found = flagged(tmp_path, {"arc_easy": [ITEM_QUIZ]}, docs)
    assert {k for k, v in found.items() if v} == {"quiz", "own_lines"}


def test_an_item_leaked_on_many_pages_is_found_on_every_one_while_a_common_phrase_is_not(tmp_path):
    """No cap on how many documents may hold an item's n-grams: a leak is told from common text by how much of the
    item a document holds, so the 60th copy is found like the first, and a phrase that is everywhere is not."""
    item = contamination_text(ITEM_LM)
    phrase = "the travellers finally reached the little inn"
    docs = {f"leak{i}": f"{FILLER} {item}. {FILLER}" for i in range(60)}
    docs |= {f"phrase{i}": f"{FILLER} At last {phrase} in the rain. {FILLER}" for i in range(60)}
    found = flagged(tmp_path, {"lambada_openai": [ITEM_LM]}, docs)
    assert all(found[f"leak{i}"] == {("lambada_openai", 0)} for i in range(60))
    assert not any(found[f"phrase{i}"] for i in range(60))


def test_each_hit_carries_its_score_and_segment(tmp_path):
    d = bench_dir(tmp_path / "b", lambada_openai=[ITEM_LM])
    index = ItemIndex.build(sorted(d.glob("*.jsonl")))
    words, _ = match_words(FILLER + contamination_text(ITEM_LM) + " " + FILLER)
    [hit] = index.find(words)
    assert (hit.segment, hit.score, index.refs[hit.ref]) == ("full", 1.0, ("lambada_openai", 0))
    half = " ".join(contamination_text(ITEM_LM).split()[:12])  # 12 of 19 words: 5 of the item's 12 8-grams
    words, _ = match_words(FILLER + half + " " + FILLER)
    assert index.find(words) == []
    found = index.find(match_words(" ".join(contamination_text(ITEM_LM).split()[:16]))[0])
    assert found[0].segment == "question" and 0.5 <= found[0].score < 1.0


def test_a_long_choice_or_a_passage_copied_alone_is_found(tmp_path):
    piqa = {"query": "Question: How do I ready a guinea pig cage for its new occupants?\n", "gold": 0,
            "choices": ["Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper "
                        "strips, and supply it with a water bottle and a food dish.", "Fill it with sand."]}
    boolq = {"query": "Passage: The harbour wall was built in 1820 from granite quarried on the island, and it was "
                      "raised by two metres after the storm of 1881 flooded the lower town.\nQuestion: was the "
                      "harbour wall built from granite?", "choices": ["no", "yes"], "gold": 1}
    docs = {"solution": f"{FILLER} Provide the guinea pig with a cage full of a few inches of bedding made of ripped "
                        f"paper strips, and supply it with a water bottle and a food dish. {FILLER}",
            "passage": f"{FILLER} The harbour wall was built in 1820 from granite quarried on the island, and it was "
                       f"raised by two metres after the storm of 1881 flooded the lower town. {FILLER}",
            "clean": FILLER * 3}
    found = flagged(tmp_path, {"piqa": [piqa], "boolq": [boolq]}, docs)
    assert found == {"solution": {("piqa", 0)}, "passage": {("boolq", 0)}, "clean": set()}


def test_labels_and_unicode_are_normalised_the_same_on_both_sides():
    a, _ = match_words("Question: It doesn’t fit — the well-known “trophy” (B) Answer:")
    b, _ = match_words("it doesn't fit the well known trophy")
    assert a == b == ["it", "doesnt", "fit", "the", "well", "known", "trophy"]


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
