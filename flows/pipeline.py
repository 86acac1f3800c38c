"""The pipeline flow: the stages in order, each a subflow, every run and stage run recorded in the warehouse.

    crucible run configs/demo.toml                  # every stage; unchanged ones are cache hits
    crucible run configs/demo.toml --from extract   # start at extract, on ingest's latest output
    crucible stage extract configs/demo.toml --input latest
"""
from __future__ import annotations

import subprocess
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from prefect import flow
from prefect.runtime import flow_run

from flows.stages import StageFailed, configured, describe_ending, ending_status, say, stage_flow
from tasks import docpool
from tasks.config import Config
from tasks.registry import stage_class
from warehouse.lineage import Warehouse, WarehouseError

TRIGGERS = ("manual", "schedule", "rerun")


def code_version() -> str:
    """The git commit of the checkout (with +dirty for uncommitted changes), or the installed package version."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return f"git:{sha}{'+dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return f"pkg:{metadata.version('crucible')}"


def effective_upstream(cfg: Config, stage: str) -> str | None:
    """The stage whose dataset ``stage`` reads under this config: its upstream, or when that is an optional stage
    switched off (crawl without seeds, select without a filter), the nearest one before it that runs."""
    for name in stage_class(stage).upstreams:
        if configured(cfg, name).enabled:
            return name
    return None


def resolve_input(wh: Warehouse, stage: str, ref: str, cfg: Config | None = None) -> dict[str, Any]:
    """The upstream dataset for a rerun of ``stage``: 'latest', a run id (prefix), or a dataset id. With ``cfg``,
    the upstream is the one that config runs (see ``effective_upstream``); a dataset id may be any stage's that
    ``stage`` can read."""
    cls = stage_class(stage)
    if cls.upstream is None:
        raise WarehouseError(f"stage {stage} has no upstream stage; it takes no --input")
    upstream = (effective_upstream(cfg, stage) if cfg is not None else None) or cls.upstream
    if ref == "latest":
        found = wh.latest_dataset(upstream)
        if found is None:
            raise WarehouseError(f"no completed {upstream} dataset yet: run `crucible run CONFIG --to {upstream}`")
        return found
    found = wh.dataset(ref)
    if found is not None:
        if found["stage"] not in cls.upstreams:
            raise WarehouseError(f"{ref} is a {found['stage']} dataset; {stage} reads a "
                                 f"{' or '.join(cls.upstreams)} dataset")
        return found
    run = wh.resolve_run(ref)
    found = wh.run_dataset(run["run_id"], upstream)
    if found is None:
        raise WarehouseError(f"run {run['run_id']} produced no {upstream} dataset")
    return found


def reads_upstream(cfg: Config, stage: str) -> bool:
    """Whether ``stage`` run alone reads a dataset: not when it has no upstream stage (it reads the web) or when
    every stage it could read is switched off (ingest without crawl.seeds reads only its configured inputs)."""
    return effective_upstream(cfg, stage) is not None


def stage_input(cfg: Config, stage: str, ref: str = "latest") -> dict[str, Any] | None:
    """The dataset a stage started alone reads (see ``resolve_input``), or None where it reads none."""
    if not reads_upstream(cfg, stage):
        return None
    return resolve_input(Warehouse(cfg.warehouse_path, cfg.warehouse.lock_timeout_s), stage, ref, cfg)


@flow(name="crucible-pipeline", validate_parameters=False)
def pipeline_flow(cfg: Config, stages: list[str], trigger: str = "manual",
                  upstream: dict[str, Any] | None = None, recrawl: bool = False) -> str:
    """Run ``stages`` in order, each on the previous one's output (the first on ``upstream``); return the run id.

    A scheduled run always recrawls; otherwise an unchanged crawl is a cache hit unless ``recrawl`` is set.
    """
    wh = Warehouse(cfg.warehouse_path, cfg.warehouse.lock_timeout_s)
    with wh.pipeline_lock(cfg.warehouse.pipeline_wait_s) as claim:
        run_id = wh.start_run(config=cfg.to_dict(), config_hash=cfg.digest(),
                              config_path=str(cfg.source) if cfg.source else None, code_version=code_version(),
                              trigger=trigger, stages=stages, flow_run_id=flow_run.get_id())
        claim(run_id)
        say(f"pipeline run {run_id}: {' -> '.join(stages)}")
        try:
            made = [configured(cfg, name) for name in stages]
            pooled = tuple(type(s).__module__ for s in made if s.enabled and s.uses_docpool)
            if cfg.runner.kind == "threads":
                docpool.configure(cfg.runner.workers, preload=pooled)
                if pooled:
                    docpool.warm()  # its workers start, and import those stages' modules, while the stages before run
                for stage in made:
                    if stage.enabled:
                        stage.warm()  # what its units use starts now (extraction's children), beside earlier stages
            with quiet_subflow():  # once for all stages: each settings copy costs ~0.1 s of pydantic validation
                for name, stage in zip(stages, made):
                    if not stage.enabled:
                        say(f"{name}: skipped ({stage.disabled_because})")
                        continue
                    upstream = stage_flow(cfg, name, run_id, upstream, recrawl=recrawl or trigger == "schedule")
        except BaseException as err:
            wh.finish_run(run_id, ending_status(err), describe_ending(err))
            raise
        wh.finish_run(run_id, "completed")
    return run_id


@contextmanager
def quiet_subflow() -> Iterator[None]:
    """Run a stage's subflow without a heartbeat thread of its own. Prefect joins a flow's heartbeat thread when
    the flow ends, and that thread sleeps in one-second steps, so every subflow cost up to a second at its end
    (3.7 s of a 10 s pipeline run over one small WARC file, profiled). The pipeline flow keeps its heartbeat,
    which is what tells a server that the process died: its heartbeat thread started with the flow, under the
    settings it had then, so the settings changed inside it reach only the subflows."""
    from prefect.settings import temporary_settings

    with temporary_settings(updates={"flows.heartbeat_frequency": None}):
        yield


__all__ = ["pipeline_flow", "resolve_input", "effective_upstream", "stage_input", "reads_upstream", "code_version",
           "StageFailed", "TRIGGERS"]
