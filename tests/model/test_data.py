"""model/data.py: document-aligned best-fit rows, rank disjointness, determinism, exact resume, val coverage."""
import json

import numpy as np
import pytest
import torch

from model.data import IGNORE, TrainLoader, ValLoader
from tasks.shards import ShardFile, atomic_write_bytes
from tasks.token_shards import read_token_shard, write_token_manifest, write_token_shard

SEP = 0


def token_dataset(tmp_path, lengths, shards=3, val_lengths=()):
    """Document k is [SEP] + [k + 1] * (length - 1): every token names its document."""
    out = tmp_path / "tokens"
    tokenizer = out / "_reduce" / "tokenizer.json"
    atomic_write_bytes(tokenizer, b"{}")
    files = []
    for split, lens, first in (("train", lengths, 0), ("val", val_lengths, len(lengths))):
        for s in range(shards if lens else 0):
            ks = list(range(first + s, first + len(lens), shards))
            ids = [[k + 1] * (lens[k - first] - 1) for k in ks]
            name = f"part-{s:05d}-{split}.arrow"
            _, sha = write_token_shard(out / name, [f"d{k}" for k in ks], [len(i) for i in ids], ids,
                                       separator=SEP, vocab_size=1000)
            files.append(ShardFile(name, len(ks), (out / name).stat().st_size, sha))
    write_token_manifest(out, files, tokenizer=tokenizer, vocab_size=1000, separator_id=SEP, encoder="tiktoken",
                         tokenizer_sha256="0" * 64)
    return out


def runs(row):
    """[(document, tokens)] of a packed row: each document starts with SEP followed by its own id."""
    out = []
    for t in row.tolist():
        if t == SEP:
            out.append([None, 1])
        else:
            assert out and out[-1][0] in (None, t - 1), "a document's tokens are contiguous, after its separator"
            out[-1][0] = t - 1
            out[-1][1] += 1
    return [tuple(r) for r in out]


LENGTHS = [int(x) for x in np.random.default_rng(0).integers(2, 40, size=300)]


def test_rows_start_at_documents_and_hold_whole_documents_or_one_cropped_tail(tmp_path):
    loader = TrainLoader(token_dataset(tmp_path, LENGTHS), batch_size=4, seq_len=32)
    x, y = next(loader)
    assert x.shape == y.shape == (4, 32) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    for row in torch.cat([x, y[:, -1:]], dim=1):
        assert row[0] == SEP
        parts = runs(row)
        for doc, n in parts[:-1]:
            assert n == LENGTHS[doc]  # every document but the last is whole
        assert parts[-1][1] <= LENGTHS[parts[-1][0]]


def test_best_fit_takes_the_longest_document_that_fits(tmp_path):
    loader = TrainLoader(token_dataset(tmp_path, [2, 5, 3], shards=1), batch_size=1, seq_len=9, buffer_docs=3)
    x, y = next(loader)
    assert [n for _, n in runs(torch.cat([x[0], y[0, -1:]]))] == [5, 3, 2]
    assert loader.tokens_cropped == 0


def test_ranks_split_one_global_sequence_of_rows_and_share_no_document(tmp_path):
    data = token_dataset(tmp_path, LENGTHS)
    one = TrainLoader(data, batch_size=8, seq_len=64, seed=3)
    two = [TrainLoader(data, batch_size=4, seq_len=64, rank=r, world_size=2, seed=3) for r in (0, 1)]
    for _ in range(3):
        x1, _ = next(one)
        x0, xr = (next(loader)[0] for loader in two)
        assert torch.equal(x1[0::2], x0) and torch.equal(x1[1::2], xr)  # the global batch is world-invariant
        docs = [{d for row in x for d, _ in runs(row)} - {None} for x in (x0, xr)]
        assert docs[0] and docs[1] and not docs[0] & docs[1]


def test_an_epoch_visits_every_document_once(tmp_path):
    loader = TrainLoader(token_dataset(tmp_path, LENGTHS), batch_size=1, seq_len=8, seed=3)
    docs = []
    while loader.epoch == 0:
        docs.append(loader._next_doc())
    assert len(set(docs[:-1])) == len(docs) - 1 == len(LENGTHS)


def test_the_same_seed_gives_the_same_batches_and_another_seed_others(tmp_path):
    data = token_dataset(tmp_path, LENGTHS)
    a, b, c = (TrainLoader(data, batch_size=3, seq_len=48, seed=s) for s in (1, 1, 2))
    for _ in range(5):
        xa, xb, xc = next(a)[0], next(b)[0], next(c)[0]
        assert torch.equal(xa, xb)
    assert not torch.equal(xa, xc)


@pytest.mark.parametrize("stop", [1, 7, 40])  # 40 batches run past the end of the first epoch
def test_load_state_dict_resumes_on_exactly_the_next_batch(tmp_path, stop):
    data = token_dataset(tmp_path, LENGTHS)
    first = TrainLoader(data, batch_size=4, seq_len=40, rank=1, world_size=2, seed=5, buffer_docs=16)
    for _ in range(stop):
        next(first)
    state = json.loads(json.dumps(first.state_dict()))  # it survives a checkpoint as plain JSON
    resumed = TrainLoader(data, batch_size=4, seq_len=40, rank=1, world_size=2, seed=5, buffer_docs=16)
    resumed.load_state_dict(state)
    for _ in range(30):
        assert torch.equal(next(first)[0], next(resumed)[0])
    assert first.epoch >= 1 and first.state_dict() == resumed.state_dict()


def test_a_run_resumes_on_another_world_size_where_it_stopped(tmp_path):
    data = token_dataset(tmp_path, LENGTHS)
    two = [TrainLoader(data, batch_size=2, seq_len=24, rank=r, world_size=2, seed=4) for r in (0, 1)]
    one = TrainLoader(data, batch_size=4, seq_len=24, seed=4)
    for _ in range(5):
        next(one), next(two[0]), next(two[1])
    resumed = TrainLoader(data, batch_size=4, seq_len=24, seed=4)
    resumed.load_state_dict(two[0].state_dict())
    assert torch.equal(next(resumed)[0], next(one)[0])


def test_a_state_from_another_seed_is_refused(tmp_path):
    data = token_dataset(tmp_path, LENGTHS)
    state = TrainLoader(data, batch_size=1, seq_len=8, seed=1).state_dict()
    with pytest.raises(ValueError, match="seed"):
        TrainLoader(data, batch_size=1, seq_len=8, seed=2).load_state_dict(state)


def test_val_loader_covers_the_val_stream_once_in_order_across_ranks(tmp_path):
    data = token_dataset(tmp_path, LENGTHS[:30], val_lengths=LENGTHS[30:61])
    stream = np.concatenate([read_token_shard(data / f"part-{s:05d}-val.arrow")[0] for s in range(3)])
    targets = {}
    for rank in (0, 1, 2):
        loader = ValLoader(data, batch_size=2, seq_len=16, rank=rank, world_size=3)
        rows = list(range(rank, loader.rows, 3))
        got = [row for _, y in loader for row in y]
        assert len(got) == len(rows) and len(list(loader)) == len(loader)
        for r, row in zip(rows, got):
            targets[r] = row
    flat = torch.cat([targets[r] for r in sorted(targets)])
    assert torch.equal(flat[flat != IGNORE], torch.from_numpy(stream[1:].astype(np.int64)))
    assert (flat == IGNORE).sum() < 16


def test_an_empty_val_split_says_what_to_change(tmp_path):
    with pytest.raises(ValueError, match="val_fraction"):
        ValLoader(token_dataset(tmp_path, LENGTHS), batch_size=1, seq_len=8)


def test_loader_reads_a_real_tokenize_dataset(tmp_path):
    from tests.tasks.test_tokenize import DOCS, tokenize
    from tasks.tokenizer import load_encoder

    out, _, _ = tokenize(tmp_path)
    tok, _ = load_encoder(out / "_reduce" / "tokenizer.json", "tokenizers")
    x, y = next(TrainLoader(out, batch_size=2, seq_len=64))
    row = torch.cat([x[0], y[0, -1:]]).tolist()
    assert row[0] == 0
    pieces = [tok.decode(p) for p in np.split(np.array(row), np.nonzero(np.array(row) == 0)[0])[1:]]
    for text in pieces:
        assert any(doc.startswith(text) for doc in DOCS.values()), text


def test_unigram_bpb_is_the_training_token_frequencies_scored_on_one_sources_held_out_bytes(tmp_path):
    """Train: [SEP 1 1] and [SEP 2]; held out: a source "a" document [SEP 3 3] of 5 bytes and a "b" one. With
    add-0.5 counts over a 1,000-token vocabulary, "a" costs -(log p(SEP) + 2 log p(3)) nats over 5 bytes."""
    import math

    from model.data import unigram_bpb

    out = tmp_path / "tokens"
    atomic_write_bytes(out / "_reduce" / "tokenizer.json", b"{}")
    files = []
    for name, ids, sizes, sources in (("part-00000-train.arrow", [[1, 1], [2]], [2, 1], ["a", "b"]),
                                      ("part-00000-val.arrow", [[3, 3], [1, 2, 4]], [5, 9], ["a", "b"])):
        _, sha = write_token_shard(out / name, [f"{name}:{i}" for i in range(2)], sizes, ids, separator=SEP,
                                   vocab_size=1000, sources=sources)
        files.append(ShardFile(name, 2, (out / name).stat().st_size, sha))
    write_token_manifest(out, files, tokenizer=out / "_reduce" / "tokenizer.json", vocab_size=1000, separator_id=SEP,
                         encoder="tiktoken", tokenizer_sha256="0" * 64)
    p_sep, p_3 = 2.5 / (5 + 500), 0.5 / (5 + 500)  # SEP twice, 1 twice, 2 once in training; 3 never
    expected = -(math.log(p_sep) + 2 * math.log(p_3)) / (math.log(2) * 5)
    assert unigram_bpb(out, "a") == pytest.approx(expected, rel=1e-12)
    assert unigram_bpb(out, "b") < unigram_bpb(out, "a")  # tokens it trained on, more bytes
    assert unigram_bpb(out, "no such source") is None
    assert unigram_bpb(token_dataset(tmp_path / "no-val", [4, 3]), None) is None  # nothing held out: nothing to score
