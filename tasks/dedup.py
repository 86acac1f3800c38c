"""Deduplication: exact (normalized-text hash), then near-duplicates with MinHash LSH, clustered out of core.

Three steps (see ``ReduceStage``):

1. scan, per unit in parallel: each document's exact hash and its MinHash signature (word 5-gram shingles hashed
   with numpy, datasketch's affine32 permutations applied to many documents at once; on the thread runner, in
   tasks/docpool.py's worker processes), written as Parquet with its LSH band keys ``(doc_id, band, band_hash)``;
2. reduce, once: DuckDB groups the band keys out of core into candidate pairs, the pairs are verified against the
   estimated Jaccard (``threshold``), union-find joins them into clusters, and one survivor per cluster is kept:
   a document accepted by an earlier run, else one from the source with the highest ``priority`` (curated over
   crawled by default), else the longest, else the smallest doc_id. Every document's decision
   (exact hash, cluster id, kept or not, why, duplicate of what) is written per unit;
3. process, per unit: kept documents go on with ``exact_hash``, ``minhash_cluster_id`` and ``dedup_kept``; the
   others are drops (``exact_duplicate``, ``near_duplicate``, or ``..._earlier_run``) naming the document kept.

With ``incremental`` the accepted documents' signatures and band keys are kept in ``state_dir``, one file pair per
stage run, so a scheduled run drops near-duplicates of documents accepted in earlier runs. A document is never a
duplicate of itself: earlier entries with a doc_id that is in this run's input are ignored. A source that skips
dedup (``skip = ["dedup"]``) passes through, neither a survivor nor a duplicate.

With ``segments`` on, the scan also writes each document's segment hashes (tasks/segments.py), the reduce counts
them over the surviving documents of the whole dataset, and process removes a segment held by more than
``segment_max_repeats`` documents from all but one (the smallest doc_id); a document left shorter than
``segment_min_doc_chars`` is dropped as ``segments_left_too_short``. ``removed_segments.parquet`` in the dataset
lists the most repeated segments with their text, for the report.
"""
from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks import docpool
from tasks.config import DedupConfig, stable_hash
from tasks.ngrams import ngram_hashes, normalized_words, word_hashes
from tasks.schemas import DEDUP as SCHEMA
from tasks.shards import DropLog, ShardResult, ShardWriter, write_parquet_atomic
from tasks.sharded import ReduceStage, Unit
from tasks.dedup_cluster import cluster_documents, count_segments
from tasks.segments import SEGMENT_SCHEMA, remove_segments, segment_hashes

_SPACES = re.compile(r"\s+")
_MULT = np.uint64(0x9E3779B97F4A7C15)


def exact_hash(text: str) -> str:
    """Hash of the text as NFC, casefolded, with whitespace runs collapsed: trivially different copies collide."""
    norm = _SPACES.sub(" ", unicodedata.normalize("NFC", text).casefold()).strip()
    return hashlib.blake2b(norm.encode(), digest_size=16).hexdigest()


def shingles(text: str, n: int) -> np.ndarray:
    """32-bit hashes of the word n-gram shingles (a text shorter than n words is one shingle; empty: none)."""
    hashes = word_hashes(normalized_words(text))
    grams = ngram_hashes(hashes, min(n, len(hashes))) if len(hashes) else np.empty(0, dtype=np.uint64)
    return np.unique((grams >> np.uint64(32)).astype(np.uint32))


def signatures(texts: list[str], cfg: DedupConfig) -> np.ndarray:
    """MinHash signatures, one row of num_perm uint32 per text, datasketch's affine32 scheme.

    A text with no words gets an all-ones row; it has no band keys, so it never collides. The scan computes them
    the same way, through ``hash_texts``."""
    return signature_matrix(hash_texts(texts, cfg.ngram, _permutations(cfg.num_perm, cfg.seed)), cfg.num_perm)


def hash_texts(texts: list[str], ngram: int, perms: tuple[np.ndarray, np.ndarray] | None) -> list[tuple[str, Any]]:
    """Each text's exact hash and, given the permutations, its MinHash signature row (one chunk of a unit's texts,
    in a docpool worker or here). The permutations come from the caller, so a worker never imports datasketch."""
    rows = _minhash_rows([shingles(t, ngram) for t in texts], *perms) if perms is not None else [None] * len(texts)
    return [(exact_hash(t), row) for t, row in zip(texts, rows)]


def signature_matrix(hashed: list[tuple[str, Any]], num_perm: int) -> np.ndarray:
    """``hash_texts``' signature rows as one (texts, num_perm) uint32 array."""
    return np.array([row for _, row in hashed], dtype=np.uint32).reshape(len(hashed), num_perm)


_FMIX32 = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35), np.uint32(16))
_ROWS_PER_BLOCK = 1 << 16  # shingles permuted at once: 65,536 x num_perm uint32 (28 MB at 112 permutations)


@functools.lru_cache(maxsize=8)
def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's own affine32 permutation parameters (a odd, b) for these settings."""
    from datasketch import MinHash

    a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
    return a.astype(np.uint32), b.astype(np.uint32)


def minhash_rows(sets: list[np.ndarray], num_perm: int, seed: int) -> np.ndarray:
    """What ``MinHash.bulk(sets, num_perm, seed, hashfunc=identity, scheme="affine32")`` computes, for many sets
    at once: each 32-bit value mixed by MurmurHash3's finalizer, permuted by datasketch's ``a * h + b mod 2^32``,
    and the minimum taken per set and permutation. datasketch applies its permutations one set at a time (a Python
    call per value and per set); here they run over blocks of many sets' values with one ``minimum.reduceat``, the
    same numbers (tests/tasks/test_dedup.py checks them against ``MinHash.bulk``). An empty set's row is all
    ones, datasketch's initial value."""
    return _minhash_rows(sets, *_permutations(num_perm, seed))


def _minhash_rows(sets: list[np.ndarray], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.full((len(sets), len(a)), np.iinfo(np.uint32).max, dtype=np.uint32)
    s1, m1, s2, m2, s3 = _FMIX32
    present = [i for i, s in enumerate(sets) if len(s)]
    start = 0
    while start < len(present):
        stop, rows = start, 0
        while stop < len(present) and (rows == 0 or rows + len(sets[present[stop]]) <= _ROWS_PER_BLOCK):
            rows += len(sets[present[stop]])
            stop += 1
        block = present[start:stop]
        hv = np.concatenate([sets[i] for i in block]).astype(np.uint32)
        with np.errstate(over="ignore"):
            hv = hv ^ (hv >> s1)
            hv = hv * m1
            hv = hv ^ (hv >> s2)
            hv = hv * m2
            hv = hv ^ (hv >> s3)
            permuted = hv[:, None] * a + b
        offsets = np.cumsum([0] + [len(sets[i]) for i in block[:-1]])
        out[block] = np.minimum.reduceat(permuted, offsets, axis=0)
        start = stop
    return out


def band_hashes(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(docs, bands) int64 keys: each band's rows folded into one 64-bit hash, the band number mixed in."""
    from tasks.ngrams import fmix64

    out = np.empty((len(sigs), bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for b in range(bands):
            acc = np.full(len(sigs), np.uint64(b + 1), dtype=np.uint64)
            for col in sigs[:, b * rows:(b + 1) * rows].T.astype(np.uint64):
                acc = acc * _MULT + col
            out[:, b] = fmix64(acc)
    return out.view(np.int64)


def signature_params(cfg: DedupConfig) -> str:
    """Signatures are comparable only under the same shingling and permutations: the state is kept per these."""
    return stable_hash({"ngram": cfg.ngram, "num_perm": cfg.num_perm, "seed": cfg.seed, "bands": cfg.bands,
                        "rows": cfg.rows, "scheme": "affine32"})[:16]


class DedupStage(ReduceStage):
    name = "dedup"
    role = "duplicates"
    uses_docpool = True
    schema = SCHEMA
    size_column = "text"

    config: DedupConfig

    def priorities(self) -> dict[str, int]:
        return {s.name: s.dedup_priority for s in self.source_configs}

    def source_params(self):
        ranked = {name: p for name, p in self.priorities().items() if p}
        skipped = sorted(self.skipping())
        return {"priority": ranked, "skip": skipped} if ranked or skipped else None

    def scan(self, unit: Unit, scratch: Path) -> dict[str, Any]:
        skipping, priority = self.skipping(), self.priorities()
        rows = [r for r in self.input_rows(unit, ["doc_id", "text", "source"]) if r["source"] not in skipping]
        ids = [r["doc_id"] for r in rows]
        texts = [r["text"] or "" for r in rows]
        cfg = self.config
        # hashing and shingling are per-word Python: on the thread runner's threads they would share one lock
        hashed = docpool.map(hash_texts, texts, cfg.ngram,
                             _permutations(cfg.num_perm, cfg.seed) if cfg.minhash else None)
        docs = pa.table({"doc_id": pa.array(ids, pa.string()),
                         "exact_hash": pa.array([h for h, _ in hashed], pa.string()),
                         "priority": pa.array([priority.get(r["source"], 0) for r in rows], pa.int32()),
                         "length": pa.array([len(t) for t in texts], pa.int64()),
                         "unit": pa.array([unit.name] * len(rows), pa.string())})
        if cfg.minhash:
            sigs = signature_matrix(hashed, cfg.num_perm)
            has_words = sigs[:, 0] != np.iinfo(np.uint32).max
            docs = docs.append_column("sig", pa.FixedSizeListArray.from_arrays(pa.array(sigs.ravel()), cfg.num_perm))
            keys = band_hashes(sigs[has_words], cfg.bands, cfg.rows)
            band_ids = np.repeat(np.array(ids, dtype=object)[has_words], cfg.bands)
            bands = pa.table({"doc_id": pa.array(band_ids, pa.string()),
                              "band": pa.array(np.tile(np.arange(cfg.bands, dtype=np.int16), len(keys))),
                              "band_hash": pa.array(keys.ravel())})
            write_parquet_atomic(bands, scratch / f"bands-{unit.name}.parquet")
        write_parquet_atomic(docs, scratch / f"docs-{unit.name}.parquet")
        if cfg.segments:
            pairs = [(r["doc_id"], h) for r, t in zip(rows, texts) for h in segment_hashes(t, cfg.segment_min_chars)]
            write_parquet_atomic(pa.table({"doc_id": [p[0] for p in pairs], "unit": [unit.name] * len(pairs),
                                           "seg": [p[1] for p in pairs]}, schema=SEGMENT_SCHEMA),
                                 scratch / f"segs-{unit.name}.parquet")
        return {"docs": len(rows)}

    def reduce(self, scratch: Path, scans: list[dict[str, Any]], stage_key: str) -> dict[str, Any]:
        cfg = self.config
        state = cfg.state_dir / signature_params(cfg) if cfg.incremental and cfg.state_dir else None
        facts = cluster_documents(
            docs=sorted(scratch.glob("docs-part-*.parquet")), bands=sorted(scratch.glob("bands-part-*.parquet")),
            out_dir=scratch / "decisions", exact=cfg.exact, near=cfg.minhash,
            threshold=cfg.threshold if cfg.verify else None, memory_limit=cfg.memory_limit,
            state_dir=state, state_name=stage_key[:16])
        if cfg.segments:
            facts.update(count_segments(segments=sorted(scratch.glob("segs-part-*.parquet")),
                                        decisions=scratch / "decisions", out_dir=scratch / "segments",
                                        max_repeats=cfg.segment_max_repeats, memory_limit=cfg.memory_limit))
        return facts

    def after_reduce(self, scratch: Path) -> None:
        for f in [*scratch.glob("docs-part-*.parquet"), *scratch.glob("bands-part-*.parquet"),
                  *scratch.glob("segs-part-*.parquet")]:
            f.unlink(missing_ok=True)

    def _removals(self, scratch: Path, unit: str) -> tuple[dict[str, set[int]], set[int]]:
        """This unit's segments to remove, by document, and the most repeated segments' hashes."""
        removals: dict[str, set[int]] = {}
        path = scratch / "segments" / f"{unit}.parquet"
        if path.exists():
            for row in pq.read_table(path).to_pylist():
                removals.setdefault(row["doc_id"], set()).add(row["seg"])
        top = scratch / "segments" / "top.parquet"
        return removals, set(pq.read_table(top)["seg"].to_pylist()) if top.exists() else set()

    def finalize(self, out_dir: Path) -> None:
        """The most repeated segments with their text (each unit noted the ones it removed), for the report."""
        scratch = self.scratch_dir(out_dir)
        top = scratch / "segments" / "top.parquet"
        if not self.config.segments or not top.exists():
            return
        texts: dict[int, str] = {}
        for f in sorted(scratch.glob("segtext-part-*.parquet")):
            for row in pq.read_table(f).to_pylist():
                texts.setdefault(row["seg"], row["text"])
        counts = pq.read_table(top).to_pylist()
        write_parquet_atomic(pa.table({"docs": [c["docs"] for c in counts],
                                       "removed_from": [c["docs"] - 1 for c in counts],
                                       "text": [texts.get(c["seg"]) for c in counts]},
                                      schema=pa.schema([("docs", pa.int64()), ("removed_from", pa.int64()),
                                                        ("text", pa.string())])),
                             out_dir / "removed_segments.parquet")

    def process(self, unit: Unit, writer: ShardWriter, drops: DropLog, result: ShardResult) -> None:
        cfg = self.config
        scratch = self.scratch_dir(writer.out_dir)
        decisions_file = scratch / "decisions" / f"{unit.name}.parquet"
        decided = {d["doc_id"]: d for d in pq.read_table(decisions_file).to_pylist()} if decisions_file.exists() else {}
        removals, top = self._removals(scratch, unit.name) if cfg.segments else ({}, set())
        seen_top: dict[int, str] = {}
        for row in self.input_rows(unit):
            result.docs_in += 1
            result.bytes_in += len(row["text"])
            d = decided.get(row["doc_id"])
            if d is None:  # its source skips dedup
                writer.add({**row, "exact_hash": None, "minhash_cluster_id": None, "dedup_kept": True})
                continue
            if not d["kept"]:
                drops.add_record(d["reason"], row, nbytes=len(row["text"]),
                                 detail=f"duplicate of {d['duplicate_of']} (cluster {d['cluster_id']})")
                continue
            remove = removals.get(row["doc_id"])
            if remove:
                text, cut = remove_segments(row["text"], remove, cfg.segment_min_chars)
                for h, line in cut:
                    if h in top:
                        seen_top.setdefault(h, line[:300])
                result.stats["segment_lines_removed"] = result.stats.get("segment_lines_removed", 0) + len(cut)
                if len(text) < cfg.segment_min_doc_chars:
                    drops.add_record("segments_left_too_short", row, nbytes=len(row["text"]),
                                     detail=f"{len(cut)} repeated segments removed, {len(text)} characters left")
                    continue
                row = {**row, "text": text}
            writer.add({**row, "exact_hash": d["exact_hash"], "minhash_cluster_id": d["cluster_id"],
                        "dedup_kept": True})
        if seen_top:
            write_parquet_atomic(pa.table({"seg": pa.array(list(seen_top), pa.int64()),
                                           "text": pa.array(list(seen_top.values()), pa.string())}),
                                 scratch / f"segtext-{unit.name}.parquet")
