"""Extraction: the main text and title of each HTML document, with trafilatura.

Input: ingest shards. Output: the same source columns plus ``title`` and ``text``; ``html`` is dropped from here on.
WET conversion records (content_type text/plain) are already text and pass through. A page with no main text is a
counted drop (``extract_empty``), one that trafilatura cannot parse is ``extract_error``.
"""
from __future__ import annotations

import logging

import pyarrow as pa
import trafilatura

from tasks.config import ExtractConfig
from tasks.ingest import SOURCE_FIELDS
from tasks.shards import DropLog, ShardResult, ShardWriter
from tasks.stage import Stage, Unit

SOURCE_COLUMNS = [f.name for f in SOURCE_FIELDS]
SCHEMA = pa.schema([*SOURCE_FIELDS, pa.field("title", pa.string()), pa.field("text", pa.large_string())])

logging.getLogger("trafilatura").setLevel(logging.CRITICAL)  # it logs every page it finds too short


class ExtractStage(Stage):
    name = "extract"
    upstream = "ingest"
    schema = SCHEMA
    size_column = "text"

    config: ExtractConfig

    def extract(self, html: str, url: str | None) -> tuple[str | None, str]:
        """(title, text) of one page; text is empty when trafilatura finds no main content."""
        cfg = self.config
        doc = trafilatura.bare_extraction(
            html, url=url, with_metadata=True, include_comments=cfg.include_comments,
            include_tables=cfg.include_tables, favor_precision=cfg.favor_precision,
            favor_recall=cfg.favor_recall, deduplicate=cfg.deduplicate)
        if doc is None:
            return None, ""
        return doc.title, doc.text or ""

    def process(self, unit: Unit, writer: ShardWriter, drops: DropLog, result: ShardResult) -> None:
        for row in self.input_rows(unit, SOURCE_COLUMNS + ["html"]):
            html = row.pop("html") or ""
            result.docs_in += 1
            result.bytes_in += len(html)
            where = {"doc_id": row["doc_id"], "url": row["url"], "warc_file": row["warc_file"],
                     "warc_offset": row["warc_offset"], "nbytes": len(html)}
            if row["content_type"] == "text/plain":
                title, text = None, html
            else:
                try:
                    title, text = self.extract(html, row["url"])
                except Exception as err:  # lxml and trafilatura raise many types on hostile HTML
                    drops.add("extract_error", detail=f"{type(err).__name__}: {err}", **where)
                    continue
            text = text.strip()
            if len(text) < self.config.min_text_chars:
                drops.add("extract_empty", **where)
                continue
            writer.add({**row, "title": title, "text": text})
