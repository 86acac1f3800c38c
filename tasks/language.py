"""Language identification with langid.py, on the extracted text.

It runs after extraction because on raw HTML the markup, scripts and navigation drown the prose and skew the
guess. Newlines are folded to spaces and probabilities are normalized (langid's raw scores are log-odds). Every
document gets ``lang`` and ``lang_score``; one whose language is not kept, or scores under that language's
threshold, is dropped as ``lang_not_kept`` or ``lang_low_score`` with its language and score in the drop detail.
"""
from __future__ import annotations

import threading

import pyarrow as pa

from tasks import docpool
from tasks.config import LanguageConfig
from tasks.extract import SCHEMA as EXTRACT_SCHEMA
from tasks.shards import DropLog, ShardResult, ShardWriter
from tasks.sharded import ShardedStage, Unit

SCHEMA = pa.schema([*EXTRACT_SCHEMA, pa.field("lang", pa.string()), pa.field("lang_score", pa.float64())])

_identifier = None
_lock = threading.Lock()


def identifier():
    """langid's model, loaded once per process (about a second).

    Loading it also limits this process's BLAS to one thread: langid's matrix-vector products are too small to
    gain from more, and OpenBLAS's spinning helper threads made two language workers slower than one on 2 cores.
    Parallelism comes from the stage's workers instead."""
    global _identifier
    with _lock:
        if _identifier is None:
            from langid.langid import LanguageIdentifier, model
            from threadpoolctl import threadpool_limits

            threadpool_limits(1, user_api="blas")
            _identifier = LanguageIdentifier.from_modelstring(model, norm_probs=True)
    return _identifier


def classify(text: str, max_chars: int = 20_000) -> tuple[str, float]:
    """(ISO 639-1 code, probability) of a text."""
    folded = " ".join(text[:max_chars].split())
    lang, score = identifier().classify(folded)
    return lang, float(score)


def classify_texts(texts: list[str], max_chars: int) -> list[tuple[str, float]]:
    """``classify`` over texts (one chunk of a batch, in a docpool worker or here)."""
    return [classify(t, max_chars) for t in texts]


class LanguageStage(ShardedStage):
    name = "language"
    role = "languages"
    schema = SCHEMA
    size_column = "text"

    config: LanguageConfig

    def source_params(self):
        return self.skip_params()

    def process(self, unit: Unit, writer: ShardWriter, drops: DropLog, result: ShardResult) -> None:
        """Column-wise: classify the text column of each batch, append lang and lang_score, keep by mask. The
        documents of a source that skips language ID pass with a null lang."""
        keep, max_chars, skipping = self.config.keep, self.config.max_chars, self.skipping()
        for batch in self.input_batches(unit):
            texts = batch.column("text").to_pylist()
            passed = [s in skipping for s in batch.column("source").to_pylist()] if skipping else [False] * len(texts)
            found = iter(docpool.map(classify_texts, [t or "" for t, p in zip(texts, passed) if not p], max_chars))
            guesses = [(None, None) if p else next(found) for p in passed]
            result.docs_in += len(texts)
            result.bytes_in += sum(len(t or "") for t in texts)
            langs = pa.array([g[0] for g in guesses], pa.string())
            scores = pa.array([g[1] for g in guesses], pa.float64())
            kept = [p or (lang in keep and score >= keep[lang]) for p, (lang, score) in zip(passed, guesses)]
            out = pa.RecordBatch.from_arrays([*batch.columns, langs, scores], schema=SCHEMA)
            writer.add_batch(out.filter(pa.array(kept)))
            if not all(kept):
                for i in (i for i, k in enumerate(kept) if not k):
                    lang, score = guesses[i]
                    reason = "lang_not_kept" if lang not in keep else "lang_low_score"
                    drops.add_record(reason, batch.slice(i, 1).to_pylist()[0], nbytes=len(texts[i] or ""),
                                     detail=f"{lang}:{score:.4f}")
