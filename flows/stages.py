"""One Prefect flow per stage run: cache lookup, one task per unit, failure propagation, warehouse records.

The flow is the only place that decides whether a stage runs:
1. key = hash(stage name, its config section, its code version, its input's fingerprint);
2. a finished dataset with that key in the warehouse (and on disk) is a recorded cache hit;
3. otherwise every unit is submitted to the configured task runner (units finished by a killed earlier attempt
   return at once from their manifests), all are awaited, and a failed unit fails the stage with its name and
   input file in the message.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import sys
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from flows.runners import task_runner
from tasks.evalsets import ensure_smoke, smoke_dir
from tasks.config import Config, stable_hash
from tasks.crawl import VISITED, CrawlStage, SeenPage, job_files, recover
from tasks.evaluate import EvaluateStage
from tasks.ingest import IngestStage, InputFile
from tasks.procs import STOP, Interrupted
from tasks.registry import stage_class
from tasks.report import ReportStage
from tasks.shards import ShardResult, read_dataset_manifest, write_dataset_manifest
from tasks.stage import (FULL_DISK, ReduceStage, Stage, Unit, UnitFailed, UnitIndex, prepare_output, run_reduce, run_scan,
                         run_unit)
from tasks.train import TrainStage
from warehouse.lineage import Warehouse


terminal = logging.getLogger("crucible")
PERMANENT_ERRNOS = FULL_DISK | {errno.EROFS, errno.EFBIG}  # a retry cannot get past these


def say(message: str) -> None:
    """One line for the run's log in the Prefect UI and for the terminal (flows/cli.py shows the latter)."""
    get_run_logger().info(message)
    terminal.info(message)


class StageFailed(RuntimeError):
    """A stage whose units failed after their retries; the message names each failed unit and its input."""


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
    origin = wh.origin_stage_run(hit["dataset_id"]) or {}
    wh.finish_stage(stage_run_id, status="completed", output_dataset_id=hit["dataset_id"], cache_hit=True,
                    units=origin.get("units"), shards_out=hit["shards"], docs_in=origin.get("docs_in"),
                    docs_out=origin.get("docs_out"), bytes_in=origin.get("bytes_in"), bytes_out=hit["bytes"],
                    seconds=time.perf_counter() - t0)
    return hit


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


@task(name="run-unit", task_run_name="{label}", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2,
      retry_condition_fn=_transient_io)
def run_unit_task(stage: Stage, unit: Unit, out_dir: str, label: str) -> dict[str, Any]:
    """Run one unit of a stage into its shards (or return the manifest of an earlier finished attempt)."""
    return run_unit(stage, unit, Path(out_dir)).to_json()


@task(name="scan-unit", task_run_name="{label}", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2,
      retry_condition_fn=_transient_io)
def scan_unit_task(stage: ReduceStage, unit: Unit, out_dir: str, label: str) -> dict[str, Any]:
    """The first pass of a reduce stage over one unit (signatures, n-gram hits...)."""
    return run_scan(stage, unit, Path(out_dir))


@task(name="reduce", task_run_name="{label}", cache_policy=NO_CACHE)
def reduce_task(stage: ReduceStage, out_dir: str, scans: list[dict[str, Any]], key: str, label: str) -> dict[str, Any]:
    """The whole-dataset step of a reduce stage (dedup clustering, contamination counts)."""
    return run_reduce(stage, Path(out_dir), scans, key)


def dataset_dir(cfg: Config, stage: str, key: str) -> Path:
    return cfg.work_dir / "datasets" / stage / key[:16]


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), disable=not sys.stderr.isatty())


def _cached(wh: Warehouse, key: str) -> dict[str, Any] | None:
    hit = wh.dataset_by_key(key)
    if hit is None:
        return None
    directory = Path(hit["uri"])
    try:
        manifest = read_dataset_manifest(directory)
    except (FileNotFoundError, ValueError):
        return None  # recorded, but its files are gone: compute it again
    intact = all((directory / f.name).is_file() and (directory / f.name).stat().st_size == f.bytes
                 for f in manifest.files)
    return hit if intact and manifest.fingerprint == hit["fingerprint"] else None


def _record_sources(wh: Warehouse, stage: IngestStage, files: list[InputFile], parents: list[str],
                    stage_run_id: str) -> str:
    """The raw input files are a dataset too, so lineage ends at the WARC files themselves."""
    fp = IngestStage.sources_fingerprint(files)
    source_id = f"source-{fp[:12]}"
    wh.record_dataset(dataset_id=source_id, stage="source", stage_key=None,
                      uri=";".join(stage.config.inputs) or "crawl", format="warc", fingerprint=fp,
                      files=[(f.uri, None, f.size, f.version) for f in files], parents=parents,
                      created_by=stage_run_id)
    return source_id


def _crawled_files(upstream: dict[str, Any] | None, wh: Warehouse) -> list[InputFile]:
    if upstream is None:
        return []
    return [InputFile(f["path"], f["bytes"], f["content_hash"]) for f in wh.dataset_files(upstream["dataset_id"])]


@task(name="crawl", cache_policy=NO_CACHE)
def crawl_task(stage: CrawlStage, out_dir: str, seen: dict[str, SeenPage]):
    """Crawl the seeds into new WARC files in the job directory (the crawler retries its own fetches)."""
    return stage.run(Path(out_dir), seen)


def run_crawl(cfg: Config, stage: CrawlStage, run_id: str, wh: Warehouse, recrawl: bool) -> dict[str, Any]:
    """Crawl, log every fetch in the warehouse, and return the job's dataset: all its WARC files so far.

    Without ``recrawl`` an unchanged crawl config is a cache hit, so that rerunning the pipeline after changing a
    later stage compares like with like. A recrawl (scheduled runs, `crucible stage crawl`, `run --recrawl`) sends
    conditional GETs and archives only new or changed pages; when nothing changed, the dataset and everything
    downstream stay exactly as they were.
    """
    t0 = time.perf_counter()
    job = stage.job_id()
    out_dir = cfg.work_dir / "crawl" / job
    params = stage.config.model_dump(mode="json")
    key = stable_hash({"stage": "crawl", "job": job, "config": params, "code": stage.code_version()})
    stage_run_id = wh.start_stage(run_id=run_id, stage="crawl", stage_key=key, params=params,
                                  params_hash=stable_hash(params), code_version=stage.code_version(),
                                  input_dataset_ids=[], out_dir=out_dir)
    with _failure_recorded(wh, stage_run_id, t0):
        hit = None if recrawl else wh.latest_output(key)
        if hit is not None and all(Path(f["path"]).is_file() for f in wh.dataset_files(hit["dataset_id"])):
            say(f"crawl: cache hit {hit['dataset_id']} (recrawl with `crucible stage crawl` or `run --recrawl`)")
            return _finish_cache_hit(wh, stage_run_id, hit, t0)
        out_dir.mkdir(parents=True, exist_ok=True)
        recovered = wh.record_crawl_log(stage_run_id, job, recover(out_dir))
        if recovered:
            say(f"crawl: {recovered} fetches of an interrupted crawl recovered from its durable log parts")
        seen = {r["url"]: SeenPage(r["depth"], r["etag"], r["last_modified"], r["payload_digest"])
                for r in wh.seen_pages(job, VISITED)}
        say(f"crawl: job {job}, {len(stage.seeds())} seeds, {len(seen)} pages known from earlier crawls")
        result = crawl_task(stage, str(out_dir), seen)
        wh.record_crawl_log(stage_run_id, job, result.log_files)
        files = job_files(out_dir)
        fp = stable_hash([[Path(p).name, sha] for p, _, sha in files])
        dataset_id = f"crawl-{fp[:12]}"
        wh.record_dataset(dataset_id=dataset_id, stage="crawl", stage_key=job, uri=str(out_dir), format="warc",
                          fingerprint=fp, files=[(p, None, size, sha) for p, size, sha in files], parents=[],
                          created_by=stage_run_id)
        archived = result.outcomes.get("archived", 0)
        drops = {k: v for k, v in result.outcomes.items() if k != "archived"}
        links = {f"link_{k}": v for k, v in result.links.items() if k != "seen"}  # a link met again is no news
        wh.record_funnel(stage_run_id, "crawl", drops, {}, links)
        wh.finish_stage(stage_run_id, status="completed", output_dataset_id=dataset_id, units=1,
                        shards_out=len(files), docs_in=result.pages, docs_out=archived,
                        bytes_out=sum(size for _, size, _ in files), seconds=time.perf_counter() - t0)
        say(f"crawl: {result.pages} pages fetched, {archived} archived, "
            f"{len(result.warc_files)} new WARC files, {result.seconds:.1f}s")
        return wh.dataset(dataset_id)


@flow(name="crucible-stage", flow_run_name="{stage_name}", validate_parameters=False)
def stage_flow(cfg: Config, stage_name: str, run_id: str, upstream: dict[str, Any] | None = None,
               recrawl: bool = False) -> dict[str, Any]:
    """Run one stage against an upstream dataset (for ingest: a crawl's WARC files, or None for its inputs only)."""
    wh = Warehouse(cfg.warehouse_path, cfg.warehouse.lock_timeout_s)
    if cfg.decontaminate.benchmarks_dir == smoke_dir(cfg.work_dir):
        ensure_smoke(cfg.decontaminate.benchmarks_dir)  # the default: our own small set, written on first use
    stage = stage_class(stage_name)(cfg.section(stage_name))
    if isinstance(stage, CrawlStage):
        return run_crawl(cfg, stage, run_id, wh, recrawl)
    if isinstance(stage, TrainStage):
        from flows.train import run_train
        return run_train(cfg, stage, run_id, wh, upstream)
    if isinstance(stage, EvaluateStage):
        from flows.evaluate import run_evaluate
        return run_evaluate(cfg, stage, run_id, wh, upstream)
    if isinstance(stage, ReportStage):
        from flows.report import run_report
        return run_report(cfg, stage, run_id, wh, upstream)
    params = stage.config.model_dump(mode="json")
    t0 = time.perf_counter()

    if isinstance(stage, IngestStage):
        files = stage.sources(_crawled_files(upstream, wh))
        input_fp = IngestStage.sources_fingerprint(files)
        input_ids = [f"source-{input_fp[:12]}"]
    else:
        if upstream is None or upstream["stage"] != stage.upstream:
            got = upstream["dataset_id"] if upstream else "nothing"
            raise StageFailed(f"stage {stage_name} reads a {stage.upstream} dataset, got {got}")
        input_fp, input_ids = upstream["fingerprint"], [upstream["dataset_id"]]
    key = stage.key(input_fp)
    stage_run_id = wh.start_stage(run_id=run_id, stage=stage_name, stage_key=key, params=params,
                                  params_hash=stable_hash(params), code_version=stage.code_version(),
                                  input_dataset_ids=input_ids, out_dir=dataset_dir(cfg, stage_name, key))
    with _failure_recorded(wh, stage_run_id, t0):
        hit = _cached(wh, key)
        if hit is not None:
            say(f"{stage_name}: cache hit {hit['dataset_id']} ({hit['records']} records)")
            return _finish_cache_hit(wh, stage_run_id, hit, t0)

        if isinstance(stage, IngestStage):
            _record_sources(wh, stage, files, [upstream["dataset_id"]] if upstream else [], stage_run_id)
            units = stage.plan(files)
            bytes_in = sum(f.size for f in files)
        else:
            units = stage.plan(Path(upstream["uri"]))
            bytes_in = upstream["bytes"]
        out_dir = dataset_dir(cfg, stage_name, key)
        prepare_output(out_dir)
        unit_keys: dict[str, str] = {}
        if isinstance(stage, IngestStage):  # a recrawl adds WARC files: read only those
            by_uri = {f.uri: f for f in files}
            unit_keys = {u.name: stage.unit_key(by_uri[u.sources[0].uri]) for u in units}
            index = UnitIndex(cfg.work_dir / "datasets" / stage_name / "_units")
            reused = sum(index.adopt(unit_keys[u.name], out_dir, u) is not None for u in units)
            if reused:
                say(f"{stage_name}: {reused} of {len(units)} input files were read by an earlier run; reusing those")
        facts: dict[str, Any] = {}
        if isinstance(stage, ReduceStage):
            scans, failures = _run_units(cfg, stage, units, out_dir, scan_unit_task, "scan")
            _raise_failures(stage_name, "scan", failures, units)
            facts = reduce_task(stage, str(out_dir), scans, key, f"{stage_name}:reduce")
            wh.record_metrics(run_id, [(None, f"{stage_name}.{k}", float(v)) for k, v in sorted(facts.items())
                                       if isinstance(v, (int, float))], stage_run_id=stage_run_id)
            say(f"{stage_name}: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in facts.items() if "." not in k))
        raw, failures = _run_units(cfg, stage, units, out_dir)
        _raise_failures(stage_name, "", failures, units)
        results = [ShardResult.from_json(r) for r in raw]

        manifest = write_dataset_manifest(out_dir, stage_name, key, results)
        if isinstance(stage, ReduceStage):
            stage.finalize(out_dir)
            for table, path in stage.records(out_dir).items():
                say(f"{stage_name}: {wh.load_records(table, stage_run_id, path)} rows into {table}")
            for path in stage.artifacts(out_dir):  # e.g. the tokenizer: a dataset of its own, with its hash
                _record_artifact(wh, stage_name, path, input_ids, stage_run_id)
        stats: Counter = Counter()
        for r in results:
            stats.update(r.stats)
        if stats:
            figures = dict(stats)
            if stats.get("val_tokens", 0) > stats.get("val_docs", 0):  # separators carry no bytes
                figures["val_bytes_per_token"] = stats["val_bytes"] / (stats["val_tokens"] - stats["val_docs"])
            wh.record_metrics(run_id, [(None, f"{stage_name}.{k}", float(v)) for k, v in sorted(figures.items())],
                              stage_run_id=stage_run_id)
        dataset_id = f"{stage_name}-{key[:12]}"
        wh.record_dataset(dataset_id=dataset_id, stage=stage_name, stage_key=key, uri=str(out_dir),
                          format=getattr(stage, "dataset_format", "parquet"), fingerprint=manifest.fingerprint,
                          files=[(str(out_dir / f.name), f.rows, f.bytes, f.sha256) for f in manifest.files],
                          parents=input_ids, created_by=stage_run_id)
        drops, drop_bytes, notes = Counter(), Counter(), Counter()
        for r in results:
            drops.update(r.drops)
            drop_bytes.update(r.drop_bytes)
            notes.update(r.notes)
        wh.record_funnel(stage_run_id, stage_name, dict(drops), dict(drop_bytes), dict(notes))
        wh.finish_stage(stage_run_id, status="completed", output_dataset_id=dataset_id, units=len(units),
                        units_resumed=sum(r.resumed and not r.reused for r in results), shards_out=len(manifest.files),
                        docs_in=sum(r.docs_in for r in results), docs_out=manifest.records, bytes_in=bytes_in,
                        bytes_out=manifest.bytes, seconds=time.perf_counter() - t0)
        for r in results:
            if r.unit in unit_keys:
                index.record(unit_keys[r.unit], out_dir, r.unit)
        resumed = sum(r.resumed and not r.reused for r in results)
        reused = sum(r.reused for r in results)
        say(f"{stage_name}: {manifest.records} records in {len(manifest.files)} shards from {len(units)} units"
            f"{f' ({resumed} resumed)' if resumed else ''}{f' ({reused} reused)' if reused else ''}, "
            f"{sum(drops.values())} dropped, {time.perf_counter() - t0:.1f}s")
        return wh.dataset(dataset_id)


def _record_artifact(wh: Warehouse, stage_name: str, path: Path, parents: list[str], stage_run_id: str) -> None:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    kind = path.stem
    wh.record_dataset(dataset_id=f"{kind}-{digest[:12]}", stage=kind, stage_key=None, uri=str(path),
                      format=path.suffix.lstrip("."), fingerprint=digest,
                      files=[(str(path), None, path.stat().st_size, digest)], parents=parents,
                      created_by=stage_run_id)
    say(f"{stage_name}: {kind} {path} sha256 {digest[:12]}")


def _raise_failures(stage_name: str, step: str, failures: list[str], units: list[Unit]) -> None:
    if failures:
        detail = "\n  ".join(failures[:20])
        more = f"\n  … and {len(failures) - 20} more" if len(failures) > 20 else ""
        what = f"{step} units" if step else "units"
        raise StageFailed(f"stage {stage_name}: {len(failures)} of {len(units)} {what} failed:\n  {detail}{more}")


def _run_units(cfg: Config, stage: Stage, units: list[Unit], out_dir: Path, unit_task=run_unit_task,
               step: str = "") -> tuple[list[dict[str, Any]], list[str]]:
    """Submit every unit to the task runner, await them all, and collect results and failure messages."""
    results: list[dict[str, Any]] = []
    failures: list[str] = []
    if not units:
        return results, failures
    t0 = time.perf_counter()
    name = f"{stage.name} {step}".strip()
    say(f"{name}: {len(units)} units on {cfg.runner.kind} x{cfg.runner.workers}")
    every = max(1, len(units) // 10)  # without a terminal, a line per tenth of the work
    with task_runner(cfg.runner) as runner, _progress() as progress:
        bar = progress.add_task(name, total=len(units), rate="")
        futures = {runner.submit(unit_task, parameters={"stage": stage, "unit": u, "out_dir": str(out_dir),
                                                      "label": f"{stage.name}:{step + ':' if step else ''}{u.name}"}): u
                   for u in units}
        docs = 0
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
            if progress.disable and (finished % every == 0 or finished == len(units)):
                say(f"{name}: {finished}/{len(units)} units, {rate:,.0f} docs/s")
    results.sort(key=lambda r: r["unit"])
    return results, failures
