"""Benchmark contamination: find training documents that contain evaluation items, and drop or cut them.

Matching is tasks/contamination.py's: the same normalisation on both sides (labels such as "Question:", "(B)",
"Answer:" removed), several segments per item (the item as read, the question with its choices listed, the
question or passage alone, Winogrande's sentence with its blank), and a hit when a document holds at least
``min_coverage`` of one segment's ``ngram``-word n-grams; an item shorter than ``ngram`` words is found only whole
(from ``min_words`` words; shorter items are counted, not checked). Every hit carries its score and segment.

Three steps (see ``ReduceStage``): scan finds every document's hits; reduce gathers them (``hits.parquet``, loaded
into the warehouse's ``contamination_hits``) and counts contaminated items per task; process drops a contaminated
document, or with ``policy = "cut"`` removes ``cut_window_chars`` around each match and drops the document only if
it needed more than ``max_cuts`` cuts or less than ``min_chars_after_cut`` remains.
"""
from __future__ import annotations

import threading
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.config import DecontaminateConfig, stable_hash
from tasks.contamination import ItemIndex, line_ranges, match_words
from tasks.schemas import DECONTAMINATE as SCHEMA
from tasks.evalsets import benchmark_files, ensure_smoke, fingerprint, smoke_dir
from tasks.shards import DropLog, ShardResult, ShardWriter, write_parquet_atomic
from tasks.sharded import ReduceStage, Unit
from tasks.stage import StageContext

HITS_SCHEMA = pa.schema([("doc_id", pa.string()), ("unit", pa.string()), ("task", pa.string()),
                         ("item", pa.int32()), ("n", pa.int16()), ("position", pa.int32()),
                         ("ngram", pa.string()), ("score", pa.float64()), ("segment", pa.string())])

_indexes: dict[str, ItemIndex] = {}
_lock = threading.Lock()


def item_index(cfg: DecontaminateConfig) -> tuple[ItemIndex, list[Path]]:
    """The index for these settings, built once per process (a few seconds for the 7 real sets)."""
    files = benchmark_files(cfg.benchmarks_dir, cfg.tasks)
    key = stable_hash([fingerprint(files), cfg.ngram, cfg.min_words, cfg.min_coverage])
    with _lock:
        if key not in _indexes:
            _indexes[key] = ItemIndex.build(files, cfg.ngram, cfg.min_words, cfg.min_coverage)
        return _indexes[key], files


def first_per_item(hits: pa.Table) -> pa.Table:
    """One row per (document, item) for the warehouse: its first matching n-gram, with the hit's score and
    segment (the positions of the others stay in hits.parquet, for cutting)."""
    rows = sorted(hits.drop_columns(["unit"]).to_pylist(), key=lambda r: (r["doc_id"], r["task"], r["item"],
                                                                           r["position"]))
    first, seen = [], set()
    for r in rows:
        if (r["doc_id"], r["task"], r["item"]) not in seen:
            seen.add((r["doc_id"], r["task"], r["item"]))
            first.append(r)
    return pa.Table.from_pylist(first, schema=HITS_SCHEMA.remove(HITS_SCHEMA.get_field_index("unit")))


def cut_matches(text: str, spans: list[tuple[int, int]], hits: list[tuple[int, int]], window: int) -> tuple[str, int]:
    """Remove ``window`` characters on each side of each (position, n) match; returns (text, cuts made).

    Overlapping windows merge into one cut; the pieces left are joined by a newline."""
    ranges = sorted((max(spans[p][0] - window, 0), min(spans[p + n - 1][1] + window, len(text))) for p, n in hits)
    merged: list[list[int]] = []
    for start, end in ranges:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    pieces, last = [], 0
    for start, end in merged:
        pieces.append(text[last:start].strip())
        last = end
    pieces.append(text[last:].strip())
    return "\n".join(p for p in pieces if p), len(merged)


class DecontaminateStage(ReduceStage):
    name = "decontaminate"
    schema = SCHEMA
    size_column = "text"

    config: DecontaminateConfig

    def prepare(self, ctx: StageContext) -> None:
        if Path(self.config.benchmarks_dir) == smoke_dir(ctx.work_dir):
            ensure_smoke(self.config.benchmarks_dir)  # the default: our own small set, written on first use

    def key(self, input_fingerprint: str) -> str:
        """Changing a benchmark file changes the result, so its content is part of the key."""
        files = benchmark_files(self.config.benchmarks_dir, self.config.tasks)
        return stable_hash({"base": super().key(input_fingerprint), "benchmarks": fingerprint(files)})

    def scan(self, unit: Unit, scratch: Path) -> dict[str, Any]:
        index, _ = item_index(self.config)
        rows = []
        docs = 0
        for row in self.input_rows(unit, ["doc_id", "text"]):
            docs += 1
            words, spans = match_words(row["text"] or "")
            for hit in index.find(words, line_ranges(row["text"] or "", spans)):
                task, item = index.refs[hit.ref]
                rows += [{"doc_id": row["doc_id"], "unit": unit.name, "task": task, "item": item, "n": hit.n,
                          "position": pos, "ngram": " ".join(words[pos:pos + hit.n]), "score": hit.score,
                          "segment": hit.segment} for pos in hit.positions]
        table = pa.Table.from_pylist(rows, schema=HITS_SCHEMA)
        write_parquet_atomic(table, scratch / f"hits-{unit.name}.parquet")
        return {"docs": docs, "hits": len(rows)}

    def reduce(self, scratch: Path, scans: list[dict[str, Any]], stage_key: str) -> dict[str, Any]:
        index, files = item_index(self.config)
        parts = [pq.read_table(f) for f in sorted(scratch.glob("hits-part-*.parquet"))]
        hits = pa.concat_tables(parts) if parts else HITS_SCHEMA.empty_table()
        write_parquet_atomic(hits, scratch / "hits.parquet")  # every matching position: what a cut removes
        per_item = first_per_item(hits)
        write_parquet_atomic(per_item, scratch / "item_hits.parquet")
        pairs = set(zip(hits["task"].to_pylist(), hits["item"].to_pylist()))
        facts: dict[str, Any] = {
            "docs": sum(s["docs"] for s in scans), "hits": per_item.num_rows,
            "contaminated_docs": len(set(hits["doc_id"].to_pylist())), "contaminated_items": len(pairs),
            "items_checked": index.checked, "items_short": sum(index.short.values()),
            "items_too_short": sum(index.too_short.values()),
        }
        contaminated = Counter(task for task, _ in pairs)
        for f in files:
            facts[f"items.{f.stem}"] = index.items[f.stem]
            facts[f"contaminated_items.{f.stem}"] = contaminated[f.stem]
        return facts

    def after_reduce(self, scratch: Path) -> None:
        for f in scratch.glob("hits-part-*.parquet"):
            f.unlink(missing_ok=True)

    def record_files(self, out_dir: Path) -> dict[str, Path]:
        """Files for the warehouse to load once the stage has finished: table name -> Parquet file."""
        return {"contamination_hits": self.scratch_dir(out_dir) / "item_hits.parquet"}

    def process(self, unit: Unit, writer: ShardWriter, drops: DropLog, result: ShardResult) -> None:
        cfg = self.config
        hits = pq.read_table(self.scratch_dir(writer.out_dir) / "hits.parquet",
                             filters=[("unit", "=", unit.name)]).to_pylist()
        by_doc: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for h in hits:
            by_doc[h["doc_id"]].append(h)
        for row in self.input_rows(unit):
            result.docs_in += 1
            result.bytes_in += len(row["text"])
            found = by_doc.get(row["doc_id"])
            if not found:
                writer.add({**row, "contaminated": False})
                continue
            first = max(found, key=lambda h: h["score"])
            items = len({(h["task"], h["item"]) for h in found})
            detail = (f"{items} items; best {first['task']}#{first['item']} ({first['segment']}, score "
                      f"{first['score']:.2f}): {first['ngram']!r}")
            if cfg.policy == "drop":
                drops.add_record("contaminated", row, nbytes=len(row["text"]), detail=detail)
                continue
            original = unicodedata.normalize("NFC", row["text"])  # the text the match positions refer to
            _, spans = match_words(original)
            text, cuts = cut_matches(original, spans, sorted({(h["position"], h["n"]) for h in found}),
                                     cfg.cut_window_chars)
            if cuts > cfg.max_cuts:
                drops.add_record("contaminated_too_many_cuts", row, nbytes=len(row["text"]),
                                 detail=f"{cuts} cuts; {detail}")
            elif len(text) < cfg.min_chars_after_cut:
                drops.add_record("contaminated_too_short_after_cut", row, nbytes=len(row["text"]),
                                 detail=f"{len(text)} chars left; {detail}")
            else:
                result.notes["contamination_cut_docs"] = result.notes.get("contamination_cut_docs", 0) + 1
                writer.add({**row, "text": text, "contaminated": True})
