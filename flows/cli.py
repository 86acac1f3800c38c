"""The ``crucible`` command line. Every command's --help carries an example."""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import signal
import socket
import time
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import click
from rich.console import Console
from rich.table import Table

from flows import configure_prefect
from tasks.config import ConfigError, load_config, to_toml
from tasks.registry import ORDER, stage_range
from warehouse.lineage import Warehouse, WarehouseError

console = Console(width=None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "160")))
REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "demo.toml"


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    sys.exit(1)


def _handle_errors(fn: Callable) -> Callable:
    """Expected failures print one clear message and exit 1, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ConfigError, WarehouseError, FileNotFoundError, ValueError) as err:
            _fail(str(err))
    return wrapper


def warehouse_option(fn: Callable) -> Callable:
    """--warehouse PATH or --config CONFIG: where the read commands find the DuckDB file."""
    fn = click.option("-w", "--warehouse", "warehouse_path", type=click.Path(dir_okay=False), default=None,
                      envvar="CRUCIBLE_WAREHOUSE", help="DuckDB file [default: work/warehouse.duckdb].")(fn)
    fn = click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), default=None,
                      help="Take the warehouse location from this config.")(fn)
    return fn


def _warehouse(warehouse_path: str | None, config_path: str | None) -> Warehouse:
    if warehouse_path:
        return Warehouse(warehouse_path)
    if config_path:
        cfg = load_config(config_path)
        return Warehouse(cfg.warehouse_path, cfg.warehouse.lock_timeout_s)
    return Warehouse(Path("work") / "warehouse.duckdb")


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    if hasattr(value, "strftime"):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def _table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> Table:
    table = Table(title=title, title_justify="left", show_lines=False)
    for c in columns:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*[_fmt(r.get(c)) for c in columns])
    return table


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="crucible")
def main() -> None:
    """Crucible: raw web crawls in, a trained and benchmarked small language model out, lineage in DuckDB.

    \b
    Example:
        crucible demo                      # make the demo input and run every stage
        crucible run configs/demo.toml     # run the pipeline (unchanged stages are cache hits)
        crucible show latest               # what the last run did
    """


# ---------------------------------------------------------------------------------------------------------------
# Running


def _show_progress_lines() -> None:
    """Crucible's own progress lines on stderr; Prefect's are in the UI (and its warnings on the terminal)."""
    log = logging.getLogger("crucible")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s  %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def _run_pipeline(cfg, stages: list[str], trigger: str, upstream: dict | None, recrawl: bool = False) -> str:
    """Run the pipeline flow, holding the warehouse's pipeline lock first: a busy warehouse is one clear line.

    Ctrl-C (or SIGTERM) stops it within a few seconds: units stop at their next record, the run and the stage are
    recorded as interrupted, children are ended, and the command prints one line and exits 130.
    """
    from tasks.procs import Interrupted

    wh = Warehouse(cfg.warehouse_path, cfg.warehouse.lock_timeout_s)
    try:
        with wh.pipeline_lock(cfg.warehouse.pipeline_wait_s):
            configure_prefect(cfg.work_dir)
            _show_progress_lines()
            from flows.pipeline import pipeline_flow  # imports prefect, after its environment is set
            from flows.server import prefect_api

            with _stop_on_signals(), prefect_api(Path(os.environ["PREFECT_HOME"])):
                return pipeline_flow(cfg, stages, trigger, upstream, recrawl)
    except (KeyboardInterrupt, Interrupted):
        console.print("interrupted; rerun to resume", highlight=False)
        sys.exit(130)


@contextlib.contextmanager
def _stop_on_signals():
    """SIGINT and SIGTERM set the stop request that running units check, then interrupt the main thread."""
    from tasks.procs import STOP

    def on_signal(signum: int, frame: Any) -> None:
        STOP.set()
        # Prefect reports each stopped task and flow as a crash; that is for the UI (its API handler still sends
        # it), while the terminal gets one line.
        from prefect.logging.handlers import PrefectConsoleHandler

        for handler in logging.getLogger().handlers:
            if isinstance(handler, PrefectConsoleHandler):
                handler.setLevel(logging.CRITICAL)
        raise KeyboardInterrupt

    STOP.clear()
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _upstream(cfg, stage: str, ref: str, explicit: bool = False) -> dict | None:
    """The dataset a stage started alone reads: none for crawl, and for ingest only when a crawl is configured."""
    from flows.pipeline import reads_upstream, stage_input

    if explicit and not reads_upstream(cfg, stage):
        raise click.UsageError(f"{stage} reads {'the web' if stage == 'crawl' else 'ingest.inputs'}; "
                               "it takes no --input")
    return stage_input(cfg, stage, ref)


def _after_run(cfg, run_id: str) -> None:
    wh = Warehouse(cfg.warehouse_path, cfg.warehouse.lock_timeout_s)
    _print_run(wh, wh.resolve_run(run_id))


@main.command()
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--from", "first", type=click.Choice(ORDER), help="Start at this stage, on its upstream's latest output.")
@click.option("--to", "last", type=click.Choice(ORDER), help="Stop after this stage.")
@click.option("--trigger", type=click.Choice(["manual", "schedule", "rerun"]), default="manual", show_default=True,
              help="What started this run, as recorded in the warehouse (schedule implies --recrawl).")
@click.option("--recrawl", is_flag=True, help="Crawl again (conditional GETs) even if the crawl config is unchanged.")
@_handle_errors
def run(config: str, first: str | None, last: str | None, trigger: str, recrawl: bool) -> None:
    """Run the pipeline: every stage whose key changed is computed, the rest are cache hits.

    \b
    Example:
        crucible run configs/demo.toml
        crucible run configs/demo.toml --from extract --to extract
        crucible run configs/demo.toml --recrawl
    """
    cfg = load_config(config)
    stages = stage_range(first, last)
    upstream = _upstream(cfg, first, "latest") if first else None
    try:
        run_id = _run_pipeline(cfg, stages, trigger, upstream, recrawl)
    except Exception as err:
        _fail(f"pipeline failed: {err}")
    _after_run(cfg, run_id)


@main.command()
@click.argument("stage", type=click.Choice(ORDER))
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--input", "input_ref", default=None, metavar="RUN_ID|DATASET_ID|latest",
              help="The upstream dataset to read [default: latest]. Crawl takes none; ingest takes a crawl dataset "
                   "when crawl.seeds are set, else reads ingest.inputs.")
@_handle_errors
def stage(stage: str, config: str, input_ref: str | None) -> None:
    """Rerun one stage alone against a chosen upstream dataset (recorded as a 'rerun').

    Rerunning crawl always crawls again, incrementally: only new or changed pages are archived.

    \b
    Example:
        crucible stage extract configs/demo.toml --input latest
        crucible stage extract configs/demo.toml --input run-20261123-101500-ab12cd
        crucible stage crawl configs/demo.toml
    """
    cfg = load_config(config)
    upstream = _upstream(cfg, stage, input_ref or "latest", explicit=input_ref is not None)
    try:
        run_id = _run_pipeline(cfg, [stage], "rerun", upstream, recrawl=stage == "crawl")
    except Exception as err:
        _fail(f"stage failed: {err}")
    _after_run(cfg, run_id)


@contextlib.contextmanager
def pydoc_server(url: str):
    """Serve the standard library's documentation with pydoc at ``url`` (host:port) while the block runs."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    with socket.socket() as probe:
        if probe.connect_ex((host, port)) == 0:
            raise click.ClickException(f"port {port} on {host} is already in use: stop what serves it, or edit "
                                       "crawl.seeds in the demo config")
    # -I -S: an isolated interpreter without site-packages, so the pages are the standard library's own. pydoc
    # reads commands from stdin and stops at end of input: an open pipe keeps it serving.
    from tasks.procs import spawn, stop

    server = spawn([sys.executable, "-I", "-S", "-m", "pydoc", "-n", host, "-p", str(port)],
                   stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            with socket.socket() as probe:
                if probe.connect_ex((host, port)) == 0:
                    break
            if server.poll() is not None or time.monotonic() > deadline:
                raise click.ClickException(f"pydoc server did not start on {host}:{port}")
            time.sleep(0.1)
        console.print(f"serving the standard library's pydoc pages at {url}")
        yield
    finally:
        stop(server)


@main.command()
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=str(DEMO_CONFIG),
              show_default=True, help="The demo config.")
@_handle_errors
def demo(config_path: str) -> None:
    """Serve Python's documentation with pydoc, crawl it, and run every stage on what was archived.

    Needs no network: the site is a pydoc server on 127.0.0.1, started and stopped here. Run it again and the
    recrawl finds nothing new, so every later stage is a cache hit.

    \b
    Example:
        crucible demo
    """
    cfg = load_config(config_path)
    if not cfg.crawl.seeds:
        raise click.UsageError(f"{config_path} has no crawl.seeds to serve")
    with pydoc_server(cfg.crawl.seeds[0]):
        try:
            run_id = _run_pipeline(cfg, stage_range(None, None), "manual", None)
        except Exception as err:
            _fail(f"pipeline failed: {err}")
    _after_run(cfg, run_id)


# ---------------------------------------------------------------------------------------------------------------
# Reading the warehouse


@main.command()
@click.option("-n", "--limit", default=20, show_default=True, help="How many runs to list.")
@warehouse_option
@_handle_errors
def runs(limit: int, warehouse_path: str | None, config_path: str | None) -> None:
    """List pipeline runs, newest first, with their status and cache hits.

    \b
    Example:
        crucible runs
        crucible runs -n 5 --config configs/demo.toml
    """
    rows = _warehouse(warehouse_path, config_path).runs(limit)
    for r in rows:
        r["stages"] = f"{r['stage_runs']} ({r['cache_hits']} cached)"
    console.print(_table("pipeline runs", rows, ["run_id", "trigger", "status", "started_at", "ended_at", "stages",
                                                 "code_version"]))


def _print_run(wh: Warehouse, run: dict[str, Any]) -> None:
    console.print(f"[bold]{run['run_id']}[/bold]  status={run['status']}  trigger={run['trigger']}  "
                  f"code={run['code_version']}  config={run['config_path']}", highlight=False)
    if run.get("error"):
        console.print(f"[red]{run['error']}[/red]", highlight=False)
    stages = wh.stage_runs(run["run_id"])
    for s in stages:
        s["cache"] = "hit" if s["cache_hit"] else ""
        s["units"] = (f"{s['units']}" + (f" ({s['units_resumed']} resumed)" if s["units_resumed"] else "")
                      if s["units"] is not None else "")
        computed = s["docs_in"] and s["seconds"] and not s["cache_hit"]
        s["docs/s"] = s["docs_in"] / s["seconds"] if computed else None
    console.print(_table("stages", stages, ["stage", "status", "cache", "docs_in", "docs_out", "bytes_in", "bytes_out",
                                            "units", "shards_out", "seconds", "docs/s", "output_dataset_id"]))
    failed = [s for s in stages if s["error"]]
    for s in failed:
        console.print(f"[red]{s['stage']}: {s['error']}[/red]", highlight=False)
    facts, per_task, scores = [], {}, {}
    for f in wh.stage_facts(run["run_id"]):
        figure = f["name"].split(".", 1)[1]
        value = int(f["value"]) if float(f["value"]).is_integer() else round(f["value"], 4)
        if "." in figure:  # items.<task>, contaminated_items.<task>, accuracy.<task>...
            kind, task = figure.split(".", 1)
            table = scores if f["stage"] == "evaluate" else per_task
            table.setdefault(task, {"benchmark": task})[kind.replace("_", " ")] = value
        elif figure != "seconds":
            facts.append({"stage": f["stage"], "figure": figure.replace("_", " "), "value": value})
    if facts:
        console.print(_table("stage figures", facts, ["stage", "figure", "value"]))
    if per_task:
        console.print(_table("contamination per benchmark", list(per_task.values()),
                             ["benchmark", "items", "contaminated items"]))
    if scores:
        core = next((f["value"] for f in facts if f["stage"] == "evaluate" and f["figure"] == "core7"), None)
        rows = sorted(scores.values(), key=lambda r: r["benchmark"])
        rows.append({"benchmark": "CORE-7 (mean centered)", "centered": core})
        console.print(_table("benchmarks (centered = (accuracy - baseline) / (1 - baseline))", rows,
                             ["benchmark", "items", "accuracy", "centered", "accuracy clean",
                              "contaminated items", "accuracy contaminated"]))
    funnel = wh.funnel(run["run_id"])
    if funnel:
        for f in funnel:
            f["kind"] = "dropped" if f["dropped"] else "kept, noted"
        console.print(_table("funnel (drops per stage and reason)", funnel,
                             ["stage", "reason", "kind", "docs", "bytes"]))


@main.command()
@click.argument("run_ref", metavar="RUN", default="latest")
@warehouse_option
@_handle_errors
def show(run_ref: str, warehouse_path: str | None, config_path: str | None) -> None:
    """Show one run: its stages, counts, timings, cache hits and the drop funnel.

    RUN is a run id, a unique prefix of one, or 'latest'.

    \b
    Example:
        crucible show latest
        crucible show run-20261123-101500-ab12cd
    """
    wh = _warehouse(warehouse_path, config_path)
    _print_run(wh, wh.resolve_run(run_ref))


@main.command()
@click.argument("ref", metavar="DATASET|RUN")
@click.option("--files", is_flag=True, help="Also list every shard and input file.")
@warehouse_option
@_handle_errors
def lineage(ref: str, files: bool, warehouse_path: str | None, config_path: str | None) -> None:
    """Show the chain of datasets from a dataset (or a run's last output) back to the input files.

    \b
    Example:
        crucible lineage extract-3f2a9c1b0d4e
        crucible lineage latest --files
    """
    wh = _warehouse(warehouse_path, config_path)
    if wh.dataset(ref) is None:
        run = wh.resolve_run(ref)
        outputs = [s for s in wh.stage_runs(run["run_id"]) if s["output_dataset_id"]]
        if not outputs:
            raise WarehouseError(f"run {run['run_id']} produced no dataset")
        ref = outputs[-1]["output_dataset_id"]
    chain = wh.lineage(ref)
    console.print(_table(f"lineage of {ref}", chain,
                         ["depth", "dataset_id", "stage", "records", "bytes", "shards", "fingerprint", "uri"]))
    if files:
        for d in chain:
            console.print(_table(d["dataset_id"], wh.dataset_files(d["dataset_id"]),
                                 ["path", "records", "bytes", "content_hash"]))


@main.command()
@click.argument("query")
@click.option("--json", "as_json", is_flag=True, help="Print rows as JSON lines.")
@warehouse_option
@_handle_errors
def sql(query: str, as_json: bool, warehouse_path: str | None, config_path: str | None) -> None:
    """Run a read-only SQL query on the warehouse, its tables and its document views.

    The views docs_<stage> (docs_ingest, docs_quality, ...), doc_drops and doc_lineage read the latest Parquet
    shards of each stage. The query runs on an in-memory copy of the warehouse, so however long it takes it never
    holds up a running pipeline; it cannot write, install extensions, or read files outside the work directory.

    \b
    Example:
        crucible sql "SELECT stage, reason, sum(docs) FROM drops GROUP BY ALL ORDER BY 3 DESC"
        crucible sql "SELECT * FROM doc_lineage WHERE NOT kept_extract LIMIT 5"
    """
    rows = _warehouse(warehouse_path, config_path).user_query(query)
    if as_json:
        for r in rows:
            click.echo(json.dumps(r, default=str))
    elif rows:
        console.print(_table("", rows, list(rows[0])))


@main.group()
def config() -> None:
    """Inspect configuration files.

    \b
    Example:
        crucible config show configs/demo.toml
    """


@config.command("show")
@click.argument("config_file", metavar="CONFIG", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of TOML.")
@_handle_errors
def config_show(config_file: str, as_json: bool) -> None:
    """Print the resolved config, every default filled in, with relative paths made absolute.

    The TOML it prints loads back as the same config.

    \b
    Example:
        crucible config show configs/demo.toml
        crucible config show configs/demo.toml --json
    """
    cfg = load_config(config_file)
    if as_json:
        click.echo(json.dumps(cfg.to_dict(), indent=2))
        return
    click.echo(f"# {cfg.source}  (config hash {cfg.digest()[:12]})\n")
    click.echo(to_toml(cfg.to_dict()))


@main.group()
def benchmarks() -> None:
    """Benchmark sets for decontamination and evaluation (CORE JSONL formats).

    Without a configured directory Crucible uses a small smoke set it writes itself; the real 7 sets are fetched
    from a URL that serves <task>.jsonl files.

    \b
    Example:
        crucible benchmarks fetch --url https://example.org/core/ --dest data/benchmarks
        crucible benchmarks check data/benchmarks
    """


@benchmarks.command("fetch")
@click.option("--url", envvar="CRUCIBLE_BENCHMARKS_URL", required=True,
              help="Base URL serving <task>.jsonl (or set CRUCIBLE_BENCHMARKS_URL).")
@click.option("--dest", type=click.Path(file_okay=False), required=True, help="Directory to write the files into.")
@click.option("--task", "tasks", multiple=True, help="Only these tasks (repeatable); default: all 7.")
@_handle_errors
def benchmarks_fetch(url: str, dest: str, tasks: tuple[str, ...]) -> None:
    """Download the benchmark sets, validate every line, and write each file atomically.

    Then point decontaminate.benchmarks_dir at DEST.

    \b
    Example:
        crucible benchmarks fetch --url http://mirror.local/core --dest data/benchmarks
        crucible benchmarks fetch --url http://mirror.local/core --dest data/benchmarks --task copa --task piqa
    """
    from tasks.evalsets import fetch

    for path in fetch(url, Path(dest), list(tasks) or None):
        console.print(f"{path}", highlight=False)


@benchmarks.command("smoke")
@click.argument("dest", type=click.Path(file_okay=False))
@_handle_errors
def benchmarks_smoke(dest: str) -> None:
    """Write Crucible's own small smoke set (a few items per task, in the real formats) into DEST.

    \b
    Example:
        crucible benchmarks smoke work/benchmarks/smoke
    """
    from tasks.evalsets import write_smoke

    console.print(f"wrote {write_smoke(Path(dest))}", highlight=False)


@benchmarks.command("check")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@_handle_errors
def benchmarks_check(directory: str) -> None:
    """Validate every <task>.jsonl in DIRECTORY and count its items; a bad line is named by file and line.

    \b
    Example:
        crucible benchmarks check ../shared/benchmarks
    """
    from tasks.evalsets import TASKS, benchmark_files, item_kind, read_items

    rows = []
    for f in benchmark_files(Path(directory)):
        items = read_items(f)
        spec = TASKS.get(f.stem)
        rows.append({"task": f.stem, "items": len(items), "format": item_kind(items[0]) if items else "",
                     "known task": "yes" if spec else "no"})
    console.print(_table(f"benchmarks in {directory}", rows, ["task", "items", "format", "known task"]))


def _dataset_dir(ref: str, stage: str, warehouse_path: str | None, config_path: str | None) -> Path:
    """A directory as it is, 'latest' (the stage's newest output) or a dataset id of that stage."""
    if Path(ref).is_dir():
        return Path(ref)
    wh = _warehouse(warehouse_path, config_path)
    found = wh.latest_dataset(stage) if ref == "latest" else wh.dataset(ref)
    if found is None or found["stage"] != stage:
        raise WarehouseError(f"no {stage} dataset {ref!r} in {wh.path}")
    return Path(found["uri"])


@main.command("check-shards")
@click.argument("dataset", metavar="DATASET")
@warehouse_option
@_handle_errors
def check_shards(dataset: str, warehouse_path: str | None, config_path: str | None) -> None:
    """Check a tokenize dataset's shards: hashes, index length, separators, token ids and dtype.

    DATASET is a dataset id (see `crucible lineage`), 'latest' (the newest tokenize output) or a directory.
    Fails with the shard and position of the first problem.

    \b
    Example:
        crucible check-shards latest
        crucible check-shards tokenize-3f2a9c1b0d4e
        crucible check-shards work/datasets/tokenize/3f2a9c1b0d4e1234
    """
    from tasks.token_shards import ShardCheckError
    from tasks.tokenize import TokenizeStage

    directory = _dataset_dir(dataset, "tokenize", warehouse_path, config_path)
    try:
        rows = TokenizeStage.check(directory)
    except ShardCheckError as err:
        _fail(f"{directory}: {err}")
    console.print(_table(f"token shards in {directory}", rows, ["shard", "documents", "tokens"]))
    console.print(f"{len(rows)} shards check out", highlight=False)


@main.command("export")
@click.argument("checkpoint", metavar="CHECKPOINT")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Replace an earlier export in OUT_DIR (never a directory holding "
                                            "anything else).")
@warehouse_option
@_handle_errors
def export_cmd(checkpoint: str, out_dir: str, force: bool, warehouse_path: str | None,
               config_path: str | None) -> None:
    """Write a checkpoint as a Hugging Face LlamaForCausalLM directory (safetensors, config, tokenizer).

    CHECKPOINT is a checkpoint dataset id (see `crucible lineage`), 'latest' (the newest train output) or a
    checkpoint directory. transformers' AutoModelForCausalLM and AutoTokenizer load OUT_DIR offline. A model with an
    option Llama cannot express (qk_norm, relu2, norm_weight = false, logit_softcap) is refused with the reasons.
    OUT_DIR must be new or empty; --force replaces an earlier export there, and nothing else is ever deleted (a
    directory holding other files, the current directory and the home directory are refused).

    \b
    Example:
        crucible export latest exported/
        crucible export latest exported/ --force
        crucible export checkpoint-3f2a9c1b0d4e-0000200 exported/
        crucible export work/train/3f2a9c1b0d4e1234/checkpoints/step-0000200 exported/
    """
    from model.export import ExportError, export

    directory = _dataset_dir(checkpoint, "train", warehouse_path, config_path)
    try:
        written = export(directory, Path(out_dir), force=force)
    except ExportError as err:
        _fail(str(err))
    console.print(f"exported {directory} to {written}", highlight=False)


@main.command("report")
@click.argument("run_ref", metavar="RUN", default="latest")
@click.option("--compare", "compare", nargs=2, metavar="RUN_A RUN_B",
              help="Instead, put two runs side by side: config diff, funnel, curves and eval deltas.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Directory to write into (default: <work_dir>/reports/<run id> or compare-<a>-<b>).")
@warehouse_option
@_handle_errors
def report_cmd(run_ref: str, compare: tuple[str, str] | None, out_dir: str | None, warehouse_path: str | None,
               config_path: str | None) -> None:
    """Regenerate a run's report: report.md (plots in images/) and a self-contained report.html.

    RUN is a run id, a unique prefix of one, or 'latest'. With --compare RUN_A RUN_B it writes compare.md and
    compare.html instead. Works while a pipeline runs (it only reads).

    \b
    Example:
        crucible report latest
        crucible report run-20261124-040032 --out /tmp/report
        crucible report --compare run-20261124-040032 latest
    """
    from tasks.report import write_run_report
    from tasks.report import write_comparison
    from warehouse.report import report_data

    wh = _warehouse(warehouse_path, config_path)
    base = Path(load_config(config_path).report.dir) if config_path else wh.path.parent / "reports"
    if compare:
        a, b = (wh.resolve_run(r)["run_id"] for r in compare)
        target = Path(out_dir) if out_dir else base / f"compare-{a.removeprefix('run-')}-{b.removeprefix('run-')}"
        md, page = write_comparison(report_data(wh, a), report_data(wh, b), target)
    else:
        run = wh.resolve_run(run_ref)
        md, page = write_run_report(wh, run["run_id"], Path(out_dir) if out_dir else base / run["run_id"])
    console.print(f"wrote {md} and {page}", highlight=False)


# ---------------------------------------------------------------------------------------------------------------
# Watching and scheduling


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@main.command("dashboard")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on. Anything but loopback also needs --public.")
@click.option("--port", default=8642, show_default=True, type=int, help="Port to listen on.")
@click.option("--public", is_flag=True, help="Allow a non-loopback --host (the dashboard has no login).")
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME",
              help="Another name the dashboard is reached by (requests naming any other host get 400).")
@warehouse_option
@_handle_errors
def dashboard_cmd(host: str, port: int, public: bool, allow_hosts: tuple[str, ...], warehouse_path: str | None,
                  config_path: str | None) -> None:
    """Serve the live dashboard: runs and their stages as they happen, the data funnel, training curves that move
    while training runs, evaluation tables, lineage from each checkpoint back to its inputs, and links into the
    Prefect UI (PREFECT_UI_URL, else PREFECT_API_URL without /api, else http://127.0.0.1:4200).

    It only reads the warehouse, for milliseconds at a time, so it runs beside a pipeline; when the pipeline holds
    the file longer, it shows its last snapshot, marked stale. Every asset is served by the dashboard itself. It
    answers only requests that name it by a loopback name, the --host address or an --allow-host name.

    \b
    Example:
        crucible dashboard                              # http://127.0.0.1:8642
        crucible dashboard -c configs/demo.toml --port 9000
        crucible dashboard --host 0.0.0.0 --public      # e.g. inside a container
        crucible dashboard --host 0.0.0.0 --public --allow-host dash.example.org
    """
    from flows.dashboard import serve

    if not _loopback(host) and not public:
        raise click.UsageError(f"--host {host} listens beyond this machine; add --public to mean it")
    wh = _warehouse(warehouse_path, config_path)
    console.print(f"dashboard on http://{host}:{port}/ reading {wh.path} (Ctrl-C stops it)", highlight=False)
    serve(wh.path, host, port, allow_hosts)

@main.command("serve")
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--cron", help='Run the pipeline on this cron schedule, e.g. "0 3 * * *" (03:00 every day).')
@click.option("--interval", type=click.FloatRange(min=1), help="... or every this many seconds.")
@click.option("--to", "last", type=click.Choice(ORDER), help="Scheduled runs stop after this stage.")
@click.option("--limit", default=1, show_default=True, type=click.IntRange(min=1),
              help="Flow runs this process executes at once.")
@_handle_errors
def serve_cmd(config: str, cron: str | None, interval: float | None, last: str | None, limit: int) -> None:
    """Register Prefect deployments and execute their runs until stopped (Ctrl-C pauses the schedule).

    Deployments: crucible-scheduled-pipeline/<config name> runs the pipeline on the schedule, recorded with
    trigger 'schedule' (incremental: only new or changed pages are crawled and ingested, and dedup drops what
    earlier runs accepted); crucible-stage-rerun/<config name>-<stage>, one per stage, reruns a stage alone from the
    Prefect UI ("Run" on the deployment; its 'input' parameter picks a run or a dataset, default latest).

    Schedules need a Prefect server, whose scheduler creates the runs: start one with `prefect server start` (UI
    and API on http://127.0.0.1:4200) and point Crucible at it with PREFECT_API_URL.

    \b
    Example:
        prefect server start &                       # the UI: http://127.0.0.1:4200
        export PREFECT_API_URL=http://127.0.0.1:4200/api
        crucible serve configs/demo.toml --cron "0 3 * * *"
        crucible serve configs/demo.toml --interval 3600 --to tokenize
    """
    if not cron and not interval:
        raise click.UsageError("give a schedule: --cron EXPR or --interval SECONDS")
    if cron and interval:
        raise click.UsageError("give --cron or --interval, not both")
    cfg = load_config(config)
    configure_prefect(cfg.work_dir)
    _show_progress_lines()
    from prefect.settings import get_current_settings

    api = get_current_settings().api.url
    if not api:
        _fail("schedules need a Prefect server, and none is configured: run `prefect server start` in another "
              "terminal, then `export PREFECT_API_URL=http://127.0.0.1:4200/api` and run this again")
    from flows.schedules import serve

    console.print(f"serving {config} against {api} (Ctrl-C stops and pauses the schedule)", highlight=False)
    serve(config, cron=cron, interval=interval, to_stage=last, limit=limit)


if __name__ == "__main__":
    main()
