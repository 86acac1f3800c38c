"""The ``crucible`` commands that read what runs recorded: runs, show, lineage, sql, config, benchmarks,
check-shards, export and report. They open the warehouse read-only (through a snapshot while a pipeline writes)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from flows.cli_base import (console, fail, handle_errors, main, rich_table, warehouse_from,  # noqa: F401
                            warehouse_option)
from tasks.config import load_config, to_toml
from warehouse.lineage import Warehouse, WarehouseError
from warehouse.sources import source_overview

@main.command()
@click.option("-n", "--limit", default=20, show_default=True, help="How many runs to list.")
@warehouse_option
@handle_errors
def runs(limit: int, warehouse_path: str | None, config_path: str | None) -> None:
    """List pipeline runs, newest first, with their status and cache hits.

    \b
    Example:
        crucible runs
        crucible runs -n 5 --config configs/demo.toml
    """
    rows = warehouse_from(warehouse_path, config_path).runs(limit)
    for r in rows:
        r["stages"] = f"{r['stage_runs']} ({r['cache_hits']} cached)"
    console.print(rich_table("pipeline runs", rows, ["run_id", "trigger", "status", "started_at", "ended_at", "stages",
                                                 "code_version"]))


def print_run(wh: Warehouse, run: dict[str, Any]) -> None:
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
    console.print(rich_table("stages", stages, ["stage", "status", "cache", "docs_in", "docs_out", "bytes_in", "bytes_out",
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
            table = scores if f["role"] == "evaluation" else per_task
            table.setdefault(task, {"benchmark": task})[kind.replace("_", " ")] = value
        elif figure != "seconds" and "/" not in figure:  # share/<source>…: in the per-source table
            facts.append({"stage": f["stage"], "role": f["role"], "figure": figure.replace("_", " "), "value": value})
    if facts:
        console.print(rich_table("stage figures", facts, ["stage", "figure", "value"]))
    if per_task:
        console.print(rich_table("contamination per benchmark", list(per_task.values()),
                             ["benchmark", "items", "contaminated items"]))
    if scores:
        core = next((f["value"] for f in facts if f["role"] == "evaluation" and f["figure"] == "core7"), None)
        rows = sorted(scores.values(), key=lambda r: r["benchmark"])
        rows.append({"benchmark": "CORE-7 (mean centered)", "centered": core})
        console.print(rich_table("benchmarks (centered = (accuracy - baseline) / (1 - baseline))", rows,
                             ["benchmark", "items", "accuracy", "centered", "accuracy clean",
                              "contaminated items", "accuracy contaminated"]))
    print_sources(wh, run["run_id"])
    funnel = wh.funnel(run["run_id"])
    if funnel:
        for f in funnel:
            f["kind"] = "dropped" if f["dropped"] else "noted"
            f["count"], f["of"] = f["docs"], f["counts"] or "documents"
        console.print(rich_table("funnel (per stage and reason: documents dropped, and what was noted)",
                                 funnel, ["stage", "reason", "kind", "count", "of", "bytes"]))


def print_sources(wh: Warehouse, run_id: str) -> None:
    """Documents per source after each stage, the mixture at tokenize, and the drops per source."""
    overview = source_overview(wh, run_id)
    if not overview["rows"]:
        return
    rows = []
    for r in overview["rows"]:
        row = {"source": r["source"], "in": r["docs_in"], **{s: r.get(f"out.{s}") for s in overview["stages"]}}
        if "tokens" in r:
            row.update({"tokens": r["tokens"], "target": f"{r['target_share']:.1%}" if r.get("target_share") else "",
                        "share": f"{r['share']:.1%}", "epochs": round(r["epochs"], 2), "val docs": r["val_docs"]})
        rows.append(row)
    columns = ["source", "in", *overview["stages"]] + (["tokens", "target", "share", "epochs", "val docs"]
                                                       if any("tokens" in r for r in rows) else [])
    console.print(rich_table("sources (documents after each stage; the mixture at tokenize)", rows, columns))
    if overview["drops"]:
        console.print(rich_table("drops per source", overview["drops"], ["stage", "source", "reason", "docs", "bytes"]))


@main.command()
@click.argument("run_ref", metavar="RUN", default="latest")
@warehouse_option
@handle_errors
def show(run_ref: str, warehouse_path: str | None, config_path: str | None) -> None:
    """Show one run: its stages, counts, timings, cache hits, every figure per source and the drop funnel.

    RUN is a run id, a unique prefix of one, or 'latest'.

    \b
    Example:
        crucible show latest
        crucible show run-20261123-101500-ab12cd
    """
    wh = warehouse_from(warehouse_path, config_path)
    print_run(wh, wh.resolve_run(run_ref))


@main.command()
@click.argument("query")
@click.option("--json", "as_json", is_flag=True, help="Print rows as JSON lines.")
@warehouse_option
@handle_errors
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
    rows = warehouse_from(warehouse_path, config_path).user_query(query)
    if as_json:
        for r in rows:
            click.echo(json.dumps(r, default=str))
    elif rows:
        console.print(rich_table("", rows, list(rows[0])))


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
@handle_errors
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
@handle_errors
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
@handle_errors
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
@handle_errors
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
    console.print(rich_table(f"benchmarks in {directory}", rows, ["task", "items", "format", "known task"]))


def _dataset_dir(ref: str, stage: str, warehouse_path: str | None, config_path: str | None) -> Path:
    """A directory as it is, 'latest' (the stage's newest output) or a dataset id of that stage."""
    if Path(ref).is_dir():
        return Path(ref)
    wh = warehouse_from(warehouse_path, config_path)
    found = wh.latest_dataset(stage) if ref == "latest" else wh.dataset(ref)
    if found is None or found["stage"] != stage:
        raise WarehouseError(f"no {stage} dataset {ref!r} in {wh.path}")
    return Path(found["uri"])


@main.command("check-shards")
@click.argument("dataset", metavar="DATASET")
@warehouse_option
@handle_errors
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

    directory = _dataset_dir(dataset, TokenizeStage.name, warehouse_path, config_path)
    try:
        rows = TokenizeStage.check(directory)
    except ShardCheckError as err:
        fail(f"{directory}: {err}")
    console.print(rich_table(f"token shards in {directory}", rows, ["shard", "documents", "tokens"]))
    console.print(f"{len(rows)} shards check out", highlight=False)


@main.command("export")
@click.argument("checkpoint", metavar="CHECKPOINT")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Replace an earlier export in OUT_DIR (never a directory holding "
                                            "anything else).")
@warehouse_option
@handle_errors
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
    from tasks.train import TrainStage

    directory = _dataset_dir(checkpoint, TrainStage.name, warehouse_path, config_path)
    try:
        written = export(directory, Path(out_dir), force=force)
    except ExportError as err:
        fail(str(err))
    console.print(f"exported {directory} to {written}", highlight=False)


@main.command("report")
@click.argument("run_ref", metavar="RUN", default="latest")
@click.option("--compare", "compare", nargs=2, metavar="RUN_A RUN_B",
              help="Instead, put two runs side by side: config diff, funnel, curves and eval deltas.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Directory to write into (default: <work_dir>/reports/<run id> or compare-<a>-<b>).")
@warehouse_option
@handle_errors
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

    wh = warehouse_from(warehouse_path, config_path)
    base = Path(load_config(config_path).report.dir) if config_path else wh.path.parent / "reports"
    if compare:
        a, b = (wh.resolve_run(r)["run_id"] for r in compare)
        target = Path(out_dir) if out_dir else base / f"compare-{a.removeprefix('run-')}-{b.removeprefix('run-')}"
        md, page = write_comparison(report_data(wh, a), report_data(wh, b), target)
    else:
        run = wh.resolve_run(run_ref)
        md, page = write_run_report(wh, run["run_id"], Path(out_dir) if out_dir else base / run["run_id"])
    console.print(f"wrote {md} and {page}", highlight=False)
