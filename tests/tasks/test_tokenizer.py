"""The BPE tokenizer: training, exact round trips, tiktoken giving the very same ids, and the held-out split."""
import gzip
import random

import pytest

from tasks.tokenizer import (TiktokenEncoder, TokenizersEncoder, fastest_encoder, is_validation, train_bpe)
from tests.conftest import shared_path

PROBES = [
    "Plain English prose, with punctuation; and numbers like 1234567 or 3.14159!",
    "Ünïcödé — “quotes”, 中文字符, emoji 🙂 and tabs\tand\r\nline breaks\n\n\n   indented",
    "code = {'key': [1, 2, 3]}  # comment\n    return x**2 if x>0 else -x",
    "A document that writes <|bos|> in its text must not get a separator from it.",
    "",
]


def corpus(n: int = 400) -> list[str]:
    rng = random.Random(0)
    words = ("the river council opened a window onto the market where bakers sold bread and letters were "
             "written in ink by the teacher of the village school 1999 2024 it's they're we'll").split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(20, 80))) + "." for _ in range(n)] + PROBES


@pytest.fixture(scope="module")
def tok():
    return train_bpe(corpus(), vocab_size=600, special_tokens=["<|bos|>"])


def test_training_gives_the_vocab_size_with_the_separator_first(tok):
    assert 257 < tok.get_vocab_size() <= 600  # a tiny corpus runs out of pairs worth merging
    assert tok.token_to_id("<|bos|>") == 0
    again = train_bpe(corpus(), vocab_size=600, special_tokens=["<|bos|>"])
    assert again.to_str() == tok.to_str()  # deterministic


def test_every_text_round_trips_exactly(tok):
    enc = TokenizersEncoder(tok)
    for text in PROBES:
        assert tok.decode(enc.encode_batch([text])[0], skip_special_tokens=False) == text


def test_tiktoken_gives_identical_ids_and_is_chosen(tok):
    texts = corpus(50) + PROBES
    assert TiktokenEncoder(tok).encode_batch(texts) == TokenizersEncoder(tok).encode_batch(texts)
    assert fastest_encoder(tok, texts).name == "tiktoken"
    ids = TiktokenEncoder(tok).encode_batch([PROBES[3]])[0]
    assert 0 not in ids  # the separator never comes from a document's own text


def test_tiktoken_agrees_on_real_books():
    books = sorted(shared_path("corpora", "english", "gutenberg", "train").glob("*.txt.gz"))[:3]
    texts = [gzip.decompress(b.read_bytes()).decode("utf-8", "replace") for b in books]
    chunks = [t[i:i + 20_000] for t in texts for i in range(0, min(len(t), 400_000), 20_000)]
    tok = train_bpe(chunks, vocab_size=2048, special_tokens=["<|bos|>"])
    assert tok.get_vocab_size() == 2048
    assert TiktokenEncoder(tok).encode_batch(chunks) == TokenizersEncoder(tok).encode_batch(chunks)


def test_validation_split_is_stable_and_near_the_fraction():
    ids = [f"doc-{i}" for i in range(20_000)]
    held = [d for d in ids if is_validation(d, 0.05, seed=1)]
    assert 0.04 < len(held) / len(ids) < 0.06
    assert held == [d for d in ids if is_validation(d, 0.05, seed=1)]
    assert held != [d for d in ids if is_validation(d, 0.05, seed=2)]
    assert not any(is_validation(d, 0.0) for d in ids[:100])
