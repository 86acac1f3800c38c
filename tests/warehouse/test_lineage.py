import os
import subprocess
import sys
import time

import pytest

from warehouse.lineage import Warehouse, WarehouseError


def test_schema_is_created_and_versioned(tmp_path):
    wh = Warehouse(tmp_path / "w.duckdb")
    run_id = wh.start_run(config={}, config_hash="h", config_path=None, code_version="test", trigger="manual",
                          stages=["ingest"])
    assert wh.schema_version() == 10  # 0001 init, 0002 crawl log, 0003 contamination hits, 0004 eval items,
    # 0005 out_dir, 0006 role, 0007 hit scores, 0008 sources, 0009 eval crop, 0010 what a note counts
    tables = {r["table_name"] for r in wh.query("SELECT table_name FROM information_schema.tables")}
    assert {"schema_version", "pipeline_runs", "stage_runs", "datasets", "dataset_edges", "drops",
            "metrics", "dataset_files", "crawl_log", "contamination_hits", "contamination_summary",
            "stage_sources"} <= tables
    assert wh.resolve_run(run_id[:12])["run_id"] == run_id
    assert wh.resolve_run("latest")["run_id"] == run_id


def test_a_warehouse_from_before_roles_gets_them_for_its_old_runs(tmp_path):
    import duckdb

    from warehouse.lineage import _migrations

    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE schema_version (version INTEGER, applied_at TIMESTAMPTZ)")
    for version, sql in _migrations():
        if version <= 5:
            con.execute(sql)
            con.execute("INSERT INTO schema_version VALUES (?, now())", [version])
    for stage in ("ingest", "train", "tokenize"):
        con.execute("INSERT INTO stage_runs (stage_run_id, run_id, stage, stage_key, params_json, params_hash, "
                    "code_version, status, started_at) VALUES (?, 'r', ?, 'k', '{}', 'p', 'c', 'completed', now())", [f"{stage}-1", stage])
    old_funnel = [("ingest-1", "ingest", "record_request", False), ("ingest-1", "ingest", "payload_too_large", True),
                  ("ingest-1", "ingest", "single_gzip_stream", False), ("ingest-1", "ingest", "charset_fallback", False),
                  ("crawl-1", "crawl", "link_max_pages", False), ("crawl-1", "crawl", "link_max_pages", True)]
    for stage_run_id, stage, reason, dropped in old_funnel:
        con.execute("INSERT INTO drops (stage_run_id, stage, reason, dropped, docs, bytes) VALUES (?,?,?,?,7,0)",
                    [stage_run_id, stage, reason, dropped])
    con.close()
    wh = Warehouse(path)
    with wh.connect():  # the first writer's open migrates
        pass
    assert wh.schema_version() == 10
    roles = {r["stage"]: r["role"] for r in wh.query("SELECT stage, role FROM stage_runs")}
    assert roles == {"ingest": "collection", "train": "training", "tokenize": None}
    # what each old funnel row counts, by its reason's prefix; a drop is always documents
    counts = {(r["reason"], r["dropped"]): r["counts"] for r in wh.query("SELECT reason, dropped, counts FROM drops")}
    assert counts == {("record_request", False): "records", ("payload_too_large", True): "documents",
                      ("single_gzip_stream", False): "files", ("charset_fallback", False): "documents",
                      ("link_max_pages", False): "links", ("link_max_pages", True): "documents"}


def test_a_reader_brings_an_older_warehouse_up_to_date_unless_a_pipeline_runs_on_it(tmp_path):
    import duckdb

    from warehouse.lineage import _migrations

    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE schema_version (version INTEGER, applied_at TIMESTAMPTZ)")
    for version, sql in _migrations()[:9]:
        con.execute(sql)
        con.execute("INSERT INTO schema_version VALUES (?, now())", [version])
    con.execute("INSERT INTO drops (stage_run_id, stage, reason, dropped, docs, bytes) "
                "VALUES ('crawl-1', 'crawl', 'link_max_pages', false, 874, 0)")
    con.close()
    reader = Warehouse(path)  # the dashboard or `crucible show` after an upgrade, before any new run
    with Warehouse(path).pipeline_lock():  # a pipeline (an older Crucible's) runs on it: readers leave it be
        assert reader.query("SELECT max(version) AS v FROM schema_version")[0]["v"] == 9
    # once that run ends, the same reader (a dashboard stays up) brings it up to date on its next read
    assert reader.query("SELECT reason, docs, counts FROM drops") == [{"reason": "link_max_pages", "docs": 874,
                                                                        "counts": "links"}]
    assert reader.schema_version() == _migrations()[-1][0]


def test_reading_a_missing_warehouse_says_what_to_do(tmp_path):
    with pytest.raises(WarehouseError, match="run `crucible run CONFIG` first"):
        Warehouse(tmp_path / "none.duckdb").runs()


def test_unknown_run_is_a_clear_error(tmp_path):
    wh = Warehouse(tmp_path / "w.duckdb")
    wh.record_metrics("r", [(1, "loss", 2.5)])
    with pytest.raises(WarehouseError, match="no pipeline run 'nope'"):
        wh.resolve_run("nope")


def test_lineage_walks_edges_back_to_the_source(tmp_path):
    wh = Warehouse(tmp_path / "w.duckdb")
    for ds, parents in (("source-1", []), ("ingest-1", ["source-1"]), ("extract-1", ["ingest-1"])):
        wh.record_dataset(dataset_id=ds, stage=ds.split("-")[0], stage_key=ds, uri=f"/d/{ds}", format="parquet",
                          fingerprint=ds, files=[(f"/d/{ds}/p.parquet", 3, 100, "abc")], parents=parents,
                          created_by=None)
    chain = wh.lineage("extract-1")
    assert [(d["depth"], d["dataset_id"]) for d in chain] == [(0, "extract-1"), (1, "ingest-1"), (2, "source-1")]


def hold_lock(path, seconds: float) -> subprocess.Popen:
    """Another process that opens the warehouse for writing and keeps it for ``seconds``."""
    holder = subprocess.Popen([sys.executable, "-c", (
        "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); print('locked', flush=True); "
        "time.sleep(float(sys.argv[2]))"), str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_reader_waits_for_a_writer_in_another_process(tmp_path):
    path = tmp_path / "w.duckdb"
    Warehouse(path).record_metrics("r", [(1, "loss", 1.0)])
    holder = hold_lock(path, 1.5)
    t0 = time.monotonic()
    rows = Warehouse(path, lock_timeout=30).query("SELECT count(*) AS n FROM metrics")
    assert rows == [{"n": 1}]
    assert time.monotonic() - t0 > 0.5  # it really waited for the lock
    holder.wait(timeout=30)


def test_lock_timeout_gives_a_clear_error(tmp_path):
    path = tmp_path / "w.duckdb"
    Warehouse(path).record_metrics("r", [(1, "loss", 1.0)])
    holder = hold_lock(path, 5)
    with pytest.raises(WarehouseError, match="cannot open warehouse .*lock"):
        Warehouse(path, lock_timeout=0.5).runs()
    holder.kill()
    holder.wait()


def test_runs_left_running_by_a_dead_process_are_marked_crashed(tmp_path):
    wh = Warehouse(tmp_path / "w.duckdb")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_id = wh.start_run(config={}, config_hash="h", config_path=None, code_version="t", trigger="manual",
                          stages=[])
    with wh.connect() as con:
        con.execute("UPDATE pipeline_runs SET pid = ? WHERE run_id = ?", [dead.pid, run_id])
    wh.start_run(config={}, config_hash="h", config_path=None, code_version="t", trigger="manual", stages=[])
    assert wh.resolve_run(run_id)["status"] == "crashed"


def test_a_run_nobody_is_running_reads_crashed_and_the_next_run_records_it(tmp_path):
    """Pid and host say nothing in containers (pids are reused) or across hosts; the pipeline lock does."""
    wh = Warehouse(tmp_path / "w.duckdb")
    with wh.pipeline_lock():
        killed = wh.start_run(config={}, config_hash="h", config_path=None, code_version="t", trigger="manual",
                              stages=["ingest"])
        wh.start_stage(run_id=killed, stage="ingest", stage_key="k", params={}, params_hash="p", code_version="t",
                       input_dataset_ids=[])
        assert wh.resolve_run(killed)["status"] == "running"  # its process holds the lock: alive
    with wh.connect() as con:  # as if run by a process that is gone, whose pid is now someone else's, elsewhere
        con.execute("UPDATE pipeline_runs SET pid = ?, host = 'another-host' WHERE run_id = ?", [os.getpid(), killed])
    assert wh.resolve_run(killed)["status"] == "crashed"
    assert wh.runs()[0]["status"] == "crashed" and wh.stage_runs(killed)[0]["status"] == "crashed"
    assert wh.query("SELECT status FROM pipeline_runs")[0]["status"] == "running"  # readers write nothing
    with wh.pipeline_lock():
        wh.start_run(config={}, config_hash="h", config_path=None, code_version="t", trigger="manual", stages=[])
    assert {r["run_id"]: r["status"] for r in wh.query("SELECT run_id, status FROM pipeline_runs")}[killed] == "crashed"
    assert wh.query("SELECT status FROM stage_runs")[0]["status"] == "crashed"
