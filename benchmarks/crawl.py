"""Crawl throughput against a local site: the crawl stage against bare httpx fetching the same URLs.

    python benchmarks/crawl.py                         # 400 pages, per-host concurrency 4, 3 repeats
    python benchmarks/crawl.py --pages 1000 --per-host 8

The site is Python's http.server in its own process, serving generated HTML pages that link to each other. Both
sides fetch the same URLs with the same concurrency on one connection pool; the stage adds robots.txt, URL
normalization, scope checks, link extraction and WARC writing. Prints the median pages/s and the ratio.
"""
from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.config import CrawlConfig  # noqa: E402
from tasks.crawl import CrawlStage  # noqa: E402

PARAGRAPH = "<p>" + "A line of ordinary text that a crawler has to carry along. " * 40 + "</p>"


def make_site(root: Path, pages: int) -> None:
    for i in range(pages):
        links = "".join(f'<a href="/p{(i * 7 + k) % pages}.html">next {k}</a> ' for k in range(1, 11))
        (root / f"p{i}.html").write_text(f"<html><head><title>Page {i}</title></head><body><h1>Page {i}</h1>"
                                         f"{PARAGRAPH}{links}</body></html>")
    (root / "index.html").write_text("<html><body>" + "".join(f'<a href="/p{i}.html">{i}</a>' for i in range(pages))
                                     + "</body></html>")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def bare(urls: list[str], concurrency: int) -> int:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(limits=limits, trust_env=False) as client:
        async def get(url: str) -> int:
            async with sem:
                return len((await client.get(url)).content)
        await asyncio.gather(*(get(u) for u in urls))
    return len(urls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=400)
    parser.add_argument("--per-host", type=int, default=4, help="per-host concurrency for both sides")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        site.mkdir()
        make_site(site, args.pages)
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                                   "--directory", str(site)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(100):
                with socket.socket() as probe:
                    if probe.connect_ex(("127.0.0.1", port)) == 0:
                        break
                time.sleep(0.05)
            urls = [f"{base}/"] + [f"{base}/p{i}.html" for i in range(args.pages)]
            cfg = CrawlConfig(seeds=[base + "/"], private_hosts=[f"127.0.0.1:{port}"], delay_s=0,
                              concurrency=args.per_host, per_host_concurrency=args.per_host, max_depth=2,
                              max_pages=len(urls))
            stage_s, bare_s, fetched = [], [], 0
            for r in range(args.repeats):
                t0 = time.perf_counter()
                result = CrawlStage(cfg).run(Path(tmp) / f"crawl{r}", {})
                stage_s.append(time.perf_counter() - t0)
                fetched = result.pages
                t0 = time.perf_counter()
                asyncio.run(bare(urls, args.per_host))
                bare_s.append(time.perf_counter() - t0)
        finally:
            server.terminate()
            server.wait()
    stage_rate = fetched / statistics.median(stage_s)
    bare_rate = len(urls) / statistics.median(bare_s)
    print(f"local site: {args.pages + 1} pages, per-host concurrency {args.per_host}, median of {args.repeats}")
    print(f"{'bare httpx GETs':28}{len(urls):>7} pages {bare_rate:>8.0f} pages/s")
    print(f"{'crawl stage (WARC, links)':28}{fetched:>7} pages {stage_rate:>8.0f} pages/s")
    print(f"stage / bare: {stage_rate / bare_rate:.2f}x")


if __name__ == "__main__":
    main()
