"""The one stage lifecycle, for every stage: key, cache lookup, start, execute, record, finish.

    stage = configured(cfg, name)                  # the class from tasks/registry.py, with its config section
    stage.prepare(ctx); inp = stage.read_input(ctx, upstream)
    key = stage.stage_key(inp, ctx)                # hash(stage, config, code version, input fingerprint)
    stage run recorded as running                  # a reader can follow its output directory while it runs
    hit = stage.cached(ctx, key, out_dir)          # a finished dataset with that key, whole on disk: cache hit
    result = stage.execute(ctx, inp, out_dir, key) # units run on the configured task runner through ``ctx``
    every dataset, record file, metric and the funnel of ``result`` recorded; the stage run finished

Whatever ends a stage early is recorded here, once: 'interrupted' for Ctrl-C (finished units are kept and a rerun
resumes from them), else 'failed' with the error. Stage code never opens the warehouse for writing; this module
and ``FlowContext`` (what a running stage is lent) are where Prefect and the warehouse meet the stages.
"""
from __future__ import annotations

import errno
import logging
import sys
import time
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Callable, Iterator

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from flows.runners import check_workers_see, task_runner
from tasks import docpool
from tasks.config import Config, stable_hash
from tasks.procs import STOP, Interrupted
from tasks.registry import stage_class
from tasks.stage import (FULL_DISK, PROGRESS_FILE, Stage, StageContext, StageFailed, StageResult,  # noqa: F401
                         UnitFailed, note_counts, raise_failures, write_progress)
from warehouse.lineage import Warehouse

terminal = logging.getLogger("crucible")
PERMANENT_ERRNOS = FULL_DISK | {errno.EROFS, errno.EFBIG}  # a retry cannot get past these


def say(message: str) -> None:
    """One line for the run's log in the Prefect UI and for the terminal (flows/cli.py shows the latter)."""
    get_run_logger().info(message)
    terminal.info(message)


def configured(cfg: Config, stage: str) -> Stage:
    """The stage object for ``stage`` with its config section."""
    made = stage_class(stage)(cfg.section(stage), cfg.all_sources())
    if hasattr(made, "bind"):  # a stage that reads another section's settings (select: tokenize's split)
        made.bind(cfg)
    return made


# -- what a running stage is lent ------------------------------------------------------------------------------


def _transient_io(task, task_run, state) -> bool:
    """Retry only I/O that may succeed next time (a network blip), never deterministic compute or a missing file."""
    try:
        state.result()
    except Exception as err:  # the failure we are deciding about
        return is_transient(err.__cause__ or err)
    return False


def is_transient(err: BaseException) -> bool:
    """An OSError that a retry may get past; a missing file, a permission, a full disk or quota will not."""
    permanent = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)
    return isinstance(err, OSError) and not isinstance(err, permanent) and err.errno not in PERMANENT_ERRNOS


@task(name="unit", task_run_name="{label}", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2,
      retry_condition_fn=_transient_io)
def unit_task(fn: Callable[..., dict[str, Any]], stage: Stage, unit: Any, out_dir: str,
              label: str) -> dict[str, Any]:
    """One unit of a stage (or of one of its passes): ``fn(stage, unit, out_dir)``, retried on transient I/O."""
    return fn(stage, unit, Path(out_dir))


@task(name="step", task_run_name="{label}", cache_policy=NO_CACHE)
def step_task(fn: Callable[..., Any], args: tuple[Any, ...], label: str) -> Any:
    """A step that runs whole in this process: a reduce, a crawl, a torchrun launch."""
    return fn(*args)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), disable=not sys.stderr.isatty())


class FlowContext(StageContext):
    """The lifecycle's context: units go to the configured task runner as Prefect tasks, one line per tenth of
    the work (or a progress bar on a terminal), and the log goes to Prefect and the terminal."""

    def __init__(self, cfg: Config, wh: Warehouse, run_id: str, recrawl: bool) -> None:
        super().__init__(cfg.work_dir, warehouse=wh, run_id=run_id, recrawl=recrawl, log=say)
        self.runner = cfg.runner
        self._workers_checked = False
        # Per-document Python work on processes of its own: on the thread runner it would hold one interpreter
        # lock (tasks/docpool.py); the other runners' units already run in processes.
        docpool.configure(cfg.runner.workers if cfg.runner.kind == "threads" else 1)

    def _check_workers(self) -> None:
        """A cluster of its own (runner.address): every worker must see the work directory, asked once a stage."""
        if self.runner.kind == "dask" and self.runner.address and not self._workers_checked:
            workers = check_workers_see(self.runner.address, self.work_dir)
            say(f"dask cluster {self.runner.address}: {workers} workers see {self.work_dir}")
            self._workers_checked = True

    def map(self, step: str, fn: Callable[..., dict[str, Any]], stage: Any, units: list[Any],
            out_dir: Path) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        failures: list[str] = []
        if not units:
            return results
        self._check_workers()
        t0 = time.perf_counter()
        name = f"{stage.name} {step}".strip()
        say(f"{name}: {len(units)} units on {self.runner.kind} x{self.runner.workers}")
        every = max(1, len(units) // 10)  # without a terminal, a line per tenth of the work
        docs = 0

        def report(finished: int) -> None:  # for the dashboard, which reads the output directory
            write_progress(out_dir, step=step, units_done=finished, units_failed=len(failures),
                           units_total=len(units), docs=docs, seconds=round(time.perf_counter() - t0, 3))

        report(0)
        with task_runner(self.runner) as runner, _progress() as progress:
            bar = progress.add_task(name, total=len(units), rate="")
            # the costliest first (a unit's ``cost``, about the bytes it reads): the runner starts units in the
            # order given, so a large one handed out last would leave the other workers idle while it runs alone
            first = sorted(units, key=lambda u: -getattr(u, "cost", 0))
            futures = {runner.submit(unit_task, parameters={
                "fn": fn, "stage": stage, "unit": u, "out_dir": str(out_dir),
                "label": f"{stage.name}:{step + ':' if step else ''}{u.name}"}): u for u in first}
            for future in as_completed(list(futures)):
                unit = futures[future]
                try:
                    result = future.result()
                except Exception as err:  # UnitFailed already names the unit and its input
                    failures.append(str(err) if isinstance(err, UnitFailed) else f"{unit.describe()}: {err!r}")
                else:
                    results.append(result)
                    docs += result.get("docs_in", result.get("docs", 0))
                rate = docs / max(time.perf_counter() - t0, 1e-9)
                progress.update(bar, advance=1, rate=f"{rate:,.0f} docs/s")
                finished = len(results) + len(failures)
                report(finished)
                if progress.disable and (finished % every == 0 or finished == len(units)):
                    say(f"{name}: {finished}/{len(units)} units, {rate:,.0f} docs/s")
        raise_failures(stage.name, step, failures, len(units))
        return sorted(results, key=lambda r: r["unit"])

    def call(self, label: str, fn: Callable[..., Any], *args: Any) -> Any:
        return step_task(fn, args, label)


# -- the lifecycle ---------------------------------------------------------------------------------------------

_before_work: ContextVar[Callable[[str], None] | None] = ContextVar("crucible_before_work", default=None)


@contextmanager
def before_work(hook: Callable[[str], None]) -> Iterator[None]:
    """Stages that find no cached dataset call ``hook(stage_name)`` before their units start (the pipeline starts
    worker processes then, so a run of cache hits starts none)."""
    token = _before_work.set(hook)
    try:
        yield
    finally:
        _before_work.reset(token)


def _call_before_work(stage_name: str) -> None:
    # a function of its own: a Dask runner pickles stage_flow's function by value, and a ContextVar cannot be pickled
    hook = _before_work.get()
    if hook is not None:
        hook(stage_name)


@flow(name="crucible-stage", flow_run_name="{stage_name}", validate_parameters=False)
def stage_flow(cfg: Config, stage_name: str, run_id: str, upstream: dict[str, Any] | None = None,
               recrawl: bool = False) -> dict[str, Any]:
    """Run one stage on its upstream dataset (None for a stage that reads none) and return its output dataset."""
    wh = Warehouse(cfg.warehouse_path, cfg.warehouse.lock_timeout_s)
    stage = configured(cfg, stage_name)
    ctx = FlowContext(cfg, wh, run_id, recrawl)
    stage.prepare(ctx)
    inp = stage.read_input(ctx, upstream)
    key = stage.stage_key(inp, ctx)
    out_dir = stage.output_dir(ctx, key)
    params = stage.params()
    t0 = time.perf_counter()
    ctx.stage_run_id = wh.start_stage(run_id=run_id, stage=stage.name, stage_key=key, params=params,
                                      params_hash=stable_hash(params), code_version=stage.code_version(),
                                      input_dataset_ids=inp.dataset_ids, out_dir=out_dir, role=stage.role)
    with _failure_recorded(wh, ctx.stage_run_id, t0):
        hit = stage.cached(ctx, key, out_dir)
        if hit is not None:
            records = f" ({hit['records']} records)" if hit.get("records") is not None else ""
            say(f"{stage.name}: cache hit {hit['dataset_id']}{records}{stage.cache_note()}")
            return _finish_cache_hit(wh, ctx.stage_run_id, hit, t0)
        _call_before_work(stage.name)
        result = stage.execute(ctx, inp, out_dir, key)
        made = _record(wh, ctx, stage.name, result, t0)
        (Path(out_dir) / PROGRESS_FILE).unlink(missing_ok=True)  # finished: the stage run holds the counts now
        return made


def _record(wh: Warehouse, ctx: FlowContext, stage: str, result: StageResult, t0: float) -> dict[str, Any]:
    """Everything the stage made and counted, into the warehouse (one connection); then the stage run is finished."""
    with wh.batch():
        return _record_all(wh, ctx, stage, result, t0)


def _record_all(wh: Warehouse, ctx: FlowContext, stage: str, result: StageResult, t0: float) -> dict[str, Any]:
    stage_run_id = ctx.stage_run_id
    for records in result.records:
        rows = wh.load_records(records.table, stage_run_id, records.files, **records.constants)
        if records.announce:
            say(f"{stage}: {rows} rows into {records.table}")
    for made in [*result.datasets, result.output]:
        wh.record_dataset(dataset_id=made.dataset_id, stage=made.stage, stage_key=made.stage_key, uri=made.uri,
                          format=made.format, fingerprint=made.fingerprint, files=made.files, parents=made.parents,
                          created_by=stage_run_id, tokens=made.tokens)
    if result.metrics:
        wh.record_metrics(ctx.run_id, result.metrics, stage_run_id=stage_run_id)
    wh.record_funnel(stage_run_id, stage, result.drops, result.drop_bytes, result.notes, result.by_source,
                     note_counts={reason: note_counts(reason) for reason in result.notes})
    if result.artifact is not None:
        _publish(result.artifact, stage)
    wh.finish_stage(stage_run_id, status="completed", output_dataset_id=result.output.dataset_id,
                    units=result.units, units_resumed=result.units_resumed, shards_out=result.shards_out,
                    docs_in=result.docs_in, docs_out=result.docs_out, bytes_in=result.bytes_in,
                    bytes_out=result.bytes_out, seconds=time.perf_counter() - t0)
    if result.message:
        say(result.message)
    return wh.dataset(result.output.dataset_id)


def _publish(artifact: Any, stage: str) -> None:
    try:
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(markdown=artifact.markdown, key=artifact.key, description=artifact.description)
    except Exception as err:  # the files are the product; an artifact the API refuses is not fatal
        say(f"{stage}: no Prefect artifact ({type(err).__name__}: {err})")


@contextmanager
def _failure_recorded(wh: Warehouse, stage_run_id: str, t0: float) -> Iterator[None]:
    """Whatever ends the stage early leaves its stage run marked: 'interrupted' for Ctrl-C, else 'failed'."""
    try:
        yield
    except BaseException as err:
        wh.finish_stage(stage_run_id, status=ending_status(err), error=describe_ending(err),
                        seconds=time.perf_counter() - t0)
        raise


def ending_status(err: BaseException) -> str:
    """'interrupted' when the run was asked to stop (its units stopped with it), else 'failed'."""
    return "interrupted" if isinstance(err, (KeyboardInterrupt, Interrupted)) or STOP.is_set() else "failed"


def describe_ending(err: BaseException) -> str:
    if ending_status(err) == "interrupted":
        return "interrupted (SIGINT or SIGTERM); finished units are kept and a rerun resumes from them"
    return f"{type(err).__name__}: {err}"[:4000]


def _finish_cache_hit(wh: Warehouse, stage_run_id: str, hit: dict[str, Any], t0: float) -> dict[str, Any]:
    """Record a stage run that found its dataset already made, with the counts of the run that made it."""
    with wh.batch():
        return _finish_cache_hit_in(wh, stage_run_id, hit, t0)


def _finish_cache_hit_in(wh: Warehouse, stage_run_id: str, hit: dict[str, Any], t0: float) -> dict[str, Any]:
    origin = wh.origin_stage_run(hit["dataset_id"]) or {}
    wh.finish_stage(stage_run_id, status="completed", output_dataset_id=hit["dataset_id"], cache_hit=True,
                    units=origin.get("units"), shards_out=hit["shards"], docs_in=origin.get("docs_in"),
                    docs_out=origin.get("docs_out"), bytes_in=origin.get("bytes_in"), bytes_out=hit["bytes"],
                    seconds=time.perf_counter() - t0)
    return hit
