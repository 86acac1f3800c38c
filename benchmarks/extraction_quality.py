"""Extraction quality: word-level precision, recall and F1 of the extract stage against human gold text.

    python benchmarks/extraction_quality.py          # ../shared/corpora/html (scrapinghub AEB + readability pages)

For every page the stage's extractor (a CPU-capped trafilatura child process, with the stage's default settings)
and bare ``trafilatura.extract`` with the same settings extract the main text from the same decoded HTML. Each output
is scored against the gold text as bags of lower-cased words (precision, recall, F1 per page, then the mean). The
stage must not score below the bare library.
"""
from __future__ import annotations

import gzip
import json
import re
import sys
from collections import Counter
from pathlib import Path
from statistics import mean

import lxml.html
import trafilatura

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.config import ExtractConfig  # noqa: E402
from tasks.extractors import IsolatedExtractor  # noqa: E402
from tasks.ingest import decode_html  # noqa: E402

HTML = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "html"
WORD = re.compile(r"\w+", re.UNICODE)


def prf(predicted: str, gold: str) -> tuple[float, float, float]:
    p, g = Counter(WORD.findall(predicted.lower())), Counter(WORD.findall(gold.lower()))
    overlap = sum((p & g).values())
    precision = overlap / sum(p.values()) if p else 0.0
    recall = overlap / sum(g.values()) if g else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def scrapinghub() -> list[tuple[str, str, str]]:
    root = HTML / "scrapinghub_aeb"
    truth = json.loads((root / "ground-truth.json").read_text())
    pages = []
    for key, item in sorted(truth.items()):
        path = root / "html" / f"{key}.html.gz"
        if path.exists():
            pages.append((decode_html(gzip.decompress(path.read_bytes()), None)[0], item.get("url"),
                          item["articleBody"]))
    return pages


def readability() -> list[tuple[str, str, str]]:
    pages = []
    for case in sorted((HTML / "mozilla_readability_testpages").iterdir()):
        source, expected = case / "source.html.gz", case / "expected.html.gz"
        if source.exists() and expected.exists():
            gold = lxml.html.fromstring(gzip.decompress(expected.read_bytes())).text_content()
            pages.append((decode_html(gzip.decompress(source.read_bytes()), None)[0], None, gold))
    return pages


def main() -> None:
    if not HTML.exists():
        sys.exit(f"{HTML} is absent: these gold pages live in ../shared beside the checkout")
    cfg = ExtractConfig()
    stage = IsolatedExtractor(cfg)
    print(f"{'corpus':40}{'pages':>6}{'P':>7}{'R':>7}{'F1':>7}")
    try:
        for name, pages in (("scrapinghub AEB", scrapinghub()), ("mozilla readability", readability())):
            scores = {"stage": [], "bare trafilatura": []}
            for html, url, gold in pages:
                status, value = stage(html, url)
                scores["stage"].append(prf(value[1] if status == "ok" else "", gold))
                bare = trafilatura.extract(html, url=url, include_comments=cfg.include_comments,
                                           include_tables=cfg.include_tables, favor_precision=cfg.favor_precision,
                                           favor_recall=cfg.favor_recall, deduplicate=cfg.deduplicate) or ""
                scores["bare trafilatura"].append(prf(bare, gold))
            for who, rows in scores.items():
                p, r, f = (mean(x[i] for x in rows) for i in range(3))
                print(f"{name + ', ' + who:40}{len(rows):>6}{p:>7.3f}{r:>7.3f}{f:>7.3f}")
    finally:
        stage.close()


if __name__ == "__main__":
    main()
