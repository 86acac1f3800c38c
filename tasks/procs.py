"""Child processes that never outlive Crucible, and the stop request that Ctrl-C sets.

Every long-lived child (the Prefect API server, the pydoc demo server, extraction workers, torchrun and its ranks)
runs in a process group of its own, so the terminal's Ctrl-C reaches only the ``crucible`` process, which then ends
its children itself, in order. And each dies with its parent: ``die_with_parent`` asks Linux for a signal when the
parent goes (``PR_SET_PDEATHSIG``; elsewhere a watchdog thread polls the parent pid), so a SIGKILLed ``crucible``
leaves no training rank appending to metrics.jsonl. A program that is not ours is wrapped:

    python -m tasks.procs PARENT_PID -- prefect server start ...    # dies with PARENT_PID, then execs the command

``STOP`` is the cooperative half of Ctrl-C: the CLI sets it on SIGINT, and the shard writers and drop logs raise
``Interrupted`` at their next record, so a unit that was cut short never writes its manifest (it is redone on the
rerun) and worker threads stop within a record instead of finishing their units.
"""
from __future__ import annotations

import ctypes
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable

STOP = threading.Event()
PR_SET_PDEATHSIG = 1
# Signals a user (or a supervisor) sends to stop a program; a child that dies of one was stopped, it did not crash.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


class Interrupted(BaseException):
    """The run was asked to stop (Ctrl-C). A BaseException, so per-record ``except Exception`` cannot swallow it."""


def check_stop() -> None:
    if STOP.is_set():
        raise Interrupted("interrupted")


def died_of_stop_signal(returncode: int | None) -> bool:
    return returncode is not None and returncode < 0 and -returncode in STOP_SIGNALS


def die_with_parent(sig: int = signal.SIGTERM, expected_parent: int | None = None, poll: bool = False) -> None:
    """Have this process receive ``sig`` when its parent exits (and at once if it has already).

    Linux sends the signal when the parent *thread* that started this process ends; ``poll`` watches the parent
    process instead (a thread checks once a second), for a child started by a short-lived thread of a long-lived
    parent (a process pool a task runner's thread may start)."""
    parent = expected_parent or os.getppid()
    if sys.platform.startswith("linux") and not poll:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            _watchdog(parent, sig)
    else:
        _watchdog(parent, sig)
    if os.getppid() != parent:  # the parent was gone before the request was made
        os.kill(os.getpid(), sig)


def drained(recv: Callable[[], Any]) -> queue.SimpleQueue:
    """A queue that a daemon thread fills with ``recv()``'s messages as they come, then None at end of input: a
    child that reads its pipe this way never leaves its parent blocked on a full pipe while it works."""
    messages: queue.SimpleQueue = queue.SimpleQueue()

    def take() -> None:
        try:
            while True:
                messages.put(recv())
        except (EOFError, OSError):
            messages.put(None)

    threading.Thread(target=take, daemon=True).start()
    return messages


def exit_now(code: int = 0) -> None:
    """End this process here, skipping the interpreter's teardown: a torch rank whose work is written and closed.

    After gloo's process group is destroyed, C++ objects still alive at teardown (torch's and gloo's threads) can
    end the process in ``std::terminate`` ("terminate called without an active exception", SIGABRT) once in about
    a hundred runs on a loaded machine, with no Python frame on the stack; torchrun then reports a finished rank as
    failed. Everything a rank makes is written atomically and flushed before this."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can be said on it
            pass
    os._exit(code)


def _watchdog(parent: int, sig: int) -> None:
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), sig)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def spawn(command: list[str], **popen: object) -> subprocess.Popen:
    """Start ``command`` (a program that is not ours) in its own session, dying with this process."""
    wrapped = [sys.executable, "-m", "tasks.procs", str(os.getpid()), "--", *command]
    return subprocess.Popen(wrapped, start_new_session=True, **popen)


def stop(proc: subprocess.Popen, grace_s: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
    """End a child started in its own session, with all of its group: ``sig``, then SIGKILL after ``grace_s``."""
    if proc.poll() is None:
        _signal_group(proc, sig)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
    # The group may outlive its leader (a server's workers): make sure none of it is left.
    _signal_group(proc, signal.SIGKILL)
    return proc.returncode


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _main(argv: list[str]) -> None:
    """``python -m tasks.procs PARENT_PID -- COMMAND...``: die with PARENT_PID, then become COMMAND."""
    if len(argv) < 3 or argv[1] != "--":
        sys.exit("usage: python -m tasks.procs PARENT_PID -- COMMAND [ARGS...]")
    die_with_parent(expected_parent=int(argv[0]))
    os.execvp(argv[2], argv[2:])


if __name__ == "__main__":
    _main(sys.argv[1:])
