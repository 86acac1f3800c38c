"""Kill the pipeline mid-stage with SIGKILL, or type Ctrl-C on its terminal; rerun, and get byte-identical output."""
import os
import signal
import subprocess
import sys
import time

import pytest

from tasks.config import parse_config
from tests.conftest import REPO
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


def _prefect_servers_of(work_dir) -> list[int]:
    """Processes whose environment names this work directory's Prefect home (our server, Prefect's own)."""
    needle = f"PREFECT_HOME={work_dir / 'prefect'}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if needle in open(f"/proc/{entry}/environ", "rb").read().split(b"\0"):
                    found.append(int(entry))
            except OSError:
                pass
    return found


def _ctrl_c_run(toml, work_dir, stage: str, units: int) -> tuple[int, str, float]:
    """`crucible run` on a pseudo-terminal that is its controlling terminal; once ``stage`` has finished ``units``
    units, type Ctrl-C there (the line discipline sends SIGINT to the whole foreground process group)."""
    import fcntl
    import pty
    import select
    import termios

    master, slave = pty.openpty()

    def controlling_tty() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}  # the command starts its own API
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", str(toml), "--to", "tokenize"],
                            stdin=slave, stdout=slave, stderr=slave, env=env, preexec_fn=controlling_tty,
                            cwd=str(REPO))
    os.close(slave)
    out = bytearray()

    def pump(timeout: float) -> None:
        if select.select([master], [], [], timeout)[0]:
            try:
                out.extend(os.read(master, 65536))
            except OSError:  # the child closed the terminal
                pass

    stage_dir = work_dir / "datasets" / stage
    deadline = time.monotonic() + 300
    while len(list(stage_dir.glob("*/part-*.json"))) < units:
        assert proc.poll() is None, out.decode(errors="replace")[-3000:]
        assert time.monotonic() < deadline, "the stage never got going"
        pump(0.05)
    os.write(master, b"\x03")  # Ctrl-C, typed
    typed = time.monotonic()
    while proc.poll() is None and time.monotonic() - typed < 120:
        pump(0.1)
    took = time.monotonic() - typed
    pump(0.2)
    os.close(master)
    if proc.poll() is None:
        proc.kill()
    return proc.wait(), out.decode(errors="replace"), took


def test_ctrl_c_on_a_terminal_stops_quickly_loses_nothing_and_the_rerun_matches(tmp_path, pydoc_warc):
    reference = cfg_for(tmp_path, pydoc_warc, "reference")
    ref_stages, _ = run(reference)
    ref = {s["stage"]: Warehouse(reference.warehouse_path).dataset(s["output_dataset_id"])["fingerprint"]
           for s in ref_stages if s["output_dataset_id"]}

    cfg = cfg_for(tmp_path, pydoc_warc, "interrupted")
    toml = tmp_path / "interrupted.toml"
    toml.write_text(f'[paths]\nwork_dir = "{cfg.work_dir}"\n[runner]\nworkers = 1\n'
                    f'[ingest]\ninputs = ["{pydoc_warc}"]\nshard_max_docs = 50\n[extract]\nshard_max_docs = 3\n')
    code, output, took = _ctrl_c_run(toml, cfg.work_dir, "extract", 2)
    assert code == 130, output[-3000:]
    assert took < 20, took
    assert output.rstrip().endswith("interrupted; rerun to resume"), output[-2000:]
    assert "Traceback" not in output and "ConnectError" not in output
    time.sleep(1)
    assert _prefect_servers_of(cfg.work_dir) == []  # the command's own Prefect server went with it

    wh = Warehouse(cfg.warehouse_path)
    [interrupted] = wh.runs()
    assert interrupted["status"] == "interrupted"
    statuses = {s["stage"]: s["status"] for s in wh.stage_runs(interrupted["run_id"])}
    assert statuses["extract"] == "interrupted"
    extract_dir = cfg.work_dir / "datasets" / "extract"
    assert not list(extract_dir.glob("*/_dataset.json"))
    for manifest in extract_dir.glob("*/part-*.json"):  # a finished unit lost no page to the signal
        assert "extract_crash" not in manifest.read_text()

    stages, _ = run(cfg, None, "rerun")
    got = {s["stage"]: wh.dataset(s["output_dataset_id"])["fingerprint"] for s in stages if s["output_dataset_id"]}
    assert got == ref
    assert by_reason(wh, "extract_crash") == 0


def by_reason(wh, reason: str) -> int:
    return sum(r["docs"] for r in wh.query("SELECT docs FROM drops WHERE reason = ?", [reason]))
