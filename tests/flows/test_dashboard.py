"""The dashboard: its JSON API against a real warehouse, live curves from a training run's metrics.jsonl, a stale
snapshot while another process holds the file, and the page itself in headless Chromium (Debian's package, driven
by Playwright) for a finished pipeline run."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from flows.dashboard import create_app
from tasks.stage import write_progress
from tasks.train import TrainStage
from tests.conftest import REPO
from warehouse.lineage import Warehouse

ARTIFACTS = Path(os.environ.get("CRUCIBLE_TEST_ARTIFACTS", REPO / "test-artifacts"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def _training_run(wh: Warehouse, out_dir: Path) -> str:
    """A pipeline run whose train stage is running and has logged nothing yet (as the orchestrator records it)."""
    run_id = wh.start_run(config={"paths": {}}, config_hash="c0ffee", config_path=None, code_version="test",
                          trigger="manual", stages=["tokenize", "train", "evaluate"], flow_run_id="f-1")
    wh.start_stage(run_id=run_id, stage="train", stage_key="k" * 64, params={}, params_hash="p", code_version="t",
                   input_dataset_ids=[], out_dir=out_dir, role=TrainStage.role)
    out_dir.mkdir(parents=True, exist_ok=True)
    return run_id


def _log_steps(out_dir: Path, steps: range, spike_at: int | None = None) -> None:
    """Append steps to metrics.jsonl the way model/train.py's rank 0 does (one flushed line per step); the gradient
    norm wanders around 1, and jumps to 50 at ``spike_at``."""
    import math

    with open(out_dir / "metrics.jsonl", "a") as fh:
        for step in steps:
            grad_norm = 50.0 if step == spike_at else 1.0 + 0.3 * math.sin(step)
            fh.write(json.dumps({"step": step, "loss": 9.0 / step, "lr": 1e-3, "grad_norm": grad_norm,
                                 "tokens": 64 * step, "tokens_per_s": 1000.0 + step, "seconds": 0.1}) + "\n")
            fh.flush()


def test_api_follows_a_running_training_and_serves_a_stale_snapshot_while_the_file_is_held(tmp_path, monkeypatch):
    wh = Warehouse(tmp_path / "wh.duckdb")
    monkeypatch.setenv("PREFECT_UI_URL", "http://prefect.internal:4200")  # the user says where the UI is
    with wh.pipeline_lock():  # a live run holds it, as the orchestrator does
        _follow_a_running_training(wh, tmp_path)
    # once nobody holds the lock, a run still marked running was killed: readers say so
    assert Warehouse(wh.path).runs()[0]["status"] == "crashed"


def _follow_a_running_training(wh: Warehouse, tmp_path: Path) -> None:
    out_dir = tmp_path / "train"
    run_id = _training_run(wh, out_dir)
    client = TestClient(create_app(wh.path, lock_timeout=0.5), base_url="http://127.0.0.1:8642")

    runs = client.get("/api/runs").json()["data"]
    assert runs[0]["run_id"] == run_id
    assert runs[0]["stage_status"] == {"tokenize": "pending", "train": "running", "evaluate": "pending"}

    _log_steps(out_dir, range(1, 4))
    body = client.get(f"/api/runs/{run_id}").json()
    training = body["data"]["training"]
    assert body["stale"] is False and training["live"] is True and training["status"] == "running"
    assert [p[0] for p in training["curves"]["loss"]] == [1, 2, 3]
    assert body["data"]["run"]["prefect_url"] == "http://prefect.internal:4200/runs/flow-run/f-1"

    _log_steps(out_dir, range(4, 7))
    time.sleep(1.1)  # past the snapshot's minimum age
    assert len(client.get(f"/api/runs/{run_id}").json()["data"]["training"]["curves"]["loss"]) == 6

    # another process (as the pipeline's writer would) holds the file: the last snapshot comes back, marked stale
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
                               "print('held', flush=True); time.sleep(30)", str(wh.path)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        time.sleep(1.1)
        t0 = time.monotonic()
        held = client.get(f"/api/runs/{run_id}").json()
        assert held["stale"] is True and "busy" in held["note"] and time.monotonic() - t0 < 5
        assert len(held["data"]["training"]["curves"]["loss"]) == 6
    finally:
        holder.kill()
        holder.wait()

    assert client.get("/api/runs/no-such-run").status_code == 404
    assert client.get("/healthz").json()["ok"] is True
    index = client.get("/")
    assert index.status_code == 200 and "/static/dashboard.js" in index.text


def test_a_running_stage_writes_how_far_its_units_are_and_the_api_serves_it(tmp_path, prefect_harness):
    from dataclasses import dataclass

    from prefect import flow

    from flows.stages import FlowContext
    from tasks.config import parse_config
    from tasks.stage import PROGRESS_FILE, read_progress

    @dataclass
    class Unit:
        name: str

        def describe(self) -> str:
            return self.name

    @dataclass
    class Stage:
        name: str = "extract"

    cfg = parse_config({"paths": {"work_dir": str(tmp_path / "work")}, "runner": {"kind": "threads", "workers": 1}},
                       base=tmp_path)
    wh = Warehouse(cfg.warehouse_path)
    out_dir = tmp_path / "work" / "extract-out"
    seen: list[dict | None] = []

    def unit_fn(stage, unit, out):  # what a reader of the output directory sees while this unit runs
        seen.append(read_progress(out))
        return {"unit": unit.name, "docs_in": 10}

    @flow
    def stage_units():
        ctx = FlowContext(cfg, wh, "r", False)
        return ctx.map("scan", unit_fn, Stage(), [Unit(f"u{i}") for i in range(4)], out_dir)

    assert [r["unit"] for r in stage_units()] == ["u0", "u1", "u2", "u3"]
    assert all(p is not None and p["units_total"] == 4 and p["step"] == "scan" for p in seen), seen
    assert [p["units_done"] for p in seen] == sorted(p["units_done"] for p in seen) and seen[0]["units_done"] == 0
    last = read_progress(out_dir)
    assert last["units_done"] == 4 and last["docs"] == 40 and last["units_failed"] == 0 and last["seconds"] > 0
    assert not list(out_dir.glob(PROGRESS_FILE + ".part"))

    # the dashboard's API hands it over for the running stage, and the page draws it (browser test below)
    run_id = wh.start_run(config={}, config_hash="c", config_path=None, code_version="t", trigger="manual",
                          stages=["extract"])
    wh.start_stage(run_id=run_id, stage="extract", stage_key="k" * 64, params={}, params_hash="p",
                   code_version="t", input_dataset_ids=[], out_dir=out_dir, role=None)
    with wh.pipeline_lock():
        client = TestClient(create_app(wh.path), base_url="http://127.0.0.1:8642")
        stage = client.get(f"/api/runs/{run_id}").json()["data"]["stages"][0]
    assert stage["status"] == "running" and stage["progress"]["units_done"] == 4


def test_an_interrupted_training_shows_the_steps_it_logged_and_where_a_rerun_resumes(tmp_path):
    wh = Warehouse(tmp_path / "wh.duckdb")
    out_dir = tmp_path / "train"
    run_id = _training_run(wh, out_dir)
    _log_steps(out_dir, range(1, 31))
    for step in (10, 20):  # finished checkpoints, and one a kill left half-written
        (out_dir / "checkpoints" / f"step-{step:07d}").mkdir(parents=True)
    (out_dir / "checkpoints" / ".tmp-step-0000030").mkdir()
    stage_run_id = wh.stage_runs(run_id)[0]["stage_run_id"]
    wh.finish_stage(stage_run_id, status="interrupted", error="interrupted (SIGINT or SIGTERM)", seconds=3.0)
    wh.finish_run(run_id, "interrupted")
    training = TestClient(create_app(wh.path), base_url="http://127.0.0.1:8642").get(
        f"/api/runs/{run_id}").json()["data"]["training"]
    assert training["status"] == "interrupted" and training["live"] is False and training["from_file"] is True
    assert [p[0] for p in training["curves"]["loss"]] == list(range(1, 31))
    assert training["resumable"] == str(out_dir / "checkpoints" / "step-0000020")


def test_the_prefect_link_needs_a_server_that_answers(prefect_harness, monkeypatch):
    from flows import dashboard

    monkeypatch.delenv("PREFECT_UI_URL", raising=False)
    monkeypatch.setenv("PREFECT_API_URL", prefect_harness)  # the session's real Prefect test server
    assert dashboard.prefect_ui_answers()
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{_free_port()}/api")  # nothing listens there
    assert not dashboard.prefect_ui_answers()


def test_dashboard_refuses_a_public_interface_without_the_flag():
    from click.testing import CliRunner

    from flows.cli import main

    result = CliRunner().invoke(main, ["dashboard", "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "--public" in result.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_dashboard(warehouse: Path, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "dashboard", "--warehouse", str(warehouse),
                             "--port", str(port)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"the dashboard did not start: {proc.stdout.read().decode()[-2000:]}")


@contextlib.contextmanager
def dashboard_page(warehouse: Path, width: int = 1280, height: int = 1600, env: dict[str, str] | None = None):
    """A served dashboard open in headless Chromium: (page, url, errors), errors collecting page errors and any
    request that leaves the dashboard."""
    from playwright.sync_api import sync_playwright

    proc, url = _serve_dashboard(warehouse, env)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": width, "height": height})
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.on("request", lambda req: None if req.url.startswith(url) or req.url.startswith("data:")
                    else errors.append(f"external request {req.url}"))
            yield page, url, errors
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package (apt install chromium)")
def test_dashboard_in_a_real_browser(tmp_path, prefect_harness):
    from click.testing import CliRunner
    from playwright.sync_api import expect

    from flows.cli import main
    from tests.flows.test_cli import write_config
    from tests.helpers import TINY_TRAIN, write_mixed_warc, write_prose_warc

    write_prose_warc(tmp_path / "a.warc.gz", 12)
    write_mixed_warc(tmp_path / "b.warc.gz")  # request, revisit, metadata records and pages ingest drops
    train = "\n".join(f"{k} = {json.dumps(v)}" for k, v in TINY_TRAIN.items() if k != "model")
    config = write_config(tmp_path, str(tmp_path / "*.warc.gz"),
                          f"[train]\n{train}\n[train.model]\ndepth = 1\nd_model = 32\n")
    result = CliRunner().invoke(main, ["run", str(config)])
    assert result.exit_code == 0, result.output
    wh = Warehouse(tmp_path / "work" / "warehouse.duckdb")
    finished = wh.resolve_run("latest")["run_id"]

    # a Prefect server that answers (the session's test server): the run links to its flow run there
    with dashboard_page(wh.path, env={"PREFECT_API_URL": prefect_harness}) as (page, url, errors):
        page.goto(f"{url}/#{finished}")
        expect(page.locator("#summary")).to_have_attribute("data-status", "completed")
        # the sidebar names each run's config (c.toml here), so runs of different configs tell apart
        expect(page.locator(f"#run-list [data-run='{finished}'] .config")).to_have_text("c")
        expect(page.locator("#stage-strip .badge")).to_have_count(12)
        expect(page.locator("#stage-strip [data-stage=crawl]")).to_contain_text("skipped")  # no seeds
        expect(page.locator("#stage-strip [data-stage=select]")).to_contain_text("skipped")  # no filter on
        expect(page.locator("#stage-strip [data-stage=report]")).to_contain_text("completed")
        for stage in ("ingest", "extract", "quality", "dedup", "tokenize"):
            expect(page.locator(f"#funnel .funnel-row[data-stage={stage}]")).to_be_visible()
        expect(page.locator("#curves .chart[data-curve=loss] polyline")).to_be_visible()
        expect(page.locator("#curves .chart[data-curve=lr] polyline")).to_be_visible()
        expect(page.locator("#eval-table tbody tr")).to_have_count(7)  # the smoke set's seven tasks
        expect(page.locator("#core7")).not_to_be_empty()
        # a 32-token context crops the 10-shot prompts: the page says how many shots were left
        expect(page.locator("#crop-note")).to_contain_text("arc_easy")
        expect(page.locator("#crop-note")).to_contain_text("shots kept")
        expect(page.locator("#lineage-table")).to_contain_text("source-")
        assert page.locator("#prefect-link").get_attribute("href").startswith(prefect_harness.removesuffix("/api"))
        # WARC request records are noted as records, not counted as documents
        expect(page.locator("#funnel .funnel-row[data-stage=ingest] .notes")).to_contain_text("records")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for width in (1400, 800):  # at 800 px the run list goes on top and nothing scrolls sideways
            page.set_viewport_size({"width": width, "height": 1000})
            expect(page.locator("#stages table")).to_be_visible()
            assert page.evaluate("document.documentElement.scrollWidth") <= width
            page.screenshot(path=str(ARTIFACTS / f"dashboard-{width}.png"), full_page=True)
        page.set_viewport_size({"width": 1280, "height": 1600})

        # a second run starts training: its curve grows in the open page without a reload (the run holds
        # the pipeline lock, as a live one does; without it readers would show it crashed)
        out_dir = tmp_path / "live-train"
        with wh.pipeline_lock():
            live = _training_run(wh, out_dir)
            _log_steps(out_dir, range(1, 4))
            page.goto(f"{url}/#{live}")
            chart = page.locator("#curves .chart[data-curve=loss]")
            expect(chart).to_have_attribute("data-points", "3")
            _log_steps(out_dir, range(4, 9))
            expect(chart).to_have_attribute("data-points", "8", timeout=15_000)
            expect(page.locator("#stage-strip [data-stage=train]")).to_contain_text("running")

            # a data stage running in another run: units done / total and docs/s, from its output directory
            busy = wh.start_run(config={}, config_hash="c", config_path=None, code_version="t", trigger="manual",
                                stages=["extract"])
            wh.start_stage(run_id=busy, stage="extract", stage_key="e" * 64, params={}, params_hash="p",
                           code_version="t", input_dataset_ids=[], out_dir=tmp_path / "extract-live", role=None)
            write_progress(tmp_path / "extract-live", step="", units_done=3, units_failed=0, units_total=8,
                           docs=600, seconds=4.0)
            page.goto(f"{url}/#{busy}")
            expect(page.locator("#stages tr[data-stage=extract] .progress")).to_contain_text("3/8 units · 150 docs/s")
            expect(page.locator("#stage-strip [data-stage=extract]")).to_contain_text("running 3/8")
            write_progress(tmp_path / "extract-live", step="", units_done=5, units_failed=0, units_total=8,
                           docs=1000, seconds=5.0)
            expect(page.locator("#stages tr[data-stage=extract] .progress")).to_have_attribute(
                "data-done", "5", timeout=15_000)
            wh.finish_stage(wh.stage_runs(busy)[0]["stage_run_id"], status="completed", seconds=6.0)
            wh.finish_run(busy, "completed")

        # an interrupted training: the steps it logged (a grad-norm spike drawn clipped) and where a rerun resumes
        stopped_dir = tmp_path / "stopped-train"
        stopped = _training_run(wh, stopped_dir)
        _log_steps(stopped_dir, range(1, 31), spike_at=17)
        (stopped_dir / "checkpoints" / "step-0000020").mkdir(parents=True)
        wh.finish_stage(wh.stage_runs(stopped)[0]["stage_run_id"], status="interrupted", seconds=3.0)
        wh.finish_run(stopped, "interrupted")
        page.goto(f"{url}/#{stopped}")
        expect(page.locator("#curves .chart[data-curve=loss]")).to_have_attribute("data-points", "30")
        expect(page.locator("#train-from-file")).to_contain_text("after step 30")
        expect(page.locator("#train-resume")).to_contain_text("step-0000020")
        spiky = page.locator("#curves .chart[data-curve=grad_norm]")
        expect(spiky).to_have_attribute("data-clipped", "1")  # the rest keeps its scale
        expect(spiky.locator(".clip-note")).to_contain_text("up to 50")
        expect(spiky.locator("line.grid")).not_to_have_count(0)
        page.screenshot(path=str(ARTIFACTS / "dashboard-interrupted.png"), full_page=True)
    assert not errors, errors

    # nothing serves at the Prefect address: no dead link, but how to start a server
    silent = f"http://127.0.0.1:{_free_port()}/api"
    with dashboard_page(wh.path, env={"PREFECT_API_URL": silent}) as (page, url, errors):
        page.goto(f"{url}/#{finished}")
        expect(page.locator("#prefect-hint")).to_contain_text("prefect server start")
        expect(page.locator("#prefect-link")).to_have_count(0)
    assert not errors, errors


def test_api_refuses_foreign_hosts_bad_limits_and_patterns_and_bounds_its_cache(tmp_path):
    wh = Warehouse(tmp_path / "wh.duckdb")
    run_id = wh.start_run(config={}, config_hash="h", config_path=None, code_version="t", trigger="manual",
                          stages=[])
    wh.finish_run(run_id, "completed")
    app = create_app(wh.path)
    local = TestClient(app, base_url="http://127.0.0.1:8642")
    assert local.get("/api/runs").status_code == 200
    assert TestClient(app, base_url="http://localhost:8642").get("/api/runs").status_code == 200
    assert TestClient(app, base_url="http://[::1]:8642").get("/healthz").status_code == 200
    # DNS rebinding: evil.example resolves to 127.0.0.1, but the browser still sends its own name
    rebound = TestClient(app, base_url="http://evil.example:8642")
    for path in ("/api/runs", f"/api/runs/{run_id}", "/", "/static/dashboard.js"):
        answer = rebound.get(path)
        assert answer.status_code == 400 and "unexpected Host" in answer.text, path
    assert TestClient(create_app(wh.path, hosts={"dash.example.org", "127.0.0.1"}),
                      base_url="http://dash.example.org").get("/api/runs").status_code == 200

    for bad in ("abc", "-1", "0", "1e9", "501"):
        answer = local.get(f"/api/runs?limit={bad}")
        assert answer.status_code == 400 and "limit" in answer.json()["error"], bad
    assert local.get("/api/runs?limit=1").status_code == 200

    assert local.get("/api/runs/%25").status_code == 404  # '%' is text, not a LIKE pattern matching every run
    assert local.get("/api/runs/run-").status_code == 200   # a real prefix still resolves
    for i in range(1, len(run_id) + 1):  # every prefix is another reference, kept apart
        assert local.get(f"/api/runs/{run_id[:i]}").status_code in (200, 404)
    snapshots = app.state.snapshots
    assert 0 < len(snapshots) <= snapshots.max_kept
    from flows.dashboard import Snapshots

    small = Snapshots(wh, max_kept=8)
    for i in range(100):
        small.get(f"run:{i}", lambda: i)
    assert len(small) == 8 and small.get("run:99", lambda: None)[0] == 99
