"""model/train.py: schedule, decoupled decay, checkpoints, kill-and-resume, DDP."""
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from model.gpt import GPT, GPTConfig
from model.train import TrainArgs, lr_at, param_groups

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from tests.tasks.test_tokenize import tokenize

    out, _, _ = tokenize(tmp_path_factory.mktemp("tokens"))
    return out


def run_args(tmp_path, data, name="run", **kw) -> Path:
    args = {"data_dir": str(data), "out_dir": str(tmp_path / name), "model": {"depth": 2, "d_model": 64},
            "batch_size": 4, "seq_len": 64, "max_steps": 20, "eval_every": 10, "checkpoint_every": 5,
            "warmup_steps": 3, "lr": 3e-3, **kw}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(args))
    return path


def train(config: Path, nproc: int = 1, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        cmd = [sys.executable, "-m", "model.train", "--config", str(config)]
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--master-addr=127.0.0.1",
               f"--master-port={port}", "-m", "model.train", "--config", str(config)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **popen)


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return out


def curve(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_warmup_then_cosine_to_the_floor_or_warmup_stable_decay():
    args = TrainArgs(data_dir="-", out_dir="-", lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert [lr_at(args, s) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert math.isclose(lr_at(args, 60), 0.55) and math.isclose(lr_at(args, 110), 0.1)
    assert all(lr_at(args, s) >= lr_at(args, s + 1) for s in range(10, 120))
    wsd = TrainArgs(data_dir="-", out_dir="-", lr=1.0, warmup_steps=10, max_steps=100, schedule="wsd",
                    decay_fraction=0.2, min_lr_ratio=0.0)
    assert lr_at(wsd, 50) == 1.0 == lr_at(wsd, 80) and math.isclose(lr_at(wsd, 90), 0.5) and lr_at(wsd, 100) == 0


def test_adamw_decays_matrices_by_lr_times_lambda_times_theta_and_nothing_else():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, depth=1, d_model=64, seq_len=8))
    groups = param_groups(model, 0.1)
    decayed = {id(p) for p in groups[0]["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decayed}
    assert "embed_tokens.weight" not in names and not any("norm" in n for n in names)
    assert "lm_head.weight" in names and "layers.0.mlp.down_proj.weight" in names
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(groups, lr=0.5, betas=(0.9, 0.95), eps=1e-8)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # no gradient: the step is the decay alone
    opt.step()
    for n, p in model.named_parameters():
        want = before[n] * (1 - 0.5 * 0.1) if n in names else before[n]
        assert torch.allclose(p, want), n


def test_a_run_writes_metrics_estimates_and_complete_checkpoints(tmp_path, data):
    finish(train(run_args(tmp_path, data)))
    run = tmp_path / "run"
    rows = curve(run)
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 21))
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert all(r["grad_norm"] > 0 and r["tokens_per_s"] > 0 and "mfu" not in r and r["peak_rss_bytes"] > 0
               for r in steps)  # CPU: no MFU
    val = [r for r in rows if "val_bpb" in r]
    assert [r["step"] for r in val] == [10, 20]
    manifest = json.loads((data / "_tokens.json").read_text())
    assert val[-1]["val_bytes"] == manifest["splits"]["val"]["bytes"]  # bpb divides by every target byte
    est = json.loads((run / "estimates.json").read_text())
    assert est["train_flops_6nd"] == 6 * est["params"] * est["tokens"] and est["tokens"] == 20 * 4 * 64
    assert est["memory_params_optimizer_bytes"] == 16 * est["params"]
    final = json.loads((run / "final.json").read_text())
    ckpt = run / "checkpoints" / final["checkpoint"]
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 20 and state["tokens"] == 20 * 256 and state["loader"]["batches"] == 20
    assert {f.name for f in ckpt.iterdir()} == {"model.pt", "optimizer.pt", "rng.pt", "state.json"}
    assert json.loads((run / "best.json").read_text())["checkpoint"] in {c.name for c in (run / "checkpoints").iterdir()}
    assert not list((run / "checkpoints").glob(".tmp-*"))


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_on_the_same_loss_curve(tmp_path, data):
    kw = {"max_steps": 120, "checkpoint_every": 7, "eval_every": 20, "batch_size": 8}
    finish(train(run_args(tmp_path, data, "whole", **kw)))
    config = run_args(tmp_path, data, "killed", **kw)
    proc = train(config)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 30):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "final.json").exists(), "the run ended before it was killed"
    with open(metrics, "a") as fh:  # killed mid-line, as a kill during a write leaves it
        fh.write('{"step": 31, "loss": 4.5, "lr"')
    torn_write = tmp_path / "killed" / "checkpoints" / ".tmp-step-0000035-99999"
    torn_write.mkdir()
    (torn_write / "model.pt").write_bytes(b"half a checkpoint")
    out = finish(train(config))  # rng.pt loads with weights_only=True, or this resume would fail
    assert "resuming from step-" in out
    assert not torn_write.exists()
    whole, resumed = curve(tmp_path / "whole"), curve(tmp_path / "killed")
    assert [r["step"] for r in resumed] == [r["step"] for r in whole]
    for a, b in zip(whole, resumed):
        for key in ("loss", "grad_norm", "lr", "val_loss", "val_bpb"):
            assert a.get(key) == b.get(key), (a["step"], key)


@pytest.mark.slow
def test_ranks_die_with_their_launcher_when_it_is_killed(tmp_path, data):
    """SIGKILL the process that started torchrun (as `kill -9` of crucible does): torchrun and its rank follow
    within moments instead of training on, appending to metrics.jsonl."""
    config = run_args(tmp_path, data, "orphan", max_steps=100000, checkpoint_every=0, eval_every=0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=1", "--master-addr=127.0.0.1",
               f"--master-port={port}", "-m", "model.train", "--config", str(config)]
    launcher = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom tasks.procs import spawn\n"
                                 f"spawn({command!r})\ntime.sleep(3600)"], cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    metrics = tmp_path / "orphan" / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 5):
        assert time.time() < deadline and launcher.poll() is None
        time.sleep(0.05)
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    time.sleep(5)
    steps = len(metrics.read_text().splitlines())
    time.sleep(3)
    assert len(metrics.read_text().splitlines()) == steps
    alive = [pid for pid in os.listdir("/proc") if pid.isdigit() and str(config).encode() in _cmdline(pid)]
    assert alive == []


def _cmdline(pid: str) -> bytes:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:
        return b""


@pytest.mark.slow
def test_two_gloo_ranks_under_torchrun_match_one_process_on_the_same_global_batch(tmp_path, data):
    kw = {"batch_size": 2, "total_batch_tokens": 4 * 64, "max_steps": 8, "eval_every": 4, "checkpoint_every": 0}
    finish(train(run_args(tmp_path, data, "one", **kw)))
    out = finish(train(run_args(tmp_path, data, "two", **kw), nproc=2))
    assert "2 ranks" in out
    one, two = curve(tmp_path / "one"), curve(tmp_path / "two")
    for a, b in zip(one, two):
        for key in ("loss", "grad_norm", "val_loss", "val_bpb"):
            if key in a:
                assert math.isclose(a[key], b[key], rel_tol=1e-4), (a["step"], key, a[key], b[key])
    wa = torch.load(tmp_path / "one" / "checkpoints" / "step-0000008" / "model.pt")
    wb = torch.load(tmp_path / "two" / "checkpoints" / "step-0000008" / "model.pt")
    for name in wa:
        assert torch.allclose(wa[name], wb[name], atol=1e-5), name


@pytest.mark.slow
def test_fsdp2_on_two_gloo_ranks_matches_ddp_and_resumes(tmp_path, data):
    kw = {"batch_size": 2, "total_batch_tokens": 4 * 64, "max_steps": 4, "eval_every": 2, "checkpoint_every": 2}
    finish(train(run_args(tmp_path, data, "ddp", **kw), nproc=2))
    finish(train(run_args(tmp_path, data, "fsdp", fsdp=True, **kw), nproc=2))
    for a, b in zip(curve(tmp_path / "ddp"), curve(tmp_path / "fsdp")):
        for key in ("loss", "grad_norm", "val_loss"):
            if key in a:
                assert math.isclose(a[key], b[key], rel_tol=1e-4), (a["step"], key)
    out = finish(train(run_args(tmp_path, data, "fsdp", fsdp=True, **{**kw, "max_steps": 6}), nproc=2))
    assert "resuming from step-0000004" in out and json.loads((tmp_path / "fsdp" / "final.json").read_text())["step"] == 6


def evaluate(tmp_path, checkpoint, name, nproc=1, **kw):
    from tasks.evalsets import ensure_smoke

    bench = tmp_path / "smoke"
    ensure_smoke(bench)
    config = tmp_path / f"{name}.json"
    config.write_text(json.dumps({"checkpoint": str(checkpoint), "benchmarks_dir": str(bench),
                                  "out_dir": str(tmp_path / name), "sample_tokens": 4, **kw}))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        cmd = [sys.executable, "-m", "model.evaluate", "--config", str(config)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "model.evaluate", "--config", str(config)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads((tmp_path / name / "results.json").read_text())


@pytest.mark.slow
def test_evaluation_split_over_two_ranks_gives_what_one_process_gives(tmp_path, data):
    import pyarrow.parquet as pq

    finish(train(run_args(tmp_path, data, max_steps=3, eval_every=0)))
    ckpt = tmp_path / "run" / "checkpoints" / "step-0000003"
    one = evaluate(tmp_path, ckpt, "one", batch_rows=5)
    two = evaluate(tmp_path, ckpt, "two", nproc=2, batch_rows=64)
    assert set(one["results"]) == {"arc_easy", "arc_challenge", "boolq", "copa", "piqa", "winogrande",
                                   "lambada_openai"}
    for task, r in one["results"].items():
        assert (r["accuracy"], r["items"]) == (two["results"][task]["accuracy"], two["results"][task]["items"])
    assert math.isclose(one["core7"], two["core7"]) and math.isclose(one["val"]["val_bpb"], two["val"]["val_bpb"],
                                                                     rel_tol=1e-6)
    a, b = (pq.read_table(tmp_path / n / "items.parquet").to_pylist() for n in ("one", "two"))
    assert [(r["task"], r["item"], r["prediction"]) for r in a] == [(r["task"], r["item"], r["prediction"]) for r in b]
    for x, y in zip(a, b):
        assert all(math.isclose(p, q, rel_tol=1e-5, abs_tol=1e-6) for p, q in zip(x["losses"], y["losses"]))
    samples = json.loads((tmp_path / "one" / "samples.json").read_text())
    assert {s["temperature"] for s in samples} == {0.0, 0.8} and len(samples) == 8


def test_the_torch_side_takes_its_defaults_from_the_config_sections():
    """One definition per setting: TrainArgs, EvalArgs and GPTConfig default to what [train], [evaluate] and
    [train.model] say, and name the same settings."""
    import dataclasses

    from model.evaluate import EvalArgs
    from tasks.config import EvaluateConfig, ModelConfig, TrainConfig

    def defaults(cls) -> dict:
        return {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(cls)
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}

    train = defaults(TrainArgs)
    section = TrainConfig().model_dump(exclude={"nproc_per_node", "nnodes", "rdzv_endpoint", "model"})
    assert {k: train[k] for k in section} == section and set(train) == set(section) | {"model"}
    evaluate = defaults(EvalArgs)
    section = EvaluateConfig().model_dump(exclude={"nproc_per_node", "benchmarks_dir"})
    assert {k: evaluate[k] for k in section} == section and set(evaluate) == set(section)
    model = defaults(GPTConfig)
    model.pop("seq_len")  # set from [train] seq_len
    assert model == ModelConfig().model_dump()
