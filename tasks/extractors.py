"""Extraction's worker processes: a child that extracts pages under a CPU-time cap, and the pool that lends the
children of one process to every unit its threads run.

trafilatura can spin for minutes on pathological HTML, so pages are extracted in child processes whose CPU time is
capped per page (``cpu_time_limit_s``): a page over the cap is answered 'timeout' and the child is replaced, the
pages queued behind it going to the new one.

    pool = pool_for(cfg)                        # this process's children for these settings
    for status, value in pool.map(pages): ...   # ('ok', (title, text)) | ('skip' | 'error' | 'timeout' | 'crash', _)

The pool's size is docpool's (tasks/docpool.py): the processes for per-document work that the run lends this
process (the thread runner's workers; 1 where units run in processes of their own).

Why one module: what a child does with a page (``extract``), the child and its parent's end of the pipe, and the pool
that lends children to units are one mechanism, changed together; the stage (tasks/extract.py) reads and writes.
"""
from __future__ import annotations

import functools
import logging
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from multiprocessing.connection import Connection, wait
from typing import Iterable, Iterator

from tasks import docpool
from tasks.config import ExtractConfig
from tasks.procs import STOP, Interrupted, check_stop, die_with_parent, died_of_stop_signal, drained


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
        # Its own session: the terminal's Ctrl-C reaches only the parent, which stops between pages. It dies with
        # this process, whichever thread started it: the pool lends it to the units of every thread (tasks/procs.py).
        self._proc = subprocess.Popen([sys.executable, "-m", "tasks.extractors", str(os.getpid())],
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

    def _answer(self, pending: deque[tuple[str, str | None] | None], wait: float | None = None) -> tuple[str, object]:
        """The answer for ``pending[0]``; a child replaced on it gets the pages queued behind it again. ``wait``:
        the seconds of wall time it may still take (the configured limit when None)."""
        if pending[0] is None:
            pending.popleft()
            return "skip", None
        answer = self._receive(wait)
        pending.popleft()
        if self._proc is None and any(page is not None for page in pending):
            for page in pending:  # a new child (started by _submit) gets the pages the old one had queued
                if page is not None:
                    self._submit(page)
        return answer

    def _receive(self, wait: float | None = None) -> tuple[str, object]:
        try:
            if self._recv.poll(self.cfg.wall_time_limit_s if wait is None else wait):
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
        die_with_parent(expected_parent=int(sys.argv[1]), poll=True)
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


class ExtractorPool:
    """The process's extraction children for one set of settings, lent to the units its threads run.

    Each unit extracting has a child of its own (one is started when none is idle and fewer than ``max(size,
    units extracting)`` exist) and borrows idle ones while it has pages to send, so the pages of the last unit of a
    stage, or of the only one, go to every child instead of one while the others wait for the stage to end.
    Answers come back in page order whichever child computed them, so the shards are those one child writes. A
    unit gives its borrowed children back as soon as another unit waits for one. A child costs about half a second
    to start (Python, trafilatura, lxml), so they are kept between units and stages; they end with this process.
    """

    DEPTH = 2  # pages a child holds at once: one it works on, one queued so it never waits for this thread
    WINDOW = 16  # pages of a unit sent and not yet answered, at most

    def __init__(self, cfg: ExtractConfig, size: int) -> None:
        self.cfg, self.size = cfg, size
        self.idle: list[IsolatedExtractor] = []
        self.count = self.units = self.waiting = 0
        self.closed = False
        self._cond = threading.Condition()

    def _take(self, own: bool) -> IsolatedExtractor | None:
        """An idle child, or a new one within the limit; a unit's own child is waited for, a borrowed one not."""
        with self._cond:
            while True:
                if self.idle and (own or self.count - len(self.idle) < self.size):
                    child = self.idle.pop()
                    if child._proc is not None and child._proc.poll() is not None:  # died idle (killed, OOM)
                        child._stop()  # restarts at its next page, which is not blamed for the death
                    return child
                if self.count < (max(self.size, self.units) if own else self.size):
                    self.count += 1
                    return IsolatedExtractor(self.cfg)
                if not own:
                    return None
                self.waiting += 1
                self._cond.wait()
                self.waiting -= 1

    def _give(self, child: IsolatedExtractor) -> None:
        with self._cond:
            if self.closed:
                child.close()
                self.count -= 1
            else:
                self.idle.append(child)
            self._cond.notify()

    def warm(self) -> None:
        """Start ``size`` children now (while earlier stages run), without waiting for them to load."""
        with self._cond:
            started = [self._take(own=False) for _ in range(self.size)]
        for child in started:
            if child is not None:
                if child._proc is None:
                    child._start()
                self._give(child)

    def resize(self, size: int) -> None:
        """Lend up to ``size`` children from now on; idle ones beyond that end now."""
        with self._cond:
            self.size = size
            surplus = max(0, min(len(self.idle), self.count - max(size, self.units)))
            ended, self.idle = self.idle[:surplus], self.idle[surplus:]
            self.count -= surplus
        for child in ended:
            child.close()

    def close(self) -> None:
        """End the idle children now; those lent out end when they are given back."""
        with self._cond:
            self.closed = True
            idle, self.idle = self.idle, []
            self.count -= len(idle)
        for child in idle:
            child.close()

    def map(self, pages: Iterable[tuple[str, str | None] | None]) -> Iterator[tuple[str, object]]:
        """``IsolatedExtractor.map`` over this pool: each (html, url) page's answer in page order, a None page
        answered ('skip', None); the pages go to this unit's child and to any it can borrow."""
        with self._cond:
            self.units += 1
        lanes: dict[IsolatedExtractor, tuple[deque, deque]] = {}  # child -> (its pages, their positions), in order
        since: dict[IsolatedExtractor, float] = {}  # when a child's first page began (for the wall-time cap)
        answers: dict[int, tuple[str, object]] = {}
        sent = done = 0
        source = iter(pages)
        more = True
        try:
            own = self._take(own=True)
            lanes[own] = (deque(), deque())
            while True:
                while more and sent - done < self.WINDOW and (lane := self._lane(lanes)) is not None:
                    page = next(source, _END)
                    if page is _END:
                        more = False
                    elif page is None:
                        answers[sent] = ("skip", None)
                        sent += 1
                    else:
                        lane._submit(page)
                        if not lanes[lane][0]:
                            since[lane] = time.monotonic()
                        lanes[lane][0].append(page)
                        lanes[lane][1].append(sent)
                        sent += 1
                while done in answers:
                    yield answers.pop(done)
                    done += 1
                if not more and done == sent:
                    return
                if any(queued for queued, _ in lanes.values()):
                    self._collect(lanes, since, answers)
        finally:
            for child, (queued, _) in lanes.items():
                if queued:  # left early (an error, a stop): answers still due would reach the next unit
                    child._stop()
                self._give(child)
            with self._cond:
                self.units -= 1

    def _lane(self, lanes: dict[IsolatedExtractor, tuple[deque, deque]]) -> IsolatedExtractor | None:
        """The child to send the next page to: an idle one, borrowed if need be, else the least loaded with room.
        While another unit waits for a child, only this unit's own, so the borrowed ones empty and go back."""
        if self.waiting:
            own = next(iter(lanes))
            return own if len(lanes[own][0]) < self.DEPTH else None
        child = min(lanes, key=lambda c: len(lanes[c][0]))
        if lanes[child][0]:
            borrowed = self._take(own=False)
            if borrowed is not None:
                lanes[borrowed] = (deque(), deque())
                return borrowed
        return child if len(lanes[child][0]) < self.DEPTH else None

    def _collect(self, lanes: dict[IsolatedExtractor, tuple[deque, deque]], since: dict[IsolatedExtractor, float],
                 answers: dict[int, tuple[str, object]]) -> None:
        """Wait for the next answer from any child (or its wall-time cap), then give back borrowed children
        another unit is waiting for."""
        busy = [c for c, (queued, _) in lanes.items() if queued]
        limit = self.cfg.wall_time_limit_s
        now = time.monotonic()
        overdue = [c for c in busy if now - since[c] >= limit]
        if not overdue:
            first = min(since[c] for c in busy)
            readable = wait([c._recv for c in busy], timeout=min(1.0, max(0.0, first + limit - now)))
        ready = overdue or [c for c in busy if c._recv in readable]
        check_stop()  # Ctrl-C: the unit stops here, unfinished, and is redone on the rerun
        for child in ready:
            queued, positions = lanes[child]
            answers[positions.popleft()] = child._answer(queued, wait=0 if child in overdue else None)
            since[child] = time.monotonic()
        if self.waiting:
            for child in [c for c in list(lanes)[1:] if not lanes[c][0]]:
                del lanes[child]
                self._give(child)


_END = object()
_lock = threading.Lock()
_pool: ExtractorPool | None = None


def pool_for(cfg: ExtractConfig) -> ExtractorPool:
    """This process's pool for these settings, sized as docpool is; another's (a run with other settings in this
    process) is closed."""
    global _pool
    with _lock:
        if _pool is None or _pool.cfg != cfg:
            if _pool is not None:
                _pool.close()
            _pool = ExtractorPool(cfg, docpool.size())
        if _pool.size != docpool.size():
            _pool.resize(docpool.size())
        return _pool


def shutdown() -> None:
    """End this process's children (the next unit starts new ones), as a process that ends would."""
    global _pool
    with _lock:
        if _pool is not None:
            _pool.close()
            _pool = None


if __name__ == "__main__":
    _child_main()
