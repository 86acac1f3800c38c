"""Launching a model/ entry point under torchrun, the base of the train and evaluate stages.

``TorchrunStage`` is a stage with no units: one ``torchrun`` process group runs one model/ module on the stage's input
and writes its files in ``<work_dir>/<out_root>/<key>``, which the stage reads back. ``run_torchrun`` starts it in a
session of its own (Ctrl-C reaches only crucible, which stops it), echoes every line to the run's log, and raises
``TrainFailed`` with the entry point's own error line, or the end of its log, when it exits nonzero. A module of its
own so that evaluate's code version does not cover the train stage's code (tasks/codeversion.py).
"""
from __future__ import annotations

import collections
import os
import subprocess
import sys
from abc import abstractmethod
from pathlib import Path
from typing import Any, Callable, ClassVar

from tasks.atomic import atomic_write_json
from tasks.procs import spawn, stop
from tasks.stage import Input, Stage, StageContext


def _model_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "model"


class TrainFailed(RuntimeError):
    """torchrun (training or evaluation) exited nonzero; the message holds the error or the end of its log."""


def run_torchrun(command: list[str], env: dict[str, str], log_file: Path, label: str,
                 say: Callable[[str], None]) -> None:
    """Run torchrun, echoing every line to ``say`` and to ``log_file``; fail on a nonzero exit."""
    tail: collections.deque[str] = collections.deque(maxlen=30)
    errors: list[str] = []  # model/'s own "error: ..." lines (bad data, bad arguments)
    with open(log_file, "a") as log:
        # Its own session (Ctrl-C reaches only crucible, which stops it below) and it dies with crucible.
        proc = spawn(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        try:
            for line in proc.stdout:
                log.write(line)
                tail.append(line.rstrip())
                if line.startswith("error:"):
                    errors.append(line.rstrip())
                say(f"{label}: {line.rstrip()}")
            code = proc.wait()
        finally:
            if proc.poll() is None:  # the flow was cancelled or interrupted: stop the ranks too
                stop(proc, grace_s=30)
    if code != 0:
        if errors:
            raise TrainFailed(f"{label} failed: {errors[0][len('error: '):]} (log: {log_file})")
        raise TrainFailed(f"torchrun exited with {code}; the log ends:\n" + "\n".join(tail))


class TorchrunStage(Stage):
    """A stage that runs one model/ entry point under torchrun (train, evaluate) and reads back its files. It has
    no units: one process group does the work, in ``<work_dir>/<out_root>/<key>``, where a rerun with the same key
    finds what an interrupted one left (train resumes from its newest checkpoint)."""

    entry: ClassVar[str]              # the model/ module torchrun runs
    out_root: ClassVar[str]           # its runs' directory under the work dir

    @classmethod
    def code_roots(cls) -> list[str]:
        return [cls.__module__, cls.entry]  # the stage and the model/ entry point torchrun runs

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

    @staticmethod
    @abstractmethod
    def finished(out_dir: Path) -> dict[str, Any] | None:
        """What the entry point wrote last, once it has ended; None before."""

    @abstractmethod
    def args(self, data: Path, out_dir: Path) -> dict[str, Any]:
        """The arguments file (args.json) the entry point reads, for input ``data`` and output ``out_dir``."""

    # -- the lifecycle -------------------------------------------------------------------------------------------

    def output_dir(self, ctx: StageContext, key: str) -> Path:
        return ctx.work_dir / self.out_root / key[:16]

    def cached(self, ctx: StageContext, key: str, out_dir: Path) -> dict[str, Any] | None:
        hit = ctx.warehouse.dataset_by_key(key) if ctx.warehouse is not None else None
        return hit if hit is not None and self.finished(out_dir) is not None else None

    def launch(self, ctx: StageContext, inp: Input, out_dir: Path) -> None:
        """Write args.json for the entry point and run it under torchrun, its log in ``<out_dir>/<name>.log``."""
        out_dir.mkdir(parents=True, exist_ok=True)
        args_file = out_dir / "args.json"
        atomic_write_json(args_file, self.args(inp.dir, out_dir))
        nproc = self.nproc()
        ctx.call(f"{self.name} x{nproc}", run_torchrun, self.command(args_file), self.environment(),
                 out_dir / f"{self.name}.log", self.name, ctx.say)
