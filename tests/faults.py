"""Fault injection: SIGKILL a real `crucible run` at a random point of a chosen stage, run it again, and compare
every dataset with an uninterrupted run's (tests/flows/test_faults.py and benchmarks/faults.py use it).

The pipeline runs as a child process group against a Prefect API (``api_url``), exactly as a user starts it; the
kill lands a random fraction of the stage's reference duration after the stage's output directory appears.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from warehouse.lineage import Warehouse

REPO = Path(__file__).resolve().parents[1]
KILLABLE = ["ingest", "extract", "language", "quality", "dedup", "decontaminate", "tokenize"]


def write_config(path: Path, work_dir: Path, inputs: str, extra: str = "") -> Path:
    path.write_text(f'[paths]\nwork_dir = "{work_dir}"\n[runner]\nworkers = 2\n'
                    f'[ingest]\ninputs = ["{inputs}"]\nshard_max_docs = 8\n[extract]\nshard_max_docs = 8\n'
                    f'[language]\nshard_max_docs = 8\n[quality]\nshard_max_docs = 8\nc4_drop_curly_bracket = false\n'
                    f'[tokenize]\nshard_max_docs = 8\nval_fraction = 0.1\n{extra}')
    return path


def _command(config: Path) -> list[str]:
    return [sys.executable, "-m", "flows.cli", "run", str(config), "--to", KILLABLE[-1]]


def _env(api_url: str) -> dict[str, str]:
    return {**os.environ, "PREFECT_API_URL": api_url}


def outputs(warehouse: Path) -> dict[str, tuple[str, float]]:
    """stage -> (fingerprint of its output, seconds) for the latest run."""
    wh = Warehouse(warehouse)
    run_id = wh.resolve_run("latest")["run_id"]
    found = {}
    for s in wh.stage_runs(run_id):
        if s["status"] == "completed" and s["output_dataset_id"]:
            found[s["stage"]] = (wh.dataset(s["output_dataset_id"])["fingerprint"], s["seconds"] or 0.0)
    return found


def reference(config: Path, api_url: str) -> dict[str, tuple[str, float]]:
    subprocess.run(_command(config), cwd=REPO, env=_env(api_url), check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=900)
    return outputs(_warehouse(config))


def _warehouse(config: Path) -> Path:
    from tasks.config import load_config

    return load_config(config).warehouse_path


@dataclass
class KillResult:
    stage: str
    seed: int
    delay_s: float
    landed: str            # the stage that was running when the kill arrived ("(done)" if the run had finished)
    resumed_units: int     # units the rerun found finished by the killed attempt
    rerun_s: float
    identical: bool        # every stage's dataset has the reference's fingerprint
    differing: list[str]


def kill_and_rerun(config: Path, stage: str, seed: int, ref: dict[str, tuple[str, float]], api_url: str) -> KillResult:
    rng = random.Random(seed)
    delay = rng.uniform(0.0, 1.0) * max(ref[stage][1], 0.2)
    work = _warehouse(config).parent
    proc = subprocess.Popen(_command(config), cwd=REPO, env=_env(api_url), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    stage_dir = work / "datasets" / stage
    deadline = time.monotonic() + 600
    while not (stage_dir.is_dir() and any(stage_dir.iterdir())):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the run ended (or stalled) before {stage} started")
        time.sleep(0.02)
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    wh = Warehouse(_warehouse(config))
    running = wh.query("SELECT stage FROM stage_runs WHERE status = 'running' ORDER BY started_at DESC LIMIT 1")
    landed = running[0]["stage"] if running else "(done)"

    t0 = time.monotonic()
    subprocess.run(_command(config), cwd=REPO, env=_env(api_url), check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=900)
    rerun_s = time.monotonic() - t0
    got = outputs(_warehouse(config))
    last = wh.resolve_run("latest")["run_id"]
    resumed = sum(s["units_resumed"] or 0 for s in wh.stage_runs(last))
    differing = [s for s in ref if got.get(s, ("?",))[0] != ref[s][0]]
    return KillResult(stage, seed, round(delay, 3), landed, resumed, round(rerun_s, 1), not differing, differing)
