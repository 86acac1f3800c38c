"""Contamination check quality: planted benchmark items in real pages (recall) and clean pages (false positives).

    python benchmarks/contamination_quality.py
    python benchmarks/contamination_quality.py --planted 700 --seed 3

Clean pages: the gold article texts of ../shared/corpora/html/scrapinghub_aeb and passages of the Project
Gutenberg books in ../shared/corpora/english. Items: drawn from the 7 sets in ../shared/benchmarks, each as
question + gold answer, lightly reworded the way a scraped copy differs (random words upper- or title-cased,
punctuation dropped or added, the "Question:"/"Answer:" labels kept or not), and pasted into the middle of a clean
page. The decontaminate stage runs with the default config (13-grams down to 8, drop policy).
recall = planted pages flagged for their item; false positives = unplanted pages flagged at all.
"""
from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.evalsets import TASKS, contamination_text, read_items  # noqa: E402
from tasks.config import DecontaminateConfig  # noqa: E402
from tasks.decontaminate import DecontaminateStage  # noqa: E402
from tasks.dedup import SCHEMA  # noqa: E402
from tests.helpers import run_stage, write_dataset  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"


def reword(text: str, rng: random.Random) -> str:
    """A scraped copy: some words change case, some punctuation goes or comes, spacing changes."""
    words = text.split()
    out = []
    for w in words:
        r = rng.random()
        if r < 0.15:
            w = w.upper()
        elif r < 0.3:
            w = w.capitalize()
        if rng.random() < 0.1:
            w = w.rstrip(".,;:!?") or w
        elif rng.random() < 0.05:
            w += rng.choice([",", ";", " -"])
        out.append(w)
    return rng.choice([" ", "  ", "\n"]).join(out) if len(out) > 3 else " ".join(out)


def clean_pages(rng: random.Random, books: int) -> list[str]:
    truth = json.loads((SHARED / "corpora" / "html" / "scrapinghub_aeb" / "ground-truth.json").read_text())
    pages = [v["articleBody"] for v in truth.values() if len(v.get("articleBody") or "") > 500]
    for book in sorted((SHARED / "corpora" / "english" / "gutenberg" / "train").glob("*.txt.gz")):
        words = gzip.decompress(book.read_bytes()).decode("utf-8", "replace").split()
        middle = words[len(words) // 5: 4 * len(words) // 5]
        for _ in range(books):
            start = rng.randrange(0, max(1, len(middle) - 600))
            pages.append(" ".join(middle[start:start + 600]))
    return pages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--planted", type=int, default=700, help="pages that get an item (default 700)")
    parser.add_argument("--books", type=int, default=12, help="clean passages per Gutenberg book (default 12)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if not SHARED.exists():
        sys.exit(f"{SHARED} is absent: the corpora and benchmarks live in ../shared beside the checkout")
    rng = random.Random(args.seed)
    pages = clean_pages(rng, args.books)
    rng.shuffle(pages)
    bench = SHARED / "benchmarks"
    items = [(task, i, item) for task in TASKS for i, item in enumerate(read_items(bench / f"{task}.jsonl"))]
    cfg = DecontaminateConfig(benchmarks_dir=bench)
    planted = {}
    docs = {}
    chosen = rng.sample(items, args.planted)
    for k, page in enumerate(pages):
        doc_id = f"page-{k:05d}"
        if k < len(chosen):
            task, i, item = chosen[k]
            text = contamination_text(item)
            if "query" in item and rng.random() < 0.5:  # as copied from a test page, with its labels
                text = f"{item['query']} {item['choices'][item['gold']]}"
            cut = len(page) // 2
            cut = page.rfind(" ", 0, cut) + 1 or cut
            page = page[:cut] + reword(text, rng) + " " + page[cut:]
            planted[doc_id] = (task, i, len(re.findall(r"\w+", contamination_text(item))))
        docs[doc_id] = page
    tmp = Path(tempfile.mkdtemp())
    rows = [{"doc_id": d, "text": t} for d, t in docs.items()]
    up = write_dataset(tmp / "in", SCHEMA, rows, stage="dedup", shard_docs=500)
    t0 = time.perf_counter()
    kept, dropped, facts = run_stage(DecontaminateStage(cfg), up, tmp / "out")
    seconds = time.perf_counter() - t0
    flagged = {r["doc_id"]: r["detail"] for r in dropped}
    found = sum(1 for d, (task, i, _) in planted.items() if d in flagged and f"{task}#" in flagged[d])
    short = sum(1 for _, _, n in planted.values() if n < cfg.min_ngram)
    clean = [d for d in docs if d not in planted]
    false = [d for d in clean if d in flagged]
    checkable = len(planted) - short
    print(f"{len(docs)} pages ({len(planted)} planted, {len(clean)} clean); {facts['items_checked']} items indexed, "
          f"{facts['items_too_short']} shorter than {cfg.min_ngram} words are not checked")
    print(f"recall: {found}/{len(planted)} = {found / len(planted):.3f} of planted pages "
          f"({found / max(checkable, 1):.3f} of the {checkable} whose item is long enough to check); target >= 0.95")
    print(f"false positives: {len(false)}/{len(clean)} = {len(false) / len(clean):.4f} of clean pages; "
          f"target <= 0.01")
    for d in false[:5]:
        print(f"  {d}: {flagged[d]}")
    words = sum(len(t.split()) for t in docs.values())
    print(f"speed: {len(docs)} pages ({words:,} words) in {seconds:.1f}s = {len(docs) / seconds:.0f} docs/s, one worker, "
          f"the benchmark n-gram index build included (no library floor: the index and lookup are the stage's own)")
    per_task = {}
    for d, (task, _, _) in planted.items():
        hit, total = per_task.get(task, (0, 0))
        per_task[task] = (hit + (d in flagged), total + 1)
    print("recall per task: " + ", ".join(f"{t} {h}/{n}" for t, (h, n) in sorted(per_task.items())))


if __name__ == "__main__":
    main()
