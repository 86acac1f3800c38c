"""The ``crucible`` command line: the commands that run, watch and schedule the pipeline live here, those that read
the warehouse in flows/cli_read.py; flows/cli_base.py holds the group. Every command's --help carries an example."""
from __future__ import annotations

import contextlib
import logging
import signal
import socket
import time
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from flows import configure_prefect
from flows.cli_lineage import lineage  # noqa: F401 (its commands join the group)
from flows.cli_nodes import train_node  # noqa: F401 (train-node joins the group)
from flows.cli_read import print_run  # its commands join the group too
from flows.cli_base import REPO, console, fail, handle_errors, main, warehouse_from, warehouse_option  # noqa: F401
from tasks.config import load_config
from tasks.registry import ORDER, stage_range
from warehouse.lineage import Warehouse

STAGES = f"STAGE is one of: {', '.join(ORDER)}."  # a usage line listing them all wraps mid-word

DEMO_CONFIG = REPO / "configs" / "demo.toml"

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
    from flows.pipeline import configured, reads_upstream, stage_input

    if explicit and not reads_upstream(cfg, stage):
        upstream = configured(cfg, stage).upstream
        why = configured(cfg, upstream).disabled_because if upstream else "it is the first stage"
        raise click.UsageError(f"{stage} reads no upstream dataset ({why}); it takes no --input")
    return stage_input(cfg, stage, ref)


def _after_run(cfg, run_id: str) -> None:
    wh = Warehouse(cfg.warehouse_path, cfg.warehouse.lock_timeout_s)
    print_run(wh, wh.resolve_run(run_id))


@main.command(epilog=STAGES)
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--from", "first", type=click.Choice(ORDER), metavar="STAGE",
              help="Start at this stage, on its upstream's latest output.")
@click.option("--to", "last", type=click.Choice(ORDER), metavar="STAGE", help="Stop after this stage.")
@click.option("--trigger", type=click.Choice(["manual", "schedule", "rerun"]), default="manual", show_default=True,
              help="What started this run, as recorded in the warehouse (schedule implies --recrawl).")
@click.option("--recrawl", is_flag=True, help="Crawl again (conditional GETs) even if the crawl config is unchanged.")
@handle_errors
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
        fail(f"pipeline failed: {err}")
    _after_run(cfg, run_id)


@main.command(epilog=STAGES)
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--vary", "varies", multiple=True, required=True, metavar="KEY=V1,V2",
              help="A setting and its values, one variant each (repeat for every combination).")
@click.option("--seeds", default="0", show_default=True, help="Training seeds (train.seed), comma-separated.")
@click.option("--eval-source", required=True, help="The source whose held-out slice every variant is scored on.")
@click.option("--to", "last", type=click.Choice(ORDER), metavar="STAGE", default="evaluate", show_default=True,
              help="The last stage of each run (train: bpb only; evaluate: CORE-7 too).")
@handle_errors
def ablate(config: str, varies: tuple[str, ...], seeds: str, eval_source: str, last: str) -> None:
    """Run the pipeline once per variant and seed, at equal training tokens, and compare them.

    Each variant is CONFIG with one value of every --vary; stages the variants share are cache hits. Every run is
    scored by bits per byte on the held-out slice of --eval-source (give that source `epochs = 0` so that no
    variant trains on it) and, with --to evaluate, CORE-7. Every run uses one tokenizer: the first variant's
    (put the baseline first), unless the config sets tokenize.tokenizer_path. Prints the runs and each variant's mean and spread over
    the seeds, and writes them to <work_dir>/ablations/ablation-<time>.md and .json. Beside each run's bpb is what
    a unigram model of its training tokens scores on the same text: a run no better than that has learned only
    token frequencies, too little for a data change to show beyond them. Each run is in the warehouse
    too (`crucible report --compare RUN_A RUN_B`).

    \b
    Example:
        crucible ablate configs/selection_ablation.toml --vary select.classifier.enabled=false,true \\
            --seeds 0,1,2 --eval-source books
    """
    from flows.ablate import check_equal_tokens, run_ablation, shared_tokenizer, summarize, table, write_results
    from tasks.atomic import atomic_file, file_sha256

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise click.UsageError(f"--seeds {seeds!r}: write integers separated by commas, e.g. 0,1,2") from None
    stages = stage_range(None, last)

    def run_one(cfg) -> str:
        try:
            return _run_pipeline(cfg, stages, "manual", None)
        except Exception as err:
            fail(f"pipeline failed: {err}")

    def facts(cfg, run_id: str) -> dict[str, float]:
        wh = Warehouse(cfg.warehouse_path, cfg.warehouse.lock_timeout_s)
        got = {f["name"]: f["value"] for f in wh.stage_facts(run_id)}
        key = f"train.final_val_bpb/{eval_source}"
        if key not in got and "train.final_val_bpb" in got:  # training splits val per source only if 2+ hold out
            held = {f["source"] for f in wh.source_figures(run_id) if f.get("val_docs")}  # tokenize's figures
            if held == {eval_source}:
                got[key] = got["train.final_val_bpb"]
        tokens = wh.run_dataset(run_id, "tokenize")
        if tokens is not None:  # what token frequencies alone score there: has the model learned more?
            from model.data import unigram_bpb

            got["unigram_bpb"] = unigram_bpb(tokens["uri"], eval_source)
        return got

    cfg = load_config(config)
    say = lambda m: console.print(m, highlight=False)  # noqa: E731

    def tokenizer_of(base) -> Path:
        """Tokenize the first variant, and keep its tokenizer beside the ablation's results."""
        try:
            run_id = _run_pipeline(base, stage_range(None, "tokenize"), "manual", None)
        except Exception as err:
            fail(f"pipeline failed: {err}")
        wh = Warehouse(base.warehouse_path, base.warehouse.lock_timeout_s)
        made = Path(wh.run_dataset(run_id, "tokenize")["uri"]) / "_reduce" / "tokenizer.json"
        keep = cfg.work_dir / "ablations" / f"tokenizer-{file_sha256(made)[:12]}.json"
        keep.parent.mkdir(parents=True, exist_ok=True)
        if not keep.is_file():
            with atomic_file(keep) as tmp:
                shutil.copyfile(made, tmp)
        return keep.resolve()

    check_equal_tokens(cfg)
    fixed = shared_tokenizer(Path(config), list(varies), tokenizer_of, say)
    rows = run_ablation(Path(config), list(varies), seeds=seed_list, eval_source=eval_source, run=run_one,
                        facts=facts, say=say, fixed=fixed)
    summary = summarize(rows)
    console.print(table(rows, summary, eval_source), highlight=False, markup=False)
    md, js = write_results(cfg.work_dir / "ablations", rows, summary, eval_source,
                           {"config": config, "vary": list(varies), "seeds": seed_list, "to": last})
    console.print(f"wrote {md} and {js}", highlight=False)


@main.command(epilog=STAGES)
@click.argument("stage", type=click.Choice(ORDER), metavar="STAGE")
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--input", "input_ref", default=None, metavar="RUN_ID|DATASET_ID|latest",
              help="The upstream dataset to read [default: latest]. Crawl takes none; ingest takes a crawl dataset "
                   "when crawl.seeds are set, else reads ingest.inputs.")
@handle_errors
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
        run_id = _run_pipeline(cfg, [stage], "rerun", upstream, recrawl=True)  # a stage run alone looks again
    except Exception as err:
        fail(f"stage failed: {err}")
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
@handle_errors
def demo(config_path: str) -> None:
    """Serve Python's documentation with pydoc, crawl it, and run every stage on what was archived, mixed with a
    curated source: the docstrings of the installed standard library (a [[sources]] entry named 'docstrings',
    written to its inputs path here when it is missing).

    Needs no network: the site is a pydoc server on 127.0.0.1, started and stopped here. Run it again and the
    recrawl finds nothing new, so every later stage is a cache hit.

    \b
    Example:
        crucible demo
    """
    cfg = load_config(config_path)
    if not cfg.crawl.seeds:
        raise click.UsageError(f"{config_path} has no crawl.seeds to serve")
    for source in cfg.sources:
        if source.name == "docstrings" and source.format == "jsonl" and source.inputs:
            from flows.demo_data import write_docstrings

            write_docstrings(Path(source.inputs[0]), cfg.crawl.seeds[0].rstrip("/"))
    with pydoc_server(cfg.crawl.seeds[0]):
        try:
            run_id = _run_pipeline(cfg, stage_range(None, None), "manual", None)
        except Exception as err:
            fail(f"pipeline failed: {err}")
    _after_run(cfg, run_id)


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
@handle_errors
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
    wh = warehouse_from(warehouse_path, config_path)
    console.print(f"dashboard on http://{host}:{port}/ reading {wh.path} (Ctrl-C stops it)", highlight=False)
    serve(wh.path, host, port, allow_hosts)

@main.command("serve", epilog=STAGES)
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--cron", help='Run the pipeline on this cron schedule, e.g. "0 3 * * *" (03:00 every day).')
@click.option("--interval", type=click.FloatRange(min=1), help="... or every this many seconds.")
@click.option("--to", "last", type=click.Choice(ORDER), metavar="STAGE", help="Scheduled runs stop after this stage.")
@click.option("--limit", default=1, show_default=True, type=click.IntRange(min=1),
              help="Flow runs this process executes at once.")
@handle_errors
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
        fail("schedules need a Prefect server, and none is configured: run `prefect server start` in another "
              "terminal, then `export PREFECT_API_URL=http://127.0.0.1:4200/api` and run this again")
    from flows.schedules import serve

    console.print(f"serving {config} against {api} (Ctrl-C stops and pauses the schedule)", highlight=False)
    serve(config, cron=cron, interval=interval, to_stage=last, limit=limit)


if __name__ == "__main__":
    main()
