"""The orchestration contract: records, cache hits, reruns downstream of a change, failure propagation, runners."""

import contextlib
import os
import shlex
from pathlib import Path

import pytest

from tasks.config import parse_config
from tasks.registry import ORDER
from tests.helpers import TINY_TRAIN, prose, prose_html
from warehouse.lineage import Warehouse

pytestmark = pytest.mark.usefixtures("prefect_harness")


DATA = ORDER[:ORDER.index("train")]  # the fixture's pages are near-copies: dedup leaves too few to train on


def config(tmp_path, inputs, **sections):
    data = {"paths": {"work_dir": str(tmp_path / "work")},
            "ingest": {"inputs": [str(inputs / "*.warc.gz")], "shard_max_docs": 8},
            "extract": {"shard_max_docs": 6},
            "train": TINY_TRAIN}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return parse_config(data, base=tmp_path)


def run(cfg, stages=None, trigger="manual", upstream=None):
    from flows.pipeline import pipeline_flow

    run_id = pipeline_flow(cfg, stages or DATA, trigger, upstream)
    return Warehouse(cfg.warehouse_path).stage_runs(run_id), run_id


def by_stage(stage_runs):
    return {s["stage"]: s for s in stage_runs}


def test_run_records_runs_stages_datasets_and_lineage(tmp_path, inputs):
    cfg = config(tmp_path, inputs)
    stages, run_id = run(cfg)
    wh = Warehouse(cfg.warehouse_path)
    ingest, extract = by_stage(stages)["ingest"], by_stage(stages)["extract"]
    assert ingest["status"] == extract["status"] == "completed"
    assert not ingest["cache_hit"] and ingest["docs_out"] == 35 and ingest["units"] == 3
    assert extract["units"] == 6  # 35 docs in units of at most 6, whatever the ingest shard sizes
    assert extract["docs_out"] == 35
    assert not list(cfg.work_dir.rglob(".progress.json*"))  # a finished stage leaves no progress file behind

    [run_row] = wh.runs()
    assert run_row["run_id"] == run_id and run_row["status"] == "completed" and run_row["trigger"] == "manual"
    assert run_row["code_version"].startswith(("git:", "pkg:"))
    chain = wh.lineage(extract["output_dataset_id"])
    assert [d["stage"] for d in chain] == ["extract", "ingest", "source"]
    assert wh.dataset(ingest["output_dataset_id"])["records"] == 35
    assert len(wh.dataset_files(chain[-1]["dataset_id"])) == 3  # the raw WARC files

    funnel = {(f["stage"], f["reason"]): f["docs"] for f in wh.funnel(run_id)}
    assert not [k for k in funnel if k[0] != "quality"]  # every synthetic page is clean English HTML
    quality = by_stage(stages)["quality"]
    assert quality["docs_in"] == 35 and quality["docs_out"] + sum(funnel.values()) == 35

    # One SQL query follows a document from its WARC record through the stages.
    [doc] = wh.query("SELECT * FROM doc_lineage WHERE url = 'http://site2.example.org/page/100'")
    assert doc["kept_extract"] and doc["warc_file"].endswith("b.warc.gz")
    from tasks.registry import ORDER

    kept = [c for c in doc if c.startswith("kept_")]  # the stages' columns come in pipeline order
    assert len(kept) >= 2 and kept == sorted(kept, key=lambda c: ORDER.index(c[len("kept_"):])), kept
    text = wh.query("SELECT e.text FROM docs_extract e JOIN docs_ingest i USING (doc_id) WHERE i.url LIKE '%/page/0'")
    assert "reading rooms" in text[0]["text"]


def test_unchanged_config_is_all_cache_hits(tmp_path, inputs):
    cfg = config(tmp_path, inputs)
    first, _ = run(cfg)
    shard = next((cfg.work_dir / "datasets" / "extract").glob("*/part-*.parquet"))
    mtime = shard.stat().st_mtime_ns
    second, _ = run(cfg)
    assert all(s["cache_hit"] for s in second)
    assert [s["output_dataset_id"] for s in second] == [s["output_dataset_id"] for s in first]
    assert shard.stat().st_mtime_ns == mtime
    assert by_stage(second)["extract"]["docs_in"] == by_stage(first)["extract"]["docs_in"]


def test_changed_ingest_parameter_reruns_ingest_and_everything_after(tmp_path, inputs):
    first, _ = run(config(tmp_path, inputs))
    cfg = config(tmp_path, inputs, ingest={"max_payload_bytes": 20_000})
    stages, run_id = run(cfg)
    # the key of each stage holds its input's content hash: every stage whose input changed ran again; a stage
    # whose input came out identical (the dropped pages never reached it) is rightly a cache hit
    before, after = by_stage(first), by_stage(stages)
    wh = Warehouse(cfg.warehouse_path)
    order = [s["stage"] for s in stages]
    for up, s in zip(order, order[1:]):
        fingerprints = {wh.dataset(x[up]["output_dataset_id"])["fingerprint"] for x in (before, after)}
        assert after[s]["cache_hit"] == (len(fingerprints) == 1), s
    assert not any(after[s]["cache_hit"] for s in ("ingest", "extract", "language"))
    assert by_stage(stages)["ingest"]["docs_out"] == 32
    funnel = {(f["stage"], f["reason"]): f["docs"] for f in Warehouse(cfg.warehouse_path).funnel(run_id)
              if f["stage"] == "ingest"}
    assert funnel == {("ingest", "payload_too_large"): 3}


def test_changed_extract_parameter_reruns_only_extract(tmp_path, inputs):
    first, _ = run(config(tmp_path, inputs))
    stages, _ = run(config(tmp_path, inputs, extract={"include_tables": False}))
    assert by_stage(stages)["ingest"]["cache_hit"]
    assert not by_stage(stages)["extract"]["cache_hit"]
    assert by_stage(stages)["extract"]["output_dataset_id"] != by_stage(first)["extract"]["output_dataset_id"]


def pool_children() -> dict[str, int]:
    """This process's worker processes, by kind: docpool's workers and extraction's children."""
    import psutil

    found = {"docpool": 0, "extractors": 0}
    for child in psutil.Process().children(recursive=True):
        try:
            line = " ".join(child.cmdline())
        except psutil.Error:  # ended meanwhile
            continue
        for kind in found:
            found[kind] += f"tasks.{kind}" in line
    return found


def test_worker_processes_start_only_for_stages_that_have_work(tmp_path, inputs):
    """A rerun of cache hits starts no worker process; one whose first miss is quality starts docpool's workers
    (quality uses them) and no extraction child (extract is a hit)."""
    from tasks import docpool, extractors

    cfg = config(tmp_path, inputs, runner={"kind": "threads", "workers": 2})
    run(cfg)
    assert pool_children() == {"docpool": 2, "extractors": 2}  # the first run used both kinds
    try:
        docpool.shutdown()
        extractors.shutdown()
        assert pool_children() == {"docpool": 0, "extractors": 0}
        stages, _ = run(cfg)
        assert all(s["cache_hit"] for s in stages)
        assert pool_children() == {"docpool": 0, "extractors": 0}
        stages, _ = run(config(tmp_path, inputs, runner={"kind": "threads", "workers": 2},
                               quality={"gopher_min_words": 40}))
        assert by_stage(stages)["extract"]["cache_hit"] and not by_stage(stages)["quality"]["cache_hit"]
        assert pool_children() == {"docpool": 2, "extractors": 0}
    finally:
        docpool.shutdown()
        extractors.shutdown()


def test_the_pipeline_flow_sends_prefects_heartbeat_and_its_subflows_none(tmp_path, inputs):
    """The pipeline's own heartbeat thread (flows/pipeline.py) sends what Prefect's engine would: the flow run's
    heartbeat event, related to its flow and its tags (a deployment's run has tags); stage subflows send none."""
    import time

    from prefect import tags
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter

    cfg = config(tmp_path, inputs)
    with tags("crucible", "nightly"):
        _, run_id = run(cfg, ["ingest", "extract"])
    flow_run_id = Warehouse(cfg.warehouse_path).resolve_run(run_id)["flow_run_id"]
    beats: list = []
    with get_client(sync_client=True) as client:
        pipeline = client.read_flow_run(flow_run_id)
        subflows = {str(r.id) for r in client.read_flow_runs(limit=50) if r.parent_task_run_id is not None}
        deadline = time.monotonic() + 60  # the server stores events a few seconds after they are sent
        while time.monotonic() < deadline:
            beats = client.read_events(filter=EventFilter(event=EventNameFilter(name=["prefect.flow-run.heartbeat"])),
                                       limit=50).events
            if any(e.resource.id == f"prefect.flow-run.{flow_run_id}" for e in beats):
                break
            time.sleep(0.5)
    [beat] = [e for e in beats if e.resource.id == f"prefect.flow-run.{flow_run_id}"]  # one: runs are short
    assert beat.resource.get("prefect.resource.name") == pipeline.name
    assert sorted((r.id, r.role) for r in beat.related) == [
        (f"prefect.flow.{pipeline.flow_id}", "flow"), ("prefect.tag.crucible", "tag"), ("prefect.tag.nightly", "tag")]
    assert len(subflows) >= 2 and not {e.resource.id.removeprefix("prefect.flow-run.") for e in beats} & subflows


def test_runner_settings_are_not_part_of_the_key(tmp_path, inputs):
    run(config(tmp_path, inputs))
    stages, _ = run(config(tmp_path, inputs, runner={"workers": 1}))
    assert all(s["cache_hit"] for s in stages)


def test_the_costliest_units_go_to_the_runner_first(tmp_path):
    """One worker runs units in the order the runner is handed them: the biggest input file first, whatever its
    place in the listing, so a large file listed last cannot keep one worker busy while the others idle."""
    from tests.helpers import write_pages_warc

    d = tmp_path / "in"
    d.mkdir()
    for i, (name, pages) in enumerate([("a", 2), ("b", 30), ("c", 9)]):
        write_pages_warc(d / f"{name}.warc.gz", pages, start=100 * i)
    cfg = config(tmp_path, d, ingest={"shard_max_docs": 100}, extract={"shard_max_docs": 10},
                 runner={"kind": "threads", "workers": 1})
    stages = by_stage(run(cfg, ["ingest", "extract"])[0])

    def written(stage: str) -> list[str]:  # its shards in the order they were written
        shards = Path(stages[stage]["out_dir"]).glob("part-*.parquet")
        return [p.name[:10] for p in sorted(shards, key=lambda p: p.stat().st_mtime_ns)]

    assert written("ingest") == ["part-00001", "part-00002", "part-00000"]  # 30, 9 and 2 pages
    assert written("extract")[-1] == "part-00004"  # 41 rows in units of 10: the last holds one


def test_rerun_one_stage_against_a_chosen_upstream(tmp_path, inputs):
    from flows.pipeline import resolve_input

    cfg = config(tmp_path, inputs)
    _, first_run = run(cfg)
    cfg_small = config(tmp_path, inputs, ingest={"max_payload_bytes": 20_000})
    run(cfg_small, ["ingest"])
    wh = Warehouse(cfg.warehouse_path)
    latest = resolve_input(wh, "extract", "latest")
    assert latest["records"] == 32
    old = resolve_input(wh, "extract", first_run)
    assert old["records"] == 35
    assert resolve_input(wh, "extract", old["dataset_id"]) == old

    stages, rerun_id = run(cfg, ["extract"], "rerun", old)
    assert stages[0]["cache_hit"] and stages[0]["input_dataset_ids"] == [old["dataset_id"]]
    stages, _ = run(cfg, ["extract"], "rerun", latest)
    assert not stages[0]["cache_hit"] and stages[0]["docs_out"] == 32
    assert wh.resolve_run(rerun_id)["trigger"] == "rerun"


def test_a_failed_unit_fails_the_run_and_names_the_file(tmp_path, inputs):
    from flows.stages import StageFailed

    (inputs / "broken.warc.gz").write_bytes(b"this is not an archive")
    cfg = config(tmp_path, inputs)
    with pytest.raises(StageFailed, match=r"1 of 4 units failed:\n  ingest part-00002: .*broken.warc.gz is not a WARC"):
        run(cfg)
    wh = Warehouse(cfg.warehouse_path)
    [run_row] = wh.runs()
    assert run_row["status"] == "failed" and "broken.warc.gz" in run_row["error"]
    [stage] = wh.stage_runs(run_row["run_id"])
    assert stage["status"] == "failed" and "broken.warc.gz" in stage["error"]
    assert not list((cfg.work_dir / "datasets" / "ingest").glob("*/_dataset.json"))  # nothing sealed
    assert len(list((cfg.work_dir / "datasets" / "ingest").glob("*/part-*.json"))) == 3  # the rest resume later


def test_training_with_no_training_documents_fails_the_run_with_the_reason(tmp_path, inputs):
    from tasks.train import TrainFailed

    cfg = config(tmp_path, inputs)
    with pytest.raises(TrainFailed, match="the train split is empty"):
        run(cfg, ORDER)  # the fixture's pages are near-copies of each other: dedup keeps almost none
    wh = Warehouse(cfg.warehouse_path)
    [run_row] = wh.runs()
    train = by_stage(wh.stage_runs(run_row["run_id"]))["train"]
    assert run_row["status"] == "failed" and train["status"] == "failed" and "train split is empty" in train["error"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dask", "processes"])
def test_other_runners_give_identical_datasets(tmp_path, inputs, kind):
    threads, _ = run(config(tmp_path / "t", inputs))
    other, _ = run(config(tmp_path / "o", inputs, runner={"kind": kind, "workers": 2}))
    fingerprints = [Warehouse(config(tmp_path / d, inputs).warehouse_path).dataset(s["output_dataset_id"])["fingerprint"]
                    for d, stages in (("t", threads), ("o", other)) for s in stages]
    half = len(fingerprints) // 2
    assert fingerprints[:half] == fingerprints[half:] and half == len(DATA) - 2  # all but crawl and select (off)
    assert not any(s["cache_hit"] for s in other)


@pytest.mark.slow
def test_shared_corpora_pass_every_cleaning_stage_without_a_crash(tmp_path):
    from tests.conftest import REPO, shared_path
    from tasks.config import TrainConfig, load_config

    shared_path("corpora", "warc")
    shared_path("benchmarks")  # the config decontaminates against the real sets
    cfg = load_config(REPO / "configs" / "shared_corpora.toml", base=REPO)
    books = shared_path("corpora", "english", "gutenberg", "train")
    sources = [s.model_copy(update={"inputs": [str(p) for p in sorted(books.glob("*.txt.gz"))[:3]], "val_docs": 20})
               if s.name == "books" else s for s in cfg.sources]  # three of the books keep this test short
    cfg = cfg.model_copy(update={"paths": cfg.paths.model_copy(update={"work_dir": tmp_path / "work"}),
                                 "sources": sources,
                                 "dedup": cfg.dedup.model_copy(update={"state_dir": tmp_path / "state"}),
                                 "train": TrainConfig.model_validate(TINY_TRAIN),
                                 "evaluate": cfg.evaluate.model_copy(update={"max_items": 20})})
    stages, run_id = run(cfg, ORDER[1:])
    assert [s["status"] for s in stages] == ["completed"] * (len(ORDER) - 2)  # not crawl, not select (off)
    assert by_stage(stages)["ingest"]["docs_out"] >= 700 and by_stage(stages)["decontaminate"]["docs_out"] > 0
    wh = Warehouse(cfg.warehouse_path)
    pages = wh.query("SELECT count(*) AS n FROM docs_extract WHERE warc_file LIKE '%.html.gz'")[0]["n"]
    assert pages >= 250  # the saved pages of ../shared/corpora/html, one document each
    funnel = {f["reason"]: f["docs"] for f in wh.funnel(run_id) if f["dropped"]}
    records = {f["reason"]: f["docs"] for f in wh.funnel(run_id) if not f["dropped"]}
    assert records["record_request"] > 0 and records["record_revisit"] > 0 and funnel["lang_not_kept"] > 0
    assert not [r for r in funnel if r.startswith("record_") and r != "record_error"]  # records, not documents
    counted = {f["reason"]: f["counts"] for f in wh.funnel(run_id)}
    assert counted["record_request"] == "records" and counted["lang_not_kept"] == "documents"
    assert funnel["exact_duplicate"] > 0  # the corpus holds the same pages captured more than once
    assert not {"record_error", "extract_error", "extract_crash"} & set(funnel)
    facts = {f["name"]: f["value"] for f in wh.stage_facts(run_id)}
    assert facts["decontaminate.items.lambada_openai"] == 5153  # every item of the real sets read and indexed
    assert facts["evaluate.items.arc_easy"] == 20 and "evaluate.core7" in facts  # scored on the real sets
    mixture = {f["source"]: f for f in wh.source_figures(run_id) if f["stage"] == "tokenize"}
    assert set(mixture) == {"web", "books", "wikitext"}
    assert abs(mixture["web"]["share"] - 0.08) < 0.01 and abs(mixture["wikitext"]["share"] - 0.04) < 0.01


@contextlib.contextmanager
def dask_cluster(workers: int, blind_to: Path | None = None):
    """A real Dask cluster from distributed's own CLI: `dask scheduler` and `dask worker` processes on loopback.
    With ``blind_to``, one more worker runs in a mount namespace where that directory is an empty tmpfs: a worker
    on a machine that does not share the work directory."""
    import socket
    import subprocess
    import sys

    from distributed import Client

    from tests.conftest import REPO

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    dask = [sys.executable, "-m", "distributed.cli.dask_worker"]
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                               "--port", str(port), "--no-dashboard"], env=env, stderr=subprocess.DEVNULL)]
    worker = [*dask, address, "--nthreads", "1", "--no-dashboard"]
    procs += [subprocess.Popen([*worker, "--name", f"w{i}"], env=env, stderr=subprocess.DEVNULL)
              for i in range(workers)]
    if blind_to is not None:
        line = " ".join(map(shlex.quote, [*worker, "--name", "blind"]))
        procs.append(subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                                       f"mount -t tmpfs none {shlex.quote(str(blind_to))} && exec {line}"], env=env,
                                      stderr=subprocess.DEVNULL))
    try:
        with Client(address, timeout=60) as client:
            client.wait_for_workers(workers + (blind_to is not None), timeout=120)
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)


def can_unshare() -> bool:
    import subprocess

    try:
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.mark.slow
def test_a_real_dask_cluster_gives_the_thread_runners_datasets_and_names_a_worker_that_cannot_see_the_work_dir(
        tmp_path, inputs):
    threads, _ = run(config(tmp_path / "t", inputs))
    with dask_cluster(2) as address:
        cluster, _ = run(config(tmp_path / "d", inputs, runner={"kind": "dask", "address": address}))
    assert {s["status"] for s in cluster} == {"completed"} and len(cluster) == len(DATA) - 2  # crawl, select off
    assert not any(s["cache_hit"] for s in cluster)
    print_of = {d: Warehouse(config(tmp_path / d, inputs).warehouse_path) for d in ("t", "d")}
    fingerprints = {d: [print_of[d].dataset(s["output_dataset_id"])["fingerprint"] for s in stages]
                    for d, stages in (("t", threads), ("d", cluster))}
    assert fingerprints["t"] == fingerprints["d"]

    if not can_unshare():
        pytest.skip("needs unshare --mount (root or user namespaces) to start a worker that cannot see the work dir")
    from tasks.config import ConfigError
    from flows.runners import check_workers_see

    work = tmp_path / "shared-not"
    work.mkdir()
    with dask_cluster(1, blind_to=work) as address:
        with pytest.raises(ConfigError, match=r"1 of 2 Dask workers cannot use the work directory .*blind.*"
                                              r"FileNotFoundError.*shared"):
            check_workers_see(address, work)
        failed = config(tmp_path / "b", inputs, runner={"kind": "dask", "address": address},
                        paths={"work_dir": str(work)})
        with pytest.raises(Exception, match="cannot use the work directory"):
            run(failed)
    [stage] = [s for s in Warehouse(failed.warehouse_path).stage_runs(Warehouse(failed.warehouse_path).runs()[0]
                                                                          ["run_id"])]
    assert stage["stage"] == "ingest" and stage["status"] == "failed" and "blind" in stage["error"]


def test_dedup_and_contamination_reach_the_warehouse(tmp_path):
    from warcio.warcwriter import WARCWriter

    from tasks.evalsets import _SMOKE, contamination_text
    from tests.helpers import response

    texts = {f"p{i}": prose(i) for i in range(6)}
    words = texts["p1"].split()
    words[10], words[60] = "yesterday", "tomorrow"
    texts["p6"] = texts["p0"]                              # the same page at another URL
    texts["p7"] = " ".join(words)                          # two words changed
    texts["p8"] = prose(8) + "\n\n" + contamination_text(_SMOKE["copa"][0]) + "\n\n" + prose(9, 6)
    d = tmp_path / "in"
    d.mkdir()
    with open(d / "pages.warc.gz", "wb") as fh:
        w = WARCWriter(fh, gzip=True)
        for name, text in texts.items():
            response(w, f"http://example.org/{name}", prose_html(text))
    cfg = config(tmp_path, d)
    stages, run_id = run(cfg, ORDER)
    wh = Warehouse(cfg.warehouse_path)
    trained = by_stage(stages)["train"]
    assert trained["status"] == "completed" and trained["output_dataset_id"].startswith("checkpoint-")
    [tokenize] = [s["output_dataset_id"] for s in stages if s["stage"] == "tokenize"]
    assert [r["parent_id"] for r in wh.query("SELECT parent_id FROM dataset_edges WHERE child_id = ?",
                                             [trained["output_dataset_id"]])] == [tokenize]
    losses = wh.query("SELECT step, value FROM metrics WHERE name = 'train.loss' AND run_id = ? ORDER BY step",
                      [run_id])
    assert [r["step"] for r in losses] == [1, 2, 3]
    evaluated = by_stage(stages)["evaluate"]
    assert evaluated["status"] == "completed"
    assert [r["parent_id"] for r in wh.query("SELECT parent_id FROM dataset_edges WHERE child_id = ?",
                                             [evaluated["output_dataset_id"]])] == [trained["output_dataset_id"]]
    from tasks.evalsets import _SMOKE
    per_task = {r["task"]: r["n"] for r in wh.query("SELECT task, count(*) AS n FROM eval_items GROUP BY task")}
    assert per_task == {task: len(items) for task, items in _SMOKE.items()}  # every item of the smoke set
    figures = {f["name"]: f["value"] for f in wh.stage_facts(run_id) if f["stage"] == "evaluate"}
    # copa 0 was found in p8, which decontaminate dropped: it never trained the checkpoint, so its evaluation
    # counts no contaminated item (the split follows the checkpoint's provenance)
    assert figures["evaluate.contaminated_items.copa"] == 0 and figures["evaluate.contaminated_items.piqa"] == 0
    # record ids are random, so whether any of these few documents falls in the held-out split varies from run to run
    val_docs = {f["name"]: f["value"] for f in wh.stage_facts(run_id)}.get("tokenize.val_docs", 0)
    assert "evaluate.core7" in figures and ("evaluate.val_bpb" in figures) == (val_docs > 0)
    # the tiny model's context crops the 10-shot prompts: counted per task, and said in the report
    assert figures["evaluate.cropped_items.arc_easy"] > 0 and figures["evaluate.shots.arc_easy"] == 10
    assert 0 <= figures["evaluate.shots_kept_mean.arc_easy"] < 10
    [crop] = wh.query("SELECT count(*) AS n, max(cropped) AS most FROM eval_items WHERE task = 'arc_easy'")
    assert crop["n"] > 0 and crop["most"] > 0
    import re

    report = cfg.report.dir / run_id / "report.html"
    page = report.read_text()
    for section in ("Run", "Data funnel", "Tokenizer", "Training", "Compute", "Evaluation", "Samples", "Datasheet",
                    "Model card", "Lineage"):
        assert f"<h2>{section}</h2>" in page, section
    assert "is cut from the left, as CORE does" in page and "shots kept on average" in page
    assert page.count('src="data:image/png;base64,') >= 4  # funnel, loss, lr, throughput: inline, no files
    assert not re.findall(r"(?:src|href)=\"(?:https?:)?//", page) and "http" not in page.replace(
        "http://example.org", "")  # no external asset; the only URLs are the crawled pages' own
    markdown = (report.parent / "report.md").read_text()
    assert markdown.startswith(f"# Crucible report: {run_id}")
    [peak] = [line for line in markdown.splitlines() if line.startswith("| measured peak memory")]
    assert re.search(r"\| [\d,.]+ ?[KMG]?i?B? \|$", peak), peak  # the peak training logged with its steps
    assert by_stage(stages)["report"]["status"] == "completed"
    drops = {(r["stage"], r["reason"]): r["docs"] for r in wh.funnel(run_id) if r["dropped"]}
    assert drops[("dedup", "exact_duplicate")] == 1 and drops[("dedup", "near_duplicate")] == 1
    assert drops[("decontaminate", "contaminated")] == 1
    assert by_stage(stages)["decontaminate"]["docs_out"] == 6
    [hit] = wh.query("SELECT h.task, h.item, h.ngram, i.url FROM contamination_hits h "
                     "JOIN docs_ingest i USING (doc_id)")
    assert (hit["task"], hit["item"], hit["url"]) == ("copa", 0, "http://example.org/p8")
    assert hit["ngram"].startswith("the glass fell off the table")
    [summary] = wh.query("SELECT * FROM contamination_summary")
    assert summary["contaminated_items"] == 1
    facts = {f["name"]: f["value"] for f in wh.stage_facts(run_id)}
    assert facts["dedup.clusters"] == 1 and facts["decontaminate.contaminated_items.copa"] == 1
    dropped = {r["reason"]: r["detail"] for r in wh.query("SELECT * FROM doc_drops WHERE stage = 'dedup'")}
    assert dropped["exact_duplicate"].startswith("duplicate of ")
