"""``crucible dashboard``: a small live web app (Starlette + uvicorn) over the warehouse.

    crucible dashboard                          # http://127.0.0.1:8642, work/warehouse.duckdb
    crucible dashboard -c configs/demo.toml --port 9000

It serves one page and its own script and stylesheet (``flows/static/``; nothing from elsewhere) and two JSON
endpoints the page polls: ``/api/runs`` and ``/api/runs/<run>``. Reads go through ``warehouse.dashboard`` with a
short lock timeout; when the pipeline holds the file longer than that, the last snapshot is served, marked stale,
so the dashboard never waits on (or holds up) the writer. While a train stage runs, its curves come from the
``metrics.jsonl`` the ranks append to, so they move with every step.

Requests must name the dashboard by a host it was bound as (loopback names, the --host address, and any
--allow-host): a page elsewhere that rebinds its own DNS name to 127.0.0.1 gets a 400, not the warehouse's JSON.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from collections import OrderedDict
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from tasks.stage import read_progress
from tasks.train import TrainStage
from warehouse.dashboard import run_snapshot, runs_overview
from warehouse.lineage import Warehouse, WarehouseError

STATIC = Path(__file__).with_name("static")
DEFAULT_PORT = 8642
CURVES = ("loss", "val_bpb", "lr", "tokens_per_s", "mfu", "grad_norm")


def prefect_ui_url() -> str:
    """Where the Prefect UI is: PREFECT_UI_URL, else PREFECT_API_URL without /api, else `prefect server start`'s."""
    if os.environ.get("PREFECT_UI_URL"):
        return os.environ["PREFECT_UI_URL"].rstrip("/")
    api = os.environ.get("PREFECT_API_URL", "").rstrip("/")
    if api.endswith("/api"):
        return api[: -len("/api")]
    return "http://127.0.0.1:4200"


_ANSWERS: dict[str, tuple[float, bool]] = {}


def prefect_ui_answers() -> bool:
    """Whether the Prefect UI can be reached: PREFECT_UI_URL set by the user, or a server answering /api/health at
    PREFECT_API_URL (else `prefect server start`'s address). Asked at most every 30 s, with a 0.5 s timeout."""
    if os.environ.get("PREFECT_UI_URL"):
        return True
    api = os.environ.get("PREFECT_API_URL", "").rstrip("/") or "http://127.0.0.1:4200/api"
    now = time.monotonic()
    known = _ANSWERS.get(api)
    if known is not None and now - known[0] < 30:
        return known[1]
    try:
        import httpx

        answers = httpx.get(f"{api}/health", timeout=0.5).status_code == 200
    except Exception:  # refused, timed out, not HTTP: nothing serves there
        answers = False
    _ANSWERS[api] = (now, answers)
    return answers


PREFECT_HINT = ("no Prefect server answers at {url}: start one with `prefect server start` and run crucible with "
                "PREFECT_API_URL={url}/api to follow runs in its UI")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and value != value:  # NaN is not JSON
        return None
    return value


def last_checkpoint(out_dir: str | Path) -> str | None:
    """The newest finished checkpoint directory of a training run (what a rerun resumes from), or None."""
    found = sorted((Path(out_dir) / "checkpoints").glob("step-*[0-9]"), key=lambda p: int(p.name.split("-")[-1]))
    return str(found[-1]) if found else None


def live_curves(out_dir: str | Path) -> dict[str, list[list[float]]]:
    """The curves of a training run in progress, from the metrics.jsonl its rank 0 appends to every step."""
    curves: dict[str, list[list[float]]] = {}
    for step, name, value in TrainStage.read_metrics(Path(out_dir)):
        if step is not None:
            curves.setdefault(name.split(".", 1)[1], []).append([step, value])
    return curves


class Snapshots:
    """Reads with a short lock timeout, each result kept for ``min_age`` seconds and served (marked stale) when a
    later read cannot get the file. At most ``max_kept`` results are kept (the least recently used go first), so
    requests for many different run references cannot grow it without bound."""

    def __init__(self, wh: Warehouse, min_age: float = 1.0, max_kept: int = 128) -> None:
        self.wh, self.min_age, self.max_kept = wh, min_age, max_kept
        self._kept: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._kept)

    def get(self, key: str, read: Callable[[], Any]) -> tuple[Any, dict[str, Any]]:
        with self._lock:
            kept = self._kept.get(key)
            if kept is not None:
                self._kept.move_to_end(key)
        if kept is not None and time.monotonic() - kept[0] < self.min_age:
            return kept[1], {"stale": False}
        try:
            value = read()
        except WarehouseError as err:
            if kept is None or "lock" not in str(err).lower():
                raise
            age = time.monotonic() - kept[0]
            return kept[1], {"stale": True, "note": f"the warehouse is busy; showing what it held {age:.0f}s ago"}
        with self._lock:
            self._kept[key] = (time.monotonic(), value)
            self._kept.move_to_end(key)
            while len(self._kept) > self.max_kept:
                self._kept.popitem(last=False)
        return value, {"stale": False}


def _run_view(wh: Warehouse, ref: str) -> dict[str, Any]:
    snap = run_snapshot(wh, ref)
    for stage in snap["stages"]:  # how far a running stage's units are, from its output directory
        if stage["status"] == "running" and stage.get("out_dir"):
            stage["progress"] = read_progress(stage["out_dir"])
    training = snap["training"]
    if training is not None and training.get("out_dir") and (training["status"] == "running"
                                                             or not training["curves"]):
        # running: the ranks' file moves with every step; interrupted, failed or crashed: the steps it logged
        # were never ingested, but they are in the file, and so are the checkpoints a rerun resumes from
        training["curves"] = live_curves(training["out_dir"])
        training["live"] = training["status"] == "running"
        training["from_file"] = bool(training["curves"])
        if training["status"] != "completed":
            training["resumable"] = last_checkpoint(training["out_dir"])
    if training is not None:
        training["curves"] = {k: v for k, v in training["curves"].items()
                              if k in CURVES or k.startswith("val_bpb/")}  # val bpb per source, drawn together
    answers = prefect_ui_answers()
    snap["run"]["prefect_url"] = (f"{prefect_ui_url()}/runs/flow-run/{snap['run']['flow_run_id']}"
                                  if snap["run"].get("flow_run_id") and answers else None)
    snap["run"]["prefect_hint"] = None if answers else PREFECT_HINT.format(url=prefect_ui_url())
    return snap


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def allowed_hosts(host: str = "127.0.0.1", extra: tuple[str, ...] = ()) -> set[str]:
    """The names a request's Host header may give: loopback, the bound address, this machine's names when bound to
    every interface, and ``extra`` (--allow-host)."""
    names = set(LOOPBACK_NAMES) | {h.lower().strip("[]") for h in extra}
    if host in ("0.0.0.0", "::", ""):
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    else:
        names.add(host.lower().strip("[]"))
    return names


def host_of(header: str) -> str:
    """The host of a Host header, without its port; IPv6 literals without their brackets."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class HostCheck:
    """ASGI middleware: a request whose Host is not one of ``names`` gets 400 (DNS-rebinding defence)."""

    def __init__(self, app: Any, names: set[str]) -> None:
        self.app, self.names = app, names

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            header = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            if host_of(header) not in self.names:
                response = JSONResponse({"error": f"unexpected Host {header!r}: the dashboard answers to "
                                                  f"{', '.join(sorted(self.names))} (see --allow-host)"}, 400)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(warehouse_path: str | Path, lock_timeout: float = 2.0, hosts: set[str] | None = None) -> Starlette:
    """The dashboard as an ASGI app (tests serve it with uvicorn as the CLI does); ``hosts`` as allowed_hosts()."""
    wh = Warehouse(warehouse_path, lock_timeout=lock_timeout)
    snapshots = Snapshots(wh)

    def answer(key: str, read: Callable[[], Any]) -> Response:
        if not wh.path.exists():
            return JSONResponse({"error": f"no warehouse at {wh.path} yet: run `crucible run CONFIG`"}, 404)
        try:
            value, meta = snapshots.get(key, read)
        except WarehouseError as err:
            return JSONResponse({"error": str(err)}, 404 if "no pipeline run" in str(err) else 503)
        return JSONResponse(_jsonable({**meta, "read_at": datetime.now().astimezone(), "data": value}))

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    def runs(request: Request) -> Response:
        raw = request.query_params.get("limit", "30")
        if not raw.isdigit() or not 1 <= int(raw) <= 500:
            return JSONResponse({"error": f"limit must be a whole number from 1 to 500, got {raw!r}"}, 400)
        limit = int(raw)
        return answer(f"runs:{limit}", lambda: runs_overview(wh, limit))

    def run(request: Request) -> Response:
        ref = request.path_params["run_id"]
        return answer(f"run:{ref}", lambda: _run_view(wh, ref))

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True, "warehouse": str(wh.path), "exists": wh.path.exists()})

    app = Starlette(routes=[
        Route("/", index), Route("/healthz", health),
        Route("/api/runs", runs), Route("/api/runs/{run_id}", run),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ])
    app.state.snapshots = snapshots
    app.add_middleware(HostCheck, names=hosts if hosts is not None else allowed_hosts())
    return app


def serve(warehouse_path: str | Path, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          allow_hosts: tuple[str, ...] = ()) -> None:
    import uvicorn

    uvicorn.run(create_app(warehouse_path, hosts=allowed_hosts(host, allow_hosts)), host=host, port=port,
                log_level="warning")
