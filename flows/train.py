"""The train stage's flow part: launch torchrun, stream its log, ingest metrics and checkpoints into the warehouse.

The training processes never open the warehouse (DuckDB allows one writer, and it is this process): rank 0 writes
files, and this module records them once torchrun exits. A nonzero exit fails the stage with the log's last lines.
"""
from __future__ import annotations

import collections
import hashlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.config import Config, stable_hash
from tasks.procs import spawn, stop
from tasks.train import TrainStage
from warehouse.lineage import Warehouse


class TrainFailed(RuntimeError):
    """torchrun (training or evaluation) exited nonzero; the message holds the error or the end of its log."""


@task(name="torchrun", task_run_name="{label} x{nproc}", cache_policy=NO_CACHE)
def torchrun_task(command: list[str], env: dict[str, str], log_file: str, nproc: int, label: str = "train") -> None:
    """Run torchrun, echoing every line to the flow log and to ``log_file``; fail on a nonzero exit."""
    from flows.stages import say

    tail: collections.deque[str] = collections.deque(maxlen=30)
    errors: list[str] = []  # model/train.py's own "error: ..." lines (bad data, bad arguments)
    with open(log_file, "a") as log:
        # Its own session (Ctrl-C reaches only crucible, which stops it below) and it dies with crucible.
        proc = spawn(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        try:
            for line in proc.stdout:
                log.write(line)
                tail.append(line.rstrip())
                if line.startswith("error:"):
                    errors.append(line.rstrip())
                say(f"{label}: {line.rstrip()}")
            code = proc.wait()
        finally:
            if proc.poll() is None:  # the flow was cancelled or interrupted: stop the ranks too
                stop(proc, grace_s=30)
    if code != 0:
        if errors:
            raise TrainFailed(f"{label} failed: {errors[0][len('error: '):]} (log: {log_file})")
        raise TrainFailed(f"torchrun exited with {code}; the log ends:\n" + "\n".join(tail))


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def record_checkpoints(wh: Warehouse, stage: TrainStage, key: str, out_dir: Path, parent: str,
                       stage_run_id: str) -> dict[str, Any]:
    """Each checkpoint on disk becomes a dataset whose parent is the token dataset; the final one carries the key."""
    final = stage.finished(out_dir)
    last = None
    for ckpt in stage.checkpoints(out_dir):
        is_final = final is not None and ckpt["name"] == final["checkpoint"]
        fp = stable_hash({"step": ckpt["step"], "tokens": ckpt["tokens"], "model": _sha256(ckpt["path"] / "model.pt")})
        dataset_id = f"checkpoint-{key[:12]}-{ckpt['step']:07d}"
        wh.record_dataset(dataset_id=dataset_id, stage="train", stage_key=key if is_final else None,
                          uri=str(ckpt["path"]), format="checkpoint", fingerprint=fp, files=ckpt["files"],
                          parents=[parent], created_by=stage_run_id, tokens=ckpt["tokens"])
        last = dataset_id
    if last is None:
        raise TrainFailed(f"training left no checkpoint in {out_dir / 'checkpoints'}")
    return wh.dataset(f"checkpoint-{key[:12]}-{final['step']:07d}" if final else last)


def start_stage_run(wh: Warehouse, stage: Any, run_id: str, upstream: dict[str, Any] | None, out_root: Path,
                    extra_key: dict[str, Any] | None = None) -> tuple[str, str, float, Path]:
    """Check that upstream is the stage's input, key the stage (config, code, input, ``extra_key``) and record
    its stage run, writing to ``out_root/<key>``; returns (key, stage_run_id, start time, output directory)."""
    from flows.stages import StageFailed

    if upstream is None or upstream["stage"] != stage.upstream:
        got = upstream["dataset_id"] if upstream else "nothing"
        raise StageFailed(f"stage {stage.name} reads a {stage.upstream} dataset, got {got}")
    params = stage.config.model_dump(mode="json")
    key = stable_hash({"stage": stage.name, "config": params, "code": stage.code_version(),
                       "input": upstream["fingerprint"], **(extra_key or {})})
    stage_run_id = wh.start_stage(run_id=run_id, stage=stage.name, stage_key=key, params=params,
                                  params_hash=stable_hash(params), code_version=stage.code_version(),
                                  input_dataset_ids=[upstream["dataset_id"]], out_dir=out_root / key[:16])
    return key, stage_run_id, time.perf_counter(), out_root / key[:16]


def cached_or_prepared(wh: Warehouse, stage: Any, key: str, out_dir: Path,
                       upstream: dict[str, Any]) -> tuple[dict[str, Any] | None, Path]:
    """(recorded dataset, args.json) for a finished run with this key on disk; else (None, args.json written)."""
    from flows.stages import say

    hit = wh.dataset_by_key(key)
    if hit is not None and stage.finished(out_dir) is not None:
        say(f"{stage.name}: cache hit {hit['dataset_id']}")
        return hit, out_dir / "args.json"
    out_dir.mkdir(parents=True, exist_ok=True)
    args_file = out_dir / "args.json"
    args_file.write_text(json.dumps(stage.args(Path(upstream["uri"]), out_dir), indent=1))
    return None, args_file


def run_train(cfg: Config, stage: TrainStage, run_id: str, wh: Warehouse, upstream: dict[str, Any]) -> dict[str, Any]:
    from flows.stages import _failure_recorded, _finish_cache_hit, say

    key, stage_run_id, t0, out_dir = start_stage_run(wh, stage, run_id, upstream, cfg.work_dir / "train")
    with _failure_recorded(wh, stage_run_id, t0):
        hit, args_file = cached_or_prepared(wh, stage, key, out_dir, upstream)
        if hit is not None:
            return _finish_cache_hit(wh, stage_run_id, hit, t0)
        nproc = stage.nproc()
        if stage.finished(out_dir) is None:
            say(f"train: {nproc} process(es) on {upstream['dataset_id']}, writing {out_dir}")
            torchrun_task(stage.command(args_file), stage.environment(), str(out_dir / "train.log"), nproc, "train")
        metrics = stage.read_metrics(out_dir)
        final = stage.finished(out_dir) or {}
        summary = {"steps": final.get("step"), "tokens_seen": final.get("tokens"), "seconds": final.get("seconds"),
                   **{f"final_{k}": v for k, v in (final.get("val") or {}).items()}}
        metrics += [(None, f"train.{k}", float(v)) for k, v in summary.items() if isinstance(v, (int, float))]
        wh.record_metrics(run_id, metrics, stage_run_id=stage_run_id)
        result = record_checkpoints(wh, stage, key, out_dir, upstream["dataset_id"], stage_run_id)
        wh.finish_stage(stage_run_id, status="completed", output_dataset_id=result["dataset_id"], units=nproc,
                        shards_out=len(stage.checkpoints(out_dir)), bytes_out=result["bytes"],
                        seconds=time.perf_counter() - t0)
        val = final.get("val") or {}
        say(f"train: {final.get('step')} steps, {final.get('tokens', 0):,} tokens"
            + (f", val loss {val['val_loss']:.4f}, bpb {val['val_bpb']:.4f}" if val else "")
            + f"; checkpoint {result['dataset_id']}")
        return result
