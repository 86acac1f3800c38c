"""Extraction: the main text and title of each HTML document, with trafilatura.

Input: ingest shards. Output: the same source columns plus ``title`` and ``text``; ``html`` is dropped from here on.
WET conversion records (content_type text/plain) are already text and pass through. A page with no main text is a
counted drop (``extract_empty``), one that trafilatura cannot parse is ``extract_error``.

trafilatura can spin for minutes on pathological HTML, so pages are extracted in child processes whose CPU time is
capped per page (``cpu_time_limit_s``; tasks/extractors.py): a page over the cap is dropped as ``extract_timeout``
and the child is replaced. CPU time rather than wall time keeps the result independent of how loaded the machine is.
The children are the process's, lent to every unit: a unit sends its pages to its own child and to any idle one, so
the last unit of a stage runs on every core.
"""
from __future__ import annotations

import re
from collections import deque
from typing import Iterator

from tasks.config import ExtractConfig
from tasks.extractors import pool_for
from tasks.schemas import EXTRACT as SCHEMA, SOURCE_COLUMNS
from tasks.shards import DropLog, ShardResult, ShardWriter
from tasks.sharded import ShardedStage, Unit


MAX_PARSER_DEPTH = 255  # libxml2's HTML parser keeps no deeper elements (without XML_PARSE_HUGE)
_TAG = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9-]*)[^>]*?(/?)>")
_VOID = frozenset("area base br col embed hr img input link meta param source track wbr".split())


def nesting_depth(html: str) -> int:
    """The deepest element nesting in a page, counted from its tags (void and self-closed elements add none)."""
    depth = deepest = 0
    for closing, name, self_closed in _TAG.findall(html):
        if closing:
            depth = max(0, depth - 1)
        elif not self_closed and name.lower() not in _VOID:
            depth += 1
            deepest = max(deepest, depth)
    return deepest


class ExtractStage(ShardedStage):
    name = "extract"
    schema = SCHEMA
    size_column = "text"

    config: ExtractConfig

    def warm(self) -> None:
        pool_for(self.config).warm()

    def process(self, unit: Unit, writer: ShardWriter, drops: DropLog, result: ShardResult) -> None:
        rows: deque[dict] = deque()  # read, and waiting for their answers: the child is sent a page ahead

        def pages() -> Iterator[tuple[str, str | None] | None]:
            for row in self.input_rows(unit, SOURCE_COLUMNS + ["html"]):
                rows.append(row)
                yield None if row["content_type"] == "text/plain" else (row["html"] or "", row["url"])

        for status, value in pool_for(self.config).map(pages()):
            row = rows.popleft()
            html = row.pop("html") or ""
            result.docs_in += 1
            result.bytes_in += len(html)
            if status == "skip":  # WET and curated text: already text
                title, text = None, html
            elif status != "ok":
                drops.add_record(f"extract_{status}", row, nbytes=len(html), detail=str(value))
                continue
            else:
                title, text = value
            text = text.strip()
            if len(text) < self.config.min_text_chars:
                depth = nesting_depth(html) if len(html) > 10_000 else 0
                if depth > MAX_PARSER_DEPTH:  # libxml2 stops building the tree there: the text was out of reach
                    drops.add_record("extract_too_deep", row, nbytes=len(html), detail=f"elements nested {depth} deep")
                else:
                    drops.add_record("extract_empty", row, nbytes=len(html))
                continue
            writer.add({**row, "title": title, "text": text})
