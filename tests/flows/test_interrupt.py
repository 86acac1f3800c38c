"""Kill the pipeline process mid-stage with SIGKILL, rerun, and get byte-identical output."""
import os
import signal
import subprocess
import sys
import time

import pytest

from tasks.config import parse_config
from tests.flows.test_pipeline import run
from warehouse.lineage import Warehouse

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.slow]


def cfg_for(tmp_path, warc, name):
    return parse_config({"paths": {"work_dir": str(tmp_path / name)}, "runner": {"workers": 1},
                         "ingest": {"inputs": [str(warc)], "shard_max_docs": 50},
                         "extract": {"shard_max_docs": 3}}, base=tmp_path)


def test_sigkill_mid_stage_then_rerun_gives_identical_output(tmp_path, pydoc_warc, prefect_harness):
    reference = cfg_for(tmp_path, pydoc_warc, "reference")
    ref_stages, _ = run(reference)
    ref_fp = Warehouse(reference.warehouse_path).dataset(ref_stages[1]["output_dataset_id"])["fingerprint"]

    cfg = cfg_for(tmp_path, pydoc_warc, "killed")
    run(cfg, ["ingest"])
    toml = tmp_path / "killed.toml"
    toml.write_text(f'[paths]\nwork_dir = "{cfg.work_dir}"\n[runner]\nworkers = 1\n'
                    f'[ingest]\ninputs = ["{pydoc_warc}"]\nshard_max_docs = 50\n[extract]\nshard_max_docs = 3\n')
    env = {**os.environ, "PREFECT_API_URL": prefect_harness}
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "stage", "extract", str(toml)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    extract_dir = cfg.work_dir / "datasets" / "extract"
    deadline = time.monotonic() + 120
    while len(list(extract_dir.glob("*/part-*.json"))) < 2:
        assert proc.poll() is None, "the stage finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list(extract_dir.glob("*/part-*.json")))
    assert not list(extract_dir.glob("*/_dataset.json"))

    wh = Warehouse(cfg.warehouse_path)
    upstream = wh.latest_dataset("ingest")
    stages, _ = run(cfg, ["extract"], "rerun", upstream)
    assert stages[0]["units_resumed"] >= done_before >= 2
    assert stages[0]["units"] == ref_stages[1]["units"]
    assert wh.dataset(stages[0]["output_dataset_id"])["fingerprint"] == ref_fp
    killed_run = [r for r in wh.runs() if r["trigger"] == "rerun" and r["status"] != "completed"]
    assert [r["status"] for r in killed_run] == ["crashed"]
