"""Token shards: uncompressed Arrow IPC files that training memory-maps, with a token -> document index.

One row per document: ``doc_id``, ``bytes`` (its UTF-8 length, for bits-per-byte), ``tokens`` (a list of uint16
when the vocabulary fits, else uint32) that starts with the separator, and ``source``. The list column's values buffer *is* the
flat token stream of the shard and its offsets are the document boundaries, so both are read without a copy:

    tokens, offsets, table = read_token_shard(path)     # numpy views into the memory map
    doc = table["doc_id"][doc_index_of(offsets, position)]

A finished dataset also holds ``_tokens.json`` (``write_token_manifest``): per split, every shard with its
documents, tokens, UTF-8 bytes and sha256, plus the tokenizer's path and hash, the vocabulary size, the dtype and the
separator id. Training reads it (``model.data``); ``check_token_manifest`` is what `crucible check-shards` runs.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from itertools import chain
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from tasks.atomic import atomic_file


class ShardCheckError(ValueError):
    """A token shard that training must not read; the message names the shard and the position."""


def token_dtype(vocab_size: int) -> pa.DataType:
    return pa.uint16() if vocab_size <= 2**16 else pa.uint32()


def shuffled(n: int, seed: int, salt: str) -> np.ndarray:
    """A deterministic permutation of range(n) for this seed and shard: documents are spread, not in crawl order."""
    digest = hashlib.blake2b(f"{seed}:{salt}".encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "big")).permutation(n)


def write_token_shard(path: Path, doc_ids: list[str], sizes: Sequence[int], ids: list[list[int]], separator: int,
                      vocab_size: int, sources: list[str | None] | None = None) -> tuple[int, str]:
    """Write one shard atomically (separator prepended to every document); returns (tokens, sha256).

    ``sizes`` are the documents' UTF-8 byte counts (for bits-per-byte), ``ids`` their token ids without separator,
    ``sources`` their sources' names (a ``source`` column, for the mixture and per-source validation).
    """
    dtype = token_dtype(vocab_size)
    np_dtype = np.uint16 if dtype == pa.uint16() else np.uint32
    lengths = np.fromiter((len(x) + 1 for x in ids), dtype=np.int64, count=len(ids))
    offsets = np.zeros(len(ids) + 1, dtype=np.int32 if lengths.sum() < 2**31 else np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.empty(int(offsets[-1]), dtype=np_dtype)
    text = np.ones(len(flat), dtype=bool)
    text[offsets[:-1]] = False
    flat[offsets[:-1]] = separator
    flat[text] = np.fromiter(chain.from_iterable(ids), dtype=np_dtype, count=len(flat) - len(ids))
    list_type = pa.list_ if offsets.dtype == np.int32 else pa.large_list
    tokens = (pa.ListArray if offsets.dtype == np.int32 else pa.LargeListArray).from_arrays(
        pa.array(offsets), pa.array(flat, type=dtype))
    fields = [("doc_id", pa.string()), ("bytes", pa.int64()), ("tokens", list_type(dtype))]
    columns = [pa.array(doc_ids, pa.string()), pa.array(sizes, pa.int64()), tokens]
    if sources is not None:
        fields.append(("source", pa.string()))
        columns.append(pa.array(sources, pa.string()))
    table = pa.table(columns, schema=pa.schema(fields))
    with atomic_file(path) as tmp:
        with pa.OSFile(str(tmp), "wb") as sink, ipc.new_file(sink, table.schema) as writer:  # uncompressed: mmaps
            writer.write_table(table)
        with open(tmp, "rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
    return int(offsets[-1]), digest


def read_token_shard(path: Path) -> tuple[np.ndarray, np.ndarray, pa.Table]:
    """(flat tokens, document offsets, the table), the arrays being views into the memory-mapped file."""
    table = ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    if not table.num_rows:
        return np.empty(0, np.uint16), np.zeros(1, np.int64), table
    chunks = table.column("tokens")
    column = chunks.chunk(0) if chunks.num_chunks == 1 else chunks.combine_chunks()  # one chunk: no copy
    tokens = column.values.to_numpy(zero_copy_only=True)
    offsets = column.offsets.to_numpy(zero_copy_only=True)
    return tokens, offsets, table


def doc_index_of(offsets: np.ndarray, position: int) -> int:
    """The row of the document that holds token ``position``."""
    return int(np.searchsorted(offsets, position, side="right") - 1)


def check_token_shard(path: Path, *, vocab_size: int, separator: int, sha256: str | None = None) -> dict[str, int]:
    """Check one shard; returns {documents, tokens} or raises ShardCheckError naming the shard and position."""
    name = Path(path).name
    if sha256 is not None:
        with open(path, "rb") as fh:
            actual = hashlib.file_digest(fh, "sha256").hexdigest()
        if actual != sha256:
            raise ShardCheckError(f"{name}: sha256 {actual[:12]}… does not match the manifest's {sha256[:12]}…")
    try:
        tokens, offsets, table = read_token_shard(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise ShardCheckError(f"{name}: not a readable Arrow IPC file: {err}") from None
    want = token_dtype(vocab_size)
    got = table.schema.field("tokens").type.value_type
    if got.bit_width < want.bit_width:
        raise ShardCheckError(f"{name}: token type {got} cannot hold a vocabulary of {vocab_size}")
    if int(offsets[-1]) != len(tokens) or (len(offsets) - 1) != table.num_rows:
        raise ShardCheckError(f"{name}: the index ends at token {int(offsets[-1])} but the shard holds {len(tokens)}")
    starts = offsets[:-1]
    bad = np.nonzero(tokens[starts] != separator)[0] if len(starts) else []
    if len(bad):
        raise ShardCheckError(f"{name}: document {int(bad[0])} (token {int(starts[bad[0]])}) does not start with "
                              f"the separator {separator}")
    over = np.nonzero(tokens >= vocab_size)[0]
    if len(over):
        raise ShardCheckError(f"{name}: token {int(over[0])} is id {int(tokens[over[0]])}, outside the vocabulary "
                              f"of {vocab_size}")
    return {"documents": table.num_rows, "tokens": len(tokens)}


TOKEN_MANIFEST = "_tokens.json"


def split_of(shard_name: str) -> str:
    """'part-00003-train.arrow' -> 'train'."""
    return shard_name.rsplit("-", 1)[-1].split(".", 1)[0]


def write_token_manifest(out_dir: Path, files: list[Any], *, tokenizer: Path, vocab_size: int, separator_id: int,
                         encoder: str, tokenizer_sha256: str, mixture: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``_tokens.json`` for the shards ``files`` (ShardFile: name, rows, sha256) of a token dataset."""
    from tasks.shards import atomic_write_json

    splits: dict[str, dict[str, Any]] = {}
    for f in sorted(files, key=lambda f: f.name):
        tokens, _, table = read_token_shard(Path(out_dir) / f.name)
        split = splits.setdefault(split_of(f.name), {"docs": 0, "tokens": 0, "bytes": 0, "shards": []})
        shard = {"name": f.name, "docs": table.num_rows, "tokens": len(tokens),
                 "bytes": int(pc.sum(table["bytes"]).as_py() or 0), "sha256": f.sha256}
        split["shards"].append(shard)
        for k in ("docs", "tokens", "bytes"):
            split[k] += shard[k]
    manifest = {"tokenizer": os.path.relpath(tokenizer, out_dir), "tokenizer_sha256": tokenizer_sha256,
                "vocab_size": vocab_size, "dtype": str(token_dtype(vocab_size)), "separator_id": separator_id,
                "encoder": encoder, "splits": splits}
    if mixture is not None:  # per source: tokens, docs, target_share, epochs, tokens_used, share (tasks.mixture)
        manifest["mixture"] = mixture
    atomic_write_json(Path(out_dir) / TOKEN_MANIFEST, manifest)
    return manifest


def read_token_manifest(dataset_dir: Path) -> dict[str, Any]:
    path = Path(dataset_dir) / TOKEN_MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{dataset_dir} is not a finished token dataset: {TOKEN_MANIFEST} is missing") from None


def check_token_manifest(dataset_dir: Path, files: list[Any]) -> list[dict[str, Any]]:
    """Check every shard against ``_tokens.json`` and the dataset manifest's ``files``; ShardCheckError if not."""
    manifest = read_token_manifest(dataset_dir)
    listed = {s["name"]: s for split in manifest["splits"].values() for s in split["shards"]}
    if set(listed) != {f.name for f in files}:
        raise ShardCheckError(f"{TOKEN_MANIFEST} lists {sorted(listed)} but the dataset holds "
                              f"{sorted(f.name for f in files)}")
    tokenizer = Path(dataset_dir) / manifest["tokenizer"]
    with open(tokenizer, "rb") as fh:
        if hashlib.file_digest(fh, "sha256").hexdigest() != manifest["tokenizer_sha256"]:
            raise ShardCheckError(f"{tokenizer.name}: sha256 does not match {TOKEN_MANIFEST}")
    if manifest["dtype"] != str(token_dtype(manifest["vocab_size"])):
        raise ShardCheckError(f"{TOKEN_MANIFEST}: dtype {manifest['dtype']} does not fit a vocabulary of "
                              f"{manifest['vocab_size']}")
    rows = []
    for f in files:
        found = check_token_shard(Path(dataset_dir) / f.name, vocab_size=manifest["vocab_size"],
                                  separator=manifest["separator_id"], sha256=f.sha256)
        want = listed[f.name]
        if (found["documents"], found["tokens"]) != (want["docs"], want["tokens"]) or want["sha256"] != f.sha256:
            raise ShardCheckError(f"{f.name}: holds {found['documents']} documents and {found['tokens']} tokens but "
                                  f"{TOKEN_MANIFEST} says {want['docs']} and {want['tokens']}")
        rows.append({"shard": f.name, **found})
    return rows
