"""Word n-grams as integers, shared by near-dedup (MinHash shingles) and the contamination check.

Text is normalized to words the same way everywhere: Unicode NFC, casefolded, punctuation stripped from each
word (a word that is all punctuation disappears). Each word hashes to 32 bits (crc32 of its UTF-8, stable across
processes, unlike ``hash()``), and an n-gram is a polynomial of its word hashes, mixed by the MurmurHash3 finalizer,
computed for every position at once with numpy:

    words = normalized_words("The cat, the hat.")          # ['the', 'cat', 'the', 'hat']
    grams = ngram_hashes(word_hashes(words), 2)           # uint64 array of 3 bigram hashes
"""
from __future__ import annotations

import re
import unicodedata
import zlib

import numpy as np

_WORDS = re.compile(r"\S+")
_EDGE_PUNCT = re.compile(r"^[\W_]+|[\W_]+$")
_INNER_PUNCT = re.compile(r"[^\w'’-]")
_MULT = np.uint64(0x9E3779B97F4A7C15)


def normalized_words(text: str) -> list[str]:
    """NFC, casefold, strip punctuation: 'Hello, World!' and 'hello world' give the same words.

    Each word of ``text.split()`` loses the punctuation (``\W`` or ``_``) at its edges, and is gone if that was all
    of it, then every character inside it that is not a word character, an apostrophe or a hyphen. Most words are
    letters and digits only (``str.isalnum``, which is exactly re's ``\w`` without ``_``): they skip both regexes."""
    text = unicodedata.normalize("NFC", text).casefold()
    edge, inner = _EDGE_PUNCT.sub, _INNER_PUNCT.sub
    out = []
    for word in text.split():
        if not word.isalnum():
            word = edge("", word)
            if not word:
                continue
            word = inner("", word)
        out.append(word)
    return out


def word_spans(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """The normalized words of ``text`` and the character span each came from (for cutting matches out)."""
    text = unicodedata.normalize("NFC", text)
    words, spans = [], []
    for m in _WORDS.finditer(text):
        word = _EDGE_PUNCT.sub("", m.group().casefold())
        if word:
            words.append(_INNER_PUNCT.sub("", word))
            spans.append(m.span())
    return words, spans


def word_hashes(words: list[str]) -> np.ndarray:
    crc = zlib.crc32
    return np.fromiter((crc(w.encode()) for w in words), dtype=np.uint64, count=len(words))


def fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer: every input bit moves every output bit."""
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


def ngram_hashes(hashes: np.ndarray, n: int) -> np.ndarray:
    """64-bit hashes of every n-gram (len(hashes) - n + 1 of them; none when there are fewer than n words)."""
    count = len(hashes) - n + 1
    if count <= 0:
        return np.empty(0, dtype=np.uint64)
    with np.errstate(over="ignore"):
        acc = np.full(count, np.uint64(n), dtype=np.uint64)
        for k in range(n):
            acc = acc * _MULT + hashes[k:k + count]
        return fmix64(acc)
