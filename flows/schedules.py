"""Prefect deployments: the pipeline on a schedule, and one deployment per stage to rerun it from the Prefect UI.

    crucible serve configs/demo.toml --cron "0 3 * * *"     # needs a Prefect server (`prefect server start`)

``crucible serve`` registers them with ``prefect.serve`` and executes their runs in this process's children until
it is stopped (Prefect pauses the schedules then). The flows take only JSON parameters (a config path, a stage
name, an input reference), so that a run can be started, or its parameters edited, from the UI.

A scheduled run is incremental: it recrawls with conditional GETs and archives only new or changed pages, ingest
reads the crawl's WARC files again but reuses, file by file, what an earlier run with the same ingest settings
read from them, and dedup drops documents that duplicate what earlier runs accepted (``dedup.incremental``).
"""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.types.entrypoint import EntrypointType

from flows.pipeline import pipeline_flow, stage_input
from tasks.config import load_config
from tasks.registry import ORDER, stage_range

PIPELINE_FLOW = "crucible-scheduled-pipeline"
STAGE_FLOW = "crucible-stage-rerun"


@flow(name=PIPELINE_FLOW, validate_parameters=True)
def scheduled_pipeline(config: str, to_stage: str | None = None, trigger: str = "schedule") -> str:
    """The pipeline from its first stage to ``to_stage`` (default: the last), recorded with ``trigger``."""
    cfg = load_config(config)
    return pipeline_flow(cfg, stage_range(None, to_stage), trigger, None)


@flow(name=STAGE_FLOW, flow_run_name="{stage}", validate_parameters=True)
def rerun_stage(config: str, stage: str, input: str = "latest") -> str:
    """One stage alone on ``input`` (a run id, a dataset id or 'latest'), recorded as a rerun."""
    cfg = load_config(config)
    return pipeline_flow(cfg, [stage], "rerun", stage_input(cfg, stage, input), recrawl=True)  # looks again


def deployment_name(config: str | Path) -> str:
    return Path(config).stem


def deployments(config: str | Path, *, cron: str | None = None, interval: float | None = None,
                to_stage: str | None = None) -> list[Any]:
    """The pipeline deployment (on the schedule) and one unscheduled deployment per stage, for one config."""
    path = str(Path(config).resolve())
    name = deployment_name(config)
    common = {"tags": ["crucible", name], "entrypoint_type": EntrypointType.MODULE_PATH}
    schedule: dict[str, Any] = {}
    if cron:
        schedule["cron"] = cron
    if interval:
        schedule["interval"] = timedelta(seconds=interval)
    made = [scheduled_pipeline.to_deployment(
        name=name, parameters={"config": path, "to_stage": to_stage, "trigger": "schedule"},
        description=f"The Crucible pipeline on {path}, through {to_stage or ORDER[-1]}.", **schedule, **common)]
    for stage in stage_range(None, to_stage):
        made.append(rerun_stage.to_deployment(
            name=f"{name}-{stage}", parameters={"config": path, "stage": stage, "input": "latest"},
            description=f"Rerun the {stage} stage of {path} alone, on its upstream's latest dataset "
                        "(edit 'input' to pick a run or a dataset).", **common))
    return made


def serve(config: str | Path, *, cron: str | None = None, interval: float | None = None,
          to_stage: str | None = None, limit: int = 1) -> None:
    """Register the deployments and run what they schedule until interrupted."""
    from prefect import serve as prefect_serve

    prefect_serve(*deployments(config, cron=cron, interval=interval, to_stage=to_stage), limit=limit)
