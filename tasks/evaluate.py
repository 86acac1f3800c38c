"""The evaluate stage: run model/evaluate.py under torchrun on a checkpoint and read back what it wrote.

Like train (``tasks.train``), it has no units: the flow launches ``torchrun -m model.evaluate`` and then loads
``results.json`` into metrics and ``items.parquet`` into the warehouse's ``eval_items`` table, where accuracy is
split into clean and contaminated items by a join with the decontaminate stage's hits.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from tasks.config import EvaluateConfig
from tasks.train import TorchrunStage


class EvaluateStage(TorchrunStage):
    name: ClassVar[str] = "evaluate"
    entry: ClassVar[str] = "model.evaluate"

    config: EvaluateConfig

    def args(self, checkpoint: Path, out_dir: Path) -> dict[str, Any]:
        cfg = self.config.model_dump(mode="json")
        cfg.pop("nproc_per_node")
        tasks = {name: {k: v for k, v in over.items() if v is not None} for name, over in cfg.pop("tasks").items()}
        return {**cfg, "checkpoint": str(Path(checkpoint).resolve()), "out_dir": str(Path(out_dir).resolve()),
                "benchmarks_dir": str(self.config.benchmarks_dir), "tasks": tasks}

    @staticmethod
    def finished(out_dir: Path) -> dict[str, Any] | None:
        """results.json of an evaluation that ended (it is written last)."""
        try:
            return json.loads((Path(out_dir) / "results.json").read_text())
        except (FileNotFoundError, ValueError):
            return None

    @staticmethod
    def metrics(results: dict[str, Any]) -> list[tuple[int | None, str, float]]:
        """(None, name, value) rows: evaluate.core7, evaluate.<figure>.<task>, evaluate.val_*."""
        rows: list[tuple[int | None, str, float]] = []
        if results.get("core7") is not None:
            rows.append((None, "evaluate.core7", float(results["core7"])))
        for task, r in results["results"].items():
            rows += [(None, f"evaluate.{k}.{task}", float(r[k])) for k in ("accuracy", "centered", "items")]
        for k, v in (results.get("val") or {}).items():
            rows.append((None, f"evaluate.{k}", float(v)))
        return rows
