"""Evaluate a checkpoint: the CORE-7 benchmarks, bits per byte on the val split, and a few samples.

    python -m model.evaluate --config eval.json
    torchrun --nproc-per-node 8 -m model.evaluate --config eval.json     # items split across ranks

``eval.json`` holds an ``EvalArgs``. Rank 0 writes into ``out_dir``: ``items.parquet`` (one row per item: task,
its index in the benchmark file, its position in the task's seeded order, prediction, gold, correct and the mean
loss of every choice), ``results.json`` (lm-evaluation-harness-like: per task accuracy, centered accuracy, items,
shots, delimiter; CORE-7; val loss, perplexity and bits per byte; the config, the checkpoint and the code version)
and ``samples.json`` (greedy and sampled continuations of fixed prompts). The scoring rules are in ``model.core``.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from model.core import centered, core_score, fewshot, generate, render, score, sequences, shots_kept
from model.gpt import GPT, GPTConfig
from model.train import Dist, token_bytes, validate
from tasks.atomic import atomic_file
from tasks.evalsets import TASKS, benchmark_files, item_kind, read_items
from tasks.codeversion import code_version
from tasks.config import EvaluateConfig
from tasks.procs import die_with_parent, exit_now
from tasks.token_shards import read_token_manifest

_EVAL = EvaluateConfig()


@dataclass
class EvalArgs:
    """The [evaluate] section (tasks/config.py EvaluateConfig documents each setting) as the ranks read it, with the
    checkpoint and directories resolved. Its defaults are that section's (a test holds them equal)."""

    checkpoint: str
    benchmarks_dir: str
    out_dir: str
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)  # per task: shots, delimiter, max_items
    max_items: int | None = _EVAL.max_items
    shuffle_seed: int = _EVAL.shuffle_seed
    batch_rows: int = _EVAL.batch_rows
    val: bool = _EVAL.val
    val_batches: int | None = _EVAL.val_batches
    sample_prompts: list[str] = field(default_factory=lambda: list(_EVAL.sample_prompts))
    sample_tokens: int = _EVAL.sample_tokens
    temperatures: list[float] = field(default_factory=lambda: list(_EVAL.temperatures))
    device: str = _EVAL.device

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> "EvalArgs":
        unknown = sorted(set(value) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown evaluation arguments: {', '.join(unknown)}")
        return cls(**value)


def load_checkpoint(checkpoint: Path, device: torch.device) -> tuple[GPT, dict[str, Any]]:
    state = json.loads((checkpoint / "state.json").read_text())
    model = GPT(GPTConfig(**state["model"]))
    model.load_state_dict(torch.load(checkpoint / "model.pt", map_location="cpu"))
    return model.to(device).eval(), state


def task_plan(args: EvalArgs) -> list[dict[str, Any]]:
    """Each task in the benchmark directory with its kind, shots, delimiter, baseline and items (seeded order)."""
    plan = []
    for path in benchmark_files(Path(args.benchmarks_dir), sorted(args.tasks) or None):
        name = path.stem
        spec = TASKS.get(name)
        over = args.tasks.get(name, {})
        items = read_items(path)
        if not items:
            continue
        kind = item_kind(items[0])
        if spec is None and "baseline" not in over:
            raise ValueError(f"{path}: unknown task {name!r}: give its random baseline in evaluate.tasks.{name}")
        order = list(range(len(items)))
        random.Random(args.shuffle_seed).shuffle(order)
        cap = over.get("max_items", args.max_items)
        plan.append({"task": name, "kind": kind, "items": items, "order": order[:cap] if cap else order,
                     "shots": over.get("shots", spec.shots if spec else 0),
                     "delimiter": over.get("delimiter", spec.delimiter if spec else " "),
                     "baseline": over.get("baseline", spec.random_baseline if spec else 0.0)})
    return plan


def evaluate_task(model: GPT, task: dict[str, Any], encode, bos: int, d: Dist, batch_rows: int,
                  autocast) -> list[dict[str, Any]]:
    """This rank's share of one task (positions rank, rank + world, ...), scored in batches; rows for items.parquet."""
    ordered = [task["items"][i] for i in task["order"]]
    mine = list(range(d.rank, len(ordered), d.world))
    prepared, kept = [], []
    for pos in mine:
        item = ordered[pos]
        shots = fewshot(ordered, pos, task["shots"])
        prompts = render(task["kind"], item, task["delimiter"], shots)
        prepared.append(sequences(task["kind"], prompts, encode, bos, model.cfg.seq_len, gold=item.get("gold")))
        kept.append(shots_kept(task["kind"], task["delimiter"], shots, prepared[-1].cropped, encode))
    results = score(model, prepared, batch_rows=batch_rows, pad=bos, device=d.device, autocast=autocast)
    return [{"task": task["task"], "item": task["order"][pos], "position": pos, "kind": task["kind"],
             "prediction": r.prediction, "gold": ordered[pos].get("gold", 1), "correct": r.correct,
             "losses": r.losses, "cropped": p.cropped, "shots_kept": k}
            for pos, r, p, k in zip(mine, results, prepared, kept)]


def gather(rows: list[dict[str, Any]], d: Dist) -> list[dict[str, Any]]:
    if d.world == 1:
        return rows
    parts: list[Any] = [None] * d.world
    dist.all_gather_object(parts, rows)
    return [r for part in parts for r in part]


def _atomic(path: Path, write) -> None:
    with atomic_file(path) as tmp:
        write(tmp)


def run(args: EvalArgs) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from model.train import setup
    from tasks.tokenizer import load_encoder

    d = setup(args.device)
    t0 = time.time()
    checkpoint = Path(args.checkpoint)
    model, state = load_checkpoint(checkpoint, d.device)
    data_dir = Path(state["data_dir"])
    manifest = read_token_manifest(data_dir)
    tokenizer = data_dir / manifest["tokenizer"]
    _, encoder = load_encoder(tokenizer, manifest["encoder"])
    bos = int(manifest["separator_id"])
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if d.device.type == "cuda" else nullcontext()

    rows: list[dict[str, Any]] = []
    results: dict[str, dict[str, Any]] = {}
    for task in task_plan(args):
        t1 = time.time()
        task_rows = gather(evaluate_task(model, task, encoder.encode_batch, bos, d, args.batch_rows, autocast), d)
        task_rows.sort(key=lambda r: r["position"])
        rows.extend(task_rows)
        acc = sum(r["correct"] for r in task_rows) / max(1, len(task_rows))
        results[task["task"]] = {"accuracy": acc, "centered": centered(acc, task["baseline"]),
                                 "items": len(task_rows), "items_in_file": len(task["items"]),
                                 "kind": task["kind"], "shots": task["shots"], "delimiter": task["delimiter"],
                                 "baseline": task["baseline"], "seconds": time.time() - t1,
                                 # prompts longer than the context are cut from the left (as CORE does): how often,
                                 # and how many of the shots are left whole on average
                                 "cropped_items": sum(1 for r in task_rows if r["cropped"]),
                                 "shots_kept_mean": (sum(r["shots_kept"] for r in task_rows) / len(task_rows)
                                                     if task_rows else None)}
        if d.main:
            res = results[task["task"]]
            crop = (f"; {res['cropped_items']} cropped to {model.cfg.seq_len} tokens, {res['shots_kept_mean']:.1f} of "
                    f"{task['shots']} shots kept on average" if res["cropped_items"] else "")
            print(f"{task['task']}: accuracy {acc:.3f} (centered {res['centered']:+.3f}) on "
                  f"{len(task_rows)} items, {time.time() - t1:.1f}s{crop}", flush=True)
    core = core_score({k: v["centered"] for k, v in results.items()}) if results else None

    val = None
    if args.val and manifest["splits"].get("val", {}).get("docs"):
        tbytes = token_bytes(tokenizer, int(manifest["vocab_size"])).to(d.device)
        val = validate(model, data_dir, batch_size=8, seq_len=model.cfg.seq_len, d=d, tbytes=tbytes, separator=bos,
                       autocast=autocast, max_batches=args.val_batches)
    samples = []
    if d.main:
        tok = load_encoder(tokenizer, "tokenizers")[0]
        for prompt in args.sample_prompts:
            ids = [bos, *encoder.encode_batch([prompt])[0]]
            for temperature in args.temperatures:
                out = generate(model, ids, args.sample_tokens, temperature=temperature, seed=0,
                               max_len=model.cfg.seq_len, stop=bos)
                samples.append({"prompt": prompt, "temperature": temperature, "completion": tok.decode(out)})

    summary = {"results": results, "core7": core, "core7_tasks": sorted(results), "val": val,
               "checkpoint": str(checkpoint.resolve()), "step": state["step"], "tokens": state["tokens"],
               "tokenizer_sha256": manifest["tokenizer_sha256"], "code_version": code_version(["model.evaluate"]),
               "config": asdict(args), "world_size": d.world, "seconds": time.time() - t0, "seq_len": model.cfg.seq_len,
               "n-shot": {k: v["shots"] for k, v in results.items()}}
    if d.main:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        schema = pa.schema([("task", pa.string()), ("item", pa.int32()), ("position", pa.int32()),
                            ("kind", pa.string()), ("prediction", pa.int32()), ("gold", pa.int32()),
                            ("correct", pa.bool_()), ("losses", pa.list_(pa.float64())),
                            ("cropped", pa.int32()), ("shots_kept", pa.int32())])
        _atomic(out / "items.parquet", lambda p: pq.write_table(pa.Table.from_pylist(rows, schema), p))
        _atomic(out / "samples.json", lambda p: p.write_text(json.dumps(samples, indent=1)))
        _atomic(out / "results.json", lambda p: p.write_text(json.dumps(summary, indent=1)))  # last: marks done
        if core is not None:
            print(f"CORE-7 {core:+.4f}" + (f"; val bpb {val['val_bpb']:.4f}" if val else ""), flush=True)
    if d.world > 1:
        dist.destroy_process_group()
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Evaluate a checkpoint on the CORE-7 benchmarks (torchrun splits items).")
    ap.add_argument("--config", required=True, help="a JSON file of EvalArgs")
    ns = ap.parse_args(argv)
    try:
        run(EvalArgs.from_json(json.loads(Path(ns.config).read_text())))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    die_with_parent()  # never outlive the launcher (see model/train.py)
    main()
    exit_now()  # written and closed: skip a teardown that can abort (tasks/procs.py)
