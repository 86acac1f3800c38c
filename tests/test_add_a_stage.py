"""docs/ARCHITECTURE.md's "how to add a stage", done to a copy of the project exactly as written there, then run
through the real CLI: the new stage runs in a pipeline, is recorded with its lineage and drops, and is a cache hit
when rerun alone."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from warcio.warcwriter import WARCWriter

from tests.helpers import page, response
from warehouse.lineage import Warehouse

ROOT = Path(__file__).resolve().parents[1]
STEP = re.compile(r'<!-- step: (\S+)(?: (before|after|replace) "(.*?)")? -->\n```python\n(.*?)```', re.S)


def steps() -> list[tuple[str, str | None, str | None, str]]:
    return [(m[1], m[2], m[3], m[4]) for m in STEP.finditer((ROOT / "docs" / "ARCHITECTURE.md").read_text())]


def apply(repo: Path, path: str, how: str | None, anchor: str | None, code: str) -> None:
    target = repo / path
    if how is None:
        target.write_text(code)
        return
    text = target.read_text()
    assert text.count(anchor) == 1, f"{path}: the anchor {anchor!r} of the documented step is not found once"
    new = {"before": code + "\n\n" + anchor, "after": anchor + "\n" + code.rstrip("\n"),
           "replace": code.strip()}[how]
    target.write_text(text.replace(anchor, new))


def test_the_documented_steps_are_all_there():
    found = steps()
    assert [s[0] for s in found] == ["tasks/pagesize.py", "tasks/config.py", "tasks/config.py", "tasks/registry.py",
                                     "tasks/registry.py"]


@pytest.mark.slow
def test_a_stage_added_by_the_documented_steps_runs_in_a_pipeline(tmp_path, prefect_harness):
    repo = tmp_path / "repo"
    for package in ("flows", "tasks", "model", "warehouse"):
        shutil.copytree(ROOT / package, repo / package, ignore=shutil.ignore_patterns("__pycache__"))
    for step in steps():
        apply(repo, *step)

    warc = tmp_path / "pages.warc.gz"
    with open(warc, "wb") as fh:
        w = WARCWriter(fh, gzip=True)
        for i in range(12):  # pages of 1 to 12 paragraphs: the short ones are under the threshold
            response(w, f"http://site.example.org/page/{i}", page(f"Page {i}", i + 1).encode())
    sizes = [len(page(f"Page {i}", i + 1).encode()) for i in range(12)]
    threshold = sorted(sizes)[5]
    work = tmp_path / "work"
    toml = tmp_path / "toy.toml"
    toml.write_text(f'[paths]\nwork_dir = "{work}"\n[runner]\nworkers = 1\n[ingest]\ninputs = ["{warc}"]\n'
                    f'[pagesize]\nmin_bytes = {threshold}\n')
    env = {**os.environ, "PREFECT_API_URL": prefect_harness, "PYTHONPATH": str(repo)}

    def crucible(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=repo, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout

    crucible("run", str(toml), "--to", "pagesize")
    wh = Warehouse(work / "warehouse.duckdb")
    run = wh.runs(1)[0]
    stages = {s["stage"]: s for s in wh.stage_runs(run["run_id"])}
    assert list(stages) == ["ingest", "pagesize"] and all(s["status"] == "completed" for s in stages.values())
    made = stages["pagesize"]
    assert made["docs_in"] == 12 and made["docs_out"] == sum(s >= threshold for s in sizes) == 7
    dataset = wh.dataset(made["output_dataset_id"])
    assert dataset["stage"] == "pagesize" and dataset["records"] == 7
    assert [r["stage"] for r in wh.lineage(dataset["dataset_id"])][:3] == ["pagesize", "ingest", "source"]
    funnel = {(f["stage"], f["reason"]): f["docs"] for f in wh.funnel(run["run_id"])}
    assert funnel[("pagesize", "page_too_small")] == 5

    crucible("stage", "pagesize", str(toml))  # rerun alone on ingest's latest output: unchanged, so cached
    rerun = wh.stage_runs(wh.runs(1)[0]["run_id"])
    assert [(s["stage"], s["cache_hit"], s["output_dataset_id"]) for s in rerun] == \
        [("pagesize", True, dataset["dataset_id"])]
    shown = crucible("show", "latest", "--config", str(toml))
    assert "pagesize" in shown
    rows = json.loads(crucible("sql", "--config", str(toml), "--json",
                               "SELECT count(*) AS n FROM docs_pagesize WHERE html_bytes >= "
                               f"{threshold}").splitlines()[0])
    assert rows["n"] == 7
