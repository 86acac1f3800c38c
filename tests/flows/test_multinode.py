"""Training on two machines, as a user starts it: the pipeline's train stage on node 0 and `crucible train-node` on
node 1, two torchrun process groups meeting at a c10d rendezvous on loopback (gloo), against one process with the
same global batch."""
import json
import math
import os
import socket
import subprocess
import sys

import pytest
from click.testing import CliRunner

from flows.cli import main
from tests.conftest import REPO
from tests.flows.test_cli import write_config
from tests.helpers import write_prose_warc
from warehouse.lineage import Warehouse

TRAIN = {"seq_len": 32, "total_batch_tokens": 4 * 32, "max_steps": 6, "eval_every": 3, "checkpoint_every": 3,
         "warmup_steps": 1, "device": "cpu", "nproc_per_node": 1}


def _train_section(**kw) -> str:
    return ("[train]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in {**TRAIN, **kw}.items())
            + "\n[train.model]\ndepth = 1\nd_model = 32\n")


def _curve(out_dir) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_nodes_train_the_loss_curve_of_one_process_with_the_same_global_batch(tmp_path, prefect_harness):
    write_prose_warc(tmp_path / "a.warc.gz", 12)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    two = write_config(tmp_path, str(tmp_path / "*.warc.gz"),
                       _train_section(batch_size=2, nnodes=2, rdzv_endpoint=f"127.0.0.1:{port}"))
    one = tmp_path / "one.toml"
    one.write_text(two.read_text().split("[train]")[0] + _train_section(batch_size=4))
    cli = CliRunner()
    made = cli.invoke(main, ["run", str(one), "--to", "tokenize"])
    assert made.exit_code == 0, made.output

    env = {**os.environ, "PREFECT_API_URL": prefect_harness, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    crucible = [sys.executable, "-m", "flows.cli"]
    # node 1 first: it waits for the pipeline's train stage to announce the training, then joins it
    node1 = subprocess.Popen([*crucible, "train-node", str(two), "--node-rank", "1", "--wait", "300"], cwd=REPO,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    node0 = subprocess.run([*crucible, "stage", "train", str(two)], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=600)
    joined, _ = node1.communicate(timeout=300)
    assert node0.returncode == 0, node0.stdout + node0.stderr
    assert node1.returncode == 0 and "joining" in joined, joined
    assert "crucible train-node CONFIG --node-rank N" in node0.stdout + node0.stderr
    assert "2 ranks" in node0.stdout + node0.stderr + joined  # one world across both process groups

    alone = cli.invoke(main, ["stage", "train", str(one)])
    assert alone.exit_code == 0, alone.output
    wh = Warehouse(tmp_path / "work" / "warehouse.duckdb")
    trains = [s for r in wh.runs() for s in wh.stage_runs(r["run_id"]) if s["stage"] == "train"]
    dirs = {json.loads(s["params_json"])["nnodes"]: s["out_dir"] for s in trains}
    from pathlib import Path

    pair, single = _curve(Path(dirs[2])), _curve(Path(dirs[1]))
    assert [r["step"] for r in pair] == [r["step"] for r in single]
    assert [r["step"] for r in pair if "loss" in r] == list(range(1, 7))  # (validations too, when the random
    # WARC-Record-IDs put a document in the val split)
    for a, b in zip(single, pair):
        for key in ("loss", "grad_norm", "val_loss", "val_bpb"):
            if key in a:
                assert math.isclose(a[key], b[key], rel_tol=1e-4), (a["step"], key, a[key], b[key])
    assert (Path(dirs[2]) / "train-node-1.log").is_file()
    assert not (tmp_path / "work" / "train" / "nodes.json").exists()  # gone with the training
