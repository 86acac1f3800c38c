"""Crawl -> ingest -> extract through the flows: the crawl log in the warehouse, and incremental recrawls."""
import json
from pathlib import Path

import pytest

from tasks.config import parse_config
from tests.flows.test_pipeline import by_stage, run
from tests.sites import LocalSite
from warehouse.lineage import Warehouse

pytestmark = pytest.mark.usefixtures("prefect_harness")


def cfg_for(tmp_path, site):
    return parse_config({
        "paths": {"work_dir": str(tmp_path / "work")},
        "crawl": {"seeds": [site.base + "/"], "private_hosts": [f"127.0.0.1:{site.port}"], "delay_s": 0,
                  "timeout_s": 0.5, "backoff_s": 0.05, "max_depth": 1, "max_page_bytes": 65536},
    }, base=tmp_path)


def test_crawl_feeds_ingest_and_a_recrawl_changes_only_what_changed(tmp_path):
    with LocalSite() as site:
        cfg = cfg_for(tmp_path, site)
        first, run_id = run(cfg)
        wh = Warehouse(cfg.warehouse_path)
        crawl, ingest = by_stage(first)["crawl"], by_stage(first)["ingest"]
        assert crawl["status"] == "completed" and crawl["docs_out"] == 5  # /, /a, /b, /changing, /flaky
        assert ingest["docs_out"] == 5 and by_stage(first)["extract"]["docs_out"] == 5
        log = {r["url"]: r["outcome"] for r in wh.query("SELECT url, outcome FROM crawl_log")}
        assert log[site.base + "/private/secret"] == "robots_disallowed" and log[site.base + "/big"] == "too_large"
        funnel = {f["reason"]: f["docs"] for f in wh.funnel(run_id) if f["stage"] == "crawl" and f["dropped"]}
        assert funnel["robots_disallowed"] == 1 and funnel["not_html"] == 2
        # the links it met are noted as links, not documents (dropped or kept, pages are what the docs count)
        noted = {f["reason"]: f["counts"] for f in wh.funnel(run_id) if f["stage"] == "crawl" and not f["dropped"]}
        assert noted and all(r.startswith("link_") and c == "links" for r, c in noted.items()), noted
        chain = [d["stage"] for d in wh.lineage(by_stage(first)["extract"]["output_dataset_id"])]
        assert chain == ["extract", "ingest", "source", "crawl"]

        requests = len(site.requests)
        again, _ = run(cfg)  # a manual rerun of an unchanged config does not go back to the web
        assert all(s["cache_hit"] for s in again) and len(site.requests) == requests

        second, _ = run(cfg, trigger="schedule")  # a scheduled run recrawls
        assert not by_stage(second)["crawl"]["cache_hit"] and by_stage(second)["crawl"]["docs_out"] == 0
        assert by_stage(second)["ingest"]["cache_hit"] and by_stage(second)["extract"]["cache_hit"]

        site.changing = "a new version"
        third, _ = run(cfg, trigger="schedule")
        assert by_stage(third)["crawl"]["docs_out"] == 1
        assert not by_stage(third)["ingest"]["cache_hit"] and by_stage(third)["ingest"]["docs_out"] == 6
        # ingest reads only the new WARC file; the first one's shards are taken over from the first run (linked)
        out = Path(by_stage(third)["ingest"]["out_dir"])
        units = [json.loads(p.read_text()) for p in sorted(out.glob("part-*.json"))]
        assert [u["reused"] for u in units] == [True, False] and units[0]["docs_out"] == 5
        earlier = Path(by_stage(first)["ingest"]["out_dir"]) / units[0]["files"][0]["name"]
        assert (out / units[0]["files"][0]["name"]).samefile(earlier)
    outcomes = wh.query("SELECT outcome, count(*) AS n FROM crawl_log WHERE stage_run_id = ? GROUP BY 1",
                        [by_stage(second)["crawl"]["stage_run_id"]])
    assert "archived" not in {r["outcome"] for r in outcomes}


@pytest.mark.slow
def test_a_crawl_killed_between_warc_rotations_archives_nothing_twice_on_rerun(tmp_path, prefect_harness):
    """Finished WARC files of a killed crawl join the dataset; their log parts are durable, so the rerun knows
    those pages and archives each page exactly once."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from flows.pipeline import pipeline_flow
    from tests.conftest import REPO
    from tests.faults import archived_urls

    crawl = {"delay_s": 0.05, "timeout_s": 2, "backoff_s": 0.05, "max_depth": 30, "warc_max_bytes": 4096}
    with LocalSite() as site:
        def config(name):
            return parse_config({"paths": {"work_dir": str(tmp_path / name)},
                                 "crawl": {"seeds": [site.base + "/deep/1"],
                                           "private_hosts": [f"127.0.0.1:{site.port}"],
                                           **crawl}}, base=tmp_path)

        reference = config("reference")
        pipeline_flow(reference, ["crawl"], "manual")
        expected = sorted(archived_urls(next((reference.work_dir / "crawl").iterdir())))
        assert len(expected) == 31 and len(set(expected)) == 31  # /deep/1 .. /deep/31, one link each

        cfg = config("killed")
        toml = tmp_path / "killed.toml"
        toml.write_text(f'[paths]\nwork_dir = "{cfg.work_dir}"\n[crawl]\nseeds = ["{site.base}/deep/1"]\n'
                        f'private_hosts = ["127.0.0.1:{site.port}"]\ndelay_s = 0.05\ntimeout_s = 2\n'
                        f'backoff_s = 0.05\nmax_depth = 30\nwarc_max_bytes = 4096\n')
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "stage", "crawl", str(toml)], cwd=REPO,
                                env={**os.environ, "PREFECT_API_URL": prefect_harness}, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        jobs = cfg.work_dir / "crawl"
        deadline = time.monotonic() + 120
        while len(list(jobs.glob("*/crawl-*.warc.gz"))) < 2:
            assert proc.poll() is None, "the crawl ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        [job_dir] = list(jobs.iterdir())
        before = archived_urls(job_dir)
        assert 0 < len(before) < 31

        pipeline_flow(cfg, ["crawl"], "rerun", None, recrawl=True)
    after = archived_urls(job_dir)
    assert sorted(after) == expected  # every page once: none lost, none archived twice
    assert not list(job_dir.glob(".tmp-*"))
    wh = Warehouse(cfg.warehouse_path)
    logged = wh.query("SELECT url, count(*) AS n FROM crawl_log WHERE outcome = 'archived' GROUP BY url")
    assert sorted(r["url"] for r in logged) == expected and {r["n"] for r in logged} == {1}
