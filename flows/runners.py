"""The task runner named in config: threads (default), processes, or Dask (a LocalCluster or a scheduler address).

Workers of a Dask cluster at ``runner.address`` read and write the work directory themselves, so it must be on a
filesystem they share with the orchestrator, at the same path. ``check_workers_see`` asks every worker before a
stage's units go out, so a worker that cannot see it is named in one clear error instead of a FileNotFoundError
deep inside a unit.
"""
from __future__ import annotations

import uuid
from pathlib import Path

from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

from tasks.config import ConfigError, RunnerConfig


def task_runner(cfg: RunnerConfig) -> TaskRunner:
    if cfg.kind == "threads":
        return ThreadPoolTaskRunner(max_workers=cfg.workers)
    if cfg.kind == "processes":
        return ProcessPoolTaskRunner(max_workers=cfg.workers)
    from prefect_dask import DaskTaskRunner

    if cfg.address:
        return DaskTaskRunner(address=cfg.address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": cfg.workers, "threads_per_worker": cfg.threads_per_worker,
                                          "processes": True, "dashboard_address": None})


def _probe(path: str, token: str) -> str | None:
    """On a worker: None when it reads ``token`` from ``path`` and can write beside it, else what went wrong."""
    import os
    import socket

    try:
        with open(path) as fh:
            if fh.read() != token:
                return f"{path} on {socket.gethostname()} holds something else (another filesystem at that path?)"
        mine = f"{path}.{os.getpid()}"
        with open(mine, "w") as fh:
            fh.write(token)
        os.unlink(mine)
    except OSError as err:
        return f"{type(err).__name__}: {err} (on {socket.gethostname()}, pid {os.getpid()})"
    return None


def check_workers_see(address: str, work_dir: Path, timeout_s: float = 30.0) -> int:
    """Every worker of the Dask cluster at ``address`` reads a file this process just wrote in ``work_dir`` and
    writes one beside it; returns how many workers answered. Raises ConfigError naming each worker that cannot."""
    from distributed import Client

    work_dir = Path(work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    probe = work_dir / f".crucible-probe-{token}"
    probe.write_text(token)
    try:
        with Client(address, timeout=timeout_s) as client:
            if not client.scheduler_info(n_workers=-1).get("workers"):
                client.wait_for_workers(1, timeout=timeout_s)
            answers = client.run(_probe, str(probe), token)
            names = {a: str(w.get("name", a)) for a, w in client.scheduler_info(n_workers=-1)["workers"].items()}
    except (OSError, TimeoutError) as err:
        raise ConfigError(f"runner.address {address}: no Dask scheduler with workers answered ({err})") from None
    finally:
        probe.unlink(missing_ok=True)
    blind = {worker: why for worker, why in sorted(answers.items()) if why}
    if blind:
        named = "; ".join(f"worker {names.get(worker, worker)} ({worker}): {why}" if names.get(worker, worker) != worker
                          else f"worker {worker}: {why}" for worker, why in blind.items())
        raise ConfigError(f"{len(blind)} of {len(answers)} Dask workers cannot use the work directory {work_dir}: "
                          f"{named}. Workers read and write it themselves: put it on a filesystem they share with "
                          f"this machine (NFS, a shared volume), mounted at the same path.")
    return len(answers)
