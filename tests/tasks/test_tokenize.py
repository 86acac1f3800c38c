"""The tokenize stage: split, BPE, shards that decode back to the documents, determinism, check-shards."""
import json

import pytest

from tasks.config import TokenizeConfig
from tasks.decontaminate import SCHEMA as DECONTAMINATE_SCHEMA
from tasks.shards import read_dataset_manifest, write_dataset_manifest
from tasks.sharded import run_reduce, run_scan, run_unit
from tasks.token_shards import ShardCheckError, read_token_shard
from tasks.tokenize import TokenizeStage, load_encoder
from tests.helpers import write_dataset

DOCS = {f"doc-{i:03d}": f"Page {i}: the harbour master counted {i * 3} boats, and the river rose again. " * (1 + i % 3)
        for i in range(120)}


def tokenize(tmp_path, name="out", **cfg):
    up = tmp_path / "in"
    if not up.exists():
        write_dataset(up, DECONTAMINATE_SCHEMA, [{"doc_id": d, "text": t} for d, t in DOCS.items()],
                      stage="decontaminate", shard_docs=50)
    cfg = {"vocab_size": 400, "val_fraction": 0.2, "shard_max_docs": 40, **cfg}
    stage = TokenizeStage(TokenizeConfig(**cfg))
    out = tmp_path / name
    units = stage.plan(up)
    facts = run_reduce(stage, out, [run_scan(stage, u, out) for u in units], "key")
    results = [run_unit(stage, u, out) for u in units]
    write_dataset_manifest(out, "tokenize", "key", results)
    stage.finalize(out)
    return out, facts, results


def decoded(out):
    tok, _ = load_encoder(out / "_reduce" / "tokenizer.json", "tokenizers")
    docs = {}
    for f in read_dataset_manifest(out).files:
        tokens, offsets, table = read_token_shard(out / f.name)
        split = f.name.rsplit("-", 1)[1].split(".")[0]
        for row, doc_id in enumerate(table["doc_id"].to_pylist()):
            piece = tokens[offsets[row]:offsets[row + 1]]
            assert piece[0] == 0
            docs[doc_id] = (split, tok.decode(piece[1:].tolist()), table["bytes"][row].as_py())
    return docs


def test_shards_decode_back_to_every_document_in_one_split(tmp_path):
    out, facts, results = tokenize(tmp_path)
    assert facts["encoder"] == "tiktoken" and facts["separator_id"] == 0
    docs = decoded(out)
    assert set(docs) == set(DOCS)  # every document once: the splits are disjoint and cover the input
    for doc_id, (split, text, nbytes) in docs.items():
        assert text == DOCS[doc_id] and nbytes == len(DOCS[doc_id].encode())
    val = {d for d, (s, _, _) in docs.items() if s == "val"}
    assert 10 < len(val) < 40
    assert sum(r.stats.get("val_docs", 0) for r in results) == len(val)
    assert TokenizeStage.check(out)[0]["documents"] > 0


def test_the_same_input_and_seeds_give_identical_shards(tmp_path):
    a, _, _ = tokenize(tmp_path, "a")
    b, _, _ = tokenize(tmp_path, "b")
    c, _, _ = tokenize(tmp_path, "c", shuffle_seed=7)
    fa, fb, fc = (read_dataset_manifest(d).fingerprint for d in (a, b, c))
    assert fa == fb != fc


def test_a_given_tokenizer_is_used_as_it_is(tmp_path):
    first, facts, _ = tokenize(tmp_path, "first")
    again, facts2, _ = tokenize(tmp_path, "again", tokenizer_path=first / "_reduce" / "tokenizer.json",
                                vocab_size=999)
    assert facts2["tokenizer_sha256"] == facts["tokenizer_sha256"] and facts2["vocab_size"] == facts["vocab_size"]


def test_check_finds_a_corrupted_shard(tmp_path):
    out, _, _ = tokenize(tmp_path)
    shard = out / read_dataset_manifest(out).files[0].name
    data = bytearray(shard.read_bytes())
    data[-200] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardCheckError, match=shard.name):
        TokenizeStage.check(out)


def test_separator_must_be_a_special_token():
    with pytest.raises(ValueError, match="separator"):
        TokenizeConfig(separator="<|eos|>")
    assert json.loads(TokenizeConfig().model_dump_json())["special_tokens"] == ["<|bos|>"]


def test_every_shard_mixes_documents_from_every_input_unit(tmp_path):
    out, _, _ = tokenize(tmp_path, val_fraction=0.0)
    up = TokenizeStage(TokenizeConfig(shard_max_docs=40)).plan(tmp_path / "in")
    unit_of = {}
    for u in up:
        for row in TokenizeStage(TokenizeConfig()).input_rows(u, ["doc_id"]):
            unit_of[row["doc_id"]] = u.index
    shards = read_dataset_manifest(out).files
    assert len(shards) == len(up) == 3
    for f in shards:
        _, _, table = read_token_shard(out / f.name)
        sources = {unit_of[d] for d in table["doc_id"].to_pylist()}
        assert sources == {0, 1, 2}, f.name  # input units 0..2 hold docs 0-39, 40-79, 80-119 in order
    assert not list((out / "_reduce").glob("docs-*")), "finalize deletes the scattered text"


def test_token_manifest_describes_every_shard_and_check_holds_shards_to_it(tmp_path):
    out, facts, _ = tokenize(tmp_path)
    manifest = json.loads((out / "_tokens.json").read_text())
    assert manifest["dtype"] == "uint16" and manifest["separator_id"] == facts["separator_id"] == 0
    assert manifest["tokenizer_sha256"] == facts["tokenizer_sha256"]
    assert (out / manifest["tokenizer"]).is_file()
    files = {f.name: f for f in read_dataset_manifest(out).files}
    for split in ("train", "val"):
        for shard in manifest["splits"][split]["shards"]:
            tokens, offsets, table = read_token_shard(out / shard["name"])
            assert (shard["docs"], shard["tokens"], shard["sha256"]) == (table.num_rows, len(tokens),
                                                                         files[shard["name"]].sha256)
            assert shard["bytes"] == sum(len(DOCS[d].encode()) for d in table["doc_id"].to_pylist())
    assert manifest["splits"]["train"]["docs"] + manifest["splits"]["val"]["docs"] == len(DOCS)
    manifest["splits"]["train"]["shards"][0]["tokens"] += 1
    (out / "_tokens.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardCheckError, match=manifest["splits"]["train"]["shards"][0]["name"]):
        TokenizeStage.check(out)


def test_a_unit_whose_scattered_input_is_gone_fails_instead_of_writing_an_empty_shard(tmp_path):
    out, _, _ = tokenize(tmp_path)
    stage = TokenizeStage(TokenizeConfig(vocab_size=400, val_fraction=0.2, shard_max_docs=40))
    unit = stage.plan(tmp_path / "in")[0]
    (out / f"{unit.name}.json").unlink()
    with pytest.raises(Exception, match="scattered documents"):
        run_unit(stage, unit, out)


def _sorted_cutoff(rank, size, max_bytes):
    """What rank_cutoff must equal: sort every (rank, bytes), sum, take those within max_bytes (at least one)."""
    import numpy as np

    order = np.argsort(rank, kind="stable")
    used = np.cumsum(size[order])
    take = max(1, int(np.searchsorted(used, max_bytes, side="right")))
    return int(rank[order][take - 1])


def test_the_sample_cutoff_in_bounded_memory_is_the_one_a_full_sort_gives():
    import numpy as np

    from tasks.tokenize import rank_cutoff

    rng = np.random.default_rng(0)
    for n, skew in ((1, False), (7, False), (5000, False), (200_000, False), (20_000, True)):
        rank = rng.integers(0, 2**64, n, dtype=np.uint64)
        if skew:  # ranks bunched in a few buckets, and ties
            rank = (rank % np.uint64(3)) << np.uint64(60) | (rank & np.uint64(0xFFFF))
        size = rng.integers(1, 5000, n).astype(np.int64)
        total = int(size.sum())
        batches = [(rank[i:i + 777], size[i:i + 777]) for i in range(0, n, 777)]
        for max_bytes in (0, 1, int(size[0]) - 1, total // 3, total - 1, total, total * 2):
            got = rank_cutoff(lambda: iter(batches), max_bytes)
            assert got == _sorted_cutoff(rank, size, max_bytes), (n, skew, max_bytes)
    assert rank_cutoff(lambda: iter([]), 100) is None
    assert rank_cutoff(lambda: iter([(np.empty(0, np.uint64), np.empty(0, np.int64))]), 100) is None
