"""The stages in pipeline order: the one place that says which stage reads which.

Each stage reads the output of the one before it (``upstream``, set here on every class; crawl reads the web, and
ingest reads a crawl's WARC files when crawl.seeds are set, else only ``ingest.inputs``). A stage its config can
switch off (crawl without seeds, select without a classifier or perplexity filter) is ``optional``: the stage
after it then reads the one before it (``upstreams`` lists every stage a stage may read, nearest first). A new stage
is a class in tasks/<stage>.py, added to ``PIPELINE`` here and to the config tree.
"""
from __future__ import annotations

from typing import Any

from tasks.crawl import CrawlStage
from tasks.decontaminate import DecontaminateStage
from tasks.dedup import DedupStage
from tasks.extract import ExtractStage
from tasks.ingest import IngestStage
from tasks.language import LanguageStage
from tasks.quality import QualityStage
from tasks.evaluate import EvaluateStage
from tasks.report import ReportStage
from tasks.select import SelectStage
from tasks.tokenize import TokenizeStage
from tasks.train import TrainStage

PIPELINE: tuple[type[Any], ...] = (CrawlStage, IngestStage, ExtractStage, LanguageStage, QualityStage, DedupStage,
                                   SelectStage, DecontaminateStage, TokenizeStage, TrainStage, EvaluateStage, ReportStage)
STAGES: dict[str, type[Any]] = {cls.name: cls for cls in PIPELINE}
ORDER: list[str] = list(STAGES)
for _before, _cls in zip((None, *PIPELINE), PIPELINE):
    _cls.upstream = _before.name if _before is not None else None
    _cls.upstreams = ((_before.name, *(_before.upstreams if _before.optional else ())) if _before is not None else ())


def stage_class(name: str) -> type[Any]:
    try:
        return STAGES[name]
    except KeyError:
        raise ValueError(f"unknown stage {name!r}; stages are: {', '.join(ORDER)}") from None


def stage_range(first: str | None = None, last: str | None = None) -> list[str]:
    """The stages from ``first`` to ``last`` inclusive, in pipeline order."""
    lo = ORDER.index(stage_class(first).name) if first else 0
    hi = ORDER.index(stage_class(last).name) if last else len(ORDER) - 1
    if lo > hi:
        raise ValueError(f"--from {first} comes after --to {last}")
    return ORDER[lo:hi + 1]
