"""Which documents trained a checkpoint: one Parquet file per checkpoint, written when training ends.

For every document of the token dataset the checkpoint was trained on: ``doc_id``, ``split`` (train or val),
``times_seen`` (how many training rows took tokens from it: 0 for a document the run never reached and for every
validation document, more than 1 past an epoch), ``tokens_seen``, ``tokens`` (its length), ``source``, and ``repeats``: how many times one pass over the mixture
uses it (its source's weight at work: 0 for a down-sampled document, 3 for a source trained three epochs). The counts come from
replaying the loader's packing (``model.data.replay_training``) up to the checkpoint's token count, checked against
the loader position the checkpoint saved, so they are exact, not estimated. ``warehouse.lineage`` joins the file
to the checkpoint's own ingest dataset for each document's URL, WARC file and offset (`crucible provenance`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from model.data import replay_training
from tasks.mixture import read_mixture
from tasks.shards import write_parquet_atomic
from tasks.token_shards import read_token_manifest, read_token_shard

SCHEMA = pa.schema([("doc_id", pa.string()), ("split", pa.string()), ("times_seen", pa.int32()),
                    ("tokens_seen", pa.int64()), ("tokens", pa.int64()), ("source", pa.string()),
                    ("repeats", pa.int32())])
PREFIX = "provenance-"


def provenance_path(out_dir: Path, checkpoint: str) -> Path:
    return Path(out_dir) / "provenance" / f"{PREFIX}{checkpoint}.parquet"


def write_provenance(out_dir: Path, checkpoints: list[dict[str, Any]]) -> dict[str, Path]:
    """The provenance file of every checkpoint (``TrainStage.checkpoints``) that has none yet; returns all."""
    out_dir = Path(out_dir)
    missing = [c for c in checkpoints if not provenance_path(out_dir, c["name"]).is_file()]
    if missing:
        states = [json.loads((c["path"] / "state.json").read_text()) for c in missing]
        args = states[0]["args"]
        data_dir = Path(states[0]["data_dir"])
        counts = replay_training(data_dir, seq_len=args["seq_len"], seed=args["seed"],
                                 buffer_docs=args["buffer_docs"],
                                 checkpoints=[(s["tokens"], s["loader"]) for s in states])
        documents = _documents(data_dir)
        order = sorted(range(len(missing)), key=lambda k: states[k]["tokens"])
        for k, used in zip(order, counts):
            times = np.zeros(len(documents["doc_id"]), dtype=np.int32)
            seen = np.zeros(len(documents["doc_id"]), dtype=np.int64)
            for (shard, doc), (n, t) in used.items():
                row = documents["train_start"][shard] + doc
                times[row], seen[row] = n, t
            table = pa.table({"doc_id": documents["doc_id"], "split": documents["split"], "times_seen": times,
                              "tokens_seen": seen, "tokens": documents["tokens"], "source": documents["source"],
                              "repeats": documents["repeats"]}, schema=SCHEMA)
            write_parquet_atomic(table, provenance_path(out_dir, missing[k]["name"]))
    return {c["name"]: provenance_path(out_dir, c["name"]) for c in checkpoints}


def _documents(data_dir: Path) -> dict[str, Any]:
    """Every document of the token dataset in the loader's numbering: the train split's shards in manifest order
    (shard i starts at row ``train_start[i]``), then the validation split's."""
    manifest = read_token_manifest(data_dir)
    mixture = read_mixture(data_dir)
    ids: list[str] = []
    splits: list[str] = []
    sources: list[str | None] = []
    lengths: list[np.ndarray] = []
    repeats: list[np.ndarray] = []
    starts: list[int] = []
    for split in ("train", "val"):
        for shard in (manifest["splits"].get(split) or {}).get("shards", []):
            _, offsets, table = read_token_shard(data_dir / shard["name"])
            if split == "train":
                starts.append(len(ids))
                repeats.append(mixture[shard["name"]] if mixture is not None else np.ones(table.num_rows, np.int64))
            else:
                repeats.append(np.zeros(table.num_rows, np.int64))
            ids += table.column("doc_id").to_pylist()
            splits += [split] * table.num_rows
            sources += table.column("source").to_pylist() if "source" in table.column_names else [None] * table.num_rows
            lengths.append(np.diff(offsets))
    return {"doc_id": ids, "split": splits, "tokens": np.concatenate(lengths) if lengths else np.empty(0, np.int64),
            "train_start": starts, "source": sources,
            "repeats": np.concatenate(repeats).astype(np.int32) if repeats else np.empty(0, np.int32)}
