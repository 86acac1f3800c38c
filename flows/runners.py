"""The task runner named in config: threads (default), processes, or Dask (a LocalCluster or a scheduler address)."""
from __future__ import annotations

from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

from tasks.config import RunnerConfig


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
