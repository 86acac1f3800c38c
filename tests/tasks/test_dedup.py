"""Exact and MinHash dedup: determinism, the survivor rule, clustering across bands, incremental runs."""
import random

import numpy as np
import pytest

from tasks.config import DedupConfig
from tasks.dedup import DedupStage, exact_hash, shingles, signatures
from tasks.quality import SCHEMA as QUALITY_SCHEMA
from tests.helpers import run_stage, write_dataset
from tasks.dedup_cluster import union_find

VOCAB = [f"w{i}" for i in range(3000)]


def text(seed: int, words: int = 300) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(VOCAB) for _ in range(words))


def edited(body: str, changes: int, seed: int = 0) -> str:
    """The text with ``changes`` words replaced, spread out, so the copy is near but not equal."""
    rng = random.Random(seed)
    words = body.split()
    for i in rng.sample(range(len(words)), changes):
        words[i] = f"x{rng.randrange(1000)}"  # no longer than the words it replaces
    return " ".join(words)


def dedup(tmp_path, docs: dict[str, str], name: str = "run", shard_docs: int = 1000, **cfg):
    rows = [{"doc_id": d, "url": f"http://e.org/{d}", "text": t} for d, t in docs.items()]
    up = write_dataset(tmp_path / f"{name}-in", QUALITY_SCHEMA, rows, stage="quality", shard_docs=shard_docs)
    cfg.setdefault("state_dir", tmp_path / "state")
    stage = DedupStage(DedupConfig(**cfg))
    kept, dropped, facts = run_stage(stage, up, tmp_path / f"{name}-out", key=f"key-{name}")
    return {r["doc_id"]: r for r in kept}, {r["doc_id"]: r for r in dropped}, facts


def test_exact_hash_ignores_case_and_spacing_only():
    assert exact_hash("Hello  World\n") == exact_hash("hello world")
    assert exact_hash("Cafe\u0301") == exact_hash("café")
    assert exact_hash("hello world.") != exact_hash("hello world")


def test_signatures_are_datasketch_minhashes():
    from datasketch import MinHash

    cfg = DedupConfig()
    body = text(1)
    [sig] = signatures([body], cfg)
    m = MinHash(num_perm=cfg.num_perm, seed=cfg.seed, hashfunc=lambda v: v, scheme="affine32")
    for value in shingles(body, cfg.ngram):  # the one-at-a-time loop gives the same signature
        m.update(int(value))
    assert np.array_equal(sig, m.hashvalues)
    other = signatures([edited(body, 10)], cfg)[0]
    assert 0.5 < (sig == other).mean() < 1.0


def test_many_sets_at_once_are_datasketch_bulk_row_for_row():
    """Sets of every size, empty ones and one bigger than a block, in one call: each row is MinHash.bulk's."""
    from datasketch import MinHash

    from tasks import dedup

    rng = np.random.default_rng(5)
    sizes = [0, 1, 2, 7, 300, 0, 5000, 1, 90_000, 3, 64]
    sets = [np.unique(rng.integers(0, 2**32, size=n, dtype=np.uint64).astype(np.uint32)) for n in sizes]
    rows = dedup.minhash_rows(sets, 112, 42)
    expected = MinHash.bulk([s for s in sets if len(s)], num_perm=112, seed=42, hashfunc=lambda v: v,
                            scheme="affine32")
    got = rows[[i for i, s in enumerate(sets) if len(s)]]
    assert np.array_equal(got, np.stack([m.hashvalues for m in expected]))
    assert (rows[[0, 5]] == np.iinfo(np.uint32).max).all() and rows.dtype == np.uint32


def test_exact_duplicates_keep_the_same_document_whatever_the_order(tmp_path):
    base = text(1)
    docs = {"d-b": base, "d-a": base.upper(), "d-c": base.replace(" ", "\n", 5), "d-x": text(2)}
    kept, dropped, facts = dedup(tmp_path, docs, "one")
    assert set(kept) == {"d-a", "d-x"}  # all three the same length: the smallest doc_id
    assert {d: r["reason"] for d, r in dropped.items()} == {"d-b": "exact_duplicate", "d-c": "exact_duplicate"}
    assert dropped["d-b"]["detail"].startswith("duplicate of d-a")
    assert kept["d-a"]["exact_hash"] == exact_hash(base) and kept["d-a"]["dedup_kept"]
    reordered = dict(reversed(list(docs.items())))
    kept2, _, _ = dedup(tmp_path, reordered, "two", shard_docs=1, incremental=False)
    assert set(kept2) == set(kept)
    assert facts["exact_duplicates"] == 2


def test_near_duplicates_cluster_and_the_longest_survives(tmp_path):
    base = text(3)
    docs = {"a": base, "b": edited(base, 6, seed=1), "c": base + " and a longer ending here", "z": text(4)}
    kept, dropped, facts = dedup(tmp_path, docs)
    assert set(kept) == {"c", "z"}
    assert {d: r["reason"] for d, r in dropped.items()} == {"a": "near_duplicate", "b": "near_duplicate"}
    assert kept["c"]["minhash_cluster_id"] == "c" and kept["z"]["minhash_cluster_id"] == "z"
    assert "(cluster c)" in dropped["b"]["detail"]
    assert facts["clusters"] == 1 and facts["near_duplicates"] == 2


def test_threshold_separates_what_the_bands_let_through(tmp_path):
    base = text(5)
    docs = {"a": base, "b": edited(base, 30, seed=2)}  # about 0.55 Jaccard on 5-gram shingles
    kept, _, _ = dedup(tmp_path, docs, "strict", threshold=0.95, bands=112, rows=1)
    assert set(kept) == {"a", "b"}  # one-row bands collide on anything; verification refuses the pair
    kept, _, facts = dedup(tmp_path, docs, "loose", threshold=0.3, bands=112, rows=1, incremental=False)
    assert set(kept) == {"a"} and facts["verified_pairs"] == 1


def test_union_find_joins_chains_across_bands():
    roots = union_find(6, np.array([4, 1, 2]), np.array([5, 2, 0]))
    assert roots.tolist() == [0, 0, 0, 3, 4, 4]
    # a long chain given in the worst order still collapses to one root
    n = 1000
    roots = union_find(n, np.arange(n - 1, 0, -1), np.arange(n - 2, -1, -1))
    assert set(roots.tolist()) == {0}


def test_chained_near_duplicates_form_one_cluster(tmp_path):
    base = text(6, words=600)
    step1 = edited(base, 12, seed=1)
    step2 = edited(step1, 12, seed=2)
    step3 = edited(step2, 12, seed=3)
    kept, dropped, facts = dedup(tmp_path, {"p0": base, "p1": step1, "p2": step2, "p3": step3})
    assert len(kept) == 1 and len(dropped) == 3
    [survivor] = kept
    assert {r["detail"].split("(cluster ")[1].rstrip(")") for r in dropped.values()} == {survivor}


def test_incremental_run_drops_duplicates_of_earlier_accepted_documents(tmp_path):
    first = {"old-1": text(7), "old-2": text(8)}
    kept, _, _ = dedup(tmp_path, first, "first")
    assert set(kept) == set(first)
    later = {"old-1": first["old-1"],  # the same document again is not its own duplicate
             "new-near": edited(first["old-2"], 5, seed=4), "new-exact": first["old-2"].lower(),
             "new-fresh": text(9)}
    kept, dropped, facts = dedup(tmp_path, later, "second")
    assert set(kept) == {"old-1", "new-fresh"}
    assert dropped["new-near"]["reason"] == "near_duplicate_earlier_run"
    assert dropped["new-exact"]["reason"] == "exact_duplicate_earlier_run"
    assert "old-2" in dropped["new-near"]["detail"]
    assert facts["earlier_run"] == 2 and facts["state_docs"] == 1
    # without the state, the two new copies only compete with each other
    kept, _, _ = dedup(tmp_path, later, "fresh", incremental=False)
    assert len({"new-near", "new-exact"} & set(kept)) == 1


def test_a_killed_reduce_reruns_and_a_finished_one_is_not_repeated(tmp_path):
    from tasks.sharded import run_reduce, run_scan

    rows = [{"doc_id": f"d{i}", "text": text(i)} for i in range(5)]
    up = write_dataset(tmp_path / "in", QUALITY_SCHEMA, rows + [{"doc_id": "dup", "text": text(0)}])
    stage = DedupStage(DedupConfig(incremental=False))
    out = tmp_path / "out"
    [unit] = stage.plan(up)
    scans = [run_scan(stage, unit, out)]
    (stage.scratch_dir(out) / "decisions.tmp").mkdir()  # what a reduce killed mid-write leaves
    facts = run_reduce(stage, out, scans, "k")
    assert facts["exact_duplicates"] == 1 and not (stage.scratch_dir(out) / "decisions.tmp").exists()
    assert not list(stage.scratch_dir(out).glob("bands-*"))  # only the reduce needed them
    assert run_reduce(stage, out, scans, "k") == facts


def test_documents_without_words_never_collide(tmp_path):
    kept, dropped, _ = dedup(tmp_path, {"e1": "!!!", "e2": "???", "t": text(10)})
    assert set(kept) == {"e1", "e2", "t"} and not dropped


@pytest.mark.parametrize("bad", [{"bands": 20, "rows": 8, "num_perm": 112}, {"threshold": 1.5}])
def test_config_refuses_impossible_settings(bad):
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        DedupConfig(**bad)


def test_segment_dedup_counts_each_segment_once_across_units_and_keeps_one_copy(tmp_path):
    import pyarrow.parquet as pq

    footer = "Sign up for our newsletter to get the latest stories delivered to your inbox every week."
    pair = "This sentence about the harbour appears in exactly two of the documents here."
    docs = {f"d{i}": "\n".join([text(i, 120), footer, "Share this", text(100 + i, 120)]) for i in range(6)}
    docs["d0"] += "\n" + pair
    docs["d1"] += "\n" + pair
    docs["d9"] = footer + "\nShare this\nA short note."  # nothing of its own but a few words
    kept, dropped, facts = dedup(tmp_path, docs, shard_docs=3, segments=True, minhash=False)  # 3 units
    assert footer in kept["d0"]["text"]  # the first holder (smallest doc_id) keeps the footer
    for d in ("d1", "d2", "d3", "d4", "d5"):
        assert footer not in kept[d]["text"]
        assert "Share this" in kept[d]["text"]  # shorter than segment_min_chars: never a segment
    assert pair not in kept["d1"]["text"] and pair in kept["d0"]["text"]
    assert dropped["d9"]["reason"] == "segments_left_too_short"
    assert facts["segments_repeated"] == 2 and facts["segments_removed"] == 5 + 1 + 1
    top = pq.read_table(tmp_path / "run-out" / "removed_segments.parquet").to_pylist()
    assert top[0] == {"docs": 7, "removed_from": 6, "text": footer}

    kept, _, _ = dedup(tmp_path, docs, name="two", shard_docs=3, segments=True, minhash=False,
                       segment_max_repeats=2)
    assert pair in kept["d1"]["text"] and footer not in kept["d1"]["text"]  # in 2 documents: allowed


def test_segment_dedup_is_off_by_default(tmp_path):
    footer = "Sign up for our newsletter to get the latest stories delivered to your inbox every week."
    kept, _, facts = dedup(tmp_path, {f"d{i}": text(i) + "\n" + footer for i in range(3)}, minhash=False)
    assert all(footer in r["text"] for r in kept.values()) and "segments_removed" not in facts


def test_the_report_lists_the_most_repeated_segments():
    from tasks.report import section_funnel
    from tasks.report_doc import Doc

    doc = Doc()
    section_funnel(doc, {"stages": [], "funnel": [], "removed_segments": [
        {"docs": 79, "removed_from": 78, "text": "This and all associated files | of various formats"}]})
    markdown = doc.markdown()
    assert "Repeated segments removed" in markdown
    assert "| 79 | 78 | This and all associated files \\| of various formats |" in markdown
