"""The train stage: what the flow needs to launch model/train.py under torchrun and to read back what it wrote.

The stage has no units: one ``torchrun`` process group trains on a tokenize dataset. ``command`` builds the
launch line, ``args`` the ``TrainArgs`` JSON; the run's directory is keyed like every stage (config, code, input),
so a rerun with the same key resumes from its newest checkpoint, and a finished one is a cache hit. The training
ranks never touch the warehouse: rank 0 writes ``metrics.jsonl``, ``estimates.json`` and checkpoints, and the flow
ingests them (``read_metrics``, ``checkpoints``).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, ClassVar

from tasks.atomic import atomic_write_json, file_sha256
from tasks.config import TrainConfig, stable_hash
from tasks.provenance import write_provenance
from tasks.stage import Dataset, Input, StageContext, StageResult
from tasks.torchrun import TorchrunStage, TrainFailed, run_torchrun

NODES_FILE = "nodes.json"  # in <work_dir>/train/ while a multi-node training runs: what the other nodes join


def rendezvous(nnodes: int, nproc: int, endpoint: str, rdzv_id: str) -> list[str]:
    """torchrun's options for ``nnodes`` machines meeting at a c10d rendezvous (the store is hosted by the process
    whose machine ``endpoint`` names; ranks are given out as the nodes join, so no node rank is passed)."""
    return [f"--nnodes={nnodes}", f"--nproc-per-node={nproc}", "--rdzv-backend=c10d",
            f"--rdzv-endpoint={endpoint}", f"--rdzv-id={rdzv_id}"]


class TrainStage(TorchrunStage):
    name: ClassVar[str] = "train"
    role = "training"
    entry: ClassVar[str] = "model.train"
    out_root: ClassVar[str] = "train"

    config: TrainConfig

    def command(self, args_file: Path) -> list[str]:
        """One machine: torchrun --standalone. Several (``nnodes``): a c10d rendezvous the other nodes join."""
        if self.config.nnodes == 1:
            return super().command(args_file)
        return [sys.executable, "-m", "torch.distributed.run",
                *rendezvous(self.config.nnodes, self.nproc(), self.config.rdzv_endpoint, args_file.parent.name),
                "-m", self.entry, "--config", str(args_file)]

    def launch(self, ctx: StageContext, inp: Input, out_dir: Path) -> None:
        """As every torchrun stage; with nnodes > 1, ``<work_dir>/train/nodes.json`` says for the length of the run
        what `crucible train-node` on the other machines joins."""
        if self.config.nnodes == 1:
            return super().launch(ctx, inp, out_dir)
        nodes = ctx.work_dir / self.out_root / NODES_FILE
        atomic_write_json(nodes, {"out_dir": str(Path(out_dir).resolve()), "nnodes": self.config.nnodes,
                                  "nproc_per_node": self.nproc(), "rdzv_endpoint": self.config.rdzv_endpoint,
                                  "rdzv_id": Path(out_dir).name, "args": str(Path(out_dir).resolve() / "args.json")})
        ctx.say(f"train: {self.config.nnodes} nodes meet at {self.config.rdzv_endpoint}; on each other machine run "
                f"`crucible train-node CONFIG --node-rank N` (N = 1 .. {self.config.nnodes - 1})")
        try:
            super().launch(ctx, inp, out_dir)
        finally:
            nodes.unlink(missing_ok=True)

    def args(self, data_dir: Path, out_dir: Path) -> dict[str, Any]:
        """The TrainArgs for model/train.py."""
        cfg = self.config.model_dump(mode="json")
        for launch_only in ("nproc_per_node", "nnodes", "rdzv_endpoint"):
            cfg.pop(launch_only)
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

    def execute(self, ctx: StageContext, inp: Input, out_dir: Path, key: str) -> StageResult:
        nproc = self.nproc()
        if self.finished(out_dir) is None:
            ctx.say(f"train: {nproc} process(es) on {inp.dataset_ids[0]}, writing {out_dir}")
            self.launch(ctx, inp, out_dir)
        final = self.finished(out_dir) or {}
        summary = {"steps": final.get("step"), "tokens_seen": final.get("tokens"), "seconds": final.get("seconds"),
                   **{f"final_{k}": v for k, v in (final.get("val") or {}).items()}}
        metrics = self.read_metrics(out_dir)
        metrics += [(None, f"train.{k}", float(v)) for k, v in summary.items() if isinstance(v, (int, float))]
        checkpoints = self.checkpoint_datasets(out_dir, key, inp.dataset_ids)
        if not checkpoints:
            raise TrainFailed(f"training left no checkpoint in {out_dir / 'checkpoints'}")
        final_id = f"checkpoint-{key[:12]}-{final['step']:07d}" if final else checkpoints[-1].dataset_id
        output = next(c for c in checkpoints if c.dataset_id == final_id)
        val = final.get("val") or {}
        return StageResult(
            output=output, datasets=[c for c in checkpoints if c is not output], units=nproc,
            shards_out=len(checkpoints), bytes_out=sum(f[2] or 0 for f in output.files), metrics=metrics,
            message=f"train: {final.get('step')} steps, {final.get('tokens', 0):,} tokens"
                    + (f", val loss {val['val_loss']:.4f}, bpb {val['val_bpb']:.4f}" if val else "")
                    + f"; checkpoint {output.dataset_id}")

    def checkpoint_datasets(self, out_dir: Path, key: str, parents: list[str]) -> list[Dataset]:
        """Each checkpoint on disk is a dataset whose parent is the token dataset; the final one carries the key.
        Its files include the list of documents that trained it (tasks/provenance.py)."""
        final = self.finished(out_dir)
        made = []
        checkpoints = self.checkpoints(out_dir)
        provenance = write_provenance(out_dir, checkpoints) if checkpoints else {}
        for ckpt in checkpoints:
            prov = provenance[ckpt["name"]]
            is_final = final is not None and ckpt["name"] == final["checkpoint"]
            fp = stable_hash({"step": ckpt["step"], "tokens": ckpt["tokens"],
                              "model": file_sha256(ckpt["path"] / "model.pt")})
            made.append(Dataset(f"checkpoint-{key[:12]}-{ckpt['step']:07d}", self.name, key if is_final else None,
                                str(ckpt["path"]), "checkpoint", fp,
                                [*ckpt["files"], (str(prov), None, prov.stat().st_size, None)], parents,
                                tokens=ckpt["tokens"]))
        return made


def join_training(work_dir: Path, node_rank: int, wait_s: float, say: Callable[[str], None]) -> Path:
    """Another machine's part of a multi-node training (`crucible train-node`): wait up to ``wait_s`` for the
    pipeline's train stage to announce one in ``<work_dir>/train/nodes.json``, then run this node's ranks under
    torchrun at its rendezvous. Returns the training's directory; raises TrainFailed if there is none to join or the
    ranks fail. Needs the work dir on a filesystem shared with the first machine."""
    import time

    nodes = Path(work_dir) / TrainStage.out_root / NODES_FILE
    deadline = time.monotonic() + wait_s
    said = False
    while True:
        try:
            launch = json.loads(nodes.read_text())
        except (FileNotFoundError, ValueError):
            launch = None
        if launch is not None and TrainStage.finished(Path(launch["out_dir"])) is None:
            break
        if time.monotonic() >= deadline:
            raise TrainFailed(f"no multi-node training to join: {nodes} did not appear within {wait_s:.0f}s. Start "
                              f"the pipeline (with [train] nnodes > 1) on the first machine, and check that this "
                              f"machine sees its work directory at the same path.")
        if not said:
            say(f"train node {node_rank}: waiting for {nodes}")
            said = True
        time.sleep(0.5)
    if not 1 <= node_rank < launch["nnodes"]:
        raise TrainFailed(f"--node-rank {node_rank}: this training has {launch['nnodes']} nodes, so the others are "
                          f"1 .. {launch['nnodes'] - 1} (0 is the machine running the pipeline)")
    out_dir = Path(launch["out_dir"])
    say(f"train node {node_rank} of {launch['nnodes']}: joining {out_dir.name} at {launch['rdzv_endpoint']}")
    command = [sys.executable, "-m", "torch.distributed.run",
               *rendezvous(launch["nnodes"], launch["nproc_per_node"], launch["rdzv_endpoint"], launch["rdzv_id"]),
               "-m", TrainStage.entry, "--config", launch["args"]]
    run_torchrun(command, TrainStage.environment(), out_dir / f"train-node-{node_rank}.log",
                 f"train node {node_rank}", say)
    return out_dir
