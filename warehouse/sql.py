"""SQL text for what DuckDB cannot take as a bound parameter (file paths in read_parquet, COPY targets, ATTACH)."""
from __future__ import annotations

from pathlib import Path


def literal(value: str | Path) -> str:
    """A SQL string literal: quoted, with quotes inside doubled (a path may hold them)."""
    return "'" + str(value).replace("'", "''") + "'"


def literal_list(values: list[str] | list[Path]) -> str:
    """A SQL list of string literals, as read_parquet([...]) takes."""
    return "[" + ", ".join(literal(v) for v in values) + "]"
