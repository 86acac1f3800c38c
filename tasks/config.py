"""The typed configuration tree: one TOML file, one section per stage.

Load it with ``load_config(path)``. Unknown keys, wrong types and out-of-range values fail here, before anything
runs, with a ``ConfigError`` that names each bad key and says what is allowed. ``crucible config show CONFIG``
prints the resolved tree with every default filled in.

Why one module of ~550 lines: it is the user's reference. Every setting, its default, its range and its
description are read in one place (and `crucible config show` prints them in the same order); the stages import
their section from here, and the torch side derives its defaults from it (model/train.py, model/evaluate.py).
"""
from __future__ import annotations

import hashlib
import json
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the file and every bad key."""


class Section(BaseModel):
    """Base of every section: unknown keys are errors and a loaded config never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------------------------------------
# Infrastructure sections (not part of any stage key)


class PathsConfig(Section):
    work_dir: Path = Field(Path("work"), description="Datasets, Prefect state and the warehouse live here.")


class WarehouseConfig(Section):
    path: Path | None = Field(None, description="DuckDB file; default <work_dir>/warehouse.duckdb.")
    lock_timeout_s: float = Field(60.0, gt=0, le=3600, description="How long to wait for another process's lock.")
    pipeline_wait_s: float = Field(0.0, ge=0, le=86400, description=(
        "How long a pipeline run waits for another one on the same warehouse to finish; then it fails naming it."))


class RunnerConfig(Section):
    kind: Literal["threads", "processes", "dask"] = "threads"
    workers: int = Field(2, ge=1, le=4096, description="Threads, processes or Dask workers.")
    address: str | None = Field(None, description="Dask scheduler address; unset starts a LocalCluster.")
    threads_per_worker: int = Field(1, ge=1, le=256, description="Dask LocalCluster threads per worker process.")


# ---------------------------------------------------------------------------------------------------------------
# Stage sections: everything in one of these is hashed into that stage's cache key.


class ShardedStageConfig(Section):
    shard_max_docs: int = Field(2000, ge=1, le=10_000_000, description="Most documents in one output shard.")
    shard_max_bytes: int = Field(128 * 2**20, ge=1024, description="Most uncompressed bytes in one output shard.")


class CrawlConfig(Section):
    seeds: list[str] = Field(default_factory=list, description="Start URLs; none means no crawl (ingest reads files).")
    seeds_file: Path | None = Field(None, description="A file of start URLs, one per line (# comments).")
    scope: Literal["host", "domain", "any"] = Field("host", description="Follow links on the seed's host or domain.")
    allow: list[str] = Field(default_factory=list, description="Regexes; when set, a URL must match one.")
    deny: list[str] = Field(default_factory=list, description="Regexes; a URL that matches one is not fetched.")
    max_depth: int = Field(3, ge=0, le=1000)
    max_pages: int = Field(1000, ge=1)
    max_page_bytes: int = Field(5 * 2**20, ge=1024)
    mime_types: list[str] = Field(["text/html", "application/xhtml+xml"], min_length=1)
    user_agent: str = Field("CrucibleBot/0.1", min_length=1)
    concurrency: int = Field(8, ge=1, le=1024, description="Requests in flight across all hosts.")
    per_host_concurrency: int = Field(2, ge=1, le=64)
    delay_s: float = Field(0.25, ge=0, le=3600, description="Least time between requests to one host.")
    timeout_s: float = Field(10.0, gt=0, le=600, description="Longest wait for a connection or one read.")
    fetch_deadline_s: float = Field(60.0, gt=0, le=3600,
                                    description="Longest a whole fetch may take (a server trickling bytes is cut).")
    max_redirects: int = Field(5, ge=0, le=50)
    retries: int = Field(2, ge=0, le=10, description="Retries of 5xx answers and timeouts, with backoff.")
    backoff_s: float = Field(0.5, ge=0, le=600)
    respect_robots: bool = True
    allow_private: bool = Field(False, description="Fetch hosts that resolve to private/loopback addresses.")
    private_hosts: list[str] = Field(default_factory=list,
                                     description="host or host:port exempt from the private-address refusal.")
    sort_query: bool = Field(False, description="Sort query parameters when normalizing URLs.")
    warc_max_bytes: int = Field(1 << 30, ge=4096, description="Start a new WARC file past this size.")

    @field_validator("allow", "deny")
    @classmethod
    def _valid_regexes(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"bad regex {pattern!r}: {err}") from None
        return value

    @field_validator("seeds")
    @classmethod
    def _http_seeds(cls, value: list[str]) -> list[str]:
        bad = [s for s in value if not s.lower().startswith(("http://", "https://"))]
        if bad:
            raise ValueError(f"seeds must be http(s) URLs, got {bad}")
        return value


class IngestConfig(ShardedStageConfig):
    inputs: list[str] = Field(default_factory=list, description=(
        "Paths, globs or fsspec URLs of WARC/ARC/WET files, or of saved pages (.html/.htm/.xhtml, maybe .gz)."))
    mime_types: list[str] = Field(["text/html", "application/xhtml+xml"], min_length=1)
    http_statuses: list[int] = Field([200], description="HTTP statuses to keep; empty keeps every status.")
    keep_conversions: bool = Field(True, description="Keep WET 'conversion' records (plain text) as documents.")
    max_payload_bytes: int = Field(10 * 2**20, ge=1, description="Larger decoded payloads are skipped.")

    @field_validator("mime_types")
    @classmethod
    def _lowercase_mime(cls, value: list[str]) -> list[str]:
        return [v.strip().lower() for v in value]

    @field_validator("http_statuses")
    @classmethod
    def _valid_status(cls, value: list[int]) -> list[int]:
        bad = [v for v in value if not 100 <= v <= 599]
        if bad:
            raise ValueError(f"HTTP statuses must be 100..599, got {bad}")
        return value


class ExtractConfig(ShardedStageConfig):
    include_comments: bool = False
    include_tables: bool = True
    favor_precision: bool = False
    favor_recall: bool = False
    deduplicate: bool = False
    min_text_chars: int = Field(1, ge=1, description="Shorter extractions are dropped as 'extract_empty'.")
    cpu_time_limit_s: float = Field(30.0, gt=0, le=3600, description=(
        "CPU seconds one page may take before it is dropped as 'extract_timeout'. CPU time, not wall time, so that "
        "a busy machine drops the same pages as an idle one."))
    wall_time_limit_s: float = Field(300.0, gt=0, le=36000, description="A backstop for a page that blocks.")


# The 97 languages langid.py's bundled model knows (ISO 639-1).
LANGID_CODES = frozenset("""af am an ar as az be bg bn br bs ca cs cy da de dz el en eo es et eu fa fi fo fr ga gl gu
he hi hr ht hu hy id is it ja jv ka kk km kn ko ku ky la lb lo lt lv mg mk ml mn mr ms mt nb ne nl nn no oc or pa pl ps
pt qu ro ru rw se si sk sl sq sr sv sw ta te th tl tr ug uk ur vi vo wa xh zh zu""".split())


class LanguageConfig(ShardedStageConfig):
    keep: dict[str, float] = Field({"en": 0.65}, min_length=1,
                                   description="ISO 639-1 code -> least langid probability to keep a document.")
    max_chars: int = Field(20_000, ge=100, description="Classify at most this many characters of each text.")

    @field_validator("keep")
    @classmethod
    def _known_languages(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - LANGID_CODES)
        if unknown:
            raise ValueError(f"unknown language codes {unknown}; langid knows: {', '.join(sorted(LANGID_CODES))}")
        bad = {k: v for k, v in value.items() if not 0.0 <= v <= 1.0}
        if bad:
            raise ValueError(f"thresholds must be between 0 and 1, got {bad}")
        return value


def _ratio(default: float, description: str = "") -> float:
    return Field(default, ge=0.0, le=1.0, description=description)


class QualityConfig(ShardedStageConfig):
    # which rule families run
    c4: bool = True
    gopher_quality: bool = True
    gopher_repetition: bool = True
    fineweb: bool = True
    pii: bool = True
    redact_urls: bool = Field(False, description="Also replace URLs in the text with <URL>.")
    keep_dropped_text: bool = Field(False, description="Store each dropped document's text in the drop log.")
    # C4
    c4_min_words_per_line: int = Field(3, ge=0)
    c4_min_sentences: int = Field(5, ge=0)
    c4_drop_curly_bracket: bool = True
    c4_terminal_punctuation: bool = Field(False, description="Keep only lines ending in punctuation (off as in FineWeb).")
    # Gopher quality
    gopher_min_words: int = Field(50, ge=0)
    gopher_max_words: int = Field(100_000, ge=1)
    gopher_min_mean_word_length: float = Field(3.0, ge=0)
    gopher_max_mean_word_length: float = Field(10.0, ge=0)
    gopher_max_symbol_word_ratio: float = _ratio(0.1, "'#' and ellipses per word")
    gopher_max_bullet_lines_ratio: float = _ratio(0.9)
    gopher_max_ellipsis_lines_ratio: float = _ratio(0.3)
    gopher_min_alpha_words_ratio: float = _ratio(0.8)
    gopher_min_stop_words: int = Field(2, ge=0)
    # Gopher repetition
    gopher_max_dup_line_ratio: float = _ratio(0.3)
    gopher_max_dup_para_ratio: float = _ratio(0.3)
    gopher_max_dup_line_char_ratio: float = _ratio(0.2)
    gopher_max_dup_para_char_ratio: float = _ratio(0.2)
    gopher_top_ngram_ratios: dict[int, float] = Field({2: 0.20, 3: 0.18, 4: 0.16})
    gopher_dup_ngram_ratios: dict[int, float] = Field({5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10})
    # FineWeb
    fineweb_min_line_punct_ratio: float = _ratio(0.12)
    fineweb_max_short_line_ratio: float = _ratio(0.67)
    fineweb_short_line_chars: int = Field(30, ge=0)
    fineweb_max_dup_line_char_ratio: float = _ratio(0.01)
    fineweb_max_newline_word_ratio: float = Field(0.3, ge=0)
    # blocklists
    host_blocklist: list[str] = Field(default_factory=list, description="Hosts (and their subdomains) to drop.")
    host_blocklist_file: Path | None = None
    builtin_offensive_words: bool = True
    offensive_words_file: Path | None = None
    max_offensive_word_ratio: float = _ratio(0.005, "Offensive words per word above which a document is dropped.")

    @field_validator("gopher_top_ngram_ratios", "gopher_dup_ngram_ratios")
    @classmethod
    def _ngram_ratios(cls, value: dict[int, float]) -> dict[int, float]:
        bad = {n: r for n, r in value.items() if not (1 <= n <= 50 and 0 <= r <= 1)}
        if bad:
            raise ValueError(f"n must be 1..50 and ratios 0..1, got {bad}")
        return dict(sorted(value.items()))


class DedupConfig(ShardedStageConfig):
    exact: bool = Field(True, description="Drop documents whose normalized text (NFC, casefold, spaces) repeats.")
    minhash: bool = Field(True, description="Drop near-duplicates found by MinHash LSH.")
    ngram: int = Field(5, ge=1, le=50, description="Words per shingle.")
    num_perm: int = Field(112, ge=8, le=1024, description="MinHash permutations (signature length).")
    bands: int = Field(14, ge=1, le=1024, description="LSH bands; bands x rows must not exceed num_perm.")
    rows: int = Field(8, ge=1, le=1024, description="Signature values per band.")
    threshold: float = Field(0.7, ge=0.0, le=1.0, description=(
        "Least estimated Jaccard for two colliding documents to count as near-duplicates (with verify). Set "
        "explicitly: the bands/rows S-curve alone collides pairs near (1/bands)^(1/rows), 0.72 for 14x8."))
    verify: bool = Field(True, description="Check every candidate pair's estimated Jaccard against threshold.")
    seed: int = Field(1, ge=0, le=2**31 - 1, description="Seed of the MinHash permutations.")
    memory_limit: str = Field("2GB", pattern=r"^\d+(\.\d+)?\s*[KMGT]?i?B$",
                              description="DuckDB's memory for clustering; beyond it, it spills to disk.")
    incremental: bool = Field(True, description=(
        "Remember accepted documents, so a later run drops near-duplicates of documents accepted before."))
    state_dir: Path | None = Field(None, description="Where accepted signatures live; default <work_dir>/dedup_state.")
    segments: bool = Field(False, description=(
        "Segment-level dedup: a line (paragraph) held by more than segment_max_repeats kept documents is removed "
        "from all but one of them (boilerplate that survived extraction)."))
    segment_max_repeats: int = Field(1, ge=1, le=1_000_000, description="Documents a segment may be in before it goes.")
    segment_min_chars: int = Field(40, ge=1, description="Shorter lines are not segments (they are never removed).")
    segment_min_doc_chars: int = Field(200, ge=0, description=(
        "A document shorter than this after its segments went is dropped ('segments_left_too_short')."))

    @model_validator(mode="after")
    def _bands_fit(self) -> "DedupConfig":
        if self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows = {self.bands} x {self.rows} = {self.bands * self.rows} exceeds "
                             f"num_perm {self.num_perm}")
        return self


class ClassifierConfig(Section):
    """select's fastText quality classifier (DCLM's recipe): trained on the reference against the crawl, or loaded."""

    enabled: bool = Field(False, description="Score every document with a quality classifier and keep the best.")
    model: Path | None = Field(None, description=(
        "A fastText model file (.bin) to load instead of training one, e.g. DCLM's openhermes_reddit classifier; "
        "its positive label must be __label__hq."))
    max_positives: int = Field(20_000, ge=2, description="Reference documents it trains on (a seeded sample).")
    max_negatives: int = Field(20_000, ge=2, description="Crawl documents it trains on (a seeded sample).")
    balance: bool = Field(True, description=(
        "Train on as many reference documents as crawl documents (the smaller sample sets both), as DCLM does."))
    epochs: int = Field(5, ge=1, le=1000)
    lr: float = Field(0.1, gt=0, le=10)
    word_ngrams: int = Field(2, ge=1, le=5, description="2: words and word bigrams, as DCLM's classifier.")
    dim: int = Field(100, ge=2, le=1000)
    min_count: int = Field(1, ge=1)
    val_fraction: float = Field(0.1, ge=0, lt=1, description="Held out of both classes for accuracy and AUC.")
    max_chars: int = Field(10_000, ge=100, description="A document's first characters read, in training and scoring.")
    seed: int = Field(0, ge=0, description="Seeds the samples, the split and fastText (one thread: reproducible).")
    keep: Literal["threshold", "top_fraction"] = Field("top_fraction", description=(
        "threshold: keep a document scoring at least threshold; top_fraction: keep the best-scoring top_fraction "
        "of the scored documents, over the whole dataset."))
    threshold: float = Field(0.5, ge=0, le=1, description="Least P(reference) kept (keep = threshold).")
    top_fraction: float = Field(0.5, gt=0, le=1, description="Share of the scored documents kept (keep = top_fraction).")


class PerplexityConfig(Section):
    """select's perplexity filter (CCNet's): a small GPT trained on the reference scores every document."""

    enabled: bool = Field(False, description="Score every document's perplexity under a reference language model.")
    vocab_size: int = Field(4096, ge=300, le=65536, description="The reference model's own BPE vocabulary.")
    depth: int = Field(2, ge=1, le=12)
    d_model: int = Field(128, ge=16, le=2048)
    seq_len: int = Field(256, ge=16, le=4096, description="Also the most tokens of a document that are scored.")
    batch_size: int = Field(16, ge=1)
    steps: int = Field(300, ge=1, description="Training steps on the reference (batch_size x seq_len tokens each).")
    lr: float = Field(3e-3, gt=0)
    max_train_bytes: int = Field(64 * 2**20, ge=1024, description="Most reference text it trains on.")
    seed: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    keep: Literal["band", "threshold"] = Field("band", description=(
        "band: keep the bands named in bands, cut per source at its perplexity terciles (CCNet's head, middle "
        "and tail); threshold: keep a document whose perplexity is at most max_perplexity."))
    bands: list[Literal["head", "middle", "tail"]] = Field(["head", "middle"], min_length=1)
    max_perplexity: float = Field(1000.0, gt=1)


class SelectConfig(ShardedStageConfig):
    """Model-based selection between dedup and decontaminate; skipped unless classifier or perplexity is on."""

    reference: str | None = Field(None, description=(
        "The [[sources]] entry whose documents are the positives (the classifier) and the text the reference LM "
        "trains on (perplexity); its held-out validation documents are never used."))
    reference_files: list[str] = Field(default_factory=list, description=(
        "Or: text files (a document per paragraph) or .jsonl files (the 'text' field) holding the reference."))
    negative_sources: list[str] = Field(default_factory=list, description=(
        "Sources the classifier's negatives come from; default every warc/html source (the crawl and the web)."))
    classifier: ClassifierConfig = ClassifierConfig()
    perplexity: PerplexityConfig = PerplexityConfig()

    @model_validator(mode="after")
    def _reference_given(self) -> "SelectConfig":
        needs = (self.classifier.enabled and self.classifier.model is None) or self.perplexity.enabled
        if needs and not self.reference and not self.reference_files:
            raise ValueError("select needs a reference to train on: set select.reference to a [[sources]] name or "
                             "select.reference_files")
        if self.reference and self.reference_files:
            raise ValueError("set select.reference or select.reference_files, not both")
        return self


class DecontaminateConfig(ShardedStageConfig):
    benchmarks_dir: Path | None = Field(None, description=(
        "Directory of benchmark JSONL files (CORE formats). Unset: the small smoke benchmark Crucible writes into "
        "<work_dir>/benchmarks/smoke; `crucible benchmarks fetch` downloads the real sets."))
    tasks: list[str] = Field(default_factory=list, description="Benchmark files (names without .jsonl); empty: all.")
    ngram: int = Field(8, ge=2, le=100, description="Word n-gram length matched between items and documents.")
    min_coverage: float = Field(0.5, gt=0, le=1, description=(
        "A document contains an item when it holds at least this share of one item segment's n-grams."))
    min_words: int = Field(5, ge=1, le=100, description=(
        "An item shorter than ngram words is found only whole, from this many words; shorter ones are counted."))
    policy: Literal["drop", "cut"] = Field("drop", description=(
        "drop: drop a document that shares an n-gram with an item. cut: remove a window around each match."))
    cut_window_chars: int = Field(200, ge=0, description="Characters removed on each side of a match (cut).")
    max_cuts: int = Field(10, ge=0, description="A document needing more cuts than this is dropped (cut).")
    min_chars_after_cut: int = Field(200, ge=0, description="A document shorter than this after cutting is dropped.")

    @model_validator(mode="after")
    def _min_below_n(self) -> "DecontaminateConfig":
        if self.min_words > self.ngram:
            raise ValueError(f"min_words {self.min_words} is larger than ngram {self.ngram}")
        return self


class TokenizeConfig(ShardedStageConfig):
    vocab_size: int = Field(8192, ge=300, le=2**20, description="BPE vocabulary, special tokens included.")
    special_tokens: list[str] = Field(["<|bos|>"], min_length=1, description="They take the first ids.")
    separator: str = Field("<|bos|>", description="Prepended to every document; one of special_tokens.")
    tokenizer_path: Path | None = Field(None, description="Use this tokenizer.json instead of training one.")
    sample_max_bytes: int = Field(256 * 2**20, ge=1, description=(
        "Most bytes of training-split text the BPE is trained on, taken in a fixed pseudo-random order."))
    val_fraction: float = Field(0.01, ge=0.0, le=0.5, description=(
        "Documents held out from each source, by hash of doc_id (a source's val_fraction or val_docs overrides)."))
    split_seed: int = Field(0, ge=0)
    shuffle_seed: int = Field(1, ge=0, description="Orders the documents within each shard.")
    max_epochs: float = Field(4.0, gt=0, description=(
        "Warn when a source's weight repeats its documents more than this many times per pass (Muennighoff et al. "
        "2023: repeated data loses value past about 4 epochs)."))
    encoder: Literal["auto", "tokenizers"] = Field("auto", description=(
        "auto: tiktoken when it gives the same ids as tokenizers on a probe of the sample, else tokenizers."))

    @model_validator(mode="after")
    def _separator_is_special(self) -> "TokenizeConfig":
        if self.separator not in self.special_tokens:
            raise ValueError(f"separator {self.separator!r} is not in special_tokens {self.special_tokens}")
        return self


class ModelConfig(Section):
    """The GPT (model/gpt.py). ``depth`` sets the rest unless they are given; the last four cannot export to Llama."""

    depth: int = Field(4, ge=1, le=128)
    d_model: int | None = Field(None, ge=8, description="Default 64 * depth.")
    n_heads: int | None = Field(None, ge=1, description="Default d_model / 64.")
    n_kv_heads: int | None = Field(None, ge=1, description="Fewer than n_heads: grouped-query attention.")
    mlp_hidden: int | None = Field(None, ge=8, description="Default 8/3 * d_model, rounded up to 64.")
    rope_theta: float = Field(10000.0, gt=0)
    norm_eps: float = Field(1e-5, gt=0)
    tie_embeddings: bool = False
    init_std: float = Field(0.02, gt=0)
    qk_norm: bool = False
    activation: Literal["swiglu", "relu2"] = "swiglu"
    norm_weight: bool = True
    logit_softcap: float | None = Field(None, gt=0)


class TrainConfig(Section):
    """Training (model/train.py, launched with torchrun). Batch sizes are in rows of seq_len tokens per rank."""

    nproc_per_node: int | Literal["auto"] = Field("auto", description=(
        "Processes torchrun starts: auto is the GPU count, else 1; set 2+ for CPU processes (gloo)."))
    nnodes: int = Field(1, ge=1, le=4096, description=(
        "Machines training together. 2+: the machine running the pipeline is one, `crucible train-node CONFIG "
        "--node-rank N` starts each other one; the work dir must be on a filesystem they all share."))
    rdzv_endpoint: str | None = Field(None, description=(
        "host:port of the c10d rendezvous when nnodes > 1: a free port on the machine running the pipeline, which "
        "every node must reach."))
    model: ModelConfig = ModelConfig()
    seed: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(8, ge=1, description="Rows per rank per micro-step.")
    seq_len: int = Field(512, ge=8)
    total_batch_tokens: int | None = Field(None, ge=8, description=(
        "Tokens per optimizer step; gradient accumulation makes up the difference. Default: one micro-step."))
    max_steps: int = Field(1000, ge=1)
    max_seconds: float | None = Field(None, gt=0, description="Stop early, with a final checkpoint, after this.")
    lr: float = Field(3e-3, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    warmup_steps: int = Field(20, ge=0)
    schedule: Literal["cosine", "wsd"] = "cosine"
    decay_fraction: float = Field(0.2, gt=0, le=1, description="wsd: the share of steps spent decaying.")
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)
    grad_clip: float = Field(1.0, gt=0)
    eval_every: int = Field(100, ge=0, description="Steps between validations (0: none, not even at the end).")
    eval_batches: int | None = Field(None, ge=1, description="Default: the whole val split.")
    checkpoint_every: int = Field(100, ge=0)
    keep_checkpoints: int = Field(2, ge=0, description="Periodic checkpoints kept; best and final always are.")
    compile: bool = False
    dtype: Literal["auto", "bf16", "fp32"] = "auto"
    fsdp: bool = Field(False, description="FSDP2 instead of DDP, for a model that does not fit one GPU.")
    buffer_docs: int = Field(256, ge=1, description="Documents the best-fit packer chooses among.")

    @model_validator(mode="after")
    def _rendezvous(self) -> "TrainConfig":
        if self.nnodes > 1:
            host, _, port = (self.rdzv_endpoint or "").rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"nnodes = {self.nnodes} needs rdzv_endpoint = \"HOST:PORT\" (a free port on the "
                                 f"machine that runs the pipeline), got {self.rdzv_endpoint!r}")
        return self


class TaskEvalConfig(Section):
    """Overrides for one benchmark task; unset keys keep the CORE defaults (tasks/evalsets.py TASKS)."""

    shots: int | None = Field(None, ge=0)
    delimiter: str | None = None
    max_items: int | None = Field(None, ge=1)
    baseline: float | None = Field(None, ge=0, lt=1, description="Random-guess accuracy; needed for a new task.")


class EvaluateConfig(Section):
    """Evaluation (model/evaluate.py under torchrun): CORE-7, val bits per byte, samples."""

    benchmarks_dir: Path | None = Field(None, description=(
        "Benchmark JSONL files (CORE formats). Unset: the directory decontaminate used (by default the smoke set)."))
    tasks: dict[str, TaskEvalConfig] = Field(default_factory=dict, description=(
        "Per-task overrides; when any are given, only those tasks run."))
    max_items: int | None = Field(None, ge=1, description="Items per task after the seeded shuffle; unset: all.")
    shuffle_seed: int = 1337
    batch_rows: int = Field(32, ge=1, description="Sequences per forward pass.")
    val: bool = Field(True, description="Also bits per byte and perplexity on the val split.")
    val_batches: int | None = Field(None, ge=1)
    sample_prompts: list[str] = Field(default_factory=lambda: ["The history of the", "In the morning, the",
                                                               "Python is a programming language that",
                                                               "The most important thing about"])
    sample_tokens: int = Field(32, ge=0)
    temperatures: list[float] = Field([0.0, 0.8], description="0 is greedy.")
    nproc_per_node: int | Literal["auto"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"


CURATED_FORMATS = frozenset({"text", "jsonl", "parquet"})  # text as written: no HTML to extract, no crawl to filter


class ListingConfig(Section):
    """A file listing such as Common Crawl's ``warc.paths.gz``: one path per line, joined to ``base``; a source takes
    a slice of it (``range``), then the ``first`` N or a seeded ``sample`` of N."""

    paths: str = Field(description="The listing: a local path or URL (gzip-compressed or not).")
    base: str = Field("https://data.commoncrawl.org/", description="What each listed path is joined to.")
    range: list[int] | None = Field(None, min_length=2, max_length=2, description=(
        "[start, stop): listing lines 0-based, stop excluded (a shard range)."))
    first: int | None = Field(None, ge=1, description="The first N files (of the range).")
    sample: int | None = Field(None, ge=1, description="Or: N files drawn at random with `seed` (in listing order).")
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _one_selection(self) -> "ListingConfig":
        if self.first is not None and self.sample is not None:
            raise ValueError("listing: set first or sample, not both")
        if self.range is not None and not 0 <= self.range[0] < self.range[1]:
            raise ValueError(f"listing.range must be [start, stop) with 0 <= start < stop, got {self.range}")
        return self


class SourceConfig(Section):
    """One source of documents (``[[sources]]``): where its files are, how to read them, how it is filtered, and
    how much of it training sees. Every document carries its source's name through every stage."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$", description=(
        "Letters, digits, _ and - (it names metrics, such as train.val_bpb/<name>, so no dots)."))
    inputs: list[str] = Field(default_factory=list, description=(
        "Paths, globs or fsspec URLs; .gz/.bz2/.zst/.xz stream."))
    listing: ListingConfig | None = Field(None, description=(
        "Or besides: the files a listing names (Common Crawl's warc.paths.gz / wet.paths.gz)."))
    format: Literal["warc", "html", "text", "jsonl", "parquet"] = Field("warc", description=(
        "warc: WARC/ARC/WET (and saved pages by name); html: every file is one page; text: plain UTF-8 text; "
        "jsonl: one JSON object per line; parquet: one row per document, read a row group at a time."))
    text_split: Literal["file", "paragraph", "line"] = Field("file", description=(
        "text: one document per file, per blank-line-separated block, or per line."))
    text_field: str = Field("text", min_length=1, description="jsonl/parquet: the field holding the text.")
    id_field: str | None = Field(None, description="jsonl/parquet: a field naming each document (else its place).")
    url_field: str | None = Field(None, description="jsonl/parquet: a field holding each document's URL.")
    metadata_fields: list[str] = Field(default_factory=list, description=(
        "jsonl/parquet: fields kept as the document's metadata (a JSON object carried through every stage)."))
    skip: list[Literal["language", "quality", "dedup", "select"]] | None = Field(None, description=(
        "Stages this source's documents pass through untouched. Default: language, quality and select for text, "
        "jsonl and parquet (curated text), none for warc and html. Decontamination always applies."))
    priority: int | None = Field(None, ge=-1000, le=1000, description=(
        "Dedup keeps the copy from the source with the highest priority. Default: 1 for curated formats "
        "(text, jsonl, parquet), 0 for warc and html, so a curated copy beats a crawled one."))
    weight: float | None = Field(None, gt=0, le=1, description=(
        "Target share of training tokens (0..1]; the source is up- or down-sampled to reach it."))
    epochs: float | None = Field(None, ge=0, le=1000, description=(
        "Or: how many times training sees each of its documents per pass (2: twice, 0.5: half of them; 0: never, "
        "so that its held-out slice is an evaluation text no variant trains on). Neither set: 1."))
    val_fraction: float | None = Field(None, ge=0, le=0.5, description="Held out for validation; default tokenize's.")
    val_docs: int | None = Field(None, ge=0, description="Or: exactly this many documents held out.")

    @model_validator(mode="after")
    def _one_of_each(self) -> "SourceConfig":
        if self.weight is not None and self.epochs is not None:
            raise ValueError(f"source {self.name}: set weight or epochs, not both")
        if self.val_fraction is not None and self.val_docs is not None:
            raise ValueError(f"source {self.name}: set val_fraction or val_docs, not both")
        return self

    @property
    def curated(self) -> bool:
        return self.format in CURATED_FORMATS

    @property
    def has_files(self) -> bool:
        return bool(self.inputs or self.listing)

    def skips(self, stage: str) -> bool:
        skip = self.skip if self.skip is not None else (["language", "quality", "select"] if self.curated else [])
        return stage in skip

    @property
    def dedup_priority(self) -> int:
        return self.priority if self.priority is not None else int(self.curated)

    def reading(self) -> dict[str, Any]:
        """What ingest's output depends on (not the mixture or the filters), for its key."""
        return self.model_dump(mode="json", include={"name", "inputs", "format", "text_split", "text_field",
                                                     "id_field", "url_field", "metadata_fields"})


class ReportConfig(Section):
    dir: Path | None = Field(None, description="Where reports go, one directory per run; unset: <work_dir>/reports.")


class Config(Section):
    name: str = "crucible"
    paths: PathsConfig = PathsConfig()
    warehouse: WarehouseConfig = WarehouseConfig()
    runner: RunnerConfig = RunnerConfig()
    crawl: CrawlConfig = CrawlConfig()
    ingest: IngestConfig = IngestConfig()
    extract: ExtractConfig = ExtractConfig()
    language: LanguageConfig = LanguageConfig()
    quality: QualityConfig = QualityConfig()
    dedup: DedupConfig = DedupConfig()
    select: SelectConfig = SelectConfig()
    decontaminate: DecontaminateConfig = DecontaminateConfig()
    tokenize: TokenizeConfig = TokenizeConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    report: ReportConfig = ReportConfig()
    sources: list[SourceConfig] = Field(default_factory=list, description=(
        "[[sources]]: curated corpora and other inputs beside ingest.inputs (a source named 'web') and the "
        "crawl (a source named 'crawl')."))

    source: Path | None = Field(None, exclude=True, description="The file this config was loaded from.")

    @model_validator(mode="after")
    def _sources_fit(self) -> "Config":
        implicit = {"crawl": bool(self.crawl.seeds or self.crawl.seeds_file), "web": bool(self.ingest.inputs)}
        empty = [s.name for s in self.sources if not s.has_files and not implicit.get(s.name)]
        if empty:
            raise ValueError(f"sources {empty} have no inputs (a source without inputs may only name the crawl, "
                             "'crawl', or ingest.inputs, 'web', to set their weights and filters)")
        names = [s.name for s in self.all_sources()]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"source names must be unique, {repeated} repeat (ingest.inputs is the source 'web', "
                             "crawl.seeds the source 'crawl'; to set their weights give them no inputs)")
        unknown = [n for n in ([self.select.reference] if self.select.reference else []) + self.select.negative_sources
                   if n not in names]
        if unknown:
            raise ValueError(f"select names sources {unknown} that are not configured; the sources are {names}")
        weights = [s.weight for s in self.all_sources() if s.weight is not None]
        if sum(weights) > 1 + 1e-9:
            raise ValueError(f"source weights are shares of the training tokens and add up to {sum(weights):g} > 1")
        if weights and len(weights) == len(names) and abs(sum(weights) - 1) > 1e-6:
            raise ValueError(f"every source has a weight, so they must add up to 1, not {sum(weights):g}")
        return self

    def all_sources(self) -> list[SourceConfig]:
        """The configured sources, with ingest.inputs as the source 'web' and the crawl's WARCs as 'crawl'. A
        ``[[sources]]`` entry named 'crawl' or 'web' without inputs sets those two's weight, filters and split."""
        settings = {s.name: s for s in self.sources if not s.has_files and s.name in ("crawl", "web")}
        implicit = []
        if self.crawl.seeds or self.crawl.seeds_file:  # its files are the crawl's WARCs
            given = settings.get("crawl")
            implicit.append(given.model_copy(update={"format": "warc"}) if given else SourceConfig(name="crawl"))
        if self.ingest.inputs:
            given = settings.get("web") or SourceConfig(name="web")
            implicit.append(given.model_copy(update={"inputs": self.ingest.inputs, "format": "warc"}))
        return implicit + [s for s in self.sources if s.has_files]

    @property
    def work_dir(self) -> Path:
        return self.paths.work_dir

    @property
    def warehouse_path(self) -> Path:
        return self.warehouse.path or self.paths.work_dir / "warehouse.duckdb"

    def section(self, stage: str) -> BaseModel:
        return getattr(self, stage)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def digest(self) -> str:
        return stable_hash(self.to_dict())


def to_toml(value: dict[str, Any]) -> str:
    """The resolved config as TOML that ``load_config`` reads back; unset options appear commented out."""
    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, list):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        if isinstance(v, dict):  # an inline table (quoted keys may be numbers); unset entries are left out
            return "{ " + ", ".join(f"{json.dumps(str(k))} = {scalar(x)}" for k, x in v.items()
                                    if x is not None) + " }"
        return json.dumps(str(v))  # a JSON string is a valid TOML basic string

    top = [f"{k} = {scalar(v)}" for k, v in value.items()
           if not isinstance(v, dict) and v is not None and not (isinstance(v, list) and v and isinstance(v[0], dict))]
    lines = top + [""] if top else []
    for section, body in value.items():
        if isinstance(body, list) and body and all(isinstance(b, dict) for b in body):
            for table in body:  # an array of tables: [[sources]]
                lines.append(f"[[{section}]]")
                lines += [f"# {k} = (unset)" if v is None else f"{k} = {scalar(v)}" for k, v in table.items()]
                lines.append("")
            continue
        if not isinstance(body, dict):
            continue
        lines.append(f"[{section}]")
        for key, v in body.items():
            lines.append(f"# {key} = (unset)" if v is None else f"{key} = {scalar(v)}")
        lines.append("")
    return "\n".join(lines)


def stable_hash(value: Any) -> str:
    """sha256 of the canonical JSON of a value: the same settings always give the same hash."""
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Loading


def _toml_line(text: str, loc: tuple) -> int | None:
    """The line (1-based) that sets ``loc`` in a TOML text: ``key =`` under its ``[table]`` header, best effort."""
    table, key = ".".join(str(p) for p in loc[:-1]), str(loc[-1])
    current = ""
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        header = re.match(r"^\[\s*([^\[\]]+?)\s*\]$", stripped)
        if header:
            current = header.group(1).replace('"', "")
            continue
        if current == table and re.match(rf'^"?{re.escape(key)}"?\s*=', stripped):
            return number
    return None


def _format_errors(err: ValidationError, model: type[BaseModel], text: str | None = None) -> list[str]:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        number = _toml_line(text, e["loc"]) if text and e["loc"] else None
        if number:
            key = f"line {number}: {key}"
        if e["type"] == "extra_forbidden":
            parent = _model_at(model, e["loc"][:-1])
            allowed = ", ".join(sorted(parent.model_fields)) if parent else "?"
            lines.append(f"{key}: unknown key; allowed keys here: {allowed}")
        else:
            got = e.get("input")
            shown = f" (got {got!r})" if not isinstance(got, dict) else ""
            lines.append(f"{key}: {e['msg']}{shown}")
    return lines


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model


def _absolute(cfg: Config, base: Path) -> Config:
    """Resolve relative paths against ``base`` so workers in other directories see the same files."""
    work = cfg.paths.work_dir if cfg.paths.work_dir.is_absolute() else base / cfg.paths.work_dir
    wh = cfg.warehouse.path
    if wh is not None and not wh.is_absolute():
        wh = base / wh
    inputs = [i if ("://" in i or Path(i).is_absolute()) else str(base / i) for i in cfg.ingest.inputs]
    def resolve(path: Path | None) -> Path | None:
        return path if path is None or path.is_absolute() else (base / path).resolve()

    quality = cfg.quality.model_copy(update={"host_blocklist_file": resolve(cfg.quality.host_blocklist_file),
                                             "offensive_words_file": resolve(cfg.quality.offensive_words_file)})
    benchmarks = resolve(cfg.decontaminate.benchmarks_dir) or work.resolve() / "benchmarks" / "smoke"
    return cfg.model_copy(update={
        "paths": cfg.paths.model_copy(update={"work_dir": work.resolve()}),
        "warehouse": cfg.warehouse.model_copy(update={"path": wh.resolve() if wh else None}),
        "crawl": cfg.crawl.model_copy(update={"seeds_file": resolve(cfg.crawl.seeds_file)}),
        "quality": quality,
        "tokenize": cfg.tokenize.model_copy(update={"tokenizer_path": resolve(cfg.tokenize.tokenizer_path)}),
        "dedup": cfg.dedup.model_copy(update={"state_dir": resolve(cfg.dedup.state_dir) or work.resolve() / "dedup_state"}),
        "decontaminate": cfg.decontaminate.model_copy(update={"benchmarks_dir": benchmarks}),
        "evaluate": cfg.evaluate.model_copy(update={
            "benchmarks_dir": resolve(cfg.evaluate.benchmarks_dir) or benchmarks}),
        "ingest": cfg.ingest.model_copy(update={"inputs": inputs}),
        "report": cfg.report.model_copy(update={"dir": resolve(cfg.report.dir) or work.resolve() / "reports"}),
        "sources": [s.model_copy(update={
            "inputs": [i if ("://" in i or Path(i).is_absolute()) else str(base / i) for i in s.inputs],
            "listing": s.listing and s.listing.model_copy(update={"paths": s.listing.paths if (
                "://" in s.listing.paths or Path(s.listing.paths).is_absolute()) else str(base / s.listing.paths)})})
            for s in cfg.sources],
    })


def parse_config(data: dict[str, Any], *, origin: str = "<config>", base: Path | None = None,
                 text: str | None = None) -> Config:
    """Validate a mapping into a Config; relative paths resolve against ``base`` (default: the current directory).
    With the TOML ``text`` it came from, each error names its line."""
    try:
        cfg = Config.model_validate(data)
    except ValidationError as err:
        detail = "\n  ".join(_format_errors(err, Config, text))
        raise ConfigError(f"invalid config {origin}:\n  {detail}") from None
    return _absolute(cfg, (base or Path.cwd()).resolve())


def load_config(path: str | Path, *, base: Path | None = None) -> Config:
    """Load and validate one TOML file. Relative paths in it are taken from the current directory."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror or err}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"invalid TOML in {path}: {err}") from None
    cfg = parse_config(data, origin=str(path), base=base, text=text)
    return cfg.model_copy(update={"source": path.resolve()})
