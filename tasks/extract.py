"""Extraction: the main text and title of each HTML document, with trafilatura.

Input: ingest shards. Output: the same source columns plus ``title`` and ``text``; ``html`` is dropped from here on.
WET conversion records (content_type text/plain) are already text and pass through. A page with no main text is a
counted drop (``extract_empty``), one that trafilatura cannot parse is ``extract_error``.

trafilatura can spin for minutes on pathological HTML, so each unit extracts in a child process whose CPU time is
capped per page (``cpu_time_limit_s``): a page over the cap is dropped as ``extract_timeout`` and the child is
replaced. CPU time rather than wall time keeps the result independent of how loaded the machine is.
"""
from __future__ import annotations

import functools
import logging
import os
import re
import resource
import signal
import subprocess
import sys
import threading
from collections import deque
from multiprocessing.connection import Connection
from typing import Iterable, Iterator

import pyarrow as pa

from tasks.config import ExtractConfig
from tasks.ingest import SOURCE_FIELDS
from tasks.procs import STOP, Interrupted, die_with_parent, died_of_stop_signal, drained
from tasks.shards import DropLog, ShardResult, ShardWriter
from tasks.sharded import ShardedStage, Unit

SOURCE_COLUMNS = [f.name for f in SOURCE_FIELDS]
SCHEMA = pa.schema([*SOURCE_FIELDS, pa.field("title", pa.string()), pa.field("text", pa.large_string())])


def extract(html: str, url: str | None, cfg: ExtractConfig) -> tuple[str | None, str]:
    """(title, text) of one page with trafilatura; text is empty when it finds no main content.

    The page is parsed once; the title comes from the parsed tree by trafilatura's own title steps (meta and
    OpenGraph tags, JSON-LD, then <h1>/<title>), and the text from ``bare_extraction`` without metadata. The full
    metadata pass (dates with htmldate, authors, site names, categories, licences) cost 2.2x the extraction itself
    and only its title was used: title and text are the same as with it (576 real pages checked, with and without
    their URLs, tests/tasks/test_extract.py), at the cost of bare ``trafilatura.extract``."""
    import trafilatura
    from trafilatura.utils import load_html

    logging.getLogger("trafilatura").setLevel(logging.CRITICAL)  # it logs every page it finds too short
    tree = load_html(html, _max_file_size())
    if tree is None:
        return None, ""
    try:
        title = page_title(tree)
    except Exception:  # a title the metadata steps choke on is no reason to lose the page's text
        title = None
    doc = trafilatura.bare_extraction(  # it copies the tree before cleaning it
        tree, url=url, with_metadata=False, include_comments=cfg.include_comments,
        include_tables=cfg.include_tables, favor_precision=cfg.favor_precision,
        favor_recall=cfg.favor_recall, deduplicate=cfg.deduplicate)
    if doc is None:
        return None, ""
    return title, doc.text or ""


def page_title(tree: object) -> str | None:
    """The title trafilatura's metadata pass would give (``extract_metadata``'s title steps and its trimming)."""
    from trafilatura.metadata import examine_meta, extract_meta_json, extract_title
    from trafilatura.settings import Document

    meta = examine_meta(tree)
    try:
        meta = extract_meta_json(tree, meta)
    except Exception:  # trafilatura guards its JSON-LD parser the same way
        pass
    doc = Document()
    doc.title = meta.title or extract_title(tree)
    doc.clean_and_trim()
    return doc.title


@functools.lru_cache(maxsize=1)
def _max_file_size() -> int:
    """trafilatura's size limit for one page (its settings file), read once."""
    from trafilatura.settings import Extractor

    return Extractor().max_file_size


def _serve(conn: Connection, cfg: ExtractConfig) -> None:
    """The child: extract pages sent down the pipe, each under a fresh CPU-time cap (SIGXCPU ends the child).

    A thread takes pages off the pipe as they come, so the parent's next page never waits for this one's answer
    to be read (and the two never block each other on full pipes)."""
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    pages = drained(conn.recv)
    while True:
        page = pages.get()
        if page is None:
            return
        html, url = page
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cap = int(usage.ru_utime + usage.ru_stime + cfg.cpu_time_limit_s) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
        try:
            conn.send(("ok", extract(html, url, cfg)))
        except Exception as err:  # lxml and trafilatura raise many types on hostile HTML
            conn.send(("error", f"{type(err).__name__}: {err}"))


class IsolatedExtractor:
    """A child process that extracts pages one at a time and is replaced when a page kills it.

    The child is a plain subprocess (``python -m tasks.extract``) talking over its stdin and stdout, so it can be
    started from anywhere, Dask and process-pool workers included (multiprocessing forbids children there).
    """

    def __init__(self, cfg: ExtractConfig) -> None:
        self.cfg = cfg
        self._proc: subprocess.Popen | None = None
        self._send: Connection | None = None
        self._recv: Connection | None = None

    def _start(self) -> None:
        # Its own session: the terminal's Ctrl-C reaches only the parent, which stops between pages; the child
        # dies with the thread that started it (tasks/procs.py).
        self._proc = subprocess.Popen([sys.executable, "-m", "tasks.extract", str(os.getpid())],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                      start_new_session=True)
        self._send = Connection(os.dup(self._proc.stdin.fileno()), readable=False)
        self._recv = Connection(os.dup(self._proc.stdout.fileno()), writable=False)
        self._proc.stdin.close()
        self._proc.stdout.close()
        self._send.send(self.cfg.model_dump(mode="json"))

    def _stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
        for conn in (self._send, self._recv):
            if conn is not None:
                conn.close()
        self._proc = self._send = self._recv = None

    def __call__(self, html: str, url: str | None) -> tuple[str, object]:
        """('ok', (title, text)) | ('error' | 'timeout' | 'crash', message)."""
        return next(iter(self.map([(html, url)])))

    def map(self, pages: Iterable[tuple[str, str | None] | None], ahead: int = 1) -> Iterator[tuple[str, object]]:
        """``__call__`` over (html, url) pages in order, sending up to ``ahead`` pages before reading an answer:
        the child starts the next page at once instead of waiting while this thread reads, sends and writes, so
        with one worker this thread's share of the work runs beside the child's on another core. A None page
        (nothing to extract) is answered ('skip', None) in its place."""
        pending: deque[tuple[str, str | None] | None] = deque()
        try:
            for page in pages:
                if page is not None:
                    self._submit(page)
                pending.append(page)
                if len(pending) > ahead:
                    yield self._answer(pending)
            while pending:
                yield self._answer(pending)
        finally:
            if pending:  # left early (an error, a stop): answers still due would reach the next caller
                self._stop()

    def _submit(self, page: tuple[str, str | None]) -> None:
        if self._proc is None:
            self._start()
        try:
            self._send.send(page)
        except OSError:  # the child died on an earlier page: _answer finds out why, and resends this one
            pass

    def _answer(self, pending: deque[tuple[str, str | None] | None]) -> tuple[str, object]:
        """The answer for ``pending[0]``; a child replaced on it gets the pages queued behind it again."""
        if pending[0] is None:
            pending.popleft()
            return "skip", None
        answer = self._receive()
        pending.popleft()
        if self._proc is None and any(page is not None for page in pending):
            for page in pending:  # a new child (started by _submit) gets the pages the old one had queued
                if page is not None:
                    self._submit(page)
        return answer

    def _receive(self) -> tuple[str, object]:
        try:
            if self._recv.poll(self.cfg.wall_time_limit_s):
                return self._recv.recv()
            self._stop()
            return "timeout", f"no answer in {self.cfg.wall_time_limit_s:g} s of wall time"
        except (EOFError, OSError):
            try:
                code = self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                code = None
            self._stop()
            if code == -signal.SIGXCPU:
                return "timeout", f"over {self.cfg.cpu_time_limit_s:g} CPU seconds"
            if died_of_stop_signal(code) or STOP.is_set():
                # Someone stopped the worker (Ctrl-C, a kill, a shutdown): the page did not crash it. The unit
                # ends here, unfinished, and is redone on the rerun.
                raise Interrupted(f"the extraction worker was stopped by signal {-code if code else '?'}")
            return "crash", f"the extraction worker died (exit code {code})"

    def close(self) -> None:
        if self._proc is not None:
            self._send.close()  # the child sees end of input and returns
            self._send = None
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self._stop()


def _child_main() -> None:
    """Entry point of the child: fd 0 brings work, fd 1 carries answers; stray prints go to stderr."""
    if len(sys.argv) > 1:
        die_with_parent(expected_parent=int(sys.argv[1]))
    # SIGINT stops the child whatever its parent was started with: a parent in the background of a shell (`crucible
    # run ... &`) ignores SIGINT, and an ignored signal is inherited, which would make `kill -INT` a no-op here
    signal.signal(signal.SIGINT, signal.default_int_handler)
    answers = os.dup(1)
    os.dup2(2, 1)
    conn_in, conn_out = Connection(0, writable=False), Connection(answers, readable=False)
    cfg = ExtractConfig.model_validate(conn_in.recv())

    class Duplex:
        recv = conn_in.recv
        send = conn_out.send

    _serve(Duplex(), cfg)  # type: ignore[arg-type]


_workers = threading.local()


def extractor_for(cfg: ExtractConfig) -> IsolatedExtractor:
    """This thread's extraction child for these settings, started once and reused by every unit the thread runs.

    A child costs about half a second to start (Python, trafilatura, lxml); it ends when this process does, since
    its input pipe closes then.
    """
    cache = getattr(_workers, "by_config", None)
    if cache is None:
        cache = _workers.by_config = {}
    key = cfg.model_dump_json()
    if key not in cache:
        cache[key] = IsolatedExtractor(cfg)
    return cache[key]


MAX_PARSER_DEPTH = 255  # libxml2's HTML parser keeps no deeper elements (without XML_PARSE_HUGE)
_TAG = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9-]*)[^>]*?(/?)>")
_VOID = frozenset("area base br col embed hr img input link meta param source track wbr".split())


def nesting_depth(html: str) -> int:
    """The deepest element nesting in a page, counted from its tags (void and self-closed elements add none)."""
    depth = deepest = 0
    for closing, name, self_closed in _TAG.findall(html):
        if closing:
            depth = max(0, depth - 1)
        elif not self_closed and name.lower() not in _VOID:
            depth += 1
            deepest = max(deepest, depth)
    return deepest


class ExtractStage(ShardedStage):
    name = "extract"
    schema = SCHEMA
    size_column = "text"

    config: ExtractConfig

    def process(self, unit: Unit, writer: ShardWriter, drops: DropLog, result: ShardResult) -> None:
        rows: deque[dict] = deque()  # read, and waiting for their answers: the child is sent a page ahead

        def pages() -> Iterator[tuple[str, str | None] | None]:
            for row in self.input_rows(unit, SOURCE_COLUMNS + ["html"]):
                rows.append(row)
                yield None if row["content_type"] == "text/plain" else (row["html"] or "", row["url"])

        for status, value in extractor_for(self.config).map(pages()):
            row = rows.popleft()
            html = row.pop("html") or ""
            result.docs_in += 1
            result.bytes_in += len(html)
            if status == "skip":  # WET and curated text: already text
                title, text = None, html
            elif status != "ok":
                drops.add_record(f"extract_{status}", row, nbytes=len(html), detail=str(value))
                continue
            else:
                title, text = value
            text = text.strip()
            if len(text) < self.config.min_text_chars:
                depth = nesting_depth(html) if len(html) > 10_000 else 0
                if depth > MAX_PARSER_DEPTH:  # libxml2 stops building the tree there: the text was out of reach
                    drops.add_record("extract_too_deep", row, nbytes=len(html), detail=f"elements nested {depth} deep")
                else:
                    drops.add_record("extract_empty", row, nbytes=len(html))
                continue
            writer.add({**row, "title": title, "text": text})


if __name__ == "__main__":
    _child_main()
