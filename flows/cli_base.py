"""The ``crucible`` command group and what its commands share: errors as one line, tables, where the warehouse is.

flows/cli.py adds the commands that run and watch the pipeline, flows/cli_read.py those that read what it
recorded. Every command's --help carries an example.
"""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable

import click
from rich.console import Console
from rich.table import Table

from tasks.config import ConfigError, load_config
from warehouse.lineage import Warehouse, WarehouseError

console = Console(width=None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "160")))
REPO = Path(__file__).resolve().parents[1]


def fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    sys.exit(1)


def handle_errors(fn: Callable) -> Callable:
    """Expected failures print one clear message and exit 1, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ConfigError, WarehouseError, FileNotFoundError, ValueError) as err:
            fail(str(err))
    return wrapper


def warehouse_option(fn: Callable) -> Callable:
    """--warehouse PATH or --config CONFIG: where the read commands find the DuckDB file."""
    fn = click.option("-w", "--warehouse", "warehouse_path", type=click.Path(dir_okay=False), default=None,
                      envvar="CRUCIBLE_WAREHOUSE", help="DuckDB file [default: work/warehouse.duckdb].")(fn)
    fn = click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), default=None,
                      help="Take the warehouse location from this config.")(fn)
    return fn


def warehouse_from(warehouse_path: str | None, config_path: str | None) -> Warehouse:
    if warehouse_path:
        return Warehouse(warehouse_path)
    if config_path:
        cfg = load_config(config_path)
        return Warehouse(cfg.warehouse_path, cfg.warehouse.lock_timeout_s)
    return Warehouse(Path("work") / "warehouse.duckdb")


def fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    if hasattr(value, "strftime"):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def rich_table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> Table:
    table = Table(title=title, title_justify="left", show_lines=False)
    for c in columns:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*[fmt(r.get(c)) for c in columns])
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
