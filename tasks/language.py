"""Language identification with langid.py, on the extracted text.

It runs after extraction because on raw HTML the markup, scripts and navigation drown the prose and skew the
guess. Newlines are folded to spaces and probabilities are normalized (langid's raw scores are log-odds). Every
document gets ``lang`` and ``lang_score``; one whose language is not kept, or scores under that language's
threshold, is dropped as ``lang_not_kept`` or ``lang_low_score`` with its language and score in the drop detail.
"""
from __future__ import annotations

import array
import hashlib
import json
import threading
import zipfile
from pathlib import Path

import pyarrow as pa

from tasks import docpool
from tasks.atomic import atomic_file, hash_cache_dir
from tasks.config import LanguageConfig
from tasks.schemas import LANGUAGE as SCHEMA
from tasks.shards import DropLog, ShardResult, ShardWriter
from tasks.sharded import ShardedStage, Unit


_identifier = None
_lock = threading.Lock()


def identifier():
    """langid's model, loaded once per process.

    Decoding the model langid ships (base64, bz2, pickle) costs about 1.3 s of CPU, paid by every process that
    classifies (each docpool worker too), so the decoded arrays are kept once in Crucible's cache directory
    (``hash_cache_dir()/langid``, named by the model's hash) and read back in milliseconds; the classifier built
    from them is the same one, to the bit. Where that directory cannot be written, the model is decoded each time.

    Loading it also limits this process's BLAS to one thread: langid's matrix-vector products are too small to
    gain from more, and OpenBLAS's spinning helper threads made two language workers slower than one on 2 cores.
    Parallelism comes from the stage's workers instead."""
    global _identifier
    with _lock:
        if _identifier is None:
            from threadpoolctl import threadpool_limits

            threadpool_limits(1, user_api="blas")
            _identifier = _load_langid()
    return _identifier


def langid_cache_path() -> Path:
    from langid.langid import model

    digest = hashlib.sha256(model if isinstance(model, bytes) else model.encode()).hexdigest()[:16]
    return hash_cache_dir() / "langid" / f"{digest}.npz"


def _load_langid():
    import numpy as np
    from langid.langid import LanguageIdentifier, model

    path = langid_cache_path()
    try:
        with np.load(path, allow_pickle=False) as saved:
            nb_ptc, nb_pc = saved["nb_ptc"], saved["nb_pc"]
            nextmove = array.array("H", saved["tk_nextmove"].astype(np.uint16).tobytes())
            meta = json.loads(saved["meta"].tobytes().decode())
        if nb_ptc.ndim != 2 or nb_ptc.shape[1] != nb_pc.shape[0] or len(meta["nb_classes"]) != nb_pc.shape[0]:
            raise ValueError("shapes do not match")
        output = {int(state): tuple(features) for state, features in meta["tk_output"].items()}
        return LanguageIdentifier(nb_ptc, nb_pc, nb_ptc.shape[0], meta["nb_classes"], nextmove, output,
                                  norm_probs=True)
    except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile):  # absent or damaged: decode it again
        pass
    made = LanguageIdentifier.from_modelstring(model, norm_probs=True)
    meta = {"nb_classes": list(made.nb_classes), "tk_output": {str(k): list(v) for k, v in made.tk_output.items()}}
    try:
        with atomic_file(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, nb_ptc=made.nb_ptc, nb_pc=made.nb_pc,
                     tk_nextmove=np.frombuffer(made.tk_nextmove.tobytes(), dtype=np.uint16),
                     meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    except OSError:  # a read-only home: decode it each time
        pass
    return made


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
    uses_docpool = True
    role = "languages"
    schema = SCHEMA
    size_column = "text"

    config: LanguageConfig

    def source_params(self):
        return self.skip_params()

    def process(self, unit: Unit, writer: ShardWriter, drops: DropLog, result: ShardResult) -> None:
        """Column-wise: classify the text column of each batch, append lang and lang_score, keep by mask. The
        documents of a source that skips language ID pass with a null lang."""
        max_chars, skipping = self.config.max_chars, self.skipping()
        for group in self.input_batch_groups(unit, docpool.BATCH_ROWS):  # small shards' batches sent together
            texts = [t or "" for batch in group for t in batch.column("text").to_pylist()]
            passed = ([s in skipping for batch in group for s in batch.column("source").to_pylist()] if skipping
                      else [False] * len(texts))
            found = iter(docpool.map(classify_texts, [t for t, p in zip(texts, passed) if not p], max_chars))
            guesses = [(None, None) if p else next(found) for p in passed]
            start = 0
            for batch in group:  # written batch by batch as read: the same Parquet bytes however they were sent
                stop = start + batch.num_rows
                self._write(batch, texts[start:stop], passed[start:stop], guesses[start:stop], writer, drops, result)
                start = stop

    def _write(self, batch: pa.RecordBatch, texts: list[str], passed: list[bool],
               guesses: list[tuple[str | None, float | None]], writer: ShardWriter, drops: DropLog,
               result: ShardResult) -> None:
        keep = self.config.keep
        result.docs_in += len(texts)
        result.bytes_in += sum(len(t) for t in texts)
        langs = pa.array([g[0] for g in guesses], pa.string())
        scores = pa.array([g[1] for g in guesses], pa.float64())
        kept = [p or (lang in keep and score >= keep[lang]) for p, (lang, score) in zip(passed, guesses)]
        out = pa.RecordBatch.from_arrays([*batch.columns, langs, scores], schema=SCHEMA)
        writer.add_batch(out.filter(pa.array(kept)))
        if not all(kept):
            for i in (i for i, k in enumerate(kept) if not k):
                lang, score = guesses[i]
                reason = "lang_not_kept" if lang not in keep else "lang_low_score"
                drops.add_record(reason, batch.slice(i, 1).to_pylist()[0], nbytes=len(texts[i]),
                                 detail=f"{lang}:{score:.4f}")
