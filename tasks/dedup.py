"""Deduplication: exact (normalized-text hash), then near-duplicates with MinHash LSH, clustered out of core.

Three steps (see ``ReduceStage``):

1. scan, per unit in parallel: each document's exact hash and its MinHash signature (word 5-gram shingles hashed
   with numpy, permutations applied by datasketch's ``MinHash.bulk``), written as Parquet with its LSH band keys
   ``(doc_id, band, band_hash)``;
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
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.config import DedupConfig, stable_hash
from tasks.ngrams import ngram_hashes, normalized_words, word_hashes
from tasks.quality import SCHEMA as QUALITY_SCHEMA
from tasks.shards import DropLog, ShardResult, ShardWriter, write_parquet_atomic
from tasks.sharded import ReduceStage, Unit
from tasks.dedup_cluster import cluster_documents

SCHEMA = pa.schema([*QUALITY_SCHEMA, pa.field("exact_hash", pa.string()), pa.field("minhash_cluster_id", pa.string()),
                    pa.field("dedup_kept", pa.bool_())])
_SPACES = re.compile(r"\s+")
_MULT = np.uint64(0x9E3779B97F4A7C15)


def exact_hash(text: str) -> str:
    """Hash of the text as NFC, casefolded, with whitespace runs collapsed: trivially different copies collide."""
    norm = _SPACES.sub(" ", unicodedata.normalize("NFC", text).casefold()).strip()
    return hashlib.blake2b(norm.encode(), digest_size=16).hexdigest()


def _identity(value):
    return value


def shingles(text: str, n: int) -> np.ndarray:
    """32-bit hashes of the word n-gram shingles (a text shorter than n words is one shingle; empty: none)."""
    hashes = word_hashes(normalized_words(text))
    grams = ngram_hashes(hashes, min(n, len(hashes))) if len(hashes) else np.empty(0, dtype=np.uint64)
    return np.unique((grams >> np.uint64(32)).astype(np.uint32))


def signatures(texts: list[str], cfg: DedupConfig) -> np.ndarray:
    """MinHash signatures, one row of num_perm uint32 per text, with datasketch's batch API (affine32 scheme).

    A text with no words gets an all-ones row; it has no band keys, so it never collides."""
    from datasketch import MinHash

    out = np.full((len(texts), cfg.num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
    sets = [shingles(t, cfg.ngram) for t in texts]
    present = [i for i, s in enumerate(sets) if len(s)]
    if present:
        hashes = MinHash.bulk([sets[i] for i in present], num_perm=cfg.num_perm, seed=cfg.seed,
                              hashfunc=_identity, scheme="affine32")
        out[present] = np.stack([m.hashvalues for m in hashes])
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
        docs = pa.table({"doc_id": pa.array(ids, pa.string()),
                         "exact_hash": pa.array([exact_hash(t) for t in texts], pa.string()),
                         "priority": pa.array([priority.get(r["source"], 0) for r in rows], pa.int32()),
                         "length": pa.array([len(t) for t in texts], pa.int64()),
                         "unit": pa.array([unit.name] * len(rows), pa.string())})
        cfg = self.config
        if cfg.minhash:
            sigs = signatures(texts, cfg)
            has_words = sigs[:, 0] != np.iinfo(np.uint32).max
            docs = docs.append_column("sig", pa.FixedSizeListArray.from_arrays(pa.array(sigs.ravel()), cfg.num_perm))
            keys = band_hashes(sigs[has_words], cfg.bands, cfg.rows)
            band_ids = np.repeat(np.array(ids, dtype=object)[has_words], cfg.bands)
            bands = pa.table({"doc_id": pa.array(band_ids, pa.string()),
                              "band": pa.array(np.tile(np.arange(cfg.bands, dtype=np.int16), len(keys))),
                              "band_hash": pa.array(keys.ravel())})
            write_parquet_atomic(bands, scratch / f"bands-{unit.name}.parquet")
        write_parquet_atomic(docs, scratch / f"docs-{unit.name}.parquet")
        return {"docs": len(rows)}

    def reduce(self, scratch: Path, scans: list[dict[str, Any]], stage_key: str) -> dict[str, Any]:
        cfg = self.config
        state = cfg.state_dir / signature_params(cfg) if cfg.incremental and cfg.state_dir else None
        return cluster_documents(
            docs=sorted(scratch.glob("docs-part-*.parquet")), bands=sorted(scratch.glob("bands-part-*.parquet")),
            out_dir=scratch / "decisions", exact=cfg.exact, near=cfg.minhash,
            threshold=cfg.threshold if cfg.verify else None, memory_limit=cfg.memory_limit,
            state_dir=state, state_name=stage_key[:16])

    def after_reduce(self, scratch: Path) -> None:
        for f in [*scratch.glob("docs-part-*.parquet"), *scratch.glob("bands-part-*.parquet")]:
            f.unlink(missing_ok=True)

    def process(self, unit: Unit, writer: ShardWriter, drops: DropLog, result: ShardResult) -> None:
        decisions_file = self.scratch_dir(writer.out_dir) / "decisions" / f"{unit.name}.parquet"
        decided = {d["doc_id"]: d for d in pq.read_table(decisions_file).to_pylist()} if decisions_file.exists() else {}
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
            writer.add({**row, "exact_hash": d["exact_hash"], "minhash_cluster_id": d["cluster_id"],
                        "dedup_kept": True})
