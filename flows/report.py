"""The report stage's flow part: gather the run from the warehouse, write report.md and report.html, publish a
Prefect markdown artifact, and record the report as a dataset whose parent is the evaluation."""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from tasks.config import Config, stable_hash
from tasks.report import ReportStage, write_report
from warehouse.lineage import Warehouse
from warehouse.report import report_data


def write_run_report(wh: Warehouse, run_id: str, out_dir: Path) -> tuple[Path, Path]:
    """Regenerate the report of any run (also what `crucible report` does)."""
    return write_report(report_data(wh, run_id), out_dir)


def run_report(cfg: Config, stage: ReportStage, run_id: str, wh: Warehouse,
               upstream: dict[str, Any] | None) -> dict[str, Any]:
    from flows.stages import _failure_recorded, say

    params = stage.config.model_dump(mode="json")
    key = stable_hash({"stage": "report", "run": run_id, "code": stage.code_version()})
    t0 = time.perf_counter()
    out_dir = Path(stage.config.dir) / run_id
    stage_run_id = wh.start_stage(run_id=run_id, stage="report", stage_key=key, params=params,
                                  params_hash=stable_hash(params), code_version=stage.code_version(),
                                  input_dataset_ids=[upstream["dataset_id"]] if upstream else [], out_dir=out_dir)
    with _failure_recorded(wh, stage_run_id, t0):
        md, page = write_run_report(wh, run_id, out_dir)
        try:
            from prefect.artifacts import create_markdown_artifact

            create_markdown_artifact(markdown=md.read_text(), key="crucible-report",
                                     description=f"Crucible report for {run_id} (plots in {page})")
        except Exception as err:  # the report files are the product; an artifact the API refuses is not fatal
            say(f"report: no Prefect artifact ({type(err).__name__}: {err})")
        files = [md, page]
        dataset_id = f"report-{run_id.removeprefix('run-')}"
        wh.record_dataset(dataset_id=dataset_id, stage="report", stage_key=key, uri=str(out_dir), format="report",
                          fingerprint=hashlib.sha256(md.read_bytes()).hexdigest(),
                          files=[(str(f), None, f.stat().st_size, None) for f in files],
                          parents=[upstream["dataset_id"]] if upstream else [], created_by=stage_run_id)
        wh.finish_stage(stage_run_id, status="completed", output_dataset_id=dataset_id, units=1, shards_out=2,
                        bytes_out=sum(f.stat().st_size for f in files), seconds=time.perf_counter() - t0)
        say(f"report: {page}")
        return wh.dataset(dataset_id)
