"""Provenance queries: exactly which documents trained a checkpoint, and which checkpoints a document trained.

A checkpoint dataset lists, among its files, the Parquet file of the documents that trained it
(``provenance-<checkpoint>.parquet``: doc_id, split, times_seen, tokens_seen, tokens, source, repeats;
tasks/provenance.py). The
documents' sources come from the collection dataset (the one a stage with role "collection" made) in that
checkpoint's own lineage, never from a later run's, so a rerun of any stage leaves an older checkpoint's answer as
it was. Read-only: these work while a pipeline runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from warehouse.lineage import Warehouse, WarehouseError
from warehouse.sql import literal_list

PREFIX = "provenance-"
SOURCE_COLUMNS = ("url", "warc_file", "warc_offset", "record_id", "fetch_time")


def provenance_file(wh: Warehouse, checkpoint_id: str) -> Path:
    """The checkpoint's list of the documents that trained it; a WarehouseError says why there is none."""
    found = wh.dataset(checkpoint_id)
    if found is None or found["format"] != "checkpoint":
        raise WarehouseError(f"{checkpoint_id!r} is not a checkpoint dataset (see `crucible lineage RUN`)")
    for f in wh.dataset_files(checkpoint_id):
        if Path(f["path"]).name.startswith(PREFIX):
            if not Path(f["path"]).is_file():
                raise WarehouseError(f"{checkpoint_id}: its provenance file {f['path']} is gone")
            return Path(f["path"])
    raise WarehouseError(f"{checkpoint_id} has no provenance record (it was trained before Crucible kept one)")


def _collection_files(wh: Warehouse, dataset_ids: list[str]) -> list[str]:
    """The Parquet shards of the collection datasets among ``dataset_ids`` that are still on disk."""
    if not dataset_ids:
        return []
    marks = ", ".join("?" for _ in dataset_ids)
    rows = wh.query(
        f"SELECT f.path FROM datasets d JOIN stage_runs s ON s.stage_run_id = d.created_by "
        f"JOIN dataset_files f ON f.dataset_id = d.dataset_id "
        f"WHERE d.dataset_id IN ({marks}) AND s.role = 'collection' AND d.format = 'parquet' ORDER BY f.path",
        dataset_ids)
    return [r["path"] for r in rows if r["path"].endswith(".parquet") and Path(r["path"]).is_file()]


def checkpoint_documents(wh: Warehouse, checkpoint_id: str, *, limit: int | None = None,
                         seen_only: bool = False) -> dict[str, Any]:
    """The documents of a checkpoint's token dataset with their split, times seen and source, and its stage chain.

    Returns {"chain": lineage rows, "summary": per split counts, "documents": rows (most seen first)}."""
    prov = provenance_file(wh, checkpoint_id)
    chain = wh.lineage(checkpoint_id)
    sources = _collection_files(wh, [r["dataset_id"] for r in chain])
    where = "WHERE p.times_seen > 0" if seen_only else ""
    with wh.connect(read_only=True) as con:
        summary = [dict(zip(("split", "documents", "seen", "times_seen", "tokens_seen"), r)) for r in con.execute(
            f"SELECT split, count(*), count(*) FILTER (WHERE times_seen > 0), sum(times_seen), sum(tokens_seen) "
            f"FROM read_parquet({literal_list([prov])}) GROUP BY split ORDER BY split DESC").fetchall()]
        have = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet({literal_list(sources)})").fetchall()} \
            if sources else set()  # an ingest dataset made before record_id was kept has no such column
        picked = ", ".join(c if c in have else f"NULL AS {c}" for c in SOURCE_COLUMNS)
        join = (f"LEFT JOIN (SELECT doc_id, {picked} FROM read_parquet({literal_list(sources)})) s "
                f"USING (doc_id)" if sources else "")
        columns = ", ".join(f"s.{c}" if sources else f"NULL AS {c}" for c in SOURCE_COLUMNS)
        mine = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet({literal_list([prov])})").fetchall()}
        mixed = ", ".join(f"p.{c}" if c in mine else f"NULL AS {c}" for c in ("source", "repeats"))
        cur = con.execute(
            f"SELECT p.doc_id, p.split, {mixed}, p.times_seen, p.tokens_seen, p.tokens, {columns} "
            f"FROM read_parquet({literal_list([prov])}) p {join} {where} "
            f"ORDER BY p.split DESC, p.times_seen DESC, p.doc_id" + (f" LIMIT {int(limit)}" if limit else ""))
        documents = Warehouse._rows(cur)
    return {"chain": chain, "summary": summary, "documents": documents, "file": str(prov)}


def checkpoints_trained_on(wh: Warehouse, *, doc_id: str | None = None, url: str | None = None,
                           doc_ids: list[str] | None = None) -> list[dict[str, Any]]:
    """Every recorded checkpoint whose training saw the document (by id, or every document fetched from ``url``),
    or that held it out for validation: checkpoint, run, doc_id, split, times_seen, tokens_seen; newest first."""
    files = {}
    for r in wh.query("SELECT f.dataset_id, f.path FROM dataset_files f JOIN datasets d USING (dataset_id) "
                      "WHERE d.format = 'checkpoint'"):
        if Path(r["path"]).name.startswith(PREFIX) and Path(r["path"]).is_file():
            files[r["path"]] = r["dataset_id"]
    if not files:
        return []
    ids = ([doc_id] if doc_id else []) + list(doc_ids or [])
    if url:
        everything = [r["dataset_id"] for r in wh.query(
            "SELECT d.dataset_id FROM datasets d JOIN stage_runs s ON s.stage_run_id = d.created_by "
            "WHERE s.role = 'collection' AND d.format = 'parquet'")]
        sources = _collection_files(wh, everything)
        with wh.connect(read_only=True) as con:
            ids += [r[0] for r in con.execute(
                f"SELECT DISTINCT doc_id FROM read_parquet({literal_list(sources)}) WHERE url = ?", [url]).fetchall()] \
                if sources else []
    if not ids:
        return []
    marks = ", ".join("?" for _ in ids)
    with wh.connect(read_only=True) as con:
        rows = Warehouse._rows(con.execute(
            f"SELECT filename AS file, doc_id, split, times_seen, tokens_seen FROM "
            f"read_parquet({literal_list(list(files))}, filename = true) WHERE doc_id IN ({marks}) "
            f"AND (times_seen > 0 OR split = 'val')", ids))
    made = {r["dataset_id"]: r for r in wh.query(
        "SELECT d.dataset_id, d.created_at, s.run_id FROM datasets d LEFT JOIN stage_runs s "
        "ON s.stage_run_id = d.created_by WHERE d.format = 'checkpoint'")}
    out = []
    for r in rows:
        checkpoint = files[r.pop("file")]
        out.append({"checkpoint": checkpoint, "run_id": made.get(checkpoint, {}).get("run_id"), **r})
    return sorted(out, key=lambda r: (str(made.get(r["checkpoint"], {}).get("created_at")), r["checkpoint"]),
                  reverse=True)


def item_provenance(wh: Warehouse, task: str, item: int) -> dict[str, Any]:
    """A benchmark item: the documents each decontaminate run found it in (with score, segment and source), and
    every checkpoint that trained on one of them, where it counts as contaminated in that checkpoint's evaluation
    (EvaluateStage.contamination_split uses the same rule)."""
    found = wh.query("SELECT h.stage_run_id, h.doc_id, h.score, h.segment, h.ngram, s.run_id FROM contamination_hits h "
                     "JOIN stage_runs s USING (stage_run_id) WHERE h.task = ? AND h.item = ? "
                     "ORDER BY s.started_at DESC, h.doc_id", [task, item])
    documents = {r["doc_id"] for r in found}
    checkpoints = []
    for r in checkpoints_trained_on(wh, doc_ids=sorted(documents)) if documents else []:
        if r["times_seen"] > 0:
            checkpoints.append(r)
    by_checkpoint: dict[str, dict[str, Any]] = {}
    for r in checkpoints:
        c = by_checkpoint.setdefault(r["checkpoint"], {"checkpoint": r["checkpoint"], "run_id": r["run_id"],
                                                       "documents": 0, "times_seen": 0})
        c["documents"] += 1
        c["times_seen"] += r["times_seen"]
    evaluations = {r["parent_id"]: r["child_id"] for r in wh.query(
        "SELECT e.parent_id, e.child_id FROM dataset_edges e JOIN datasets d ON d.dataset_id = e.child_id "
        "WHERE d.format = 'eval'")}
    for c in by_checkpoint.values():
        c["evaluation"] = evaluations.get(c["checkpoint"])
        c["contaminated_in_evaluation"] = True
    return {"documents": found, "checkpoints": list(by_checkpoint.values())}
