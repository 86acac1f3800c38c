"""``crucible train-node``: the command the other machines of a multi-node training run (``[train] nnodes > 1``).

The machine running the pipeline is node 0: its train stage writes ``<work_dir>/train/nodes.json`` (the run's
directory, its args file and the c10d rendezvous) and starts its own ranks. Each other machine, seeing the same work
directory on a shared filesystem, joins with ``crucible train-node CONFIG --node-rank N``; it never opens the
warehouse, which only the orchestrating process writes.
"""
from __future__ import annotations

import click

from flows.cli_base import console, handle_errors, main
from tasks.config import load_config


@main.command("train-node")
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--node-rank", type=click.IntRange(min=1), required=True,
              help="Which of the other machines this is: 1 .. nnodes-1 (names its log; the rendezvous gives out the "
                   "ranks).")
@click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=600.0, show_default=True,
              help="Seconds to wait for the pipeline's train stage to start a training to join.")
@handle_errors
def train_node(config: str, node_rank: int, wait_s: float) -> None:
    """Join the multi-node training that the pipeline on the first machine runs (its [train] nnodes > 1).

    Start it before or after the pipeline reaches its train stage; it waits for it (--wait), runs this machine's
    nproc_per_node ranks at the rendezvous (rdzv_endpoint), and exits when the training ends. Its log is
    <work_dir>/train/<key>/train-node-N.log.

    \b
    Example:
        crucible run cluster.toml                        # node 0: the pipeline
        crucible train-node cluster.toml --node-rank 1   # node 1: same config
    """
    from tasks.train import TrainFailed, join_training

    cfg = load_config(config)
    if cfg.train.nnodes < 2:
        raise click.UsageError(f"{config}: [train] nnodes is {cfg.train.nnodes}; train-node is for nnodes >= 2")
    try:
        out_dir = join_training(cfg.work_dir, node_rank, wait_s, lambda line: console.print(line, highlight=False,
                                                                                            markup=False))
    except TrainFailed as err:
        raise click.ClickException(str(err)) from None
    console.print(f"train node {node_rank}: the training in {out_dir} ended", highlight=False)
