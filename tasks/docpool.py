"""Per-document Python work (language ID, the quality rules, dedup's hashing) on worker processes, on every core.

The default task runner runs units on threads of one process. Extraction scales on them because its work happens in
child processes (tasks/extractors.py), but language ID and the quality rules are Python that holds the interpreter
lock: on threads, two workers ran them no faster than one, and a stage whose input is one unit (up to
``shard_max_docs`` documents) had a single worker anyway. So those stages (and dedup's scan, whose hashing and
shingling is per-word Python too) send each batch's documents here:

    docpool.configure(workers)                            # the flow's context, for the thread runner only
    labels = docpool.map(classify_texts, texts, 20_000)   # fn(chunk, *args) -> one result per item, in order

``map`` cuts the items into chunks, runs ``fn`` (a module-level function, sent by name) on them in up to ``workers``
child processes shared by every stage and unit of this process, and returns the results in the items' order, so a
stage writes exactly what it writes when it computes inline. It computes inline (same function, same results) where
no pool is configured (tests, a stage run without Prefect, the process and Dask runners, whose units already run in
processes of their own), for small batches, and for a batch whose worker died (killed, out of memory): that worker is
replaced on a later batch, and the log says why it died (its exit code and the last lines it wrote to stderr). Workers
that die before their first answer twice in a row (a stage module that no longer imports, a broken interpreter)
leave the pool off for the rest of the process, said once in the log: the stage is then correct but slower.

A worker is a plain ``python -m tasks.docpool`` child talking over its stdin and stdout, like the extraction child:
it never imports the caller's ``__main__`` (multiprocessing's spawn would, and an unguarded script would then run
itself again in every worker), it sits in a session of its own so the terminal's Ctrl-C reaches only the parent
(which stops between batches; tasks/procs.py), and it dies with the parent process. ``warm`` starts the workers
ahead of the first batch, importing the modules ``configure`` names (the stages'); the pipeline calls it when the
first stage with work to do begins, so they load while ingest and extraction run.
"""
from __future__ import annotations

import collections
import importlib
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any, Callable, Sequence

from tasks.procs import die_with_parent, drained

log = logging.getLogger("crucible.docpool")  # the terminal's logger (flows/stages.py) shows it

MIN_ITEMS = 64  # fewer documents than this in a batch: the round trip costs more than it saves
BATCH_ROWS = 256  # what a stage reads at a time to send here (small input shards' rows joined up to it)
GIVE_UP_AFTER = 2  # workers in a row that die before their first answer: the pool is off for this process

batches_sent = 0  # batches the workers computed, since this process started (what tests check)


class _Worker:
    """One child process, its two pipe ends, and the last lines it wrote to stderr (read by a thread of its own, so
    a chatty worker never blocks on a full pipe)."""

    def __init__(self, preload: tuple[str, ...]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tasks.docpool", str(os.getpid()), *preload],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True)
        self.send = Connection(os.dup(self.proc.stdin.fileno()), readable=False).send
        self._recv_conn = Connection(os.dup(self.proc.stdout.fileno()), writable=False)
        self.proc.stdin.close()
        self.proc.stdout.close()
        self.answered = False
        self.stderr: collections.deque[bytes] = collections.deque(maxlen=20)
        self._reader = threading.Thread(target=self.stderr.extend, args=(self.proc.stderr,), daemon=True)
        self._reader.start()

    def recv(self) -> Any:
        answer = self._recv_conn.recv()
        self.answered = True
        return answer

    def why(self) -> str:
        """Its exit status and the last lines it wrote, once it has ended (waiting a moment for that)."""
        try:
            code: int | None = self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            code = None
        self._reader.join(timeout=1)
        status = ("still running" if code is None else f"killed by signal {-code}" if code < 0
                  else f"exit code {code}")
        lines = [b.decode("utf-8", "replace").rstrip() for b in list(self.stderr)[-3:]]
        return status + "".join(f"; {line}" for line in lines if line)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self._recv_conn.close()
        self._reader.join(timeout=1)
        self.proc.stderr.close()


class _Pool:
    """``size`` workers, each lent to one caller at a time; a dead one is replaced when next lent."""

    def __init__(self, size: int, preload: tuple[str, ...]) -> None:
        self.size, self.preload = size, preload
        self.closed = False
        self.off: str | None = None  # why workers cannot run here, once they keep dying at start
        self._failed_starts = 0
        self._said = threading.Lock()
        self.free: queue.SimpleQueue[_Worker | None] = queue.SimpleQueue()
        for _ in range(size):
            self.free.put(None)  # a slot whose worker starts when first lent

    def borrow(self, most: int) -> list[_Worker | None]:
        """At least one slot (waiting for it), and up to ``most`` of those free now, each with a live worker (None
        once the pool is off)."""
        slots = [self.free.get()]
        while len(slots) < most:
            try:
                slots.append(self.free.get_nowait())
            except queue.Empty:
                break
        workers: list[_Worker | None] = []
        for w in slots:
            if w is not None and w.proc.poll() is not None:  # died idle (killed, out of memory, at its start)
                self.died(w)
                w.close()
                w = None
            workers.append(w if w is not None or self.off else _Worker(self.preload))
        return workers

    def give_back(self, workers: list[_Worker | None]) -> None:
        for w in workers:
            if self.closed and w is not None:  # a pool replaced while this worker was lent: it ends here
                w.close()
            else:
                self.free.put(w)

    def died(self, worker: _Worker) -> None:
        """Say why ``worker`` died; turn the pool off after GIVE_UP_AFTER in a row that never answered."""
        why = worker.why()
        with self._said:
            self._failed_starts = 0 if worker.answered else self._failed_starts + 1
            if self.off or self._failed_starts < GIVE_UP_AFTER:
                if not self.off:
                    log.warning("docpool: a worker died (%s); its batch runs in this process and a new worker "
                                "starts for the next", why)
                return
            self.off = why
        log.warning("docpool: %d workers in a row died before their first answer (%s); per-document work runs in "
                    "this process from now on (correct, but on one core)", GIVE_UP_AFTER, why)

    def close(self) -> None:
        """End the idle workers now; those lent out end when their callers give them back."""
        self.closed = True
        for _ in range(self.size):
            try:
                w = self.free.get_nowait()
            except queue.Empty:
                continue
            if w is not None:
                w.close()


_lock = threading.Lock()
_workers = 1
_preload: tuple[str, ...] = ()
_pool: _Pool | None = None


def configure(workers: int, preload: tuple[str, ...] = ()) -> None:
    """Use up to ``workers`` processes from now on (1: compute inline); a new worker imports the modules named in
    ``preload`` as it starts (the stages' modules, so the first batch does not wait for them). A pool of another
    size is replaced."""
    global _workers, _pool, _preload
    with _lock:
        workers = max(1, int(workers))
        if workers != _workers and _pool is not None:
            _pool.close()
            _pool = None
        _workers, _preload = workers, tuple(preload) or _preload


def size() -> int:
    """The processes this process may use for per-document work (``configure``'s workers; 1: none of its own)."""
    return _workers


def _get_pool() -> _Pool | None:
    global _pool
    with _lock:
        if _workers <= 1:
            return None
        if _pool is None:
            _pool = _Pool(_workers, _preload)
        return None if _pool.off else _pool


def warm() -> None:
    """Start the workers now, without waiting for them to load."""
    pool = _get_pool()
    if pool is not None:
        pool.give_back(pool.borrow(pool.size))


def map(fn: Callable[..., list[Any]], items: Sequence[Any], *args: Any) -> list[Any]:  # noqa: A001
    """``fn(chunk, *args)`` over chunks of ``items``, concatenated in order: one result per item."""
    global batches_sent
    pool = _get_pool() if len(items) >= MIN_ITEMS else None
    if pool is None:
        return list(fn(list(items), *args))
    slots = pool.borrow(pool.size)
    workers = [w for w in slots if w is not None]
    if not workers:  # the pool went off while these were lent
        pool.give_back(slots)
        return list(fn(list(items), *args))
    size = -(-len(items) // len(workers))
    chunks = [list(items[i:i + size]) for i in range(0, len(items), size)]
    lent: list[_Worker | None] = [*workers, *[None] * (len(slots) - len(workers))]
    answers: list[tuple[str, Any]] = []
    worker = workers[0]
    try:
        for worker, chunk in zip(workers, chunks):
            worker.send((fn, chunk, args))
        for worker, _ in zip(workers, chunks):
            answers.append(worker.recv())
    except (EOFError, OSError):  # a worker died (killed, out of memory): this batch here, a new worker later
        pool.died(worker)
        return list(fn(list(items), *args))
    finally:
        if len(answers) < len(chunks):  # a death, or an interrupt: their answers are out of step now
            for i, w in enumerate(workers):
                w.close()
                lent[i] = None
        pool.give_back(lent)
    for status, value in answers:
        if status == "error":
            raise value
    batches_sent += 1
    return [result for _, value in answers for result in value]


def shutdown() -> None:
    configure(1)


def _serve() -> None:
    """The child: (fn, chunk, args) in on fd 0, ('ok', results) or ('error', exception) out on fd 1, until EOF."""
    die_with_parent(expected_parent=int(sys.argv[1]), poll=True)  # started by any thread: watch the process
    answers = os.dup(1)
    os.dup2(2, 1)  # stray prints go to stderr, not into the answers
    conn_in, conn_out = Connection(0, writable=False), Connection(answers, readable=False)
    for module in sys.argv[2:]:  # named by the caller (configure's preload): imported by name, not by this module
        importlib.import_module(module)

    requests = drained(conn_in.recv)
    while (request := requests.get()) is not None:
        fn, chunk, args = request
        try:
            answer = ("ok", fn(chunk, *args))
        except Exception as err:  # the parent raises it, as if the chunk had run there
            answer = ("error", err)
        try:
            conn_out.send(answer)
        except Exception as err:  # an exception that does not pickle: its type and message do
            conn_out.send(("error", RuntimeError(f"{type(answer[1]).__name__}: {answer[1]} ({err})")))


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _serve()
