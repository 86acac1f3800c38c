"""Fault injection: SIGKILL (or Ctrl-C) a real `crucible run` at a random point of a chosen stage, run it again,
and compare every dataset with an uninterrupted run's (tests/flows/test_faults.py and benchmarks/faults.py use it);
and SIGKILL a crawl between WARC rotations, crawl again, and count pages lost or archived twice.

The pipeline runs as a child process group, exactly as a user starts it: against a Prefect API (``api_url``) for
SIGKILL, on its own local server for SIGINT (the case Ctrl-C on a terminal is); the signal goes to the whole group a
random fraction of the stage's reference duration after the stage's output directory appears.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from warehouse.lineage import Warehouse

REPO = Path(__file__).resolve().parents[1]
KILLABLE = ["ingest", "extract", "language", "quality", "dedup", "select", "decontaminate", "tokenize"]
REFERENCE_MODULES = ["json", "textwrap", "string", "collections", "itertools", "functools", "re", "random",
                     "statistics", "fractions", "decimal", "heapq", "bisect", "csv", "difflib", "pathlib"]


def write_reference(path: Path) -> Path:
    """select's reference text: the docstrings of some standard-library modules and their members, a paragraph
    each (real English every machine has)."""
    import importlib
    import inspect

    paragraphs = []
    for name in REFERENCE_MODULES:
        module = importlib.import_module(name)
        for obj in [module, *(v for _, v in sorted(vars(module).items()) if callable(v))]:
            doc = inspect.getdoc(obj) or ""
            paragraphs += [p for p in doc.split("\n\n") if len(p) > 120]
    path.write_text("\n\n".join(dict.fromkeys(paragraphs)) + "\n", encoding="utf-8")
    return path


def write_config(path: Path, work_dir: Path, inputs: str, extra: str = "") -> Path:
    """Every data stage on, select included: a classifier and a small reference LM trained on write_reference."""
    reference = write_reference(path.parent / f"{path.stem}-reference.txt")
    path.write_text(f'[paths]\nwork_dir = "{work_dir}"\n[runner]\nworkers = 2\n'
                    f'[ingest]\ninputs = ["{inputs}"]\nshard_max_docs = 8\n[extract]\nshard_max_docs = 8\n'
                    f'[language]\nshard_max_docs = 8\n[quality]\nshard_max_docs = 8\nc4_drop_curly_bracket = false\n'
                    f'[select]\nreference_files = ["{reference}"]\nshard_max_docs = 8\n'
                    f'[select.classifier]\nenabled = true\nepochs = 20\ntop_fraction = 0.8\n'
                    f'[select.perplexity]\nenabled = true\nvocab_size = 512\ndepth = 1\nd_model = 64\nseq_len = 64\n'
                    f'batch_size = 4\nsteps = 30\ndevice = "cpu"\nbands = ["head", "middle", "tail"]\n'
                    f'[tokenize]\nshard_max_docs = 8\nval_fraction = 0.1\n{extra}')
    return path


def _command(config: Path) -> list[str]:
    return [sys.executable, "-m", "flows.cli", "run", str(config), "--to", KILLABLE[-1]]


def _env(api_url: str | None) -> dict[str, str]:
    """With an API URL, report there; without, the command starts its own local server (the Ctrl-C case)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return {**env, "PREFECT_API_URL": api_url} if api_url else env


def doc_ids(warehouse: Path) -> dict[str, list[str]]:
    """stage -> the doc_id of every record in the latest run's output of that stage (repeats kept)."""
    import pyarrow.ipc as ipc
    import pyarrow.parquet as pq

    wh = Warehouse(warehouse)
    run_id = wh.resolve_run("latest")["run_id"]
    found: dict[str, list[str]] = {}
    for s in wh.stage_runs(run_id):
        if s["status"] != "completed" or not s["output_dataset_id"]:
            continue
        ids: list[str] = []
        for f in wh.dataset_files(s["output_dataset_id"]):
            path = Path(f["path"])
            if path.suffix == ".parquet":
                ids += pq.read_table(path, columns=["doc_id"]).column("doc_id").to_pylist()
            elif path.suffix == ".arrow":
                with ipc.open_file(path) as reader:
                    ids += reader.read_all().column("doc_id").to_pylist()
        found[s["stage"]] = ids
    return found


def lost_and_duplicated(reference: dict[str, list[str]], got: dict[str, list[str]]) -> tuple[int, int]:
    """Documents of the reference missing from the rerun, and documents the rerun holds more often, all stages."""
    from collections import Counter

    lost = duplicated = 0
    for stage, ids in reference.items():
        want, have = Counter(ids), Counter(got.get(stage, []))
        lost += sum((want - have).values())
        duplicated += sum((have - want).values())
    return lost, duplicated


def outputs(warehouse: Path) -> dict[str, tuple[str, float]]:
    """stage -> (fingerprint of its output, seconds) for the latest run."""
    wh = Warehouse(warehouse)
    run_id = wh.resolve_run("latest")["run_id"]
    found = {}
    for s in wh.stage_runs(run_id):
        if s["status"] == "completed" and s["output_dataset_id"]:
            found[s["stage"]] = (wh.dataset(s["output_dataset_id"])["fingerprint"], s["seconds"] or 0.0)
    return found


def reference(config: Path, api_url: str) -> dict[str, tuple[str, float]]:
    subprocess.run(_command(config), cwd=REPO, env=_env(api_url), check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=900)
    return outputs(_warehouse(config))


def _warehouse(config: Path) -> Path:
    from tasks.config import load_config

    return load_config(config).warehouse_path


@dataclass
class KillResult:
    stage: str
    seed: int
    delay_s: float
    landed: str            # the stage that was running when the kill arrived ("(done)" if the run had finished)
    resumed_units: int     # units the rerun found finished by the killed attempt
    rerun_s: float
    identical: bool        # every stage's dataset has the reference's fingerprint
    differing: list[str]
    lost: int = 0          # documents of the reference run missing after the rerun (all stages)
    duplicated: int = 0    # documents the rerun holds more often than the reference
    signal_name: str = "SIGKILL"
    exit_code: int | None = None  # the interrupted command's
    stop_s: float = 0.0    # from the signal to the command's exit


def kill_and_rerun(config: Path, stage: str, seed: int, ref: dict[str, tuple[str, float]], api_url: str,
                   sig: int = signal.SIGKILL, ref_docs: dict[str, list[str]] | None = None) -> KillResult:
    rng = random.Random(seed)
    delay = rng.uniform(0.0, 1.0) * max(ref[stage][1], 0.2)
    work = _warehouse(config).parent
    # SIGINT goes, as a terminal sends it, to the command's whole process group, which starts its own Prefect
    # server; SIGKILL reports to the harness's API, as before.
    proc = subprocess.Popen(_command(config), cwd=REPO, env=_env(None if sig == signal.SIGINT else api_url),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    stage_dir = work / "datasets" / stage
    deadline = time.monotonic() + 600
    while not (stage_dir.is_dir() and any(stage_dir.iterdir())):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the run ended (or stalled) before {stage} started")
        time.sleep(0.02)
    time.sleep(delay)
    os.killpg(proc.pid, sig)
    sent = time.monotonic()
    try:
        exit_code = proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        exit_code = proc.wait()
    stop_s = time.monotonic() - sent
    wh = Warehouse(_warehouse(config))
    running = wh.query("SELECT stage FROM stage_runs WHERE status IN ('running', 'interrupted') "
                       "ORDER BY started_at DESC LIMIT 1")
    landed = running[0]["stage"] if running else "(done)"

    t0 = time.monotonic()
    subprocess.run(_command(config), cwd=REPO, env=_env(api_url), check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=900)
    rerun_s = time.monotonic() - t0
    got = outputs(_warehouse(config))
    last = wh.resolve_run("latest")["run_id"]
    resumed = sum(s["units_resumed"] or 0 for s in wh.stage_runs(last))
    differing = [s for s in ref if got.get(s, ("?",))[0] != ref[s][0]]
    lost, duplicated = lost_and_duplicated(ref_docs, doc_ids(_warehouse(config))) if ref_docs else (0, 0)
    return KillResult(stage, seed, round(delay, 3), landed, resumed, round(rerun_s, 1), not differing, differing,
                      lost, duplicated, signal.Signals(sig).name, exit_code, round(stop_s, 2))


def archived_urls(job_dirs: Path, pattern: str = "crawl-*.warc.gz") -> list[str]:
    """The URL of every response record in the finished WARC files matching ``pattern`` under ``job_dirs`` (a page
    archived twice shows twice)."""
    from warcio.archiveiterator import ArchiveIterator

    urls = []
    for path in sorted(job_dirs.glob(pattern)):
        with open(path, "rb") as fh:
            urls += [r.rec_headers.get_header("WARC-Target-URI") for r in ArchiveIterator(fh)
                     if r.rec_type == "response"]
    return urls


@dataclass
class CrawlKillResult:
    seed: int
    delay_s: float
    warc_files_before: int  # finished WARC files when the kill landed
    archived_before: int
    pages: int              # pages the site has in scope
    lost: int               # pages never archived after the rerun
    duplicated: int         # extra copies of pages archived more than once


def crawl_kill_and_rerun(work_dir: Path, seed: int, api_url: str, pages: int = 40) -> CrawlKillResult:
    """Crawl a local site of ``pages`` linked pages with a WARC rotation every few pages, SIGKILL the crawl a
    seeded random time in, crawl again, and count the pages lost or archived twice."""
    from collections import Counter

    from tests.sites import LocalSite

    rng = random.Random(seed)
    with LocalSite() as site:
        config = work_dir.with_suffix(".toml")
        config.write_text(f'[paths]\nwork_dir = "{work_dir}"\n[crawl]\nseeds = ["{site.base}/deep/1"]\n'
                          f'private_hosts = ["127.0.0.1:{site.port}"]\ndelay_s = 0.05\ntimeout_s = 2\n'
                          f'max_depth = {pages - 1}\nwarc_max_bytes = 4096\n')
        command = [sys.executable, "-m", "flows.cli", "stage", "crawl", str(config)]
        proc = subprocess.Popen(command, cwd=REPO, env=_env(api_url), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        jobs = work_dir / "crawl"
        deadline = time.monotonic() + 300
        while not list(jobs.glob("*/crawl-*.warc.gz")):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the crawl ended (or stalled) before its first WARC file was finished")
            time.sleep(0.01)
        delay = rng.uniform(0.0, 1.5)
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

        before = archived_urls(jobs, "*/crawl-*.warc.gz")
        files_before = len(list(jobs.glob("*/crawl-*.warc.gz")))
        subprocess.run(command, cwd=REPO, env=_env(api_url), check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=600)
        counts = Counter(archived_urls(jobs, "*/crawl-*.warc.gz"))
    expected = {f"{site.base}/deep/{n}" for n in range(1, pages + 1)}
    return CrawlKillResult(seed, round(delay, 3), files_before, len(before), pages,
                           len(expected - set(counts)), sum(n - 1 for n in counts.values()))
