"""Tokenization: split, train (or load) the BPE, and write memory-mappable token shards.

Three steps (see ``ReduceStage``):

1. scan, per unit: each document gets its validation hash, a sampling rank (a hash) and an output shard (another
   hash, over the plan's units), and is written to scratch grouped by that shard with its source: every output
   shard gathers documents from every input unit, so no shard (and no training rank) holds a contiguous slice of
   one source;
2. reduce, once: each source's validation cut-off is set (its ``val_fraction``, default tokenize's, or its
   ``val_docs`` lowest hashes), then the training texts with the lowest ranks, up to ``sample_max_bytes``, train
   the byte-level BPE (the rank cut-off found out of core by ``rank_cutoff``: a histogram of the ranks, not a sort
   of them all) or ``tokenizer_path`` is loaded; ``tokenizer.json`` is saved with its sha256 and recorded as a dataset, and
   the encoder is chosen: tiktoken when it gives exactly the ids of ``tokenizers`` on a probe of the sample;
3. process, per unit: the unit gathers its documents from every scan, shuffles them with a seed, encodes them and
   writes ``<unit>-train.arrow`` and ``<unit>-val.arrow`` (see ``tasks.token_shards``), each document starting
   with the separator. Sealing computes the mixture (``tasks.mixture``: how many times a training pass uses each
   document, from the sources' weights) into ``_mixture.parquet``, and ``finalize`` writes ``_tokens.json``, the
   manifest training reads, with each source's tokens, share and passes.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.config import TokenizeConfig
from tasks.shards import (DropLog, ShardFile, ShardResult, ShardWriter, atomic_write_bytes, read_dataset_manifest,
                          write_parquet_atomic)
from tasks.sharded import ReduceStage, Unit
from tasks.token_shards import (check_token_manifest, shuffled, write_token_manifest, write_token_shard)
from tasks.atomic import file_sha256
from tasks.mixture import MIXTURE_FILE, build_mixture, mixture_summary, write_mixture
from tasks.stage import StageResult
from tasks.token_shards import read_token_shard
from tasks.tokenizer import (TokenizersEncoder, fastest_encoder, fraction_cutoff, load_encoder,
                             seeded_hash, train_bpe, validation_hash)

SCATTER_SCHEMA = pa.schema([("shard", pa.uint32()), ("doc_id", pa.string()), ("text", pa.string()),
                            ("source", pa.string()), ("vhash", pa.uint64()), ("rank", pa.uint64()),
                            ("bytes", pa.int64())])
PROBE_DOCS, PROBE_BYTES = 64, 1 << 18  # the equality probe: this many sample documents, at most this much text





RANK_BUCKET_BITS = 16  # rank_cutoff's histogram: 65,536 buckets of the rank's top bits


def rank_cutoff(ranked: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]], max_bytes: int) -> int | None:
    """The largest rank to take so that the texts with the lowest ranks fill ``max_bytes`` (at least one text), as
    sorting every (rank, bytes) pair and summing would give, in bounded memory.

    ``ranked()`` yields batches of (rank, bytes) and is called twice. Pass one sums bytes per bucket of the rank's
    top 16 bits (ranks are uniform hashes, so buckets hold ~1/65,536 of the texts each); the bucket where the running
    sum crosses ``max_bytes`` is the only one pass two keeps and sorts. Memory: two 65,536-entry arrays, one batch,
    and that one bucket, whatever the dataset's size. None when there is no text at all.
    """
    shift = np.uint64(64 - RANK_BUCKET_BITS)
    sums = np.zeros(1 << RANK_BUCKET_BITS, dtype=np.int64)
    counts = np.zeros(1 << RANK_BUCKET_BITS, dtype=np.int64)
    for rank, size in ranked():
        bucket = (rank >> shift).astype(np.int64)
        sums += np.rint(np.bincount(bucket, weights=size, minlength=len(sums))).astype(np.int64)  # exact < 2**53
        counts += np.bincount(bucket, minlength=len(counts))
    if not counts.any():
        return None
    before = np.concatenate([[0], np.cumsum(sums)])  # bytes in the buckets below each one
    if before[-1] <= max_bytes:  # everything fits
        crossing = int(np.flatnonzero(counts)[-1])
    else:
        crossing = int(np.searchsorted(before[1:], max_bytes, side="right"))  # first bucket whose end passes it
    below = np.flatnonzero(counts[:crossing])
    kept_rank, kept_size, last_below = [], [], None
    for rank, size in ranked():
        bucket = (rank >> shift).astype(np.int64)
        here = bucket == crossing
        kept_rank.append(rank[here])
        kept_size.append(size[here])
        if len(below) and (bucket < crossing).any():
            top = rank[bucket < crossing].max()
            last_below = top if last_below is None else max(last_below, top)
    rank = np.concatenate(kept_rank)
    size = np.concatenate(kept_size)
    order = np.argsort(rank, kind="stable")
    rank, used = rank[order], before[crossing] + np.cumsum(size[order])
    take = int(np.searchsorted(used, max_bytes, side="right"))
    if take:
        return int(rank[take - 1])
    return int(last_below) if last_below is not None else int(rank[0])  # none of this bucket fits: at least one

class TokenizeStage(ReduceStage):
    name = "tokenize"
    schema = pa.schema([])  # the output is Arrow IPC token shards, written by process itself
    dataset_format = "arrow"

    config: TokenizeConfig

    def source_params(self):
        """Each source's weight or epochs and held-out share: the mixture and the splits depend on them."""
        mix = {s.name: {k: v for k, v in (("weight", s.weight), ("epochs", s.epochs), ("val_fraction", s.val_fraction),
                                          ("val_docs", s.val_docs)) if v is not None} for s in self.source_configs}
        return {name: v for name, v in mix.items() if v} or None

    def scan(self, unit: Unit, scratch: Path) -> dict[str, Any]:
        cfg = self.config
        parts, docs = [], 0
        for batch in self.input_batches(unit, ["doc_id", "text", "source"]):
            ids = batch.column("doc_id").to_pylist()
            parts.append(pa.record_batch([
                pa.array([seeded_hash("shard", cfg.shuffle_seed, d) % unit.of for d in ids], pa.uint32()),
                batch.column("doc_id"), batch.column("text"), batch.column("source"),
                pa.array([validation_hash(d, cfg.split_seed) for d in ids], pa.uint64()),
                pa.array([seeded_hash("sample", cfg.split_seed, d) for d in ids], pa.uint64()),
                pc.fill_null(pc.binary_length(batch.column("text")), 0).cast(pa.int64())], schema=SCATTER_SCHEMA))
            docs += len(ids)
        table = pa.Table.from_batches(parts, SCATTER_SCHEMA).sort_by("shard")  # stable: input order within a shard
        # uncompressed: this copy is read once by process and deleted by finalize, and zstd would cost ~10% here
        write_parquet_atomic(table, self._scattered(scratch, unit.name), group_by="shard", compression="none")
        return {"docs": docs}

    def val_cutoffs(self, scratch: Path) -> dict[str, int]:
        """Each source's validation cut-off: from its val_fraction (default tokenize's), or the hash just past its
        ``val_docs`` lowest. A source with no settings, or none known, uses the default (key '')."""
        cfg = self.config
        cutoffs = {"": fraction_cutoff(cfg.val_fraction)}
        counted = {}
        for s in self.source_configs:
            if s.val_docs is not None:
                counted[s.name] = s.val_docs
            else:
                cutoffs[s.name] = fraction_cutoff(s.val_fraction if s.val_fraction is not None else cfg.val_fraction)
        if counted:
            hashes: dict[str, list[np.ndarray]] = {name: [] for name in counted}
            for f in self._scatter_files(scratch):
                table = pq.read_table(f, columns=["source", "vhash"])
                for name in counted:
                    mine = table.filter(pc.equal(table["source"], name))["vhash"].to_numpy()
                    hashes[name].append(np.partition(mine, counted[name] - 1)[:counted[name]]
                                        if 0 < counted[name] < len(mine) else mine)
            for name, n in counted.items():
                found = np.sort(np.concatenate(hashes[name])) if hashes[name] else np.empty(0, np.uint64)
                cutoffs[name] = 0 if n == 0 else (int(found[n - 1]) + 1 if len(found) >= n else 2**64 - 1)
        return {k: min(v, 2**64 - 1) for k, v in cutoffs.items()}

    @staticmethod
    def held_out(table: pa.Table, cutoffs: dict[str, int]) -> pa.ChunkedArray:
        """Which rows (with ``source`` and ``vhash``) are in the val split under these cut-offs."""
        names = sorted(k for k in cutoffs if k)
        where = pc.index_in(table["source"], value_set=pa.array(names, pa.string())) if names else None
        limits = pa.array([*(cutoffs[n] for n in names), cutoffs[""]], pa.uint64())
        index = pc.fill_null(where, len(names)) if where is not None else pa.array(
            np.zeros(table.num_rows, dtype=np.int32))
        return pc.less(table["vhash"], pc.take(limits, index))

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
        """Training-split texts whose rank is under the cut-off that fills ``sample_max_bytes`` (not those of a
        source training never sees, ``epochs = 0``: its held-out slice is an evaluation text)."""
        files = self._scatter_files(scratch)
        if not files:
            return
        cutoffs = json.loads((scratch / "cutoffs.json").read_text())
        unused = pa.array(sorted(s.name for s in self.source_configs if s.epochs == 0), pa.string())

        def trains(table: pa.Table) -> Any:
            train = pc.invert(self.held_out(table, cutoffs))
            return pc.and_(train, pc.invert(pc.fill_null(pc.is_in(table["source"], value_set=unused), False)))

        def ranked() -> Iterator[tuple[np.ndarray, np.ndarray]]:  # (rank, bytes) of training texts, by batch
            for f in files:
                for batch in pq.ParquetFile(f).iter_batches(columns=["source", "vhash", "rank", "bytes"]):
                    table = pa.Table.from_batches([batch])
                    table = table.filter(trains(table))
                    yield (table["rank"].to_numpy().astype(np.uint64, copy=False),
                           table["bytes"].to_numpy().astype(np.int64, copy=False))

        cutoff = rank_cutoff(ranked, self.config.sample_max_bytes)
        if cutoff is None:
            return
        for f in files:
            for batch in pq.ParquetFile(f).iter_batches(columns=["source", "vhash", "rank", "text"]):
                train = trains(pa.Table.from_batches([batch]))
                ranks = pa.chunked_array([batch.column("rank")])
                chosen = pc.and_(train, pc.less_equal(ranks, pa.scalar(cutoff, pa.uint64())))
                yield from (t or "" for t in pa.Table.from_batches([batch]).filter(chosen)["text"].to_pylist())

    def reduce(self, scratch: Path, scans: list[dict[str, Any]], stage_key: str) -> dict[str, Any]:
        from tokenizers import Tokenizer

        cfg = self.config
        cutoffs = self.val_cutoffs(scratch)
        atomic_write_bytes(scratch / "cutoffs.json", json.dumps(cutoffs, sort_keys=True).encode())
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
        """Validate every token shard of a tokenize dataset against its manifests and tokenizer, and the mixture's
        repeat counts against the training shards (check-shards)."""
        from tasks.mixture import read_mixture
        from tasks.token_shards import ShardCheckError

        files = read_dataset_manifest(dataset_dir).files
        rows = check_token_manifest(dataset_dir, [f for f in files if f.name != MIXTURE_FILE])
        mixture = read_mixture(dataset_dir)
        if mixture is not None:
            docs = {r["shard"]: r["documents"] for r in rows if r["shard"].endswith("-train.arrow")}
            listed = next((f for f in files if f.name == MIXTURE_FILE), None)
            if listed is None or file_sha256(Path(dataset_dir) / MIXTURE_FILE) != listed.sha256:
                raise ShardCheckError(f"{MIXTURE_FILE}: not the file the dataset manifest lists")
            wrong = [n for n in docs if n not in mixture or len(mixture[n]) != docs[n]]
            if wrong or set(mixture) != set(docs):
                raise ShardCheckError(f"{MIXTURE_FILE}: its repeat counts do not match the documents of "
                                      f"{', '.join(wrong or sorted(set(mixture) ^ set(docs)))}")
        return rows

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
        mixture = json.loads((scratch / "mixture.json").read_text()) if (scratch / "mixture.json").is_file() else None
        write_token_manifest(out_dir, [f for f in read_dataset_manifest(out_dir).files if f.name != MIXTURE_FILE],
                             tokenizer=scratch / "tokenizer.json", mixture=mixture,
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
                    table = pf.read_row_group(g, columns=["shard", "doc_id", "text", "source", "vhash"])
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
        docs = docs.append_column("val", self.held_out(docs, json.loads((scratch / "cutoffs.json").read_text())))
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
                                            vocab_size=facts["vocab_size"], sources=part["source"].to_pylist())
            writer.files.append(ShardFile(name, part.num_rows, (writer.out_dir / name).stat().st_size, sha))
            writer.docs_out += part.num_rows
            result.stats[f"{split}_tokens"] = tokens
            result.stats[f"{split}_docs"] = part.num_rows
            result.stats[f"{split}_bytes"] = int(pc.sum(part["bytes"]).as_py())

    def seal(self, ctx: Any, inp: Any, units: list[Unit], results: list[ShardResult], out_dir: Path, key: str,
             t0: float) -> StageResult:
        """Before the manifest is sealed: the mixture, listed among the dataset's files, so that its fingerprint
        (and training's key) follows the weights. Each source's figures go to the warehouse."""
        shards = []
        for f in sorted((f for r in results for f in r.files if f.name.endswith("-train.arrow")), key=lambda f: f.name):
            _, offsets, table = read_token_shard(out_dir / f.name)
            sources = table["source"].to_pylist() if "source" in table.column_names else [None] * table.num_rows
            shards.append((f.name, table["doc_id"].to_pylist(), sources, np.diff(offsets)))
        weights = {s.name: s.weight for s in self.source_configs if s.weight is not None}
        epochs = {s.name: s.epochs for s in self.source_configs if s.epochs is not None}
        repeats, mixes = build_mixture(shards, weights, epochs, self.config.shuffle_seed)
        path = write_mixture(out_dir, repeats)
        summary = mixture_summary(mixes)
        scratch = self.scratch_dir(out_dir)
        atomic_write_bytes(scratch / "mixture.json", json.dumps(summary, sort_keys=True).encode())
        mixed = ShardResult("mixture", files=[ShardFile(path.name, 0, path.stat().st_size, file_sha256(path))])
        result = super().seal(ctx, inp, units, [*results, mixed], out_dir, key, t0)
        val_docs = self._val_docs_by_source(out_dir, results)
        for m in mixes:
            if m.epochs > self.config.max_epochs * (1 + 1e-9):
                ctx.say(f"tokenize: warning: source {m.name or '(none)'} is repeated {m.epochs:.1f} times per pass, "
                        f"more than tokenize.max_epochs {self.config.max_epochs:g}: repeated text is worth less past "
                        "about 4 epochs (Muennighoff et al. 2023); lower its weight or add data")
                result.notes["source_over_max_epochs"] = result.notes.get("source_over_max_epochs", 0) + 1
            each = (f"{m.repeats_min}" if m.repeats_min == m.repeats_max else f"{m.repeats_min}-{m.repeats_max}")
            ctx.say(f"tokenize: source {m.name or '(none)'}: {m.tokens:,} training tokens, {m.epochs:.2f} passes "
                    f"(each document {each} times), share {m.share:.1%}"
                    + (f" (target {m.target_share:.1%})" if m.target_share else ""))
            result.metrics += [(None, f"tokenize.share/{m.name}", m.share), (None, f"tokenize.epochs/{m.name}", m.epochs)]
        for name in {m.name for m in mixes} | set(val_docs):
            m = next((x for x in mixes if x.name == name), None)
            docs = (m.docs if m else 0) + val_docs.get(name, 0)
            result.by_source[name] = {"docs_in": docs, "docs_out": docs, "tokens": m.tokens if m else 0,
                                      "target_share": m.target_share if m else None, "share": m.share if m else 0.0,
                                      "epochs": m.epochs if m else 0.0, "val_docs": val_docs.get(name, 0)}
        return result

    @staticmethod
    def _val_docs_by_source(out_dir: Path, results: list[ShardResult]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for f in (f for r in results for f in r.files if f.name.endswith("-val.arrow")):
            _, _, table = read_token_shard(out_dir / f.name)
            if "source" in table.column_names:
                for item in pc.value_counts(table["source"]).to_pylist():
                    counts[item["values"] or ""] = counts.get(item["values"] or "", 0) + item["counts"]
        return counts
