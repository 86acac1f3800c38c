"""The Prefect API a command reports to: PREFECT_API_URL when one is configured, else a local server of our own.

Prefect's ephemeral server runs in the caller's process group, so the terminal's Ctrl-C killed it together with
the run, and the run then spent minutes retrying a dead API. Ours is the same thing started differently: `prefect
server start` (no UI, no services) on a free loopback port, with its state in PREFECT_HOME (work/prefect), in a
session of its own (tasks/procs.py), so Ctrl-C reaches only `crucible`, which records the interruption, lets Prefect
flush its logs and events, and then stops the server. It dies with `crucible` if that is killed.
"""
from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx

from tasks.procs import spawn, stop


class ServerFailed(RuntimeError):
    """The local Prefect server did not come up; the message holds the end of its log."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def prefect_api(log_dir: Path, timeout_s: float = 120.0) -> Iterator[str]:
    """Yield the API URL flows in this process report to, starting a local server when none is configured."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    configured = PREFECT_API_URL.value()
    if configured:
        yield configured
        return
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "server.log"
    env = {**os.environ, "PREFECT_SERVER_UI_ENABLED": "false", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    with open(log_path, "ab") as log:
        proc = spawn([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port),
                      "--no-ui", "--no-services"], env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    # Stopped at exit, after Prefect's own exit handlers (registered later, so run earlier) have flushed the run's
    # logs and events to it; that is how Prefect stops its ephemeral server too.
    atexit.register(stop, proc, 10.0)
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0) as client:
        while True:
            try:
                if client.get(f"{url}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                stop(proc)
                tail = log_path.read_text(errors="replace")[-2000:]
                raise ServerFailed(f"the local Prefect server did not start (log {log_path}):\n{tail}")
            time.sleep(0.1)
    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield url
