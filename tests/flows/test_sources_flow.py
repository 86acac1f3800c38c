"""A crawl plus curated sources through the whole pipeline: the source is carried to training, counted per source
in the warehouse, the curated copy survives dedup, the mixture is realised and validation is reported per source."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tasks.config import parse_config
from tests.helpers import TINY_TRAIN, prose, write_prose_warc
from warehouse.lineage import Warehouse

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_a_mixture_of_a_crawl_and_curated_sources_end_to_end(tmp_path):
    from flows.pipeline import pipeline_flow
    from tasks.registry import ORDER

    from tasks.config import QualityConfig
    from tasks.quality import QualityFilter

    warc = write_prose_warc(tmp_path / "web.warc.gz", 24)
    notes = tmp_path / "notes"
    notes.mkdir()
    rules = QualityFilter(QualityConfig())
    page = next(i for i in range(24) if rules.apply(prose(i, 30).replace("\n\n", "\n"), None)[0])
    (notes / "copy-of-a-page.txt").write_text(prose(page, 30))  # the same text as a crawled page that passes
    (notes / "short.txt").write_text("A short curated note the quality rules would drop.")
    for i in range(6):
        (notes / f"note-{i}.txt").write_text(prose(1000 + i, 30))
    with open(tmp_path / "wiki.jsonl", "w") as fh:
        for i in range(12):
            fh.write(json.dumps({"text": prose(2000 + i, 20), "id": f"w{i}"}) + "\n")
        fh.write("{broken\n")
    cfg = parse_config(data := {
        "paths": {"work_dir": str(tmp_path / "work")},
        "ingest": {"inputs": [str(warc)], "shard_max_docs": 10},
        "sources": [{"name": "notes", "inputs": [str(notes / "*.txt")], "format": "text", "epochs": 2,
                     "val_docs": 1},
                    {"name": "wiki", "inputs": [str(tmp_path / "wiki.jsonl")], "format": "jsonl", "id_field": "id",
                     "weight": 0.25, "val_docs": 2}],
        "tokenize": {"vocab_size": 512, "val_fraction": 0.15},
        "train": {**TINY_TRAIN, "max_steps": 4, "eval_every": 2, "checkpoint_every": 4},
    }, base=tmp_path)
    run_id = pipeline_flow(cfg, ORDER[:ORDER.index("train") + 1], "manual", None)
    wh = Warehouse(cfg.warehouse_path)
    assert wh.resolve_run(run_id)["status"] == "completed"

    figures = {(f["stage"], f["source"]): f for f in wh.source_figures(run_id)}
    assert figures[("ingest", "web")]["docs_out"] == 24 and figures[("ingest", "notes")]["docs_out"] == 8
    assert figures[("ingest", "wiki")]["docs_out"] == 12 and figures[("ingest", "wiki")]["dropped"] == 1
    assert figures[("quality", "notes")]["docs_out"] == 8  # curated text skips the quality rules by default
    # the crawled copy of page 3 is the exact duplicate; the curated copy (priority 1) survives
    dedup = {(f["source"], f["reason"]): f["docs"] for f in wh.source_funnel(run_id) if f["stage"] == "dedup"}
    assert dedup == {("web", "exact_duplicate"): 1}
    assert figures[("dedup", "notes")]["docs_out"] == 8
    assert figures[("dedup", "web")]["docs_out"] == figures[("quality", "web")]["docs_out"] - 1
    tok = {s: figures[("tokenize", s)] for s in ("web", "notes", "wiki")}
    assert tok["notes"]["epochs"] == 2 and tok["web"]["epochs"] == 1
    assert tok["notes"]["val_docs"] == 1 and tok["wiki"]["val_docs"] == 2
    assert abs(tok["wiki"]["share"] - 0.25) < 0.05 and tok["wiki"]["target_share"] == 0.25
    assert abs(sum(t["share"] for t in tok.values()) - 1) < 1e-9

    # every stage carried the source to the token shards, and the report of drops adds up per source
    for stage in ("extract", "language", "quality", "dedup", "decontaminate"):
        sources = {r["source"] for r in wh.query(f"SELECT DISTINCT source FROM docs_{stage}")}
        assert sources == {"web", "notes", "wiki"}, stage
    totals = {f["reason"]: f["docs"] for f in wh.funnel(run_id) if f["dropped"] and f["stage"] == "dedup"}
    assert totals == {"exact_duplicate": 1}

    # validation per source, and provenance with each document's repeats
    names = {r["name"] for r in wh.query("SELECT DISTINCT name FROM metrics WHERE name LIKE 'train.val_bpb/%'")}
    assert names == {"train.val_bpb/web", "train.val_bpb/notes", "train.val_bpb/wiki"}
    [prov] = wh.query("SELECT f.path FROM dataset_files f JOIN datasets d USING (dataset_id) "
                      "WHERE d.format = 'checkpoint' AND f.path LIKE '%provenance-%' ORDER BY f.path DESC LIMIT 1")
    table = pq.read_table(prov["path"]).to_pylist()
    repeats = {(r["source"], r["split"]): r["repeats"] for r in table}
    assert repeats[("notes", "train")] == 2 and repeats[("web", "train")] == 1 and repeats[("wiki", "val")] == 0

    # check-shards checks the mixture's repeat counts against the shards, and its hash against the manifest
    from tasks.mixture import MIXTURE_FILE, read_mixture, write_mixture
    from tasks.token_shards import ShardCheckError
    from tasks.tokenize import TokenizeStage

    tokens = Path(wh.run_dataset(run_id, "tokenize")["uri"])
    assert TokenizeStage.check(tokens)
    mixture = read_mixture(tokens)
    first = sorted(mixture)[0]
    write_mixture(tokens, {**mixture, first: mixture[first][:-1]})
    with pytest.raises(ShardCheckError, match=MIXTURE_FILE):
        TokenizeStage.check(tokens)

    # a new weight reruns tokenize (and what follows) only: the sources are read and filtered as before
    data["sources"][1]["weight"] = 0.4
    again = pipeline_flow(parse_config(data, base=tmp_path), ORDER[:ORDER.index("tokenize") + 1], "manual", None)
    hits = {s["stage"]: s["cache_hit"] for s in wh.stage_runs(again)}
    assert all(hits[s] for s in ("ingest", "extract", "language", "quality", "dedup", "decontaminate"))
    assert not hits["tokenize"]
    shares = {f["source"]: f["share"] for f in wh.source_figures(again) if f["stage"] == "tokenize"}
    assert abs(shares["wiki"] - 0.4) < 0.05

    # the report and the dashboard show every source: a table, and validation curves per source
    from tasks.report import build
    from warehouse.report import report_data

    markdown = build(report_data(wh, run_id)).markdown()
    assert "## Sources" in markdown and "| wiki |" in markdown and "25.0%" in markdown
    _dashboard_shows_the_sources(wh.path, run_id)


def _dashboard_shows_the_sources(warehouse, run_id):
    from flows.dashboard import _run_view
    from tests.flows.test_dashboard import CHROMIUM, dashboard_page
    from warehouse.lineage import Warehouse

    snapshot = _run_view(Warehouse(warehouse), run_id)  # what /api/runs/<run> serves
    assert [r["source"] for r in snapshot["source_overview"]["rows"]] == ["notes", "web", "wiki"]
    assert {k for k in snapshot["training"]["curves"] if k.startswith("val_bpb/")} == {
        "val_bpb/notes", "val_bpb/web", "val_bpb/wiki"}
    if CHROMIUM is None:
        return  # the page itself needs Debian's chromium
    from playwright.sync_api import expect

    with dashboard_page(warehouse, 1400, 1400) as (page, url, errors):
        page.goto(f"{url}/#{run_id}")
        expect(page.locator("#sources-table tbody tr")).to_have_count(3)
        expect(page.locator("#sources-table tr[data-source=wiki]")).to_contain_text("25.0%")
        chart = page.locator("#curves .chart[data-curve=val_bpb]")
        expect(chart.locator("polyline.series")).to_have_count(3)
        expect(chart.locator(".legend")).to_contain_text("notes")
    assert not errors, errors
