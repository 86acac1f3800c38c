"""Contamination check quality: benchmark items planted in real pages the way people paste them (recall), and
clean pages rich in benchmark-like text (false positives).

    python benchmarks/contamination_quality.py
    python benchmarks/contamination_quality.py --per-format 40 --seed 3

Clean pages: the gold article texts of ../shared/corpora/html/scrapinghub_aeb and passages of the Project
Gutenberg books in ../shared/corpora/english. Items: drawn from the 7 sets in ../shared/benchmarks. Each planted
item is pasted into the middle of a clean page in one of these formats:

- verbatim: as the evaluation harness renders it ("Question: ...\\nAnswer: gold"; the filled Winogrande sentence;
  the LAMBADA passage and its word);
- labels: "12. Q: ... A: gold" (numbered, short labels);
- listed: the question, every choice lettered "(A) ...", then "Answer: (C)";
- own_line: the question, a blank line, the answer on its own line;
- native: the item as its dataset prints it (ARC's "A. ..." options, PIQA's goal and two solutions, COPA's "What
  was the cause?" and its two alternatives, Winogrande's "_" sentence with both options, BoolQ's passage, question
  and yes/no, LAMBADA's passage);
- reformatted: words upper- or title-cased, punctuation dropped or added, curly quotes, lines wrapped;
- short: items of fewer than 8 words, verbatim;
- spread: one item each on 5, 50 and 500 pages of the corpus (recall counts every page).

False positives: clean pages, and clean pages given benchmark-like text that is not a copy: a 6-word phrase of an
item, an item's short answer alone, an item's question with every fifth word changed, and quiz-style
"Question: ... Answer: ..." lines written from book sentences. The decontaminate stage runs with its default
config through its own steps (scan, reduce, process); recall = planted pages flagged for their item.
"""
from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.config import DecontaminateConfig  # noqa: E402
from tasks.contamination import item_segments  # noqa: E402
from tasks.decontaminate import DecontaminateStage  # noqa: E402
from tasks.dedup import SCHEMA  # noqa: E402
from tasks.evalsets import TASKS, item_kind, read_items  # noqa: E402
from tests.helpers import run_stage, write_dataset  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
FORMATS = ("verbatim", "labels", "listed", "own_line", "native", "reformatted")
LETTERS = "ABCDEFGH"


def strip_label(text: str) -> str:
    for label in ("Question:", "Passage:"):
        text = text.replace(label, "")
    return " ".join(text.split())


def parts(item: dict) -> tuple[str, list[str], int]:
    """(question, choices, gold) of any item; Winogrande's are its blank sentence and options, LAMBADA's none."""
    kind = item_kind(item)
    if kind == "multiple_choice":
        return strip_label(item["query"]), item["choices"], item["gold"]
    if kind == "schema":
        a, b = item["context_options"]
        common = 0
        while common < min(len(a), len(b)) and a[common] == b[common]:
            common += 1
        common = a.rfind(" ", 0, common + 1) + 1
        sentence = f"{a[:common]}_ {item['continuation']}"
        return sentence, [o[common:] for o in item["context_options"]], item["gold"]
    return item["context"], [item["continuation"]], 0


def render(item: dict, task: str, fmt: str, rng: random.Random) -> str:
    kind = item_kind(item)
    q, choices, gold = parts(item)
    if kind == "language_modelling":
        text = f"{item['context']} {item['continuation']}"
        return {"verbatim": text, "labels": f"Passage: {text}", "listed": text,
                "own_line": f"{item['context']}\n{item['continuation']}", "native": text,
                "reformatted": reword(text, rng)}[fmt]
    if kind == "schema":
        filled = f"{item['context_options'][gold]} {item['continuation']}"
        return {"verbatim": filled, "labels": f"{rng.randint(1, 99)}. Q: {filled}",
                "listed": f"{q}\n(A) {choices[0]}\n(B) {choices[1]}\nAnswer: ({LETTERS[gold]})",
                "own_line": f"{q}\n\n{choices[gold]}", "native": f"{q}\nOption 1: {choices[0]}\nOption 2: {choices[1]}",
                "reformatted": reword(filled, rng)}[fmt]
    answer = choices[gold]
    if task == "copa":
        premise = item["query"].rsplit(",", 1)[0] + "."
        ask = "What was the cause?" if item["query"].rstrip().endswith("because") else "What happened as a result?"
        native = f"{premise} {ask}\n1) {choices[0]}\n2) {choices[1]}"
    elif task == "piqa":
        native = f"Goal: {q}\nSolution 1: {choices[0]}\nSolution 2: {choices[1]}\nAnswer: {gold + 1}"
    elif task == "boolq":
        native = f"{q}\n{answer}"
    else:
        native = q + "\n" + "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices)) + \
            f"\nAnswer: {LETTERS[gold]}"
    listed = q + " " + " ".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices)) + f" Answer: ({LETTERS[gold]})"
    return {"verbatim": f"{item['query'].rstrip()}\nAnswer: {answer}" if task != "copa" else f"{item['query']} {answer}",
            "labels": f"{rng.randint(1, 99)}. Q: {q}\nA: {answer}", "listed": listed,
            "own_line": f"{q}\n\n{answer}", "native": native, "reformatted": reword(f"{q} {answer}", rng)}[fmt]


def reword(text: str, rng: random.Random) -> str:
    """A scraped copy: some words change case, punctuation goes or comes, quotes curl, lines wrap."""
    out = []
    for w in text.replace("'", "’").split():
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
    lines, line = [], []
    for w in out:
        line.append(w)
        if len(line) >= rng.randint(6, 14):
            lines.append(" ".join(line))
            line = []
    return "\n".join(lines + [" ".join(line)])


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


def paste(page: str, text: str) -> str:
    cut = page.rfind(" ", 0, len(page) // 2) + 1 or len(page) // 2
    return page[:cut] + "\n\n" + text + "\n\n" + page[cut:]


def lookalikes(item: dict, page: str, rng: random.Random, kind: str) -> str:
    """Benchmark-like text that is not a copy of the item."""
    q, choices, gold = parts(item)
    words = q.split()
    if kind == "phrase":
        start = rng.randrange(0, max(1, len(words) - 6))
        return paste(page, "As the saying goes, " + " ".join(words[start:start + 6]) + ".")
    if kind == "answer":  # a short answer alone (a long one, like a PIQA solution, is the item's own text)
        return paste(page, f"The answer, in the end, was {' '.join(choices[gold].split()[:5])}")
    if kind == "paraphrase":  # the question and answer restated: every fifth word changed (an item under 5 words
        said = (words + choices[gold].split())  # would stay verbatim, so those are not used)
        if len(said) < 8:
            return lookalikes(item, page, rng, "phrase")
        return paste(page, " ".join("indeed" if i % 5 == 4 else w for i, w in enumerate(said)))
    sentences = [s.strip() for s in page.split(".") if len(s.split()) > 8][:3]
    return page + "\n\n" + "\n".join(f"Question: {s}?\nAnswer: {s.split()[-1]}" for s in sentences)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-format", type=int, default=14, help="items per task and format (default 14)")
    parser.add_argument("--books", type=int, default=30, help="clean passages per Gutenberg book (default 30)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if not SHARED.exists():
        sys.exit(f"{SHARED} is absent: the corpora and benchmarks live in ../shared beside the checkout")
    rng = random.Random(args.seed)
    pages = clean_pages(rng, args.books)
    rng.shuffle(pages)
    bench = SHARED / "benchmarks"
    by_task = {task: read_items(bench / f"{task}.jsonl") for task in TASKS}
    cfg = DecontaminateConfig(benchmarks_dir=bench)

    plan: list[tuple[str, str, int]] = []  # (format, task, item)
    for task, items in by_task.items():
        long = [i for i, it in enumerate(items) if len(item_segments(it)["full"]) >= 8]
        short = [i for i, it in enumerate(items) if len(item_segments(it)["full"]) < 8]
        for fmt in FORMATS:
            plan += [(fmt, task, i) for i in rng.sample(long, min(args.per_format, len(long)))]
        plan += [("short", task, i) for i in rng.sample(short, min(args.per_format, len(short)))]
    spread = [(task, rng.randrange(len(by_task[task]))) for task in ("arc_easy", "piqa", "lambada_openai")]
    copies = (5, 50, 500)
    need = len(plan) + 4 * 200
    if need + max(copies) > len(pages):
        sys.exit(f"{len(pages)} clean pages are too few for {need} planted and look-alike pages; raise --books")
    docs: dict[str, str] = {}
    planted: dict[str, tuple[str, str, int]] = {}  # doc -> (format, task, item)
    k = 0
    for fmt, task, i in plan:
        doc = f"page-{k:05d}"
        docs[doc] = paste(pages[k], render(by_task[task][i], task, fmt if fmt != "short" else "verbatim", rng))
        planted[doc] = (fmt, task, i)
        k += 1
    look: dict[str, str] = {}
    flat = [(t, i) for t in TASKS for i in range(len(by_task[t]))]
    for kind in ("phrase", "answer", "paraphrase", "quiz"):
        for _ in range(200):
            task, i = rng.choice(flat)
            doc = f"page-{k:05d}"
            docs[doc] = lookalikes(by_task[task][i], pages[k], rng, kind)
            look[doc] = kind
            k += 1
    clean_start = k
    for doc_k in range(clean_start, len(pages)):
        docs[f"page-{doc_k:05d}"] = pages[doc_k]
    for (task, i), n in zip(spread, copies):  # the same item pasted on n of the clean pages
        for doc_k in rng.sample(range(clean_start, len(pages)), n):
            doc = f"page-{doc_k:05d}"
            if doc not in planted:
                docs[doc] = paste(docs[doc], render(by_task[task][i], task, "verbatim", rng))
                planted[doc] = (f"spread_{n}", task, i)

    tmp = Path(tempfile.mkdtemp())
    rows = [{"doc_id": d, "text": t} for d, t in docs.items()]
    up = write_dataset(tmp / "in", SCHEMA, rows, stage="dedup", shard_docs=500)
    t0 = time.perf_counter()
    kept, dropped, facts = run_stage(DecontaminateStage(cfg), up, tmp / "out")
    seconds = time.perf_counter() - t0
    t0 = time.perf_counter()  # again, with the item index already built in this process (as a long run amortises it)
    run_stage(DecontaminateStage(cfg), up, tmp / "again")
    warm = time.perf_counter() - t0
    import pyarrow.parquet as pq

    hits = pq.read_table(tmp / "out" / "_reduce" / "hits.parquet").to_pylist()
    found_items = defaultdict(set)
    for h in hits:
        found_items[h["doc_id"]].add((h["task"], h["item"]))
    flagged = {r["doc_id"] for r in dropped}

    def rate(docs_: list[str]) -> str:
        ok = sum((planted[d][1], planted[d][2]) in found_items[d] for d in docs_)
        return f"{ok}/{len(docs_)} = {ok / max(len(docs_), 1):.3f}"

    print(f"{len(docs)} pages: {len(planted)} planted, {len(look)} look-alike, "
          f"{len(docs) - len(planted) - len(look)} clean; {facts['items_checked']} items indexed, "
          f"{facts['items_too_short']} of one word not checked; "
          f"ngram {cfg.ngram}, min_coverage {cfg.min_coverage}")
    print(f"recall, all planted pages: {rate(list(planted))}  (target >= 0.95 on every task)")
    print("recall per task:")
    for task in TASKS:
        print(f"  {task:16s} {rate([d for d, p in planted.items() if p[1] == task])}")
    print("recall per format:")
    for fmt in (*FORMATS, "short", *(f"spread_{n}" for n in copies)):
        print(f"  {fmt:16s} {rate([d for d, p in planted.items() if p[0] == fmt])}")
    clean = [d for d in docs if d not in planted]
    false = [d for d in clean if d in flagged]
    print(f"false positives: {len(false)}/{len(clean)} = {len(false) / len(clean):.4f} of unplanted pages "
          f"(target <= 0.01); by kind: " + ", ".join(
              f"{kind} {sum(1 for d in false if look.get(d) == kind)}/200" for kind in ("phrase", "answer",
                                                                                       "paraphrase", "quiz"))
          + f", plain {sum(1 for d in false if d not in look)}/{len(clean) - len(look)}")
    for d in false[:8]:
        print(f"  {d} ({look.get(d, 'plain')}): {sorted(found_items[d])[:3]}")
    missed = [d for d in planted if (planted[d][1], planted[d][2]) not in found_items[d]]
    for d in missed[:8]:
        fmt, task, i = planted[d]
        print(f"  missed {fmt} {task}#{i}: {render(by_task[task][i], task, 'verbatim', random.Random(0))[:150]!r}")
    words = sum(len(t.split()) for t in docs.values())
    print(f"speed: {len(docs)} pages ({words:,} words) in {seconds:.1f}s = {len(docs) / seconds:.0f} docs/s on one "
          f"worker with the index build; {warm:.1f}s = {len(docs) / warm:.0f} docs/s once it is built (scan, reduce "
          "and process)")


if __name__ == "__main__":
    main()
