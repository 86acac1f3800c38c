"""`crucible serve` against the session's Prefect test server: the deployments appear, a run made from the
pipeline's schedule completes, and a stage deployment reruns one stage, as "Run" in the Prefect UI would."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tasks.registry import ORDER
from tests.conftest import REPO
from warehouse.lineage import Warehouse


def _wait(what: str, check, timeout: float, log=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    tail = log.read_text()[-4000:] if log is not None and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def _finished(client, flow_run_id):
    run = client.read_flow_run(flow_run_id)
    if run.state is not None and run.state.is_final():
        return run
    return None


def test_serve_needs_a_schedule_and_a_server(tmp_path):
    from click.testing import CliRunner

    from flows.cli import main
    from tests.flows.test_cli import write_config

    config = write_config(tmp_path, str(tmp_path / "*.warc.gz"))
    assert CliRunner().invoke(main, ["serve", str(config)]).exit_code == 2
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")  # no profile that names a server either
    result = subprocess.run([sys.executable, "-m", "flows.cli", "serve", str(config), "--interval", "60"], env=env,
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "prefect server start" in result.stdout, result.stdout + result.stderr


@pytest.mark.slow
def test_serve_registers_deployments_and_a_scheduled_run_completes(tmp_path, prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import DeploymentSort, FlowRunSort

    from tests.flows.test_cli import write_config
    from tests.helpers import TINY_TRAIN, write_prose_warc

    write_prose_warc(tmp_path / "a.warc.gz", 12)
    train = "\n".join(f"{k} = {json.dumps(v)}" for k, v in TINY_TRAIN.items() if k != "model")
    config = write_config(tmp_path, str(tmp_path / "*.warc.gz"),
                          f"[train]\n{train}\n[train.model]\ndepth = 1\nd_model = 32\n")
    log = tmp_path / "serve.log"
    env = {**os.environ, "PREFECT_API_URL": prefect_harness, "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    with open(log, "w") as out:
        serve = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", str(config), "--interval", "5"],
                                 cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with get_client(sync_client=True) as client:
            def ours():
                found = [d for d in client.read_deployments(limit=100, sort=DeploymentSort.NAME_ASC)
                         if "c" in (d.tags or [])]
                return found if len(found) == len(ORDER) + 1 else None

            found = _wait("the deployments", ours, 120, log)
            pipeline = next(d for d in found if d.name == "c")
            assert pipeline.parameters["config"] == str(config.resolve())
            assert [s.schedule.interval.total_seconds() for s in pipeline.schedules] == [5.0]
            assert {d.name for d in found} == {"c", *(f"c-{stage}" for stage in ORDER)}

            # The scheduler service's job, which the test server does not run: make the schedule's next run.
            def schedule():  # the test server answers 503 while its SQLite is busy; Prefect's client retries those too
                answer = httpx.post(f"{prefect_harness}/deployments/{pipeline.id}/schedule", json={"max_runs": 1},
                                    timeout=30)
                return answer if answer.status_code != 503 else None

            _wait("the schedule call", schedule, 60, log).raise_for_status()
            runs = client.read_flow_runs(limit=10, sort=FlowRunSort.START_TIME_DESC)
            scheduled = [r for r in runs if r.deployment_id == pipeline.id]
            assert len(scheduled) == 1 and scheduled[0].auto_scheduled
            done = _wait("the scheduled run", lambda: _finished(client, scheduled[0].id), 300, log)
            assert done.state.is_completed(), done.state

            extract = next(d for d in found if d.name == "c-extract")
            rerun = client.create_flow_run_from_deployment(extract.id)
            done = _wait("the stage rerun", lambda: _finished(client, rerun.id), 120, log)
            assert done.state.is_completed(), done.state
    finally:
        serve.send_signal(signal.SIGINT)
        try:
            serve.wait(timeout=30)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait()

    wh = Warehouse(tmp_path / "work" / "warehouse.duckdb")
    runs = {r["trigger"]: r for r in wh.runs()}
    assert runs["schedule"]["status"] == "completed" and runs["rerun"]["status"] == "completed"
    assert [s["stage"] for s in wh.stage_runs(runs["rerun"]["run_id"])] == ["extract"]
    assert wh.resolve_run(runs["schedule"]["run_id"])["flow_run_id"] is not None
    assert len(wh.stage_runs(runs["schedule"]["run_id"])) == len(ORDER) - 2  # no crawl seeds, select off
