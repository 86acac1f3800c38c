"""The ``crucible`` commands that follow lineage: the chain of datasets behind a dataset (``lineage``), and exactly
which documents trained a checkpoint or which checkpoints trained on a document (``provenance``)."""
from __future__ import annotations

import json
import os

import click
from rich import box
from rich.markup import escape
from rich.table import Table

from flows.cli_base import console, fmt, handle_errors, main, rich_table, warehouse_from, warehouse_option
from warehouse.lineage import WarehouseError


@main.command()
@click.argument("ref", metavar="DATASET|RUN")
@click.option("--files", is_flag=True, help="Also list every shard and input file.")
@click.option("--json", "as_json", is_flag=True, help="One JSON line per dataset, every field whole (with --files, "
                                                      "its files too).")
@warehouse_option
@handle_errors
def lineage(ref: str, files: bool, as_json: bool, warehouse_path: str | None, config_path: str | None) -> None:
    """Show the chain of datasets from a dataset (or a run's checkpoint) back to the input files.

    For a run (or 'latest'), the chain starts at the checkpoint it trained, else at its last output. Paths are shown
    under the work directory and fingerprints and hashes by their first 12 characters; --json gives them whole.

    \b
    Example:
        crucible lineage extract-3f2a9c1b0d4e
        crucible lineage latest --files
        crucible lineage latest --json | jq -r .fingerprint
    """
    wh = warehouse_from(warehouse_path, config_path)
    if wh.dataset(ref) is None:
        run = wh.resolve_run(ref)
        outputs = [s for s in wh.stage_runs(run["run_id"]) if s["output_dataset_id"]]
        if not outputs:
            raise WarehouseError(f"run {run['run_id']} produced no dataset")
        trained = [s for s in outputs if s.get("role") == "training"]
        ref = (trained or outputs)[-1]["output_dataset_id"]
    chain = wh.lineage(ref)
    if as_json:
        for d in chain:
            click.echo(json.dumps({**d, **({"files": wh.dataset_files(d["dataset_id"])} if files else {})},
                                  default=str))
        return
    base = common_dir([d["uri"] for d in chain])
    wide = console.width >= 110  # room for a "where" column (else --files says where each dataset is)
    table = compact_table(f"lineage of {ref}" + (f" (under {base})" if base and wide else ""),
                          ["depth", "dataset", "records", "size", "shards", "fingerprint"] + (["where"] if wide else []))
    for d in chain:
        table.add_row(str(d["depth"]), d["dataset_id"], fmt(d["records"]), size(d["bytes"]), fmt(d["shards"]),
                      (d["fingerprint"] or "")[:12], *([escape(relative(d["uri"], base))] if wide else []))
    console.print(table)
    if not wide and not files:
        console.print("[dim]where each dataset is: --files; whole fingerprints: --json[/dim]")
    if files:
        for d in chain:
            listed = compact_table(f"{d['dataset_id']} in {d['uri']}", ["file", "records", "size", "sha256"])
            for f in wh.dataset_files(d["dataset_id"]):
                listed.add_row(escape(relative(f["path"], d["uri"]) if is_under(f["path"], d["uri"])
                                      else relative(f["path"], base)),
                               fmt(f["records"]), size(f["bytes"]), (f["content_hash"] or "")[:12])
            console.print(listed)


def common_dir(uris: list[str | None]) -> str | None:
    """The deepest directory that every absolute path among ``uris`` is under (None: none, or only '/')."""
    paths = [u for u in uris if u and u.startswith("/")]
    if not paths:
        return None
    common = os.path.commonpath(paths)
    if any(p == common for p in paths):  # a dataset that is the common directory itself: its parent
        common = os.path.dirname(common)
    return common if common not in ("/", "") else None


def is_under(path: str, directory: str | None) -> bool:
    return bool(directory) and path.startswith(directory.rstrip("/") + "/")


def relative(path: str | None, base: str | None) -> str:
    """``path`` with ``base/`` taken off wherever it appears (a source dataset's uri names several paths)."""
    if not path or not base:
        return path or ""
    return path.replace(base.rstrip("/") + "/", "") or "."


def size(n: int | None) -> str:
    if n is None:
        return ""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def compact_table(title: str, columns: list[str]) -> Table:
    """A table that fits a terminal: no box, numbers right-aligned, short columns whole, paths folded."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False,
                  padding=(0, 0, 0, 1))
    for c in columns:
        numeric = c in ("depth", "records", "size", "shards")
        table.add_column(c, justify="right" if numeric else "left", overflow="fold",
                         no_wrap=c in ("depth", "records", "size", "shards", "fingerprint", "sha256"))
    return table


@main.command()
@click.argument("checkpoint", metavar="CHECKPOINT", required=False)
@click.option("--doc", "doc_id", metavar="DOC_ID", help="Which checkpoints trained on this document.")
@click.option("--url", metavar="URL", help="Which checkpoints trained on the documents fetched from this URL.")
@click.option("--item", metavar="TASK:N", help="Which documents held benchmark item N of TASK (0-based), and which "
                                               "checkpoints trained on them (it counts as contaminated there).")
@click.option("-n", "--limit", default=20, show_default=True, help="Documents to list (0: all).")
@click.option("--seen", is_flag=True, help="Only documents the training saw.")
@click.option("--json", "as_json", is_flag=True, help="Print documents as JSON lines.")
@warehouse_option
@handle_errors
def provenance(checkpoint: str | None, doc_id: str | None, url: str | None, item: str | None, limit: int, seen: bool,
               as_json: bool, warehouse_path: str | None, config_path: str | None) -> None:
    """Exactly which documents trained a checkpoint, or which checkpoints trained on a document.

    CHECKPOINT is a checkpoint dataset id or 'latest' (the newest train output). Each document comes with its
    split (train or val), how many training rows took tokens from it (0: never reached, or validation) and its
    source (URL, WARC file and offset), from that checkpoint's own datasets; the stage chain is printed first.

    \b
    Example:
        crucible provenance latest
        crucible provenance checkpoint-3f2a9c1b0d4e-0000100 --seen -n 0 --json
        crucible provenance --doc 5b1f0c8e2a9d4e7f6a3b2c1d
        crucible provenance --url http://127.0.0.1:8765/json.html
        crucible provenance --item copa:0
    """
    from tasks.train import TrainStage  # imports torch: only here
    from warehouse.provenance import checkpoint_documents, checkpoints_trained_on, item_provenance

    wh = warehouse_from(warehouse_path, config_path)
    if item:
        task, _, number = item.rpartition(":")
        if not task or not number.isdigit():
            raise click.UsageError(f"--item takes TASK:N, e.g. copa:0, not {item!r}")
        found = item_provenance(wh, task, int(number))
        if as_json:
            click.echo(json.dumps(found, default=str))
            return
        console.print(rich_table(f"documents holding {item}", found["documents"],
                                 ["doc_id", "score", "segment", "ngram", "run_id", "stage_run_id"]))
        console.print(rich_table(f"checkpoints trained on them ({item} counts as contaminated in their evaluation)",
                                 found["checkpoints"], ["checkpoint", "run_id", "documents", "times_seen",
                                                        "evaluation"]))
        if not found["documents"]:
            console.print(f"no decontaminate run found {item} in any document", highlight=False)
        return
    if doc_id or url:
        if checkpoint:
            raise click.UsageError("give a CHECKPOINT, or --doc / --url, not both")
        rows = checkpoints_trained_on(wh, doc_id=doc_id, url=url)
        if as_json:
            for r in rows:
                click.echo(json.dumps(r, default=str))
            return
        console.print(rich_table(f"checkpoints trained on {doc_id or url}", rows,
                                 ["checkpoint", "run_id", "doc_id", "split", "times_seen", "tokens_seen"]))
        if not rows:
            console.print("no recorded checkpoint has it", highlight=False)
        return
    if not checkpoint:
        raise click.UsageError("give a CHECKPOINT (or 'latest'), or --doc DOC_ID, or --url URL")
    if checkpoint == "latest":
        found = wh.latest_dataset(TrainStage.name)
        if found is None:
            raise WarehouseError("no checkpoint yet: run the pipeline through train first")
        checkpoint = found["dataset_id"]
    result = checkpoint_documents(wh, checkpoint, limit=limit or None, seen_only=seen)
    if as_json:
        for r in result["documents"]:
            click.echo(json.dumps(r, default=str))
        return
    console.print(rich_table(f"stage chain of {checkpoint}", result["chain"],
                             ["depth", "dataset_id", "stage", "records", "bytes"]))
    console.print(rich_table("documents by split", result["summary"],
                             ["split", "documents", "seen", "times_seen", "tokens_seen"]))
    console.print(rich_table(f"documents ({'seen, ' if seen else ''}most seen first"
                             f"{f', first {limit}' if limit else ''})", result["documents"],
                             ["doc_id", "split", "source", "repeats", "times_seen", "tokens_seen", "tokens", "url",
                              "warc_file", "warc_offset"]))
