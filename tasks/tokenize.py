"""Tokenization: split, train (or load) the BPE, and write memory-mappable token shards.

Three steps (see ``ReduceStage``):

1. scan, per unit: each document gets its split (held out by hash of doc_id, ``val_fraction``), a sampling rank
   (a hash) and an output shard (another hash, over the plan's units), and is written to scratch grouped by that
   shard: every output shard gathers documents from every input unit, so no shard (and no training rank) holds a
   contiguous slice of one source;
2. reduce, once: the training texts with the lowest ranks, up to ``sample_max_bytes``, train the byte-level BPE
   (or ``tokenizer_path`` is loaded); ``tokenizer.json`` is saved with its sha256 and recorded as a dataset, and
   the encoder is chosen: tiktoken when it gives exactly the ids of ``tokenizers`` on a probe of the sample;
3. process, per unit: the unit gathers its documents from every scan, shuffles them with a seed, encodes them and
   writes ``<unit>-train.arrow`` and ``<unit>-val.arrow`` (see ``tasks.token_shards``), each document starting
   with the separator. ``finalize`` writes ``_tokens.json``, the manifest training reads.
"""
from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.config import TokenizeConfig
from tasks.shards import (DropLog, ShardFile, ShardResult, ShardWriter, atomic_write_bytes, read_dataset_manifest,
                          write_parquet_atomic)
from tasks.sharded import ReduceStage, Unit
from tasks.token_shards import (check_token_manifest, shuffled, write_token_manifest, write_token_shard)
from tasks.tokenizer import TiktokenEncoder, TokenizersEncoder, fastest_encoder, is_validation, train_bpe

SCATTER_SCHEMA = pa.schema([("shard", pa.uint32()), ("doc_id", pa.string()), ("text", pa.string()),
                            ("val", pa.bool_()), ("rank", pa.uint64()), ("bytes", pa.int64())])
PROBE_DOCS, PROBE_BYTES = 64, 1 << 18  # the equality probe: this many sample documents, at most this much text


def _hash(kind: str, seed: int, doc_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{kind}:{seed}:{doc_id}".encode(), digest_size=8).digest(), "big")


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


class TokenizeStage(ReduceStage):
    name = "tokenize"
    schema = pa.schema([])  # the output is Arrow IPC token shards, written by process itself
    dataset_format = "arrow"

    config: TokenizeConfig

    def scan(self, unit: Unit, scratch: Path) -> dict[str, Any]:
        cfg = self.config
        parts, docs, val = [], 0, 0
        for batch in self.input_batches(unit, ["doc_id", "text"]):
            ids = batch.column("doc_id").to_pylist()
            held = [is_validation(d, cfg.val_fraction, cfg.split_seed) for d in ids]
            parts.append(pa.record_batch([
                pa.array([_hash("shard", cfg.shuffle_seed, d) % unit.of for d in ids], pa.uint32()),
                batch.column("doc_id"), batch.column("text"), pa.array(held, pa.bool_()),
                pa.array([_hash("sample", cfg.split_seed, d) for d in ids], pa.uint64()),
                pc.fill_null(pc.binary_length(batch.column("text")), 0).cast(pa.int64())], schema=SCATTER_SCHEMA))
            docs += len(ids)
            val += sum(held)
        table = pa.Table.from_batches(parts, SCATTER_SCHEMA).sort_by("shard")  # stable: input order within a shard
        # uncompressed: this copy is read once by process and deleted by finalize, and zstd would cost ~10% here
        write_parquet_atomic(table, self._scattered(scratch, unit.name), group_by="shard", compression="none")
        return {"docs": docs, "val_docs": val}

    @staticmethod
    def _scattered(scratch: Path, unit: str) -> Path:
        return scratch / f"docs-{unit}.parquet"

    def _scatter_files(self, scratch: Path) -> list[Path]:
        """Every scan's scattered documents; a missing one (deleted by finalize) is an error, never an empty shard."""
        units = sorted(f.name[len("scan-"):-len(".json")] for f in scratch.glob("scan-*.json"))
        missing = [u for u in units if not self._scattered(scratch, u).is_file()]
        if missing:
            raise FileNotFoundError(f"{scratch}: the scattered documents of {', '.join(missing)} are gone; "
                                    f"delete {scratch.parent} and run the stage again")
        return [self._scattered(scratch, u) for u in units]

    def _sample_texts(self, scratch: Path) -> Iterator[str]:
        """Training-split texts whose rank is under the cut-off that fills ``sample_max_bytes``."""
        files = self._scatter_files(scratch)
        if not files:
            return
        meta = pa.concat_tables([pq.read_table(f, columns=["val", "rank", "bytes"]) for f in files])
        meta = meta.filter(pc.invert(meta["val"])).sort_by("rank")
        used = np.cumsum(meta["bytes"].to_numpy())
        take = max(1, int(np.searchsorted(used, self.config.sample_max_bytes, side="right"))) if len(used) else 0
        if not take:
            return
        cutoff = meta["rank"][take - 1]
        for f in files:
            for batch in pq.ParquetFile(f).iter_batches(columns=["val", "rank", "text"]):
                chosen = pc.and_(pc.invert(batch.column("val")), pc.less_equal(batch.column("rank"), cutoff))
                yield from (t or "" for t in batch.filter(chosen).column("text").to_pylist())

    def reduce(self, scratch: Path, scans: list[dict[str, Any]], stage_key: str) -> dict[str, Any]:
        from tokenizers import Tokenizer

        cfg = self.config
        if cfg.tokenizer_path is not None:
            tok = Tokenizer.from_file(str(cfg.tokenizer_path))
        else:
            tok = train_bpe(self._sample_texts(scratch), cfg.vocab_size, cfg.special_tokens)
        separator = tok.token_to_id(cfg.separator)
        if separator is None:
            raise ValueError(f"the tokenizer has no {cfg.separator!r} token to separate documents")
        blob = tok.to_str().encode()
        atomic_write_bytes(scratch / "tokenizer.json", blob)
        probe, size = [], 0
        for text in self._sample_texts(scratch):
            if len(probe) == PROBE_DOCS or size > PROBE_BYTES:
                break
            probe.append(text)
            size += len(text)
        chosen = fastest_encoder(tok, probe) if cfg.encoder == "auto" else TokenizersEncoder(tok)
        encoder = chosen.name
        load_encoder(scratch / "tokenizer.json", encoder, built=(tok, chosen))  # process, in this process, reuses it
        return {"vocab_size": tok.get_vocab_size(), "separator_id": separator, "encoder": encoder,
                "tokenizer_sha256": hashlib.sha256(blob).hexdigest(), "docs": sum(s["docs"] for s in scans),
                "units": len(scans)}

    @staticmethod
    def check(dataset_dir: Path) -> list[dict[str, Any]]:
        """Validate every token shard of a tokenize dataset against its manifests and tokenizer (check-shards)."""
        return check_token_manifest(dataset_dir, read_dataset_manifest(dataset_dir).files)

    def artifacts(self, out_dir: Path) -> list[Path]:
        return [self.scratch_dir(out_dir) / "tokenizer.json"]

    def stat_metrics(self, stats: dict[str, float]) -> list[tuple[int | None, str, float]]:
        """The token counts, and the validation split's bytes per token (separators carry no bytes)."""
        if stats.get("val_tokens", 0) > stats.get("val_docs", 0):
            stats = {**stats, "val_bytes_per_token": stats["val_bytes"] / (stats["val_tokens"] - stats["val_docs"])}
        return super().stat_metrics(stats)

    def finalize(self, out_dir: Path) -> None:
        scratch = self.scratch_dir(out_dir)
        facts = json.loads((scratch / "reduce.json").read_text())
        write_token_manifest(out_dir, read_dataset_manifest(out_dir).files, tokenizer=scratch / "tokenizer.json",
                             **{k: facts[k] for k in ("vocab_size", "separator_id", "encoder", "tokenizer_sha256")})
        for f in scratch.glob("docs-part-*.parquet"):  # the scattered text copy; only process needed it
            f.unlink(missing_ok=True)

    def _gather(self, unit: Unit, scratch: Path) -> Iterator[pa.Table]:
        """This unit's documents from every scan: the row groups whose shard is this unit's index."""
        for f in self._scatter_files(scratch):
            pf = pq.ParquetFile(f)
            for g in range(pf.num_row_groups):
                stats = pf.metadata.row_group(g).column(0).statistics
                if stats is None or not stats.has_min_max or stats.min <= unit.index <= stats.max:
                    table = pf.read_row_group(g, columns=["shard", "doc_id", "text", "val"])
                    yield table.filter(pc.equal(table["shard"], unit.index))

    def process(self, unit: Unit, writer: ShardWriter, drops: DropLog, result: ShardResult) -> None:
        cfg = self.config
        scratch = self.scratch_dir(writer.out_dir)
        facts = json.loads((scratch / "reduce.json").read_text())
        tok, encoder = load_encoder(scratch / "tokenizer.json", facts["encoder"])
        tables = list(self._gather(unit, scratch))
        if not tables:
            return
        docs = pa.concat_tables(tables)
        result.docs_in = docs.num_rows
        sizes = pc.fill_null(pc.binary_length(docs["text"]), 0).cast(pa.int64())
        result.bytes_in = int(pc.sum(sizes).as_py() or 0)
        docs = docs.append_column("bytes", sizes)
        for split, held in (("train", False), ("val", True)):
            part = docs.filter(pc.equal(docs["val"], held))
            if not part.num_rows:
                continue
            part = part.take(shuffled(part.num_rows, cfg.shuffle_seed, f"{unit.name}-{split}"))
            name = f"{unit.name}-{split}.arrow"
            texts = pc.fill_null(part["text"], "").to_pylist()
            tokens, sha = write_token_shard(writer.out_dir / name, part["doc_id"].to_pylist(), part["bytes"],
                                            encoder.encode_batch(texts), separator=facts["separator_id"],
                                            vocab_size=facts["vocab_size"])
            writer.files.append(ShardFile(name, part.num_rows, (writer.out_dir / name).stat().st_size, sha))
            writer.docs_out += part.num_rows
            result.stats[f"{split}_tokens"] = tokens
            result.stats[f"{split}_docs"] = part.num_rows
            result.stats[f"{split}_bytes"] = int(pc.sum(part["bytes"]).as_py())
