"""Token shards: the round trip to text, the token -> document index, determinism, and the validator."""
import numpy as np
import pytest

from tasks.token_shards import (ShardCheckError, check_token_shard, doc_index_of, read_token_shard, shuffled,
                                write_token_shard)
from tasks.tokenizer import TiktokenEncoder, train_bpe

DOCS = {f"doc-{i}": f"Document number {i} talks about the harbour, the river and {i * 7} boats. " * (1 + i % 4)
        for i in range(40)}


@pytest.fixture(scope="module")
def tok():
    return train_bpe(list(DOCS.values()), vocab_size=400, special_tokens=["<|bos|>"])


def write(tmp_path, tok, name="s.arrow", order=None):
    ids = list(DOCS)
    if order is not None:
        ids = [ids[i] for i in order]
    texts = [DOCS[d] for d in ids]
    encoded = TiktokenEncoder(tok).encode_batch(texts)
    return write_token_shard(tmp_path / name, ids, [len(t.encode()) for t in texts], encoded, separator=0,
                             vocab_size=tok.get_vocab_size())


def test_decoding_the_shard_gives_back_every_document(tmp_path, tok):
    import pyarrow as pa

    n_tokens, _ = write(tmp_path, tok)
    allocated = pa.total_allocated_bytes()
    tokens, offsets, table = read_token_shard(tmp_path / "s.arrow")
    assert pa.total_allocated_bytes() == allocated  # read in place from the memory map: nothing copied
    assert tokens.ctypes.data == table.column("tokens").chunk(0).values.buffers()[1].address
    assert tokens.dtype == np.uint16 and len(tokens) == n_tokens
    for row, doc_id in enumerate(table["doc_id"].to_pylist()):
        piece = tokens[offsets[row]:offsets[row + 1]]
        assert piece[0] == 0
        assert tok.decode(piece[1:].tolist()) == DOCS[doc_id]
        assert table["bytes"][row].as_py() == len(DOCS[doc_id].encode())


def test_any_token_position_maps_to_its_document(tmp_path, tok):
    write(tmp_path, tok)
    tokens, offsets, table = read_token_shard(tmp_path / "s.arrow")
    rng = np.random.default_rng(0)
    for position in rng.integers(0, len(tokens), 50):
        row = doc_index_of(offsets, int(position))
        assert offsets[row] <= position < offsets[row + 1]
        doc_id = table["doc_id"][row].as_py()
        text = tok.decode(tokens[offsets[row] + 1:offsets[row + 1]].tolist())
        assert text == DOCS[doc_id]


def test_the_same_input_and_seed_give_identical_bytes(tmp_path, tok):
    order = shuffled(len(DOCS), seed=3, salt="part-00000")
    assert sorted(order.tolist()) == list(range(len(DOCS))) and order.tolist() != list(range(len(DOCS)))
    _, a = write(tmp_path, tok, "a.arrow", order)
    _, b = write(tmp_path, tok, "b.arrow", shuffled(len(DOCS), seed=3, salt="part-00000"))
    _, c = write(tmp_path, tok, "c.arrow", shuffled(len(DOCS), seed=4, salt="part-00000"))
    assert a == b != c
    assert (tmp_path / "a.arrow").read_bytes() == (tmp_path / "b.arrow").read_bytes()


def test_the_validator_passes_a_good_shard_and_names_what_is_wrong(tmp_path, tok):
    n_tokens, sha = write(tmp_path, tok)
    path = tmp_path / "s.arrow"
    assert check_token_shard(path, vocab_size=400, separator=0, sha256=sha) == {"documents": 40, "tokens": n_tokens}
    with pytest.raises(ShardCheckError, match=r"s\.arrow: token .* outside the vocabulary of 100"):
        check_token_shard(path, vocab_size=100, separator=0)
    with pytest.raises(ShardCheckError, match=r"s\.arrow: document 0 \(token 0\) does not start with the separator 5"):
        check_token_shard(path, vocab_size=400, separator=5)
    with pytest.raises(ShardCheckError, match="cannot hold a vocabulary of 70000"):
        check_token_shard(path, vocab_size=70_000, separator=0)
    # flip one token in place, as a bad disk would: the separator that starts document 1
    import pyarrow as pa
    import pyarrow.ipc as ipc

    mm = pa.memory_map(str(path), "r")
    base = mm.read_buffer(1).address
    mm.seek(0)
    column = ipc.open_file(mm).read_all().column("tokens").chunk(0)
    at = column.values.buffers()[1].address - base + 2 * int(column.offsets[1].as_py())
    mm.close()
    del column
    data = bytearray(path.read_bytes())
    assert data[at:at + 2] == b"\x00\x00"
    data[at:at + 2] = (7).to_bytes(2, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(ShardCheckError, match=r"s\.arrow: sha256 .* does not match"):
        check_token_shard(path, vocab_size=400, separator=0, sha256=sha)
    with pytest.raises(ShardCheckError, match=r"s\.arrow: document 1 \(token \d+\) does not start with the separator"):
        check_token_shard(path, vocab_size=400, separator=0)
    path.write_bytes(b"not arrow at all")
    with pytest.raises(ShardCheckError, match="not a readable Arrow IPC file"):
        check_token_shard(path, vocab_size=400, separator=0)
