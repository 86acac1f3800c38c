"""The evaluate stage's flow part: run model/evaluate.py under torchrun on a checkpoint and record the results.

Recorded: CORE-7, per-task accuracy and centered accuracy, val bits per byte and perplexity (metrics); the
per-item records (``eval_items`` and a dataset whose parent is the checkpoint); and accuracy on clean and on
contaminated items, where "contaminated" means the decontaminate stage upstream of this checkpoint found the item
in the crawl (``contamination_hits``). That split needs both stages to have read the same benchmark directory;
otherwise it is reported as not checked.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from tasks.evalsets import benchmark_files
from tasks.config import Config, stable_hash
from tasks.evaluate import EvaluateStage
from warehouse.lineage import Warehouse


def _benchmarks_fingerprint(directory: Path) -> str:
    digest = hashlib.sha256()
    for f in benchmark_files(directory):
        digest.update(f.name.encode())
        digest.update(hashlib.sha256(f.read_bytes()).digest())
    return digest.hexdigest()


def _decontaminate_run(wh: Warehouse, checkpoint_id: str) -> dict[str, Any] | None:
    """The decontaminate stage run that made the data this checkpoint was trained on."""
    for row in wh.lineage(checkpoint_id):
        if row.get("stage") == "decontaminate":
            return wh.origin_stage_run(row["dataset_id"])
    return None


def contamination_split(wh: Warehouse, stage_run_id: str, checkpoint_id: str,
                        benchmarks_dir: Path) -> list[tuple[int | None, str, float]]:
    """accuracy_clean / accuracy_contaminated / contaminated_items per task, or nothing when not comparable."""
    origin = _decontaminate_run(wh, checkpoint_id)
    if origin is None:
        return []
    params = json.loads(origin["params_json"])
    if Path(params.get("benchmarks_dir") or "").resolve() != Path(benchmarks_dir).resolve():
        return []
    rows = wh.query(
        "SELECT e.task, h.item IS NOT NULL AS contaminated, count(*) AS n, avg(e.correct::INT) AS acc "
        "FROM eval_items e LEFT JOIN (SELECT DISTINCT task, item FROM contamination_hits WHERE stage_run_id = ?) h "
        "  ON h.task = e.task AND h.item = e.item "
        "WHERE e.stage_run_id = ? GROUP BY ALL", [origin["stage_run_id"], stage_run_id])
    out: list[tuple[int | None, str, float]] = []
    tasks = {r["task"] for r in rows}
    for task in tasks:
        by = {r["contaminated"]: r for r in rows if r["task"] == task}
        out.append((None, f"evaluate.contaminated_items.{task}", float(by[True]["n"]) if True in by else 0.0))
        if False in by:
            out.append((None, f"evaluate.accuracy_clean.{task}", float(by[False]["acc"])))
        if True in by:
            out.append((None, f"evaluate.accuracy_contaminated.{task}", float(by[True]["acc"])))
    return out


def run_evaluate(cfg: Config, stage: EvaluateStage, run_id: str, wh: Warehouse,
                 upstream: dict[str, Any]) -> dict[str, Any]:
    from flows.stages import StageFailed, _failure_recorded, _finish_cache_hit, say
    from flows.train import cached_or_prepared, start_stage_run, torchrun_task

    benchmarks = Path(stage.config.benchmarks_dir)
    key, stage_run_id, t0, out_dir = start_stage_run(wh, stage, run_id, upstream, cfg.work_dir / "eval",
                                                     {"benchmarks": _benchmarks_fingerprint(benchmarks)})
    with _failure_recorded(wh, stage_run_id, t0):
        hit, args_file = cached_or_prepared(wh, stage, key, out_dir, upstream)
        if hit is not None:
            return _finish_cache_hit(wh, stage_run_id, hit, t0)
        (out_dir / "results.json").unlink(missing_ok=True)  # an evaluation is redone whole; it has no partial state
        nproc = stage.nproc()
        say(f"evaluate: {upstream['dataset_id']} on {benchmarks}, {nproc} process(es)")
        torchrun_task(stage.command(args_file), stage.environment(), str(out_dir / "evaluate.log"), nproc,
                      "evaluate")
        results = stage.finished(out_dir)
        if results is None:
            raise StageFailed(f"evaluate ended without writing {out_dir / 'results.json'}")
        items = wh.load_records("eval_items", stage_run_id, out_dir / "items.parquet")
        metrics = stage.metrics(results) + contamination_split(wh, stage_run_id, upstream["dataset_id"], benchmarks)
        wh.record_metrics(run_id, metrics, stage_run_id=stage_run_id)
        files = [out_dir / n for n in ("items.parquet", "results.json", "samples.json")]
        dataset_id = f"eval-{key[:12]}"
        wh.record_dataset(dataset_id=dataset_id, stage="evaluate", stage_key=key, uri=str(out_dir), format="eval",
                          fingerprint=stable_hash([hashlib.sha256(f.read_bytes()).hexdigest() for f in files[:1]]),
                          files=[(str(f), items if f.suffix == ".parquet" else None, f.stat().st_size, None)
                                 for f in files],
                          parents=[upstream["dataset_id"]], created_by=stage_run_id)
        wh.finish_stage(stage_run_id, status="completed", output_dataset_id=dataset_id, units=nproc,
                        shards_out=len(files), docs_in=items, docs_out=items,
                        bytes_out=sum(f.stat().st_size for f in files), seconds=time.perf_counter() - t0)
        core = results.get("core7")
        say(f"evaluate: {items} items" + (f", CORE-7 {core:+.4f}" if core is not None else "")
            + (f", val bpb {results['val']['val_bpb']:.4f}" if results.get("val") else ""))
        return wh.dataset(dataset_id)
