"""The train stage: what the flow needs to launch model/train.py under torchrun and to read back what it wrote.

The stage has no units: one ``torchrun`` process group trains on a tokenize dataset. ``command`` builds the
launch line, ``args`` the ``TrainArgs`` JSON; the run's directory is keyed like every stage (config, code, input),
so a rerun with the same key resumes from its newest checkpoint, and a finished one is a cache hit. The training
ranks never touch the warehouse: rank 0 writes ``metrics.jsonl``, ``estimates.json`` and checkpoints, and the flow
ingests them (``read_metrics``, ``checkpoints``).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, ClassVar

from tasks.codeversion import code_version
from tasks.config import TrainConfig


def _model_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "model"


class TorchrunStage:
    """A stage that runs one model/ entry point under torchrun (train, evaluate) and reads back its files."""

    name: ClassVar[str]
    upstream: ClassVar[str | None] = None  # set by tasks/registry.py from the pipeline order
    enabled: ClassVar[bool] = True
    entry: ClassVar[str]              # the model/ module torchrun runs

    def __init__(self, config: Any) -> None:
        self.config = config

    @classmethod
    def code_roots(cls) -> list[str]:
        return [cls.__module__, cls.entry]  # the stage and the model/ entry point torchrun runs

    @classmethod
    def code_version(cls) -> str:
        """A hash of every project module the stage and its torchrun entry point run (tasks/codeversion.py)."""
        return code_version(cls.code_roots())

    def nproc(self) -> int:
        if self.config.nproc_per_node != "auto":
            return int(self.config.nproc_per_node)
        if self.config.device == "cpu":
            return 1
        import torch

        return max(1, torch.cuda.device_count())

    def command(self, args_file: Path) -> list[str]:
        """torchrun (standalone rendezvous on this machine) with the configured number of processes."""
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={self.nproc()}",
                "-m", self.entry, "--config", str(args_file)]

    @staticmethod
    def environment() -> dict[str, str]:
        root = str(_model_dir().parent)
        path = os.environ.get("PYTHONPATH", "")
        return {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{path}" if path else root, "PYTHONUNBUFFERED": "1"}


class TrainStage(TorchrunStage):
    name: ClassVar[str] = "train"
    entry: ClassVar[str] = "model.train"

    config: TrainConfig

    def args(self, data_dir: Path, out_dir: Path) -> dict[str, Any]:
        """The TrainArgs for model/train.py."""
        cfg = self.config.model_dump(mode="json")
        cfg.pop("nproc_per_node")
        model = {k: v for k, v in cfg.pop("model").items() if v is not None}
        return {"data_dir": str(Path(data_dir).resolve()), "out_dir": str(Path(out_dir).resolve()), "model": model,
                **cfg}

    # -- reading back what the ranks wrote ------------------------------------------------------------------------

    @staticmethod
    def finished(out_dir: Path) -> dict[str, Any] | None:
        """final.json of a run that ended, when its final checkpoint is still there."""
        try:
            final = json.loads((Path(out_dir) / "final.json").read_text())
        except (FileNotFoundError, ValueError):
            return None
        return final if (Path(out_dir) / "checkpoints" / final["checkpoint"] / "state.json").is_file() else None

    @staticmethod
    def read_metrics(out_dir: Path) -> list[tuple[int | None, str, float]]:
        """(step, name, value) for the warehouse: every step's figures, every validation, and the estimates."""
        rows: list[tuple[int | None, str, float]] = []
        path = Path(out_dir) / "metrics.jsonl"
        for line in path.read_text().splitlines() if path.exists() else []:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut short by a kill; the resumed run rewrote the ones that count
            step = row.pop("step")
            rows.extend((step, f"train.{k}", float(v)) for k, v in row.items() if isinstance(v, (int, float)))
        est = Path(out_dir) / "estimates.json"
        if est.exists():
            rows.extend((None, f"train.{k}", float(v)) for k, v in json.loads(est.read_text()).items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool))
        return rows

    @staticmethod
    def checkpoints(out_dir: Path) -> list[dict[str, Any]]:
        """Every checkpoint on disk, oldest first, with its step, tokens, validation and files."""
        found = []
        for ckpt in sorted((Path(out_dir) / "checkpoints").glob("step-*[0-9]")):
            state = json.loads((ckpt / "state.json").read_text())
            files = [(str(f), None, f.stat().st_size, None) for f in sorted(ckpt.iterdir())]
            found.append({"name": ckpt.name, "path": ckpt, "step": state["step"], "tokens": state["tokens"],
                          "val": state.get("val"), "reason": state.get("reason"), "files": files})
        return found
