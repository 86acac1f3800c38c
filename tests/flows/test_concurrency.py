"""Other processes on the same warehouse: a second pipeline run fails fast naming the first (or waits for it), and
readers holding the file (the dashboard, `crucible sql`) do not break a running pipeline."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO
from tests.flows.test_pipeline import by_stage, config, run
from warehouse.lineage import PipelineBusy, Warehouse

pytestmark = pytest.mark.usefixtures("prefect_harness")
STAGES = ["ingest", "extract", "language", "quality", "dedup"]

HOLD = """
import sys, time
from warehouse.lineage import Warehouse
with Warehouse(sys.argv[1]).pipeline_lock() as claim:
    claim("run-holder")
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds)], cwd=REPO, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_pipeline_run_fails_fast_naming_the_one_that_holds_the_warehouse(tmp_path, inputs):
    cfg = config(tmp_path, inputs)
    holder = _holder(cfg.warehouse_path, 60)
    try:
        t0 = time.monotonic()
        with pytest.raises(PipelineBusy) as err:
            run(cfg, ["ingest"])
        assert time.monotonic() - t0 < 10
        assert f"run run-holder (pid {holder.pid} on " in str(err.value)
        assert "warehouse.pipeline_wait_s" in str(err.value)
    finally:
        holder.kill()
        holder.wait()
    stages, _ = run(cfg, ["ingest"])  # the holder was killed: its lock went with it
    assert by_stage(stages)["ingest"]["status"] == "completed"


def test_with_pipeline_wait_s_the_second_run_queues_behind_the_first(tmp_path, inputs):
    cfg = config(tmp_path, inputs, warehouse={"pipeline_wait_s": 60})
    holder = _holder(cfg.warehouse_path, 2)
    t0 = time.monotonic()
    stages, _ = run(cfg, ["ingest"])
    assert time.monotonic() - t0 >= 1.5 and by_stage(stages)["ingest"]["status"] == "completed"
    assert holder.wait(timeout=30) == 0


READER = """
import sys, time, duckdb
end = time.monotonic() + float(sys.argv[2])
print("reading", flush=True)
while time.monotonic() < end:
    try:
        con = duckdb.connect(sys.argv[1], read_only=True)
    except duckdb.IOException:  # the pipeline is writing: a reader retries, as the dashboard does
        time.sleep(0.01)
        continue
    con.execute("SELECT count(*) FROM stage_runs").fetchall()
    time.sleep(0.3)  # hold the file, as a slow query would
    con.close()
    time.sleep(0.05)
"""


def test_a_reader_holding_the_warehouse_does_not_break_a_running_pipeline(tmp_path, inputs):
    cfg = config(tmp_path, inputs)
    run(cfg, ["ingest"])  # the warehouse exists, so the reader can open it
    reader = subprocess.Popen([sys.executable, "-c", READER, str(cfg.warehouse_path), "600"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert reader.stdout.readline().strip() == "reading"
        stages, run_id = run(cfg, STAGES)
    finally:
        reader.kill()
        reader.wait()
    assert [s["status"] for s in stages] == ["completed"] * len(stages)
    reference = config(tmp_path / "ref", inputs)
    ref_stages, _ = run(reference, STAGES)
    ours, theirs = Warehouse(cfg.warehouse_path), Warehouse(reference.warehouse_path)
    for mine, ref in zip(stages, ref_stages):
        assert ours.dataset(mine["output_dataset_id"])["fingerprint"] == \
            theirs.dataset(ref["output_dataset_id"])["fingerprint"], mine["stage"]


@pytest.mark.slow
def test_two_crucible_runs_at_once_one_completes_the_other_names_it(tmp_path, inputs, prefect_harness):
    toml = tmp_path / "c.toml"
    toml.write_text(f'[paths]\nwork_dir = "{tmp_path / "work"}"\n[ingest]\ninputs = ["{inputs}/*.warc.gz"]\n')
    env = {**os.environ, "PREFECT_API_URL": prefect_harness}
    cmd = [sys.executable, "-m", "flows.cli", "run", str(toml), "--to", "dedup"]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 1], outputs
    loser = outputs[[p.returncode for p in procs].index(1)]
    wh = Warehouse(tmp_path / "work" / "warehouse.duckdb")
    runs = wh.runs()
    assert len(runs) == 1 and runs[0]["status"] == "completed"
    assert f"run {runs[0]['run_id']}" in loser or "run (starting)" in loser, loser
    assert "is writing" in loser and "Traceback" not in loser


def test_a_long_crucible_sql_query_never_makes_a_writer_fail(tmp_path):
    """`crucible sql` reads a snapshot: the file is free while its query runs, so a writer with a 2 s lock timeout
    (a pipeline starting, recording a stage) gets in at once."""
    wh = Warehouse(tmp_path / "wh.duckdb", lock_timeout=2.0)
    first = wh.start_run(config={}, config_hash="h", config_path=None, code_version="t", trigger="manual", stages=[])
    wh.finish_run(first, "completed")
    # minutes of work on any machine; it is stopped once the writer has had its turn
    reader = subprocess.Popen([sys.executable, "-m", "flows.cli", "sql", "--warehouse", str(wh.path),
                               "SELECT sum(hash(range)) FROM pipeline_runs, range(100000000000)"],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(4)  # started, snapshot taken, and into its query
        assert reader.poll() is None, reader.communicate()
        t0 = time.monotonic()
        second = wh.start_run(config={}, config_hash="h", config_path=None, code_version="t", trigger="manual",
                              stages=[])
        wh.finish_run(second, "completed")
        assert time.monotonic() - t0 < 1.5
        assert reader.poll() is None  # the query was still running all along
    finally:
        reader.kill()
        reader.wait()
    assert [r["status"] for r in wh.runs()] == ["completed", "completed"]


@pytest.mark.parametrize("query, refusal", [
    ("COPY (SELECT 1) TO 'x.csv'", "got COPY"),
    ("INSTALL httpfs", "got LOAD"),
    ("ATTACH 'other.duckdb'", "got ATTACH"),
    ("SELECT * FROM read_csv('/etc/passwd')", "file system operations are disabled"),
    ("SELECT 1; DROP TABLE pipeline_runs", "got SELECT, DROP"),
])
def test_crucible_sql_is_read_only_for_real(tmp_path, query, refusal):
    from click.testing import CliRunner

    from flows.cli import main

    wh = Warehouse(tmp_path / "wh.duckdb")
    wh.start_run(config={}, config_hash="h", config_path=None, code_version="t", trigger="manual", stages=[])
    result = CliRunner().invoke(main, ["sql", "--warehouse", str(wh.path), query])
    assert result.exit_code == 1 and refusal in result.output, result.output
    assert not (tmp_path / "x.csv").exists() and len(wh.runs()) == 1
