"""Tokenization: split, train (or load) the BPE, and write memory-mappable token shards.

Three steps (see ``ReduceStage``):

1. scan, per unit: each document's split (held out by hash of doc_id, ``val_fraction``), and for training-split
   documents a sampling rank (a hash) and their size;
2. reduce, once: the training texts with the lowest ranks, up to ``sample_max_bytes``, train the byte-level BPE
   (or ``tokenizer_path`` is loaded); ``tokenizer.json`` is saved with its sha256 and recorded as a dataset, and
   the encoder is chosen: tiktoken when it gives exactly the ids of ``tokenizers`` on a probe of the sample;
3. process, per unit: documents are shuffled with a seed, encoded, and written as ``<unit>-train.arrow`` and
   ``<unit>-val.arrow`` (see ``tasks.token_shards``), every document starting with the separator.
"""
from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.config import TokenizeConfig
from tasks.shards import DropLog, ShardFile, ShardResult, ShardWriter, atomic_write_bytes, write_parquet_atomic
from tasks.stage import ReduceStage, Source, Unit
from tasks.token_shards import shuffled, write_token_shard
from tasks.tokenizer import TiktokenEncoder, TokenizersEncoder, fastest_encoder, is_validation, train_bpe

SAMPLE_SCHEMA = pa.schema([("doc_id", pa.string()), ("rank", pa.uint64()), ("bytes", pa.int64()),
                           ("source", pa.int32()), ("row", pa.int64())])
PROBE_DOCS = 200


def _rank(doc_id: str, seed: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"sample:{seed}:{doc_id}".encode(), digest_size=8).digest(), "big")


_loaded: dict[str, Any] = {}
_lock = threading.Lock()


def load_encoder(path: Path, encoder: str):
    """(tokenizer, encoder) for a saved tokenizer.json, built once per process."""
    from tokenizers import Tokenizer

    key = f"{path}:{encoder}:{path.stat().st_mtime_ns}"
    with _lock:
        if key not in _loaded:
            tok = Tokenizer.from_file(str(path))
            _loaded[key] = (tok, TiktokenEncoder(tok) if encoder == "tiktoken" else TokenizersEncoder(tok))
        return _loaded[key]


class TokenizeStage(ReduceStage):
    name = "tokenize"
    upstream = "decontaminate"
    schema = pa.schema([])  # the output is Arrow IPC token shards, written by process itself
    dataset_format = "arrow"

    config: TokenizeConfig

    def scan(self, unit: Unit, scratch: Path) -> dict[str, Any]:
        cfg = self.config
        rows, docs, val = [], 0, 0
        for s, src in enumerate(unit.sources):
            for r, row in enumerate(self._rows(src, ["doc_id", "text"])):
                docs += 1
                if is_validation(row["doc_id"], cfg.val_fraction, cfg.split_seed):
                    val += 1
                    continue
                rows.append({"doc_id": row["doc_id"], "rank": _rank(row["doc_id"], cfg.split_seed),
                             "bytes": len((row["text"] or "").encode()), "source": s, "row": r})
        write_parquet_atomic(pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA), scratch / f"sample-{unit.name}.parquet")
        return {"docs": docs, "val_docs": val,
                "sources": [[src.uri, src.start, src.stop] for src in unit.sources]}

    def _rows(self, src: Source, columns: list[str]) -> Iterator[dict[str, Any]]:
        return self.input_rows(Unit(0, (src,)), columns)

    def _sample_texts(self, scratch: Path, scans: list[dict[str, Any]]) -> Iterator[str]:
        """Training-split texts in rank order... by unit, keeping only ranks under the byte budget's cut-off."""
        table = pa.concat_tables([pq.read_table(f) for f in sorted(scratch.glob("sample-part-*.parquet"))]) \
            if list(scratch.glob("sample-part-*.parquet")) else SAMPLE_SCHEMA.empty_table()
        table = table.sort_by("rank")
        total, cutoff = 0, None
        for rank, size in zip(table["rank"].to_pylist(), table["bytes"].to_pylist()):
            if total + size > self.config.sample_max_bytes and total:
                break
            total += size
            cutoff = rank
        if cutoff is None:
            return
        by_unit = {s["unit"]: s for s in scans}
        for f in sorted(scratch.glob("sample-part-*.parquet")):
            unit = f.name[len("sample-"):-len(".parquet")]
            chosen = {(r["source"], r["row"]) for r in pq.read_table(f).to_pylist() if r["rank"] <= cutoff}
            for s, (uri, start, stop) in enumerate(by_unit[unit]["sources"]):
                for r, row in enumerate(self._rows(Source(uri, start, stop), ["text"])):
                    if (s, r) in chosen:
                        yield row["text"] or ""

    def reduce(self, scratch: Path, scans: list[dict[str, Any]], stage_key: str) -> dict[str, Any]:
        from tokenizers import Tokenizer

        cfg = self.config
        if cfg.tokenizer_path is not None:
            tok = Tokenizer.from_file(str(cfg.tokenizer_path))
        else:
            tok = train_bpe(self._sample_texts(scratch, scans), cfg.vocab_size, cfg.special_tokens)
        separator = tok.token_to_id(cfg.separator)
        if separator is None:
            raise ValueError(f"the tokenizer has no {cfg.separator!r} token to separate documents")
        blob = tok.to_str().encode()
        atomic_write_bytes(scratch / "tokenizer.json", blob)
        probe = [t for _, t in zip(range(PROBE_DOCS), self._sample_texts(scratch, scans))]
        encoder = fastest_encoder(tok, probe).name if cfg.encoder == "auto" else "tokenizers"
        return {"vocab_size": tok.get_vocab_size(), "separator_id": separator, "encoder": encoder,
                "tokenizer_sha256": hashlib.sha256(blob).hexdigest(), "docs": sum(s["docs"] for s in scans)}

    def after_reduce(self, scratch: Path) -> None:
        for f in scratch.glob("sample-part-*.parquet"):
            f.unlink(missing_ok=True)

    @staticmethod
    def check(dataset_dir: Path) -> list[dict[str, Any]]:
        """Validate every token shard of a tokenize dataset against its manifest and tokenizer (check-shards)."""
        from tasks.shards import read_dataset_manifest
        from tasks.token_shards import check_token_shard

        facts = json.loads((ReduceStage.scratch_dir(dataset_dir) / "reduce.json").read_text())
        rows = []
        for f in read_dataset_manifest(dataset_dir).files:
            found = check_token_shard(dataset_dir / f.name, vocab_size=facts["vocab_size"],
                                      separator=facts["separator_id"], sha256=f.sha256)
            rows.append({"shard": f.name, **found})
        return rows

    def artifacts(self, out_dir: Path) -> list[Path]:
        return [self.scratch_dir(out_dir) / "tokenizer.json"]

    def process(self, unit: Unit, writer: ShardWriter, drops: DropLog, result: ShardResult) -> None:
        cfg = self.config
        scratch = self.scratch_dir(writer.out_dir)
        facts = json.loads((scratch / "reduce.json").read_text())
        tok, encoder = load_encoder(scratch / "tokenizer.json", facts["encoder"])
        splits: dict[str, tuple[list[str], list[str]]] = {"train": ([], []), "val": ([], [])}
        for row in self.input_rows(unit, ["doc_id", "text"]):
            result.docs_in += 1
            text = row["text"] or ""
            result.bytes_in += len(text)
            split = "val" if is_validation(row["doc_id"], cfg.val_fraction, cfg.split_seed) else "train"
            splits[split][0].append(row["doc_id"])
            splits[split][1].append(text)
        for split, (ids, texts) in splits.items():
            if not ids:
                continue
            order = shuffled(len(ids), cfg.shuffle_seed, f"{unit.name}-{split}")
            ids, texts = [ids[i] for i in order], [texts[i] for i in order]
            name = f"{unit.name}-{split}.arrow"
            tokens, sha = write_token_shard(writer.out_dir / name, ids, texts, encoder.encode_batch(texts),
                                            separator=facts["separator_id"], vocab_size=facts["vocab_size"])
            writer.files.append(ShardFile(name, len(ids), (writer.out_dir / name).stat().st_size, sha))
            writer.docs_out += len(ids)
            result.stats[f"{split}_tokens"] = tokens
            result.stats[f"{split}_docs"] = len(ids)
            result.stats[f"{split}_bytes"] = sum(len(t.encode()) for t in texts)
