"""The BPE tokenizer: trained with HF ``tokenizers``, encoded with ``tiktoken`` when that gives identical ids.

Training (as nanochat does it, with one library to train and another to encode):

    tok = train_bpe(texts, vocab_size=8192, special_tokens=["<|bos|>"])
    tok.save("tokenizer.json")                       # the artefact, stored with its hash
    enc = fastest_encoder(tok, probe_texts)          # tiktoken if it agrees with tok on every probe, else tok
    tok, enc = load_encoder(path, "tiktoken")        # a saved tokenizer.json, loaded once per process

The tokenizer is byte-level BPE over a GPT-4-style split pattern (the same regex drives both libraries, so their
pre-tokenization agrees); every byte is in the base vocabulary, so any text encodes and decodes back exactly.
Special tokens come first in the vocabulary (``<|bos|>`` is id 0 by default), then the 256 bytes, then the merges in
the order they were learned, which is the rank order tiktoken merges by.

The held-out split is by hash of doc_id: ``is_validation(doc_id, fraction, seed)`` never changes for a document.
"""
from __future__ import annotations

import hashlib
import math
import threading
from pathlib import Path
from typing import Any, Iterable, Protocol

# GPT-4's split pattern (cl100k), as nanochat uses it, with numbers split into runs of at most 3 digits.
SPLIT_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|"""
                 r"""\s+(?!\S)|\s+""")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters, which byte-level BPE vocabularies are written in."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, map(chr, chars)))


BYTE_TO_CHAR = _bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def train_bpe(texts: Iterable[str], vocab_size: int, special_tokens: list[str]):
    """A byte-level BPE trained on ``texts`` (deterministic for the same texts in the same order)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def tiktoken_encoding(tok, name: str = "crucible"):
    """The same vocabulary as a tiktoken Encoding: byte strings ranked by id, special tokens apart."""
    import tiktoken

    vocab = tok.get_vocab()
    specials = {t.content: i for i, t in tok.get_added_tokens_decoder().items()}
    ranks = {}
    for token, i in vocab.items():
        if token in specials:
            continue
        ranks[bytes(CHAR_TO_BYTE[c] for c in token)] = i
    return tiktoken.Encoding(name, pat_str=SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens=specials)


class Encoder(Protocol):
    name: str

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...


class TiktokenEncoder:
    name = "tiktoken"

    def __init__(self, tok) -> None:
        self.encoding = tiktoken_encoding(tok)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.encoding.encode_ordinary_batch(texts, num_threads=1)


class TokenizersEncoder:
    name = "tokenizers"

    def __init__(self, tok) -> None:
        self.tok = tok
        self.tok.encode_special_tokens = True  # "<|bos|>" written in a document is text, not a separator

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]


def fastest_encoder(tok, probe: list[str]) -> Encoder:
    """tiktoken when it gives exactly the ids ``tokenizers`` gives on every probe text, else ``tokenizers``.

    Special-token strings inside a text are encoded as ordinary text by both: only the stage inserts separators.
    """
    fast, reference = TiktokenEncoder(tok), TokenizersEncoder(tok)
    if fast.encode_batch(probe) == reference.encode_batch(probe):
        return fast
    return reference


def seeded_hash(kind: str, seed: int, doc_id: str) -> int:
    """A 64-bit hash of a document for one purpose (its output shard, its sampling rank, its mixture rank)."""
    return int.from_bytes(hashlib.blake2b(f"{kind}:{seed}:{doc_id}".encode(), digest_size=8).digest(), "big")


def validation_hash(doc_id: str, seed: int = 0) -> int:
    """The 64-bit hash that holds a document out: below a source's cut-off, it is in the val split."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{doc_id}".encode(), digest_size=8).digest(), "big")


def fraction_cutoff(fraction: float) -> int:
    """The cut-off that holds out ``fraction`` of documents: hash < cut-off exactly when hash < fraction x 2^64."""
    return min(math.ceil(fraction * 2**64), 2**64 - 1) if fraction > 0 else 0


def is_validation(doc_id: str, fraction: float, seed: int = 0) -> bool:
    """Whether a document is held out: a hash of (seed, doc_id) below ``fraction``; stable forever."""
    if fraction <= 0:
        return False
    return validation_hash(doc_id, seed) < fraction * 2**64


_loaded: dict[str, Any] = {}
_lock = threading.Lock()


def load_encoder(path: Path, encoder: str, built: tuple[Any, Any] | None = None):
    """(tokenizer, encoder) for a saved tokenizer.json, built once per process (``built``: the pair, to keep)."""
    from tokenizers import Tokenizer

    key = f"{path}:{encoder}:{path.stat().st_mtime_ns}"
    with _lock:
        if built is not None:
            _loaded[key] = built
        if key not in _loaded:
            tok = Tokenizer.from_file(str(path))
            _loaded[key] = (tok, TiktokenEncoder(tok) if encoder == "tiktoken" else TokenizersEncoder(tok))
        return _loaded[key]
