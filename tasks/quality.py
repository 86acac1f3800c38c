"""Quality, safety and PII: heuristic filters with a reason for every drop, then redaction and normalization.

Each rule looks at one document and returns None (keep) or the reason it drops it; ``QualityFilter`` runs them in
order, counts, and hands back the cleaned text. The rules follow the published recipes, with every threshold in
config:

- normalization: Unicode NFC and whitespace clean-up, never lowercasing;
- C4 line filter (Raffel et al. 2020): drops lines, then maybe the document;
- blocklists: hosts and offensive words (small lists of our own; users add files);
- Gopher quality and Gopher repetition (Rae et al. 2021, as datatrove implements them);
- FineWeb (Penedo et al. 2024);
- PII: e-mail and IP addresses (and optionally URLs) become <EMAIL>, <IP>, <URL>.

    from tasks.quality import QualityFilter
    kept, text, reason, redactions = QualityFilter(cfg.quality).apply(text, url)
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from tasks import docpool
from tasks.config import QualityConfig
from tasks.schemas import QUALITY as SCHEMA
from tasks.shards import DropLog, ShardResult, ShardWriter
from tasks.sharded import ShardedStage, Unit


STOP_WORDS = frozenset(["the", "be", "to", "of", "and", "that", "have", "with"])
BULLETS = ("•", "●", "○", "■", "□", "▪", "▫", "–", "-", "*", "·", "‣", "⁃", "◦")
ELLIPSES = ("...", "…")
TERMINAL = (".", "!", "?", '"', "'", "”", "’", "…", ")", ":", ";")
C4_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
# A deliberately small list of our own; operators add theirs with quality.offensive_words_file.
OFFENSIVE = frozenset("""fuck fucking fucked motherfucker shit bullshit cunt slut whore bitch bastard asshole
dickhead wanker nigger faggot retard porn porno pornhub xxx hentai cum blowjob handjob gangbang milf""".split())

_WORD = re.compile(r"\w+(?:['’]\w+)*", re.UNICODE)
_PARAGRAPHS = re.compile(r"\n{2,}")
_LINES = re.compile(r"\n+")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200b\u3000]+")
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
_IPV4 = re.compile(r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?![\w]|\.\d)")
_IPV6 = re.compile(r"\b(?:[0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}\b")
_URL = re.compile(r"\bhttps?://[^\s<>\"']+|\bwww\.[^\s<>\"']+")
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# a whitespace-delimited word with no letter in it: digits, underscores, punctuation and symbols only
_NO_LETTER_WORD = re.compile(r"(?<!\S)(?:[\d_]|[^\w\s])+(?!\S)")
_SENTENCE_END = re.compile(r"[.!?]+(?:\s|$)")


def normalize(text: str) -> str:
    """NFC, no control characters, runs of spaces folded, lines stripped, at most one blank line in a row."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL_CHARS.sub("", text)
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


@dataclass
class Doc:
    """A text and the views of it the rules share, computed once."""

    text: str
    url: str | None = None

    def __post_init__(self) -> None:
        self.lines = [line for line in _LINES.split(self.text) if line.strip()]
        self.words = self.text.split()
        self.tokens = _WORD.findall(self.text)  # words without punctuation
        self.token_counts = Counter(map(str.lower, self.tokens))


# ---------------------------------------------------------------------------------------------------------------
# C4: a line filter that rewrites the text, then document rules


def c4_lines(text: str, cfg: QualityConfig) -> tuple[str, int]:
    """Keep the lines C4 keeps; returns (text, lines removed)."""
    kept, removed = [], 0
    for line in text.split("\n"):
        stripped = line.strip()
        if not stripped:
            kept.append(line)
            continue
        lower = stripped.lower()
        if (len(stripped.split()) < cfg.c4_min_words_per_line or "javascript" in lower
                or any(p in lower for p in C4_POLICY)
                or (cfg.c4_terminal_punctuation and not stripped.endswith(TERMINAL))):
            removed += 1
            continue
        kept.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip(), removed


def c4_document(doc: Doc, cfg: QualityConfig) -> str | None:
    lower = doc.text.lower()
    if "lorem ipsum" in lower:
        return "c4_lorem_ipsum"
    if cfg.c4_drop_curly_bracket and "{" in doc.text:
        return "c4_curly_bracket"
    if len(_SENTENCE_END.findall(doc.text)) < cfg.c4_min_sentences:
        return "c4_too_few_sentences"
    return None


# ---------------------------------------------------------------------------------------------------------------
# Gopher quality


def gopher_quality(doc: Doc, cfg: QualityConfig) -> str | None:
    tokens = doc.tokens
    n = len(tokens)
    if n < cfg.gopher_min_words:
        return "gopher_too_few_words"
    if n > cfg.gopher_max_words:
        return "gopher_too_many_words"
    mean = sum(map(len, tokens)) / n
    if mean < cfg.gopher_min_mean_word_length:
        return "gopher_short_mean_word"
    if mean > cfg.gopher_max_mean_word_length:
        return "gopher_long_mean_word"
    words = len(doc.words) or 1
    if doc.text.count("#") / words > cfg.gopher_max_symbol_word_ratio:
        return "gopher_too_many_hashes"
    if (doc.text.count("...") + doc.text.count("…")) / words > cfg.gopher_max_symbol_word_ratio:
        return "gopher_too_many_ellipses"
    lines = doc.lines or [""]
    if sum(line.lstrip().startswith(BULLETS) for line in lines) / len(lines) > cfg.gopher_max_bullet_lines_ratio:
        return "gopher_too_many_bullet_lines"
    if sum(line.rstrip().endswith(ELLIPSES) for line in lines) / len(lines) > cfg.gopher_max_ellipsis_lines_ratio:
        return "gopher_too_many_ellipsis_lines"
    alpha = len(doc.words) - len(_NO_LETTER_WORD.findall(doc.text))
    if alpha / words < cfg.gopher_min_alpha_words_ratio:
        return "gopher_too_few_alpha_words"
    if sum(doc.token_counts[w] for w in STOP_WORDS) < cfg.gopher_min_stop_words:
        return "gopher_too_few_stop_words"
    return None


# ---------------------------------------------------------------------------------------------------------------
# Gopher repetition


def _duplicates(items: list[str]) -> tuple[int, int]:
    """(elements that repeat an earlier one, their characters)."""
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return count, chars


def _top_ngram_chars(words: list[str], n: int) -> int:
    """Characters covered by the most frequent n-gram (its length times its count)."""
    if len(words) < n:
        return 0
    counts = Counter(zip(*(words[i:] for i in range(n))))
    gram, freq = counts.most_common(1)[0]
    return (sum(len(w) for w in gram) + n - 1) * freq


def _repeat_candidates(words: list[str], n: int) -> list[int]:
    """Positions whose n-gram occurs more than once. An m-gram (m >= n) can only repeat where its leading n-gram
    does, so these positions are the only ones the duplicate passes for every m >= n need to look at."""
    grams = list(zip(*(words[i:] for i in range(n))))
    counts = Counter(grams)
    if len(counts) == len(grams):
        return []
    return [i for i, gram in enumerate(grams) if counts[gram] > 1]


def _duplicate_ngram_chars(words: list[str], n: int, candidates: list[int] | None = None) -> int:
    """Characters in n-grams that repeat an earlier n-gram, not counting overlaps twice (datatrove's rule).

    Walks left to right; after a repeat it jumps past the n-gram. ``candidates`` (from ``_repeat_candidates``
    with a smaller or equal n) limits the walk to positions that can repeat: the result is the same."""
    if candidates is None:
        candidates = range(len(words))
    seen: set[tuple[str, ...]] = set()
    chars = following = 0
    limit = len(words) - n + 1
    for i in candidates:
        if i < following:
            continue
        if i >= limit:
            break
        gram = tuple(words[i:i + n])
        if gram in seen:
            chars += sum(map(len, gram))
            following = i + n
        else:
            seen.add(gram)
            following = i + 1
    return chars


def gopher_repetition(doc: Doc, cfg: QualityConfig) -> str | None:
    text = doc.text
    size = len(text) or 1
    paragraphs = _PARAGRAPHS.split(text.strip())
    dup, chars = _duplicates(paragraphs)
    if dup / len(paragraphs) > cfg.gopher_max_dup_para_ratio:
        return "gopher_dup_paragraphs"
    if chars / size > cfg.gopher_max_dup_para_char_ratio:
        return "gopher_dup_paragraph_chars"
    lines = _LINES.split(text)
    dup, chars = _duplicates(lines)
    if dup / len(lines) > cfg.gopher_max_dup_line_ratio:
        return "gopher_dup_lines"
    if chars / size > cfg.gopher_max_dup_line_char_ratio:
        return "gopher_dup_line_chars"
    words = doc.tokens
    for n, limit in cfg.gopher_top_ngram_ratios.items():
        if _top_ngram_chars(words, int(n)) / size > limit:
            return f"gopher_top_{n}_gram"
    dup_ngrams = sorted((int(n), limit) for n, limit in cfg.gopher_dup_ngram_ratios.items())
    candidates = _repeat_candidates(words, dup_ngrams[0][0]) if dup_ngrams else []
    for n, limit in dup_ngrams if candidates else ():
        if _duplicate_ngram_chars(words, n, candidates) / size > limit:
            return f"gopher_dup_{n}_grams"
    return None


# ---------------------------------------------------------------------------------------------------------------
# FineWeb


def fineweb(doc: Doc, cfg: QualityConfig) -> str | None:
    lines = doc.lines
    if not lines:
        return "fineweb_empty"
    if sum(line.rstrip().endswith(TERMINAL) for line in lines) / len(lines) < cfg.fineweb_min_line_punct_ratio:
        return "fineweb_line_punct_ratio"
    short = sum(len(line) <= cfg.fineweb_short_line_chars for line in lines)
    if short / len(lines) > cfg.fineweb_max_short_line_ratio:
        return "fineweb_short_line_ratio"
    _, dup_chars = _duplicates(lines)
    if dup_chars / (len(doc.text.replace("\n", "")) or 1) > cfg.fineweb_max_dup_line_char_ratio:
        return "fineweb_dup_line_chars"
    if doc.text.count("\n") / (len(doc.words) or 1) > cfg.fineweb_max_newline_word_ratio:
        return "fineweb_list_ratio"
    return None


# ---------------------------------------------------------------------------------------------------------------
# Blocklists and PII


def _read_list(path: Path | None) -> set[str]:
    if path is None:
        return set()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise FileNotFoundError(f"quality list {path}: {err.strerror or err}") from None
    return {line.strip().lower() for line in lines if line.strip() and not line.startswith("#")}


def redact(text: str, urls: bool) -> tuple[str, int]:
    """Replace e-mail addresses, IP addresses (and URLs) with <EMAIL>, <IP>, <URL>; returns (text, count)."""
    total = 0
    for pattern, token in ((_EMAIL, "<EMAIL>"), (_IPV6, "<IP>"), (_IPV4, "<IP>")) + (((_URL, "<URL>"),) if urls else ()):
        text, n = pattern.subn(token, text)
        total += n
    return text, total


class QualityFilter:
    """The rules in order. ``apply`` returns (kept, cleaned text, drop reason or None, PII redactions)."""

    def __init__(self, cfg: QualityConfig) -> None:
        self.cfg = cfg
        self.blocked_hosts = _read_list(cfg.host_blocklist_file) | {h.lower() for h in cfg.host_blocklist}
        self.offensive = (OFFENSIVE if cfg.builtin_offensive_words else frozenset()) | _read_list(
            cfg.offensive_words_file)
        rules: list[tuple[bool, Callable[[Doc, QualityConfig], str | None]]] = [
            (cfg.c4, c4_document), (True, self._offensive), (cfg.gopher_quality, gopher_quality),
            (cfg.gopher_repetition, gopher_repetition), (cfg.fineweb, fineweb)]
        self.rules = [rule for enabled, rule in rules if enabled]

    def _blocked_host(self, url: str | None) -> bool:
        host = (urlsplit(url).hostname or "").lower() if url else ""
        while host:
            if host in self.blocked_hosts:
                return True
            host = host.partition(".")[2]
        return False

    def _offensive(self, doc: Doc, cfg: QualityConfig) -> str | None:
        if not self.offensive or not doc.tokens:
            return None
        counts = doc.token_counts
        small, large = (counts, self.offensive) if len(counts) < len(self.offensive) else (self.offensive, counts)
        hits = sum(counts[w] for w in small if w in large)
        return "offensive_words" if hits / len(doc.tokens) > cfg.max_offensive_word_ratio else None

    def apply(self, text: str, url: str | None = None) -> tuple[bool, str, str | None, int]:
        if self.blocked_hosts and self._blocked_host(url):
            return False, text, "host_blocklist", 0
        text = normalize(text)
        if self.cfg.c4:
            text, _ = c4_lines(text, self.cfg)
        if not text:
            return False, text, "empty_after_cleaning", 0
        doc = Doc(text, url)
        for rule in self.rules:
            reason = rule(doc, self.cfg)
            if reason:
                return False, text, reason, 0
        text, redactions = redact(text, self.cfg.redact_urls) if self.cfg.pii else (text, 0)
        return True, text, None, redactions


_filters: dict[str, QualityFilter] = {}


def apply_rules(docs: list[tuple[str, str | None]], cfg: QualityConfig) -> list[tuple[bool, str, str | None, int]]:
    """``QualityFilter.apply`` over (text, url) pairs (one chunk of a batch, in a docpool worker or here); the
    filter, with its word lists read, is made once per process, settings and version of those list files."""
    stamps = []
    for path in (cfg.host_blocklist_file, cfg.offensive_words_file):
        try:
            stamps.append(Path(path).stat().st_mtime_ns if path else None)
        except OSError:
            stamps.append(None)  # QualityFilter says what is wrong with it
    key = f"{cfg.model_dump_json()}{stamps}"
    rules = _filters.get(key)
    if rules is None:
        rules = _filters[key] = QualityFilter(cfg)
    return [rules.apply(text, url) for text, url in docs]


class QualityStage(ShardedStage):
    name = "quality"
    uses_docpool = True
    schema = SCHEMA
    size_column = "text"

    config: QualityConfig

    def source_params(self):
        return self.skip_params()

    def process(self, unit: Unit, writer: ShardWriter, drops: DropLog, result: ShardResult) -> None:
        skipping = self.skipping()
        for group in self.input_batch_groups(unit, docpool.BATCH_ROWS):  # small shards' batches sent together
            rows = [row for batch in group for row in batch.to_pylist()]
            checked = iter(docpool.map(apply_rules, [(r["text"], r["url"]) for r in rows
                                                     if r.get("source") not in skipping], self.config))
            for row in rows:
                result.docs_in += 1
                result.bytes_in += len(row["text"])
                if row.get("source") in skipping:  # a source that skips quality filters and PII redaction
                    writer.add({**row, "pii_redactions": 0})
                    continue
                kept, text, reason, redactions = next(checked)
                if not kept:
                    drops.add_record(reason, row, nbytes=len(row["text"]),
                                     text=row["text"] if self.config.keep_dropped_text else None)
                    continue
                if redactions:
                    result.notes["pii_redacted_docs"] = result.notes.get("pii_redacted_docs", 0) + 1
                writer.add({**row, "text": text, "pii_redactions": redactions})
