"""Benchmark contamination: find training documents that contain evaluation items, and drop or cut them.

Each item's text is its question with its gold answer (``tasks.evalsets.contamination_text``), normalized to
words (casefold, punctuation stripped). Its n-grams are indexed with n = ``ngram`` (13), or the item's length for
shorter items down to ``min_ngram`` (8), as GPT-3 did; shorter items are counted, not checked. A document that
shares an n-gram with an item is contaminated, unless that n-gram occurs in more than ``max_ngram_docs``
documents of the corpus: then it is common text (a boilerplate phrase), not a leak.

Three steps (see ``ReduceStage``): scan finds every document's raw hits; reduce counts documents per n-gram and
keeps the hits of uncommon ones (``hits.parquet``, loaded into the warehouse's ``contamination_hits``); process
drops a contaminated document, or with ``policy = "cut"`` removes ``cut_window_chars`` around each match and drops
the document only if it needed more than ``max_cuts`` cuts or less than ``min_chars_after_cut`` remains.
"""
from __future__ import annotations

import threading
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.evalsets import benchmark_files, contamination_text, ensure_smoke, fingerprint, read_items, smoke_dir
from tasks.config import DecontaminateConfig, stable_hash
from tasks.dedup import SCHEMA as DEDUP_SCHEMA
from tasks.ngrams import ngram_hashes, word_hashes, word_spans
from tasks.shards import DropLog, ShardResult, ShardWriter, write_parquet_atomic
from tasks.sharded import ReduceStage, Unit
from tasks.stage import StageContext

SCHEMA = pa.schema([*DEDUP_SCHEMA, pa.field("contaminated", pa.bool_())])
HITS_SCHEMA = pa.schema([("doc_id", pa.string()), ("unit", pa.string()), ("task", pa.string()),
                         ("item", pa.int32()), ("n", pa.int16()), ("position", pa.int32()),
                         ("ngram", pa.string())])


@dataclass
class ItemIndex:
    """Sorted n-gram hashes of every checked item, per n, with the (task, item) each belongs to."""

    hashes: dict[int, np.ndarray]  # n -> sorted uint64
    owners: dict[int, np.ndarray]  # n -> int64 index into refs, aligned with hashes
    refs: list[tuple[str, int]]    # (task, item index in its file)
    items: Counter                 # task -> items read
    too_short: Counter             # task -> items with fewer than min_ngram words

    @classmethod
    def build(cls, files: list[Path], ngram: int, min_ngram: int) -> "ItemIndex":
        grams: dict[int, list[np.ndarray]] = defaultdict(list)
        owners: dict[int, list[np.ndarray]] = defaultdict(list)
        refs: list[tuple[str, int]] = []
        items, too_short = Counter(), Counter()
        for f in files:
            for i, item in enumerate(read_items(f)):
                items[f.stem] += 1
                words, _ = word_spans(contamination_text(item))
                if len(words) < min_ngram:
                    too_short[f.stem] += 1
                    continue
                n = min(ngram, len(words))
                h = np.unique(ngram_hashes(word_hashes(words), n))
                grams[n].append(h)
                owners[n].append(np.full(len(h), len(refs), dtype=np.int64))
                refs.append((f.stem, i))
        hashes, owner = {}, {}
        for n in grams:
            h, o = np.concatenate(grams[n]), np.concatenate(owners[n])
            order = np.argsort(h, kind="stable")
            hashes[n], owner[n] = h[order], o[order]
        return cls(hashes, owner, refs, items, too_short)

    def matches(self, words: list[str]) -> list[tuple[int, int, int]]:
        """(n, word position, ref) for every item n-gram found in these words."""
        found = []
        wh = word_hashes(words)
        for n, table in self.hashes.items():
            grams = ngram_hashes(wh, n)
            if not len(grams):
                continue
            lo = np.searchsorted(table, grams, side="left")
            hi = np.searchsorted(table, grams, side="right")
            for pos in np.nonzero(hi > lo)[0]:
                for k in range(lo[pos], hi[pos]):
                    found.append((n, int(pos), int(self.owners[n][k])))
        return found


_indexes: dict[str, ItemIndex] = {}
_lock = threading.Lock()


def item_index(cfg: DecontaminateConfig) -> tuple[ItemIndex, list[Path]]:
    """The index for these settings, built once per process (a second or two for the 7 real sets)."""
    files = benchmark_files(cfg.benchmarks_dir, cfg.tasks)
    key = stable_hash([fingerprint(files), cfg.ngram, cfg.min_ngram])
    with _lock:
        if key not in _indexes:
            _indexes[key] = ItemIndex.build(files, cfg.ngram, cfg.min_ngram)
        return _indexes[key], files


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
            words, _ = word_spans(row["text"] or "")
            for n, pos, ref in index.matches(words):
                task, item = index.refs[ref]
                rows.append({"doc_id": row["doc_id"], "unit": unit.name, "task": task, "item": item, "n": n,
                             "position": pos, "ngram": " ".join(words[pos:pos + n])})
        table = pa.Table.from_pylist(rows, schema=HITS_SCHEMA)
        write_parquet_atomic(table, scratch / f"hits-{unit.name}.parquet")
        return {"docs": docs, "raw_hits": len(rows)}

    def reduce(self, scratch: Path, scans: list[dict[str, Any]], stage_key: str) -> dict[str, Any]:
        index, files = item_index(self.config)
        parts = [pq.read_table(f) for f in sorted(scratch.glob("hits-part-*.parquet"))]
        hits = pa.concat_tables(parts) if parts else HITS_SCHEMA.empty_table()
        per_ngram = hits.group_by("ngram").aggregate([("doc_id", "count_distinct")])
        common = per_ngram.filter(pc.greater(per_ngram["doc_id_count_distinct"], self.config.max_ngram_docs))
        valid = hits.filter(pc.invert(pc.is_in(hits["ngram"], value_set=common["ngram"])))
        write_parquet_atomic(valid, scratch / "hits.parquet")
        facts: dict[str, Any] = {
            "docs": sum(s["docs"] for s in scans), "raw_hits": hits.num_rows, "hits": valid.num_rows,
            "common_ngrams_ignored": common.num_rows,
            "contaminated_docs": len(set(valid["doc_id"].to_pylist())),
            "items_checked": sum(index.items.values()) - sum(index.too_short.values()),
            "items_too_short": sum(index.too_short.values()),
        }
        contaminated = Counter(task for task, _ in set(zip(valid["task"].to_pylist(), valid["item"].to_pylist())))
        for f in files:
            facts[f"items.{f.stem}"] = index.items[f.stem]
            facts[f"contaminated_items.{f.stem}"] = contaminated[f.stem]
        return facts

    def after_reduce(self, scratch: Path) -> None:
        for f in scratch.glob("hits-part-*.parquet"):
            f.unlink(missing_ok=True)

    def record_files(self, out_dir: Path) -> dict[str, Path]:
        """Files for the warehouse to load once the stage has finished: table name -> Parquet file."""
        return {"contamination_hits": self.scratch_dir(out_dir) / "hits.parquet"}

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
            first = found[0]
            detail = f"{len(found)} hits; first {first['task']}#{first['item']}: {first['ngram']!r}"
            if cfg.policy == "drop":
                drops.add_record("contaminated", row, nbytes=len(row["text"]), detail=detail)
                continue
            original = unicodedata.normalize("NFC", row["text"])  # the text the match positions refer to
            _, spans = word_spans(original)
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
