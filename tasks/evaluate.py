"""The evaluate stage: run model/evaluate.py under torchrun on a checkpoint and read back what it wrote.

Like train (``tasks.train``), it has no units: it launches ``torchrun -m model.evaluate``, then hands
``results.json`` over as metrics and ``items.parquet`` as the warehouse's ``eval_items``. Recorded: CORE-7, per-task
accuracy and centered accuracy, val bits per byte and perplexity; the per-item records (and a dataset whose parent
is the checkpoint); and accuracy on clean and on contaminated items, where "contaminated" means the decontaminate
stage upstream of this checkpoint found the item in the crawl. That split needs both stages to have read the same
benchmark directory; otherwise it is reported as not checked.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import pyarrow.parquet as pq

from tasks.atomic import file_sha256
from tasks.config import EvaluateConfig, stable_hash
from tasks.evalsets import benchmark_files, ensure_smoke, fingerprint, smoke_dir
from tasks.stage import Dataset, Input, Records, StageContext, StageFailed, StageResult
from tasks.torchrun import TorchrunStage
from warehouse.lineage import WarehouseError
from warehouse.provenance import provenance_file


class EvaluateStage(TorchrunStage):
    name: ClassVar[str] = "evaluate"
    role = "evaluation"
    entry: ClassVar[str] = "model.evaluate"
    out_root: ClassVar[str] = "eval"

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
            rows += [(None, f"evaluate.{k}.{task}", float(r[k])) for k in ("accuracy", "centered", "items", "shots",
                                                                           "cropped_items", "shots_kept_mean")
                     if r.get(k) is not None]
        for k, v in (results.get("val") or {}).items():
            rows.append((None, f"evaluate.{k}", float(v)))
        return rows

    # -- the lifecycle -------------------------------------------------------------------------------------------

    def prepare(self, ctx: StageContext) -> None:
        if Path(self.config.benchmarks_dir) == smoke_dir(ctx.work_dir):
            ensure_smoke(self.config.benchmarks_dir)  # the default: our own small set, written on first use

    def stage_key(self, inp: Input, ctx: StageContext) -> str:
        """Changing a benchmark file changes the scores, so its content is part of the key."""
        return stable_hash({"stage": self.name, "config": self.params(), "code": self.code_version(),
                            "input": inp.fingerprint,
                            "benchmarks": fingerprint(benchmark_files(self.config.benchmarks_dir))})

    def execute(self, ctx: StageContext, inp: Input, out_dir: Path, key: str) -> StageResult:
        (out_dir / "results.json").unlink(missing_ok=True)  # an evaluation is redone whole; it has no partial state
        checkpoint = inp.dataset_ids[0]
        ctx.say(f"evaluate: {checkpoint} on {self.config.benchmarks_dir}, {self.nproc()} process(es)")
        self.launch(ctx, inp, out_dir)
        results = self.finished(out_dir)
        if results is None:
            raise StageFailed(f"evaluate ended without writing {out_dir / 'results.json'}")
        files = [out_dir / n for n in ("items.parquet", "results.json", "samples.json")]
        items = ctx.load(Records("eval_items", files[:1]))  # loaded now: the contamination split joins them
        metrics = self.metrics(results) + self.contamination_split(ctx, checkpoint)
        output = Dataset(f"eval-{key[:12]}", self.name, key, str(out_dir), "eval",
                         stable_hash([file_sha256(files[0])]),
                         [(str(f), pq.read_metadata(f).num_rows if f.suffix == ".parquet" else None,
                           f.stat().st_size, None) for f in files], inp.dataset_ids)
        core = results.get("core7")
        return StageResult(
            output=output, units=self.nproc(), shards_out=len(files), docs_in=items, docs_out=items,
            bytes_out=sum(f.stat().st_size for f in files), metrics=metrics,
            message=f"evaluate: {items} items" + (f", CORE-7 {core:+.4f}" if core is not None else "")
                    + (f", val bpb {results['val']['val_bpb']:.4f}" if results.get("val") else ""))

    def contamination_split(self, ctx: StageContext, checkpoint_id: str) -> list[tuple[int | None, str, float]]:
        """accuracy_clean / accuracy_contaminated / contaminated_items per task, or nothing when not comparable:
        no decontaminate run upstream of the checkpoint, or one that read another benchmark directory.

        An item counts as contaminated when the decontaminate run upstream found it in a document that trained
        this checkpoint (its provenance: times seen > 0). A document that run dropped never trained it, so with
        ``policy = "drop"`` the split shows what slipped through; with ``"cut"`` an item found in a kept (cut)
        document counts. A checkpoint without provenance (trained before Crucible kept it) falls back to every
        item the run found."""
        wh = ctx.warehouse
        if wh is None:
            return []
        origin = next((wh.origin_stage_run(row["dataset_id"]) for row in wh.lineage(checkpoint_id)
                       if row.get("stage") == "decontaminate"), None)
        if origin is None:
            return []
        params = json.loads(origin["params_json"])
        if Path(params.get("benchmarks_dir") or "").resolve() != Path(self.config.benchmarks_dir).resolve():
            return []
        out: list[tuple[int | None, str, float]] = []
        try:
            trained = provenance_file(wh, checkpoint_id)
        except WarehouseError:
            trained = None
        for r in wh.accuracy_by_contamination(ctx.stage_run_id, origin["stage_run_id"], trained):
            task = r["task"]
            out.append((None, f"evaluate.contaminated_items.{task}", float(r["contaminated_n"])))
            if r["clean_n"]:
                out.append((None, f"evaluate.accuracy_clean.{task}", float(r["clean_acc"])))
            if r["contaminated_n"]:
                out.append((None, f"evaluate.accuracy_contaminated.{task}", float(r["contaminated_acc"])))
        return out
