"""The crawl stage: crawl the seeds into WARC files under one directory per crawl job (tasks/crawler.py crawls).

A job is identified by its seeds and scope; every run of it adds WARC files only for pages that are new or
changed, so the job's dataset (all its WARC files) stays the same when the site did. Without a recrawl an
unchanged crawl config is a cache hit, so that rerunning the pipeline after changing a later stage compares like
with like; a recrawl (scheduled runs, `crucible stage crawl`, `run --recrawl`) sends conditional GETs and archives
only new or changed pages.

    from tasks.crawl import CrawlStage
    result = CrawlStage(cfg.crawl).run(out_dir, seen={})
"""
from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tasks.atomic import file_sha256
from tasks.config import CrawlConfig, stable_hash
from tasks.crawler import VISITED, Crawler, CrawlResult, SeenPage
from tasks.stage import Dataset, Input, Records, Stage, StageContext, StageResult

__all__ = ["CrawlStage", "Crawler", "SeenPage", "VISITED", "recover", "job_files"]


class CrawlStage(Stage):
    name = "crawl"
    optional = True
    disabled_because = "no crawl.seeds configured; ingest reads ingest.inputs"

    config: CrawlConfig

    @classmethod
    def code_roots(cls) -> list[str]:
        return [cls.__module__]

    def seeds(self) -> list[str]:
        seeds = list(self.config.seeds)
        if self.config.seeds_file:
            try:
                lines = self.config.seeds_file.read_text(encoding="utf-8").splitlines()
            except OSError as err:
                raise FileNotFoundError(f"crawl.seeds_file {self.config.seeds_file}: {err.strerror or err}") from None
            seeds += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        return seeds

    @property
    def enabled(self) -> bool:  # type: ignore[override]
        return bool(self.config.seeds or self.config.seeds_file)

    def job_id(self) -> str:
        c = self.config
        return stable_hash({"seeds": sorted(self.seeds()), "scope": c.scope, "allow": c.allow, "deny": c.deny})[:16]

    def run(self, out_dir: Path, seen: dict[str, SeenPage]) -> CrawlResult:
        out_dir.mkdir(parents=True, exist_ok=True)
        recover(out_dir)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        crawler = Crawler(self.config, out_dir, seen, f"crawl-{stamp}")
        t0 = time.monotonic()
        try:
            asyncio.run(crawler.crawl(self.seeds()))
        finally:
            warcs = crawler.finish()
        outcomes = Counter(row["outcome"] for row in crawler.log)
        return CrawlResult(warcs, crawler.log_files, dict(outcomes), dict(crawler.links), crawler.pages,
                           time.monotonic() - t0)

    # -- the lifecycle -------------------------------------------------------------------------------------------

    def stage_key(self, inp: Input, ctx: StageContext) -> str:
        """The job and its settings: the crawl reads the web, not a dataset."""
        return stable_hash({"stage": self.name, "job": self.job_id(), "config": self.params(),
                            "code": self.code_version()})

    def output_dir(self, ctx: StageContext, key: str) -> Path:
        return ctx.work_dir / "crawl" / self.job_id()

    def cached(self, ctx: StageContext, key: str, out_dir: Path) -> dict[str, Any] | None:
        if ctx.recrawl or ctx.warehouse is None:
            return None
        hit = ctx.warehouse.latest_output(key)
        if hit is None or not all(Path(f["path"]).is_file() for f in ctx.warehouse.dataset_files(hit["dataset_id"])):
            return None
        return hit

    def cache_note(self) -> str:
        return " (recrawl with `crucible stage crawl` or `run --recrawl`)"

    def execute(self, ctx: StageContext, inp: Input, out_dir: Path, key: str) -> StageResult:
        job = self.job_id()
        out_dir.mkdir(parents=True, exist_ok=True)
        recovered = ctx.load(Records("crawl_log", recover(out_dir), {"job": job}))
        if recovered:
            ctx.say(f"crawl: {recovered} fetches of an interrupted crawl recovered from its durable log parts")
        known = ctx.warehouse.seen_pages(job, VISITED) if ctx.warehouse is not None else []
        seen = {r["url"]: SeenPage(r["depth"], r["etag"], r["last_modified"], r["payload_digest"]) for r in known}
        ctx.say(f"crawl: job {job}, {len(self.seeds())} seeds, {len(seen)} pages known from earlier crawls")
        result = ctx.call("crawl", self.run, out_dir, seen)
        files = job_files(out_dir)
        fp = stable_hash([[Path(p).name, sha] for p, _, sha in files])
        output = Dataset(f"crawl-{fp[:12]}", self.name, job, str(out_dir), "warc", fp,
                         [(p, None, size, sha) for p, size, sha in files], [])
        archived = result.outcomes.get("archived", 0)
        return StageResult(
            output=output, units=1, shards_out=len(files), docs_in=result.pages, docs_out=archived,
            bytes_out=sum(size for _, size, _ in files),
            drops={k: v for k, v in result.outcomes.items() if k != "archived"},
            notes={f"link_{k}": v for k, v in result.links.items() if k != "seen"},  # a link met again is no news
            records=[Records("crawl_log", result.log_files, {"job": job})],
            message=f"crawl: {result.pages} pages fetched, {archived} archived, {len(result.warc_files)} new WARC "
                    f"files, {result.seconds:.1f}s")


def recover(out_dir: Path) -> list[Path]:
    """Clean what a killed crawl left in a job directory; returns the log parts that remain (all durable).

    A WARC file still under its temporary name was never finished: it goes, and with it a log part written for it
    just before the kill (a part whose WARC file does not exist). Every other part belongs to a finished WARC file
    or to the end of a crawl, so the pages it names are archived.
    """
    for tmp in out_dir.glob(".tmp-*"):
        tmp.unlink(missing_ok=True)
    parts = []
    for part in sorted(out_dir.glob("crawl-*.log.parquet")):
        name = part.name.removesuffix(".log.parquet")
        if not name.endswith("-rest") and not (out_dir / f"{name}.warc.gz").is_file():
            part.unlink()
            continue
        parts.append(part)
    return parts


def job_files(out_dir: Path) -> list[tuple[str, int, str]]:
    """(path, bytes, sha256) of every finished WARC file of a crawl job, in name order."""
    return [(str(p), p.stat().st_size, file_sha256(p)) for p in sorted(out_dir.glob("crawl-*.warc.gz"))]
