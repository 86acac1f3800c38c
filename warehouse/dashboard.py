"""What the dashboard shows, read from the warehouse.

Every read here opens the file read-only for one query and closes it again (``Warehouse.query``), so the pipeline's
writer, which waits for the lock and retries, is never held up for more than a few milliseconds. Training's live
curves are not here: while the train stage runs its figures are only in its ``metrics.jsonl`` (flows/dashboard.py
reads that file from the stage run's ``out_dir``).
"""
from __future__ import annotations

import json
from typing import Any

from warehouse.lineage import Warehouse
from warehouse.sources import source_overview

STAGE_COLUMNS = ("stage_run_id", "stage", "status", "cache_hit", "units", "units_resumed", "docs_in", "docs_out",
                 "bytes_in", "bytes_out", "seconds", "started_at", "ended_at", "error", "output_dataset_id",
                 "out_dir", "input_dataset_ids", "role")


def _marks(values: list[Any]) -> str:
    return ", ".join("?" for _ in values)


def runs_overview(wh: Warehouse, limit: int = 30) -> list[dict[str, Any]]:
    """The latest runs, newest first, each with its planned stages and the status of each so far."""
    runs = wh.present(wh.query("SELECT run_id, flow_run_id, trigger, status, started_at, ended_at, stages, error, "
                               "config_path FROM pipeline_runs ORDER BY started_at DESC LIMIT ?", [limit]))
    if not runs:
        return []
    ids = [r["run_id"] for r in runs]
    progress: dict[str, dict[str, str]] = {}
    for row in wh.present(wh.query(f"SELECT run_id, stage, status, cache_hit FROM stage_runs "
                                   f"WHERE run_id IN ({_marks(ids)}) ORDER BY started_at", ids)):
        status = "cached" if row["cache_hit"] and row["status"] == "completed" else row["status"]
        progress.setdefault(row["run_id"], {})[row["stage"]] = status
    for run in runs:
        done = progress.get(run["run_id"], {})
        run["stage_status"] = {s: done.get(s, "pending") for s in (run["stages"] or [])}
        run["stage_status"].update({s: v for s, v in done.items() if s not in run["stage_status"]})
    return runs


def _origin(wh: Warehouse, stage_run: dict[str, Any]) -> dict[str, Any]:
    """A cache hit's figures are those of the stage run that computed its dataset."""
    if stage_run.get("cache_hit") and stage_run.get("output_dataset_id"):
        return wh.origin_stage_run(stage_run["output_dataset_id"]) or stage_run
    return stage_run


def run_snapshot(wh: Warehouse, run_ref: str) -> dict[str, Any]:
    """A run as it stands: its stages, funnel, training curves (once recorded), evaluation and lineage."""
    run = wh.resolve_run(run_ref)
    run_id = run["run_id"]
    stages = wh.present(wh.query(f"SELECT {', '.join(STAGE_COLUMNS)} FROM stage_runs WHERE run_id = ? "
                                 "ORDER BY started_at", [run_id]))
    latest = {s["role"]: s for s in stages if s["role"]}  # a stage retried within a run: its last attempt
    snapshot: dict[str, Any] = {
        "run": {k: run.get(k) for k in ("run_id", "flow_run_id", "trigger", "status", "started_at", "ended_at",
                                        "stages", "error", "config_path", "code_version", "config_hash", "host")},
        "config": json.loads(run["config_json"]) if run.get("config_json") else {},
        "stages": stages,
        "funnel": wh.funnel(run_id),
        "source_overview": source_overview(wh, run_id),
        "training": None, "evaluation": None, "lineage": [], "sources": [],
    }
    train = latest.get("training")
    if train is not None:
        origin = _origin(wh, train)
        curves: dict[str, list[list[float]]] = {}
        for row in wh.query("SELECT step, name, value FROM metrics WHERE stage_run_id = ? AND step IS NOT NULL "
                            "ORDER BY step", [origin["stage_run_id"]]):
            curves.setdefault(row["name"].split(".", 1)[1], []).append([row["step"], row["value"]])
        summary = {r["name"].split(".", 1)[1]: r["value"] for r in wh.query(
            "SELECT name, value FROM metrics WHERE stage_run_id = ? AND step IS NULL", [origin["stage_run_id"]])}
        snapshot["training"] = {"status": train["status"], "stage_run_id": origin["stage_run_id"],
                                "out_dir": origin.get("out_dir") or train.get("out_dir"), "curves": curves,
                                "summary": summary, "checkpoint": train.get("output_dataset_id")}
    evaluate = latest.get("evaluation")
    if evaluate is not None:
        origin = _origin(wh, evaluate)
        figures = {r["name"]: r["value"] for r in wh.query(
            "SELECT name, value FROM metrics WHERE stage_run_id = ? AND step IS NULL", [origin["stage_run_id"]])}
        tasks: dict[str, dict[str, float]] = {}
        overall: dict[str, float] = {}
        for name, value in figures.items():
            parts = name.split(".")
            if len(parts) == 3:
                tasks.setdefault(parts[2], {})[parts[1]] = value
            else:
                overall[parts[-1]] = value
        snapshot["evaluation"] = {"status": evaluate["status"], "dataset_id": evaluate.get("output_dataset_id"),
                                  "tasks": [{"task": t, **v} for t, v in sorted(tasks.items())], **overall}
    head = (train or {}).get("output_dataset_id")
    if head:
        snapshot["lineage"] = [{k: r.get(k) for k in ("depth", "dataset_id", "stage", "format", "fingerprint",
                                                      "records", "bytes", "tokens", "shards", "uri")}
                               for r in wh.lineage(head)]
        source = next((r for r in snapshot["lineage"] if r["format"] == "warc"), None)
        if source:
            snapshot["sources"] = [f["path"] for f in wh.dataset_files(source["dataset_id"])]
    return snapshot
