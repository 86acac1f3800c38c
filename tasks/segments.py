"""Segment-level dedup: paragraphs repeated across the corpus (boilerplate that survived extraction: cookie notices,
newsletter footers, licence lines) are removed from every document but one, as C4 and dolma do.

A segment is one line of a document's text (extracted pages put a paragraph on a line; curated text's paragraphs
are lines between blank ones) of at least ``min_chars`` characters, identified by a 64-bit hash of its normalized
form (NFC, casefolded, white space collapsed). The dedup stage's scan writes every (doc_id, unit, segment) of
every unit; ``count_segments`` counts, out of core in DuckDB, the distinct surviving documents holding each
segment across the WHOLE dataset (so a segment spread over two units is counted once globally), and for a segment
in more than ``max_repeats`` documents it lists every holder but the first (smallest doc_id) for removal
(``tasks.dedup_cluster``, dedup's DuckDB engine).
``remove_segments`` applies that to one document's text.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata

import pyarrow as pa

SEGMENT_SCHEMA = pa.schema([("doc_id", pa.string()), ("unit", pa.string()), ("seg", pa.int64())])
_SPACES = re.compile(r"\s+")


def segment_hash(line: str) -> int:
    norm = _SPACES.sub(" ", unicodedata.normalize("NFC", line).casefold()).strip()
    return int.from_bytes(hashlib.blake2b(norm.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big",
                          signed=True)


def segment_hashes(text: str, min_chars: int) -> list[int]:
    """The distinct hashes of a text's segments (lines of at least ``min_chars`` characters, stripped)."""
    return sorted({segment_hash(line) for line in text.split("\n") if len(line.strip()) >= min_chars})


def remove_segments(text: str, remove: set[int], min_chars: int) -> tuple[str, list[tuple[int, str]]]:
    """The text without the lines whose segment hash is in ``remove`` (blank-line runs left behind folded);
    returns (text, the removed lines with their hashes)."""
    kept, removed = [], []
    for line in text.split("\n"):
        h = segment_hash(line) if len(line.strip()) >= min_chars else None
        if h is not None and h in remove:
            removed.append((h, line.strip()))
            continue
        kept.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip(), removed
