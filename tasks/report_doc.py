"""The report's document: blocks rendered twice, as Markdown (images as files beside it) and as one self-contained
HTML page (images inline as data URIs, no external URL), and its plots (matplotlib's Agg backend)."""
from __future__ import annotations

import base64
import html
import io
import re
from datetime import datetime
from typing import Any


class Doc:
    """Blocks rendered twice: Markdown (images as files) and HTML (images inline)."""

    def __init__(self) -> None:
        self.blocks: list[tuple[str, Any]] = []

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", (level, text)))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, columns: list[str], rows: list[list[Any]]) -> None:
        self.blocks.append(("table", (columns, rows)))

    def image(self, name: str, png: bytes, alt: str) -> None:
        self.blocks.append(("img", (name, png, alt)))

    def pre(self, text: str) -> None:
        self.blocks.append(("pre", text))

    def markdown(self) -> str:
        return "\n".join(_MARKDOWN[kind](value) for kind, value in self.blocks)

    def html(self, title: str) -> str:
        body = "".join(_HTML[kind](value) for kind, value in self.blocks)
        style = ("body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}"
                 "table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;"
                 "padding:3px 8px;text-align:left}th{background:#f3f3f3}img{max-width:100%}"
                 "pre{background:#f6f6f6;padding:1em;overflow-x:auto;white-space:pre-wrap}")
        return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
                f"<style>{style}</style></head><body>{body}</body></html>\n")


def _md_table(value: tuple[list[str], list[list[Any]]]) -> str:
    columns, rows = value
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _html_table(value: tuple[list[str], list[list[Any]]]) -> str:
    columns, rows = value
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>"


def _html_image(value: tuple[str, bytes, str]) -> str:
    data = base64.b64encode(value[1]).decode()
    return (f'<figure><img alt="{html.escape(value[2])}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(value[2])}</figcaption></figure>")


_MARKDOWN = {"h": lambda v: f"{'#' * v[0]} {v[1]}\n", "p": lambda v: f"{v}\n", "pre": lambda v: f"```\n{v}\n```\n",
             "table": _md_table, "img": lambda v: f"![{v[2]}](images/{v[0]}.png)\n"}
_HTML = {"h": lambda v: f"<h{v[0]}>{html.escape(v[1])}</h{v[0]}>", "p": lambda v: f"<p>{html.escape(v)}</p>",
         "pre": lambda v: f"<pre>{html.escape(v)}</pre>", "table": _html_table, "img": _html_image}


_TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d)\.\d+")


def _cell(value: Any) -> str:
    """A table cell as a reader wants it: counts with thousands separators and never in scientific notation,
    fractions to 4 significant digits, times to the second."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return str(value)
        if value.is_integer() and abs(value) < 1e18:
            return f"{int(value):,}"
        if abs(value) >= 1000:
            return f"{value:,.1f}"
        return f"{value:.4g}" if abs(value) >= 1e-4 else f"{value:.3e}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return _TIMESTAMP.sub(r"\1", str(value))


def _plot(series: dict[str, list[tuple[float, float]]], title: str, ylabel: str, logy: bool = False) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=100)
    for label, points in series.items():
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o" if len(points) < 30 else None, markersize=3, label=label)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _bars(labels: list[str], values: list[float], title: str, ylabel: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=100)
    ax.bar(labels, values, color="#4a7ab5")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.tick_params(axis="x", rotation=30)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
