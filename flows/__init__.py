"""Prefect orchestration of the stages in tasks/. Import ``configure_prefect`` before anything imports prefect."""
from __future__ import annotations

import os
from pathlib import Path


def configure_prefect(work_dir: str | Path | None = None) -> None:
    """Keep Prefect's state inside the work directory and switch off its telemetry; explicit settings win."""
    work = Path(work_dir or os.environ.get("CRUCIBLE_WORK_DIR", "work")).resolve()
    os.environ.setdefault("PREFECT_HOME", str(work / "prefect"))
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)  # Prefect will not make its parents
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    # Run logs (INFO) still reach the Prefect UI; the terminal shows Prefect's warnings and Crucible's own lines.
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
