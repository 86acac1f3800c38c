"""``crucible dashboard``: a small live web app (Starlette + uvicorn) over the warehouse.

    crucible dashboard                          # http://127.0.0.1:8642, work/warehouse.duckdb
    crucible dashboard -c configs/demo.toml --port 9000

It serves one page and its own script and stylesheet (``flows/static/``; nothing from elsewhere) and two JSON
endpoints the page polls: ``/api/runs`` and ``/api/runs/<run>``. Reads go through ``warehouse.dashboard`` with a
short lock timeout; when the pipeline holds the file longer than that, the last snapshot is served, marked stale,
so the dashboard never waits on (or holds up) the writer. While a train stage runs, its curves come from the
``metrics.jsonl`` the ranks append to, so they move with every step.
"""
from __future__ import annotations

import os
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

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


def live_curves(out_dir: str | Path) -> dict[str, list[list[float]]]:
    """The curves of a training run in progress, from the metrics.jsonl its rank 0 appends to every step."""
    curves: dict[str, list[list[float]]] = {}
    for step, name, value in TrainStage.read_metrics(Path(out_dir)):
        if step is not None:
            curves.setdefault(name.split(".", 1)[1], []).append([step, value])
    return curves


class Snapshots:
    """Reads with a short lock timeout, each result kept for ``min_age`` seconds and served (marked stale) when a
    later read cannot get the file."""

    def __init__(self, wh: Warehouse, min_age: float = 1.0) -> None:
        self.wh, self.min_age = wh, min_age
        self._kept: dict[str, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: str, read: Callable[[], Any]) -> tuple[Any, dict[str, Any]]:
        with self._lock:
            kept = self._kept.get(key)
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
        return value, {"stale": False}


def _run_view(wh: Warehouse, ref: str) -> dict[str, Any]:
    snap = run_snapshot(wh, ref)
    training = snap["training"]
    if training is not None and training["status"] == "running" and training.get("out_dir"):
        training["curves"] = live_curves(training["out_dir"])
        training["live"] = True
    if training is not None:
        training["curves"] = {k: v for k, v in training["curves"].items() if k in CURVES}
    snap["run"]["prefect_url"] = (f"{prefect_ui_url()}/runs/flow-run/{snap['run']['flow_run_id']}"
                                  if snap["run"].get("flow_run_id") else None)
    return snap


def create_app(warehouse_path: str | Path, lock_timeout: float = 2.0) -> Starlette:
    """The dashboard as an ASGI app (tests serve it with uvicorn as the CLI does)."""
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
        limit = min(int(request.query_params.get("limit", 30)), 500)
        return answer(f"runs:{limit}", lambda: runs_overview(wh, limit))

    def run(request: Request) -> Response:
        ref = request.path_params["run_id"]
        return answer(f"run:{ref}", lambda: _run_view(wh, ref))

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True, "warehouse": str(wh.path), "exists": wh.path.exists()})

    return Starlette(routes=[
        Route("/", index), Route("/healthz", health),
        Route("/api/runs", runs), Route("/api/runs/{run_id}", run),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ])


def serve(warehouse_path: str | Path, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
    import uvicorn

    uvicorn.run(create_app(warehouse_path), host=host, port=port, log_level="warning")
