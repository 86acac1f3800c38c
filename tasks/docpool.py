"""Per-document Python work (language ID, the quality rules) on worker processes, so it uses every core.

The default task runner runs units on threads of one process. Extraction scales on them because its work happens in
child processes (tasks/extract.py), but language ID and the quality rules are Python that holds the interpreter
lock: on threads, two workers ran them no faster than one, and a stage whose input is one unit (up to
``shard_max_docs`` documents) had a single worker anyway. So those stages send each batch's documents here:

    docpool.configure(workers)                         # the flow's context, for the thread runner only
    labels = docpool.map(classify_texts, texts, 20_000)   # fn(chunk, *args) -> one result per item, in order

``map`` cuts the items into chunks, runs ``fn`` on them in a pool of ``workers`` processes shared by every stage and
unit of this process, and returns the results in the items' order, so a stage writes exactly what it writes when
it computes inline. It computes inline (same function, same results) where no pool is configured (tests, a stage run
without Prefect, the process and Dask runners, whose units already run in processes of their own), for small
batches, and when the pool breaks (a worker killed): the batch is done here and the next gets a fresh pool.

Workers are spawned (the orchestrating process has threads, so it must not fork), ignore the terminal's Ctrl-C (the
parent stops between batches; tasks/procs.py), die with their parent, and load what the stages need as they
start. ``warm`` starts them ahead of the first batch, while extraction runs.
"""
from __future__ import annotations

import multiprocessing
import signal
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Sequence

MIN_ITEMS = 64  # fewer documents than this in a batch: the round trip costs more than it saves

_lock = threading.Lock()
_workers = 1
_pool: ProcessPoolExecutor | None = None
batches_sent = 0  # batches the workers computed, since this process started (what tests check)


def configure(workers: int) -> None:
    """Use up to ``workers`` processes from now on (1: compute inline). A pool of another size is replaced."""
    global _workers, _pool
    with _lock:
        if workers != _workers and _pool is not None:
            _pool.shutdown(wait=False, cancel_futures=True)
            _pool = None
        _workers = max(1, int(workers))


def workers() -> int:
    return _workers


def _start_worker() -> None:
    """In each worker: Ctrl-C is the parent's to handle; die with it; load langid's model once, up front."""
    from tasks.procs import die_with_parent

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(poll=True)  # the thread that started the pool may be a task runner's, gone before the pool
    from tasks.language import identifier

    identifier()
    import tasks.quality  # noqa: F401  (its word lists and regexes, compiled at import)


def _ready() -> int:
    return 0


def _get_pool() -> ProcessPoolExecutor | None:
    global _pool
    with _lock:
        if _workers <= 1:
            return None
        if _pool is None:
            _pool = ProcessPoolExecutor(_workers, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_start_worker)
        return _pool


def warm() -> None:
    """Start the workers now (they take about a second to load), without waiting for them."""
    pool = _get_pool()
    if pool is not None:
        for _ in range(_workers):
            pool.submit(_ready)


def _discard(pool: ProcessPoolExecutor) -> None:
    global _pool
    with _lock:
        if _pool is pool:
            _pool = None
    pool.shutdown(wait=False, cancel_futures=True)


def map(fn: Callable[..., list[Any]], items: Sequence[Any], *args: Any) -> list[Any]:  # noqa: A001
    """``fn(chunk, *args)`` over chunks of ``items``, concatenated in order: one result per item."""
    pool = _get_pool() if len(items) >= MIN_ITEMS else None
    if pool is None:
        return list(fn(list(items), *args))
    pieces = 2 * _workers  # two chunks a worker: one slow chunk does not leave the others idle for long
    size = -(-len(items) // pieces)
    chunks = [list(items[i:i + size]) for i in range(0, len(items), size)]
    try:
        futures = [pool.submit(fn, chunk, *args) for chunk in chunks]
        out: list[Any] = []
        for future in futures:
            out.extend(future.result())
    except BrokenProcessPool:  # a worker was killed (the OOM killer, a signal): this batch here, a new pool next
        _discard(pool)
        return list(fn(list(items), *args))
    except RuntimeError:  # the pool was replaced (configure) while this batch was being submitted
        return list(fn(list(items), *args))
    global batches_sent
    batches_sent += 1
    return out


def shutdown() -> None:
    configure(1)
