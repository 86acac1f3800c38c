"""Model-based selection: a fastText quality classifier (DCLM) and a reference-LM perplexity filter (CCNet).

The stage sits between dedup and decontaminate and is skipped (decontaminate then reads dedup) unless
``select.classifier.enabled`` or ``select.perplexity.enabled``. Both learn what good text looks like from a
reference: a ``[[sources]]`` entry (``select.reference``) or files (``select.reference_files``). A reference source's
held-out validation documents (tokenize's split) are never trained on, so its held-out slice stays a fair
evaluation text. Five steps, each recorded so that a killed run resumes:

1. sample, per unit: the reference documents and the crawl's (``negative_sources``, default every warc/html
   source) with the lowest seeded hash ranks, a bounded sample per unit;
2. train, once: the classifier on the global samples (``tasks/classifier.py``: bigrams, a held-out slice of both
   classes for accuracy and ROC AUC), or the model file ``classifier.model``; the reference LM (a BPE of its own and
   a small GPT, ``model/reference_lm.py``). Each model is a dataset in the warehouse, named by its hash, with the
   ids of the documents it trained on (``classifier_sample.parquet``, ``lm_sample.parquet``);
3. score, per unit: ``quality_score`` = P(reference) and ``perplexity`` for every document of a source that does
   not skip select (curated sources do by default);
4. reduce, once: the cut-offs over the whole dataset: the classifier's threshold, or the score of the last document
   in the global top fraction (ties broken by doc_id); the perplexity terciles of each source (CCNet's head,
   middle and tail bands), or a fixed ``max_perplexity``;
5. process, per unit: a kept document goes on with its two scores; the others are drops ``quality_classifier``
   (detail ``quality_classifier:<score> < <cut-off>``) or ``perplexity`` (detail ``perplexity:<ppl> tail``).

Why one module of ~550 lines: the five steps share the reference's sampling, the models' files and the cut-offs,
and read in order they are the stage's documentation; the model code itself is in tasks/classifier.py and
model/reference_lm.py.
"""
from __future__ import annotations

import heapq
import json
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.atomic import cached_sha256, file_sha256
from tasks.classifier import ClassifierParams, load_classifier, positive_scores, train_classifier
from tasks.config import SelectConfig, SourceConfig, stable_hash
from tasks.schemas import SELECT as SCHEMA
from tasks.procs import check_stop
from tasks.shards import DropLog, ShardResult, ShardWriter, atomic_write_json, write_parquet_atomic
from tasks.sharded import ReduceStage, Unit, prepare_output
from tasks.stage import Dataset, Input, StageContext, StageResult
from tasks.tokenizer import fraction_cutoff, seeded_hash, train_bpe, validation_hash

SAMPLE_SCHEMA = pa.schema([("doc_id", pa.string()), ("label", pa.string()), ("rank", pa.uint64()),
                           ("vhash", pa.uint64()), ("text", pa.large_string())])
SCORE_SCHEMA = pa.schema([("doc_id", pa.string()), ("source", pa.string()), ("quality_score", pa.float32()),
                          ("perplexity", pa.float32())])
POS, NEG, HELD = "reference", "crawl", "held_out"
BANDS = ("head", "middle", "tail")
SEPARATOR = "<|bos|>"

_models: dict[str, Any] = {}
_lock = threading.Lock()


def top_fraction_cutoff(scores: np.ndarray, doc_ids: list[str], fraction: float) -> tuple[float, str] | None:
    """(score, doc_id) of the last document kept when the best ``fraction`` of them are (at least one; ties in score
    go to the smaller doc_id): a document is kept when its score is higher, or equal with a doc_id not larger."""
    if not len(scores):
        return None
    keep = max(1, math.ceil(fraction * len(scores) - 1e-9))
    table = pa.table({"score": pa.array(np.asarray(scores, dtype=np.float64)), "doc_id": pa.array(doc_ids, pa.string())})
    last = pc.sort_indices(table, sort_keys=[("score", "descending"), ("doc_id", "ascending")])[keep - 1].as_py()
    return float(scores[last]), doc_ids[last]


def kept_by_cutoff(scores: np.ndarray, doc_ids: pa.Array | list[str], cutoff: tuple[float, str]) -> np.ndarray:
    """Per document, whether the cut-off keeps it: a higher score, or an equal one with a doc_id not larger (doc_ids
    compare as UTF-8 bytes, which is code-point order, as the reduce sorted them). A NaN score is not kept."""
    ids = doc_ids if isinstance(doc_ids, (pa.Array, pa.ChunkedArray)) else pa.array(doc_ids, pa.string())
    at_or_below = pc.fill_null(pc.less_equal(ids, pa.scalar(cutoff[1], ids.type)), False)
    scores = np.asarray(scores, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return (scores > cutoff[0]) | ((scores == cutoff[0]) & at_or_below.to_numpy(zero_copy_only=False))


def band_index(ppl: np.ndarray, lo: np.ndarray | float, hi: np.ndarray | float) -> np.ndarray:
    """Per document, its index in BANDS: head at most the source's lower tercile, tail above its upper one."""
    return np.where(ppl <= lo, 0, np.where(ppl <= hi, 1, 2))


def band_of(ppl: float, cuts: tuple[float, float]) -> str:
    return BANDS[int(band_index(np.asarray(ppl, dtype=np.float64), *cuts))]


class SelectStage(ReduceStage):
    name = "select"
    optional = True
    schema = SCHEMA
    size_column = "text"
    disabled_because = "select.classifier and select.perplexity are off"
    MODELS = "models"

    config: SelectConfig

    def __init__(self, config: SelectConfig | None, sources: Any = ()) -> None:
        super().__init__(config, sources)
        self.split_seed, self.default_val_fraction = 0, 0.01

    def bind(self, cfg: Any) -> None:
        """tokenize's split settings: a reference source's validation documents are never trained on."""
        self.split_seed, self.default_val_fraction = cfg.tokenize.split_seed, cfg.tokenize.val_fraction

    @property
    def enabled(self) -> bool:  # type: ignore[override]
        return self.config.classifier.enabled or self.config.perplexity.enabled

    @classmethod
    def code_roots(cls) -> list[str]:
        return [*super().code_roots(), "model.reference_lm"]

    def source_params(self) -> Any:
        """Which sources skip select, which are negatives, and the reference source's held-out slice."""
        ref = self.reference_source()
        return {"skip": sorted(self.skipping()), "negatives": sorted(self.negative_sources()),
                "holdout": self.holdout() if ref else None} if self.enabled else None

    def params(self) -> dict[str, Any]:
        params = super().params()
        c = self.config
        if c.classifier.model is not None:  # a model file is read by its content, not its path
            params["classifier_model_sha256"] = _sha256(c.classifier.model) if c.classifier.model.is_file() else None
        for path in c.reference_files:
            params.setdefault("reference_files_sha256", []).append(file_sha256(Path(path)) if Path(path).is_file()
                                                                   else None)
        return params

    # -- the reference and the negatives -------------------------------------------------------------------------

    def reference_source(self) -> SourceConfig | None:
        name = self.config.reference
        return next((s for s in self.source_configs if s.name == name), None) if name else None

    def negative_sources(self) -> set[str]:
        if self.config.negative_sources:
            return set(self.config.negative_sources)
        return {s.name for s in self.source_configs if not s.curated} or {"crawl", "web"}

    def holdout(self) -> dict[str, Any]:
        """The reference source's validation slice as tokenize will cut it: a fraction of hashes, or its val_docs
        lowest (with a margin: decontamination may drop some before tokenize counts them)."""
        ref = self.reference_source()
        if ref is not None and ref.val_docs is not None:
            return {"docs": ref.val_docs + math.ceil(ref.val_docs * 0.1) + 10 if ref.val_docs else 0,
                    "seed": self.split_seed}
        fraction = ref.val_fraction if ref is not None and ref.val_fraction is not None else self.default_val_fraction
        return {"cutoff": fraction_cutoff(fraction), "seed": self.split_seed}

    def _wants(self) -> tuple[int, int, int]:
        """Per unit: positives and negatives kept for the samples, and the reference bytes the LM may train on."""
        c = self.config
        train_clf = c.classifier.enabled and c.classifier.model is None
        pos = c.classifier.max_positives if train_clf else 0
        neg = c.classifier.max_negatives if train_clf else 0
        lm_bytes = c.perplexity.max_train_bytes if c.perplexity.enabled else 0
        return pos + self.holdout().get("docs", 0), neg, lm_bytes

    # -- 1. sample -----------------------------------------------------------------------------------------------

    def sample(self, unit: Unit, scratch: Path) -> dict[str, Any]:
        """This unit's lowest-ranked reference and crawl documents (and its reference documents' validation
        hashes, lowest first, when the held-out slice is a number of documents)."""
        seed = self.config.classifier.seed
        ref = self.config.reference if not self.config.reference_files else None
        negatives = self.negative_sources()
        want_pos, want_neg, lm_bytes = self._wants()
        hold = self.holdout()
        pos: list[tuple[int, int, str, str]] = []   # max-heaps by rank, as (-rank, vhash, doc_id, text)
        neg: list[tuple[int, int, str, str]] = []
        low: list[tuple[int, str]] = []  # the reference's lowest validation hashes, as a max-heap (-vhash, doc_id)
        pos_bytes, docs = 0, 0
        for batch in self.input_batches(unit, ["doc_id", "source", "text"]):
            for doc_id, source, text in zip(*(batch.column(i).to_pylist() for i in range(3))):
                docs += 1
                if not text:
                    continue
                if ref is not None and source == ref:
                    vhash = validation_hash(doc_id, hold["seed"])
                    if "cutoff" in hold and vhash < hold["cutoff"]:
                        continue  # tokenize holds it out
                    if hold.get("docs"):
                        if len(low) < hold["docs"]:
                            heapq.heappush(low, (-vhash, doc_id))
                        elif -low[0][0] > vhash:
                            heapq.heapreplace(low, (-vhash, doc_id))
                    rank = seeded_hash("select-positive", seed, doc_id)
                    heapq.heappush(pos, (-rank, vhash, doc_id, text))
                    pos_bytes += len(text)
                    while len(pos) > want_pos and pos_bytes - len(pos[0][3]) >= lm_bytes:
                        pos_bytes -= len(heapq.heappop(pos)[3])
                elif source in negatives and want_neg:
                    rank = seeded_hash("select-negative", seed, doc_id)
                    if len(neg) < want_neg:
                        heapq.heappush(neg, (-rank, 0, doc_id, text))
                    elif -neg[0][0] > rank:
                        heapq.heapreplace(neg, (-rank, 0, doc_id, text))
        rows = [{"doc_id": d, "label": label, "rank": -r, "vhash": v, "text": t}
                for label, heap in ((POS, pos), (NEG, neg)) for r, v, d, t in heap]
        rows += [{"doc_id": d, "label": HELD, "rank": 0, "vhash": -v, "text": None} for v, d in low]
        write_parquet_atomic(pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA), scratch / f"sample-{unit.name}.parquet")
        return {"docs": docs, "positives": len(pos), "negatives": len(neg)}

    # -- 2. train ------------------------------------------------------------------------------------------------

    def models_dir(self, out_dir: Path) -> Path:
        return Path(out_dir) / self.MODELS

    def read_samples(self, scratch: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The global samples: every unit's, lowest ranks first, the reference's held-out documents left out."""
        parts = [pq.read_table(f) for f in sorted(scratch.glob("sample-part-*.parquet"))]
        table = pa.concat_tables(parts) if parts else SAMPLE_SCHEMA.empty_table()
        rows = sorted(table.to_pylist(), key=lambda r: (r["rank"], r["doc_id"]))
        pos = [r for r in rows if r["label"] == POS]
        hold = self.holdout()
        if hold.get("docs"):  # the lowest validation hashes of the whole reference source
            lowest = sorted((r for r in rows if r["label"] == HELD), key=lambda r: (r["vhash"], r["doc_id"]))
            held = {r["doc_id"] for r in lowest[:hold["docs"]]}
            pos = [r for r in pos if r["doc_id"] not in held]
        if self.config.reference_files:
            pos = self.reference_file_docs()
        return pos, [r for r in rows if r["label"] == NEG]

    def reference_file_docs(self) -> list[dict[str, Any]]:
        """The documents of ``reference_files``: a paragraph of a text file, or a .jsonl line's 'text'."""
        from tasks.inputs import make_doc_id
        from tasks.readers import open_stream, read_jsonl, read_text

        docs = []
        seed = self.config.classifier.seed
        for path in self.config.reference_files:
            jsonl = ".jsonl" in Path(path).name or ".ndjson" in Path(path).name
            source = SourceConfig(name="reference", inputs=[path], format="jsonl" if jsonl else "text",
                                  text_split="paragraph")
            drops = DropLog()
            with open_stream(path) as fh:
                reader = read_jsonl if jsonl else read_text
                for doc in reader(fh, path, source, drops, 64 << 20):
                    # named by its text, not its file's path: the same text in another place samples alike
                    doc_id = make_doc_id("reference\0" + doc["html"])
                    docs.append({"doc_id": doc_id, "label": POS, "text": doc["html"],
                                 "rank": seeded_hash("select-positive", seed, doc_id)})
        if not docs:
            raise ValueError(f"select.reference_files {self.config.reference_files} hold no text")
        unique = {d["doc_id"]: d for d in docs}  # a repeated paragraph once
        return sorted(unique.values(), key=lambda r: (r["rank"], r["doc_id"]))

    def train(self, out_dir: Path, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """Train (or load) the models, once; their files go in ``models/`` with what they trained on."""
        done = self.models_dir(out_dir) / "models.json"
        if done.is_file():
            return json.loads(done.read_text())
        pos, neg = self.read_samples(self.scratch_dir(out_dir))
        models = self.models_dir(out_dir)
        models.mkdir(parents=True, exist_ok=True)
        c = self.config
        facts: dict[str, Any] = {"reference_docs": len(pos), "crawl_docs": len(neg)}
        if c.classifier.enabled:
            facts["classifier"] = self._train_classifier(pos, neg, models)
        if c.perplexity.enabled:
            facts["perplexity"] = self._train_lm(pos, models)
        atomic_write_json(done, facts)
        return facts

    def _train_classifier(self, pos: list[dict[str, Any]], neg: list[dict[str, Any]], models: Path) -> dict[str, Any]:
        c = self.config.classifier
        if c.model is not None:  # scoring loads it (once per process) and names the file if it is not usable
            return {"path": str(c.model), "sha256": _sha256(c.model), "loaded": True}
        pos, neg = pos[:c.max_positives], neg[:c.max_negatives]
        if c.balance:
            pos, neg = pos[:len(neg)], neg[:len(pos)]
        if not pos or not neg:
            raise ValueError(f"select: the classifier needs reference and crawl documents; the sample has {len(pos)} "
                             f"from the reference ({self.config.reference or self.config.reference_files}) and "
                             f"{len(neg)} from {sorted(self.negative_sources())}")
        params = ClassifierParams(epochs=c.epochs, lr=c.lr, word_ngrams=c.word_ngrams, dim=c.dim,
                                  min_count=c.min_count, val_fraction=c.val_fraction, max_chars=c.max_chars,
                                  seed=c.seed)
        path = models / "quality_classifier.bin"
        metrics = train_classifier([r["text"] for r in pos], [r["text"] for r in neg], path, params)
        held = metrics.pop("held_out")
        split = {label: set(idx) for label, idx in held.items()}
        rows = [{"doc_id": r["doc_id"], "label": label, "split": "val" if i in split[label] else "train"}
                for label, group in ((POS, pos), (NEG, neg)) for i, r in enumerate(group)]
        write_parquet_atomic(pa.Table.from_pylist(rows, schema=pa.schema([("doc_id", pa.string()),
                                                                          ("label", pa.string()),
                                                                          ("split", pa.string())])),
                             models / "classifier_sample.parquet")
        return {"path": str(path), "sha256": file_sha256(path), "loaded": False, **metrics}

    def _train_lm(self, pos: list[dict[str, Any]], models: Path) -> dict[str, Any]:
        from model.reference_lm import LMParams, train_reference_lm

        p = self.config.perplexity
        texts, size = [], 0
        for r in pos:
            if size >= p.max_train_bytes:
                break
            texts.append(r["text"])
            size += len(r["text"])
        if not texts:
            raise ValueError("select: the reference LM has no reference text to train on")
        lm_dir = models / "reference_lm"
        lm_dir.mkdir(parents=True, exist_ok=True)
        tok = train_bpe(texts, p.vocab_size, [SEPARATOR])
        tok.save(str(lm_dir / "tokenizer.json"))
        bos = tok.token_to_id(SEPARATOR)
        encoded = [[bos, *e.ids] for e in tok.encode_batch(texts)]
        params = LMParams(vocab_size=tok.get_vocab_size(), depth=p.depth, d_model=p.d_model, seq_len=p.seq_len,
                          batch_size=p.batch_size, steps=p.steps, lr=p.lr, seed=p.seed, device=p.device)
        facts = train_reference_lm(encoded, params, lm_dir)
        write_parquet_atomic(pa.table({"doc_id": [r["doc_id"] for r in pos[:len(texts)]]}),
                             lm_dir / "lm_sample.parquet")
        return {"path": str(lm_dir), "docs": len(texts), "bytes": size, "final_loss": facts["final_loss"],
                "first_loss": facts["first_loss"], "tokens": facts["tokens"], "device": facts["device"],
                "steps": p.steps}

    # -- 3. score ------------------------------------------------------------------------------------------------

    def _loaded(self, out_dir: Path) -> dict[str, Any]:
        """The models, loaded once per process (keyed by their files' hashes)."""
        facts = json.loads((self.models_dir(out_dir) / "models.json").read_text())
        key = stable_hash([facts.get("classifier", {}).get("sha256"), facts.get("perplexity", {}).get("path"),
                           str(out_dir), self.config.perplexity.device])
        with _lock:
            if key not in _models:
                loaded: dict[str, Any] = {}
                if "classifier" in facts:
                    loaded["classifier"] = load_classifier(Path(facts["classifier"]["path"]))
                if "perplexity" in facts:
                    from tokenizers import Tokenizer

                    from model.reference_lm import load_reference_lm
                    lm_dir = Path(facts["perplexity"]["path"])
                    loaded["lm"] = load_reference_lm(lm_dir, self.config.perplexity.device)
                    loaded["tokenizer"] = Tokenizer.from_file(str(lm_dir / "tokenizer.json"))
                _models.clear()  # one stage's models at a time
                _models[key] = loaded
            return _models[key]

    def scan(self, unit: Unit, scratch: Path) -> dict[str, Any]:
        """Score the unit's documents (those of sources that skip select are not scored)."""
        models = self._loaded(scratch.parent)
        skip = self.skipping()
        c = self.config
        ids, sources, quality, ppl = [], [], [], []
        for batch in self.input_batches(unit, ["doc_id", "source", "text"]):
            check_stop()
            srcs = batch.column(1).to_pylist()
            scored = [i for i, s in enumerate(srcs) if s not in skip]
            if not scored:
                continue
            texts = batch.column(2).to_pylist()
            texts = [texts[i] or "" for i in scored]
            doc_ids = batch.column(0).to_pylist()
            ids += [doc_ids[i] for i in scored]
            sources += [srcs[i] for i in scored]
            if "classifier" in models:
                quality.append(positive_scores(models["classifier"], texts, c.classifier.max_chars))
            if "lm" in models:
                from model.reference_lm import perplexities

                bos = models["tokenizer"].token_to_id(SEPARATOR)
                limit = c.perplexity.seq_len * 8  # characters: more than seq_len tokens' worth
                encoded = [[bos, *e.ids] for e in models["tokenizer"].encode_batch([t[:limit] for t in texts])]
                ppl.append(perplexities(models["lm"], encoded))
        n = len(ids)
        table = pa.table({"doc_id": pa.array(ids, pa.string()), "source": pa.array(sources, pa.string()),
                          "quality_score": pa.array(np.concatenate(quality) if quality else [None] * n, pa.float32()),
                          "perplexity": pa.array(np.concatenate(ppl) if ppl else [None] * n, pa.float32())})
        write_parquet_atomic(table, scratch / f"scores-{unit.name}.parquet")
        return {"docs_scored": n}

    # -- 4. reduce -----------------------------------------------------------------------------------------------

    def reduce(self, scratch: Path, scans: list[dict[str, Any]], stage_key: str) -> dict[str, Any]:
        parts = [pq.read_table(f) for f in sorted(scratch.glob("scores-part-*.parquet"))]
        scores = pa.concat_tables(parts) if parts else SCORE_SCHEMA.empty_table()
        c = self.config
        cutoffs: dict[str, Any] = {}
        facts: dict[str, Any] = {"docs_scored": scores.num_rows}
        if c.classifier.enabled:
            q = scores["quality_score"].to_numpy(zero_copy_only=False)
            if c.classifier.keep == "threshold":
                cutoffs["classifier"] = [c.classifier.threshold, "\U0010ffff"]  # every doc_id ties in
            else:
                found = top_fraction_cutoff(q, scores["doc_id"].to_pylist(), c.classifier.top_fraction)
                cutoffs["classifier"] = list(found) if found else None
            if cutoffs["classifier"]:
                facts["classifier_cutoff"] = cutoffs["classifier"][0]
            if len(q):
                facts["quality_score_median"] = float(np.median(q))
        if c.perplexity.enabled:
            if c.perplexity.keep == "band":
                bands = {}
                for source in sorted(set(scores["source"].to_pylist())):
                    values = scores.filter(pc.equal(scores["source"], source))["perplexity"].to_numpy(
                        zero_copy_only=False)
                    values = values[~np.isnan(values)]
                    if len(values):
                        bands[source] = [float(np.quantile(values, 1 / 3)), float(np.quantile(values, 2 / 3))]
                        facts[f"perplexity_terciles.{source}"] = bands[source]
                cutoffs["bands"] = bands
            p = scores["perplexity"].to_numpy(zero_copy_only=False)
            if len(p) and not np.isnan(p).all():
                facts["perplexity_median"] = float(np.nanmedian(p))
        atomic_write_json(scratch / "cutoffs.json", cutoffs)
        return facts

    def after_reduce(self, scratch: Path) -> None:
        for f in scratch.glob("sample-part-*.parquet"):
            f.unlink(missing_ok=True)

    # -- 5. process ----------------------------------------------------------------------------------------------

    def process(self, unit: Unit, writer: ShardWriter, drops: DropLog, result: ShardResult) -> None:
        """Keep or drop each document by the reduce's cut-offs, a batch at a time (the scores are joined by
        doc_id); the kept ones go on with their scores."""
        scratch = self.scratch_dir(writer.out_dir)
        cutoffs = json.loads((scratch / "cutoffs.json").read_text())
        scored = pq.read_table(scratch / f"scores-{unit.name}.parquet")
        scored_ids = scored["doc_id"].combine_chunks()
        quality = scored["quality_score"].to_numpy(zero_copy_only=False).astype(np.float64)
        ppl = scored["perplexity"].to_numpy(zero_copy_only=False).astype(np.float64)
        for batch in self.input_batches(unit):
            ids = batch.column("doc_id")
            rows = pc.fill_null(pc.index_in(ids, value_set=scored_ids), -1).to_numpy().astype(np.int64)
            q, p = _take(quality, rows), _take(ppl, rows)
            drop, reasons, details = self._decide(ids, batch.column("source"), q, p, cutoffs)
            sizes = pc.fill_null(pc.utf8_length(batch.column("text")), 0).to_numpy().astype(np.int64)
            result.docs_in += batch.num_rows
            result.bytes_in += int(sizes.sum())
            out = pa.RecordBatch.from_arrays(
                [*batch.columns, pa.array(q, pa.float32(), from_pandas=True),
                 pa.array(p, pa.float32(), from_pandas=True)], schema=SCHEMA)
            writer.add_batch(out.filter(pa.array(~drop)))
            if drop.any():
                which = pa.array(drop)
                drops.add_batch(batch.select(["doc_id", "url", "warc_file", "warc_offset", "source"]).filter(which),
                                reasons, details, sizes[drop])

    def _decide(self, ids: pa.Array, sources: pa.Array, q: np.ndarray, p: np.ndarray,
                cutoffs: dict[str, Any]) -> tuple[np.ndarray, list[str], list[str]]:
        """Which documents to drop (a mask), and each dropped one's reason and detail, in order. The classifier
        decides first; a document without a score (its source skips select) is kept."""
        c = self.config
        clf_cut, bands = cutoffs.get("classifier"), cutoffs.get("bands", {})
        n = len(q)
        why = np.zeros(n, dtype=np.int8)  # 0 keep, 1 classifier, 2 perplexity threshold, 3 perplexity band
        if c.classifier.enabled and clf_cut:
            why[~np.isnan(q) & ~kept_by_cutoff(q, ids, tuple(clf_cut))] = 1
        lo = np.full(n, np.nan)
        hi = np.full(n, np.nan)
        if c.perplexity.enabled:
            free = (why == 0) & ~np.isnan(p)
            if c.perplexity.keep == "threshold":
                why[free & (p > c.perplexity.max_perplexity)] = 2
            else:
                src = np.asarray(sources.to_pylist(), dtype=object)
                for source, (low, high) in bands.items():
                    here = src == source
                    lo[here], hi[here] = low, high
                banded = free & ~np.isnan(lo)
                allowed = np.isin(band_index(p, lo, hi), [BANDS.index(b) for b in c.perplexity.bands])
                why[banded & ~allowed] = 3
        drop = why > 0
        reasons, details = [], []
        for i in np.flatnonzero(drop).tolist():
            if why[i] == 1:
                reasons.append("quality_classifier")
                details.append(f"quality_classifier:{q[i]:.4f} < {clf_cut[0]:.4f} ({c.classifier.keep})")
            elif why[i] == 2:
                reasons.append("perplexity")
                details.append(f"perplexity:{p[i]:.1f} > {c.perplexity.max_perplexity:g}")
            else:
                reasons.append("perplexity")
                details.append(f"perplexity:{p[i]:.1f} {band_of(p[i], (lo[i], hi[i]))} "
                               f"(terciles {lo[i]:.1f}, {hi[i]:.1f})")
        return drop, reasons, details

    # -- the steps together --------------------------------------------------------------------------------------

    def execute(self, ctx: StageContext, inp: Input, out_dir: Path, key: str) -> StageResult:
        units = self.plan(inp.dir)
        prepare_output(out_dir)
        c = self.config
        trains = (c.classifier.enabled and c.classifier.model is None) or c.perplexity.enabled
        samples = ctx.map("sample", sample_step, self, units, out_dir) if trains else []
        models = ctx.call("select:train", train_step, self, out_dir, samples)
        say_models(ctx, models)
        result = super().execute(ctx, inp, out_dir, key)
        result.datasets += self.model_datasets(out_dir, models, inp.dataset_ids)
        result.metrics += [(None, f"select.{kind}.{k}", float(v)) for kind in ("classifier", "perplexity")
                           for k, v in sorted(models.get(kind, {}).items())
                           if isinstance(v, (int, float)) and not isinstance(v, bool)]
        return result

    def model_datasets(self, out_dir: Path, models: dict[str, Any], parents: list[str]) -> list[Dataset]:
        """Each model as a dataset named by its hash, listing its files (the model, the ids it trained on)."""
        made = []
        clf = models.get("classifier")
        if clf:
            files = [Path(clf["path"])]
            if not clf["loaded"]:
                files.append(self.models_dir(out_dir) / "classifier_sample.parquet")
            rows = [(str(files[0]), None, files[0].stat().st_size, clf["sha256"]), *map(_file_row, files[1:])]
            made.append(Dataset(f"quality_classifier-{clf['sha256'][:12]}", "quality_classifier", None, clf["path"],
                                "fasttext", clf["sha256"], rows,
                                [] if clf["loaded"] else parents))
        lm = models.get("perplexity")
        if lm:
            lm_dir = Path(lm["path"])
            files = [lm_dir / n for n in ("model.pt", "tokenizer.json", "lm.json", "lm_sample.parquet")]
            digest = stable_hash([file_sha256(f) for f in files[:2]])
            made.append(Dataset(f"reference_lm-{digest[:12]}", "reference_lm", None, str(lm_dir), "torch", digest,
                                [_file_row(f) for f in files], parents))
        return made


def _sha256(path: Path) -> str:
    """A model file's sha256, remembered across runs by its stat (DCLM's model is ~1 GB; hashing it costs seconds)."""
    return cached_sha256(Path(path))


def _take(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """values[rows], NaN where a row is -1 (a document that was not scored)."""
    if not len(values):
        return np.full(len(rows), np.nan)
    return np.where(rows >= 0, values[np.maximum(rows, 0)], np.nan)


def _file_row(path: Path) -> tuple[str, int | None, int | None, str | None]:
    return (str(path), None, path.stat().st_size, file_sha256(path))


def say_models(ctx: StageContext, models: dict[str, Any]) -> None:
    clf = models.get("classifier")
    if clf and clf.get("loaded"):
        ctx.say(f"select: classifier {clf['path']} (sha256 {clf['sha256'][:12]})")
    elif clf:
        ctx.say(f"select: classifier trained on {clf['train_positive']} reference and {clf['train_negative']} crawl "
                f"documents; held out {clf['val_positive']}+{clf['val_negative']}: accuracy "
                f"{clf.get('val_accuracy', float('nan')):.3f}, AUC {clf.get('val_auc', float('nan')):.3f}")
    lm = models.get("perplexity")
    if lm:
        ctx.say(f"select: reference LM trained for {lm['steps']} steps on {lm['device']}, on a reference of "
                f"{lm['tokens']:,} tokens in {lm['docs']} documents: loss {lm['first_loss']:.2f} -> "
                f"{lm['final_loss']:.2f}")


def sample_step(stage: SelectStage, unit: Unit, out_dir: Path) -> dict[str, Any]:
    """The sample of one unit, recorded (``sample-<unit>.json``) so a resumed run does not read it again."""
    scratch = stage.scratch_dir(Path(out_dir))
    done = scratch / f"sample-{unit.name}.json"
    if done.is_file() or (stage.models_dir(Path(out_dir)) / "models.json").is_file():
        return json.loads(done.read_text()) if done.is_file() else {"unit": unit.name}
    scratch.mkdir(parents=True, exist_ok=True)
    facts = {"unit": unit.name, **stage.sample(unit, scratch)}
    atomic_write_json(done, facts)
    return facts


def train_step(stage: SelectStage, out_dir: Path, samples: list[dict[str, Any]]) -> dict[str, Any]:
    return stage.train(Path(out_dir), samples)


__all__ = ["SelectStage", "SCHEMA", "top_fraction_cutoff", "kept_by_cutoff", "band_index", "band_of"]
