"""Everything a run's report shows, read from the warehouse (read-only) and the datasets it points to.

``report_data(wh, run_id)`` returns plain JSON-able data; ``tasks.report`` turns it into Markdown and HTML and never
touches DuckDB. A stage that was a cache hit reports the figures of the run that computed its dataset.
"""
from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from warehouse.lineage import Warehouse
from warehouse.sources import source_overview
from warehouse.sql import literal_list

LIBRARIES = ("prefect", "duckdb", "pyarrow", "trafilatura", "langid", "datasketch", "tokenizers", "tiktoken",
             "torch", "numpy")


def _origin(wh: Warehouse, stage_run: dict[str, Any]) -> dict[str, Any]:
    if not stage_run.get("cache_hit") or not stage_run.get("output_dataset_id"):
        return stage_run
    return wh.origin_stage_run(stage_run["output_dataset_id"]) or stage_run


def environment() -> dict[str, Any]:
    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            versions[lib] = None
    hw = {"machine": platform.machine(), "system": f"{platform.system()} {platform.release()}",
          "python": sys.version.split()[0], "cpus": os.cpu_count()}
    try:
        import torch

        if torch.cuda.is_available():
            hw["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    return {"hardware": hw, "libraries": versions}


def report_data(wh: Warehouse, run_id: str) -> dict[str, Any]:
    run = wh.resolve_run(run_id)
    run_id = run["run_id"]
    stages = wh.stage_runs(run_id)
    by_role = {s["role"]: s for s in stages if s["status"] == "completed" and s.get("role")}
    facts: dict[str, float] = {f["name"]: f["value"] for f in wh.stage_facts(run_id)}
    data: dict[str, Any] = {
        "run": {k: run.get(k) for k in ("run_id", "trigger", "status", "started_at", "ended_at", "code_version",
                                        "config_hash", "config_path", "host")},
        "config": json.loads(run["config_json"]) if run.get("config_json") else {},
        "stages": [{k: s.get(k) for k in ("stage", "status", "cache_hit", "docs_in", "docs_out", "bytes_in",
                                          "bytes_out", "seconds", "output_dataset_id", "error")} for s in stages],
        "funnel": wh.funnel(run_id), "facts": facts, "environment": environment(),
        "source_overview": source_overview(wh, run_id),
    }
    with wh.connect(read_only=True) as con:
        def files(role: str) -> list[str]:
            ds = by_role.get(role, {}).get("output_dataset_id")
            if not ds:
                return []
            found = [r[0] for r in con.execute("SELECT path FROM dataset_files WHERE dataset_id = ? ORDER BY path",
                                               [ds]).fetchall()]
            return [f for f in found if f.endswith(".parquet") and Path(f).exists()]

        lang_files = files("languages")
        if lang_files:
            data["languages"] = [dict(zip(("lang", "docs"), r)) for r in con.execute(
                f"SELECT lang, count(*) FROM read_parquet({literal_list(lang_files)}) GROUP BY 1 ORDER BY 2 DESC"
            ).fetchall()]
        ingest_files = files("collection")
        if ingest_files:
            lo, hi, hosts = con.execute(
                f"SELECT min(fetch_time), max(fetch_time), count(DISTINCT regexp_extract(url, '://([^/]+)', 1)) "
                f"FROM read_parquet({literal_list(ingest_files)})").fetchone()
            data["collection"] = {"first_fetch": str(lo), "last_fetch": str(hi), "hosts": hosts}
        dedup = by_role.get("duplicates")
        if dedup and dedup.get("output_dataset_id"):
            uri = con.execute("SELECT uri FROM datasets WHERE dataset_id = ?", [dedup["output_dataset_id"]]).fetchone()
            manifest = Path(uri[0]) / "_dataset.json" if uri else None
            drops = [str(Path(uri[0]) / f) for f in json.loads(manifest.read_text())["drops_files"]] \
                if manifest and manifest.exists() else []
            drops = [f for f in drops if Path(f).exists()]
            segments = Path(uri[0]) / "removed_segments.parquet" if uri else None
            if segments is not None and segments.exists():  # segment-level dedup's most repeated segments
                data["removed_segments"] = [dict(zip(("docs", "removed_from", "text"), r)) for r in con.execute(
                    f"SELECT docs, removed_from, text FROM read_parquet({literal_list([str(segments)])}) "
                    f"ORDER BY docs DESC").fetchall()]
            if drops:
                data["dedup_clusters"] = [dict(zip(("size", "clusters"), r)) for r in con.execute(
                    f"SELECT size, count(*) FROM (SELECT detail, count(*) + 1 AS size FROM "
                    f"read_parquet({literal_list(drops)}) WHERE reason LIKE '%duplicate%' GROUP BY detail) "
                    f"GROUP BY 1 ORDER BY 1").fetchall()]
        train = by_role.get("training")
        if train:
            origin = _origin(wh, train)
            rows = con.execute("SELECT step, name, value FROM metrics WHERE stage_run_id = ? AND step IS NOT NULL "
                               "ORDER BY step", [origin["stage_run_id"]]).fetchall()
            curves: dict[str, list[tuple[int, float]]] = {}
            for step, name, value in rows:
                curves.setdefault(name.split(".", 1)[1], []).append((step, value))
            data["training"] = curves
            data["checkpoint"] = train.get("output_dataset_id")
        evaluate = by_role.get("evaluation")
        if evaluate and evaluate.get("output_dataset_id"):
            uri = con.execute("SELECT uri FROM datasets WHERE dataset_id = ?",
                              [evaluate["output_dataset_id"]]).fetchone()
            if uri:
                for name in ("results", "samples"):
                    path = Path(uri[0]) / f"{name}.json"
                    if path.exists():
                        data[name] = json.loads(path.read_text())
    final = by_role.get("evaluation") or by_role.get("training") or (stages[-1] if stages else None)
    if final and final.get("output_dataset_id"):
        data["lineage"] = [{k: r.get(k) for k in ("depth", "dataset_id", "stage", "format", "fingerprint", "records",
                                                  "bytes", "shards")}
                           for r in wh.lineage(final["output_dataset_id"])]
        source = next((r for r in wh.lineage(final["output_dataset_id"]) if r["format"] == "warc"), None)
        if source:
            data["sources"] = [f["path"] for f in wh.dataset_files(source["dataset_id"])]
    return data
