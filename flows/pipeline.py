"""The pipeline flow: the stages in order, each a subflow, every run and stage run recorded in the warehouse.

    crucible run configs/demo.toml                  # every stage; unchanged ones are cache hits
    crucible run configs/demo.toml --from extract   # start at extract, on ingest's latest output
    crucible stage extract configs/demo.toml --input latest
"""
from __future__ import annotations

import contextvars
import logging
import subprocess
import threading
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

from prefect import flow
from prefect.runtime import flow_run

from flows.stages import StageFailed, before_work, configured, describe_ending, ending_status, say, stage_flow
from tasks import docpool
from tasks.config import Config
from tasks.registry import stage_class
from warehouse.lineage import Warehouse, WarehouseError

terminal = logging.getLogger("crucible")
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


def pipeline_flow(cfg: Config, stages: list[str], trigger: str = "manual",
                  upstream: dict[str, Any] | None = None, recrawl: bool = False) -> str:
    """Run ``stages`` in order, each on the previous one's output (the first on ``upstream``); return the run id.

    A scheduled run always recrawls; otherwise an unchanged crawl is a cache hit unless ``recrawl`` is set.
    The flow run (``crucible-pipeline``, stage subflows beneath it) sends Prefect's heartbeat events from a thread
    of its own (``heartbeat``); the settings that switch Prefect's off are made once here for every flow in it.
    """
    from prefect.settings import get_current_settings, temporary_settings

    every = get_current_settings().flows.heartbeat_frequency
    with temporary_settings(updates={"flows.heartbeat_frequency": None}):
        return _pipeline(cfg, stages, trigger, upstream, recrawl, every)


@flow(name="crucible-pipeline", validate_parameters=False)
def _pipeline(cfg: Config, stages: list[str], trigger: str, upstream: dict[str, Any] | None, recrawl: bool,
              heartbeat_s: int | None) -> str:
    with heartbeat(heartbeat_s):
        return _run_stages(cfg, stages, trigger, upstream, recrawl)


def _run_stages(cfg: Config, stages: list[str], trigger: str, upstream: dict[str, Any] | None,
                recrawl: bool) -> str:
    wh = Warehouse(cfg.warehouse_path, cfg.warehouse.lock_timeout_s)
    with wh.pipeline_lock(cfg.warehouse.pipeline_wait_s) as claim:
        run_id = wh.start_run(config=cfg.to_dict(), config_hash=cfg.digest(),
                              config_path=str(cfg.source) if cfg.source else None, code_version=code_version(),
                              trigger=trigger, stages=stages, flow_run_id=flow_run.get_id())
        claim(run_id)
        say(f"pipeline run {run_id}: {' -> '.join(stages)}")
        try:
            made = [configured(cfg, name) for name in stages]
            if cfg.runner.kind == "threads":
                docpool.configure(cfg.runner.workers,
                                  preload=tuple(type(s).__module__ for s in made if s.enabled and s.uses_docpool))
            with before_work(_warmer(cfg, stages, made)):
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


def _warmer(cfg: Config, stages: list[str], made: list[Any]) -> Callable[[str], None]:
    """What a stage that has work to do (no cache hit) calls first: on the thread runner, the worker processes of
    it and of the enabled stages after it start in the background (docpool's workers import those stages' modules,
    extraction starts its children), beside the stages that run before they need them. Once per run; a run whose
    every stage is a cache hit starts none, nor does one whose only miss comes after every stage that uses them."""
    started = False

    def warm(name: str) -> None:
        nonlocal started
        if started or cfg.runner.kind != "threads":
            return
        started = True
        later = [s for s in made[stages.index(name):] if s.enabled]
        if any(s.uses_docpool for s in later):
            docpool.warm()
        for stage in later:
            stage.warm()

    return warm


@contextmanager
def heartbeat(every: int | None) -> Iterator[None]:
    """Send the running flow's heartbeat every ``every`` seconds (None: none), the first at once, as Prefect's
    engine would (the same event, resource and related resources): a server that stops hearing it can mark the run
    crashed. Prefect's own heartbeat thread sleeps in one-second steps and the flow waits for it when it ends, so
    every pipeline run (and before, every stage subflow: 3.7 s of a 10 s run over one small WARC file) ended on the
    next tick; this thread stops the moment the flow is done."""
    import prefect
    from prefect.context import FlowRunContext
    from prefect.events import emit_event
    from prefect.events.related import tags_as_related_resources

    context = FlowRunContext.get()
    run = context.flow_run if context is not None else None
    if every is None or run is None:
        yield
        return
    resource = {"prefect.resource.id": f"prefect.flow-run.{run.id}", "prefect.resource.name": run.name or "",
                "prefect.version": prefect.__version__}
    related: list[Any] = [{"prefect.resource.id": f"prefect.flow.{run.flow_id}", "prefect.resource.role": "flow",
                           "prefect.resource.name": context.flow.name if context.flow else ""}]
    if run.deployment_id:
        related.append({"prefect.resource.id": f"prefect.deployment.{run.deployment_id}",
                        "prefect.resource.role": "deployment"})
    related += tags_as_related_resources(set(run.tags or []))
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                emit_event(event="prefect.flow-run.heartbeat", resource=resource, related=related)
            except Exception as err:  # a heartbeat the API refuses is not worth failing the run for
                terminal.debug("heartbeat not sent: %r", err)
            if stop.wait(every):
                return

    # run in a copy of this context: the thread sees this flow's settings (the API URL) as its caller does
    thread = threading.Thread(target=contextvars.copy_context().run, args=(beat,), daemon=True,
                              name="crucible-heartbeat")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=2)


__all__ = ["pipeline_flow", "resolve_input", "effective_upstream", "stage_input", "reads_upstream", "code_version",
           "StageFailed", "TRIGGERS"]
