"""The select stage in a pipeline: its models are datasets in the warehouse with what they trained on, its drops and
scores reach the funnel and the next stages, a changed setting reruns select and what follows only, and with
selection off decontaminate reads dedup's output directly."""
import pyarrow.parquet as pq
import pytest

from tasks.config import parse_config
from tests.helpers import TINY_TRAIN, write_prose_warc
from warehouse.lineage import Warehouse

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_select_in_a_pipeline_records_its_models_and_reruns_alone(tmp_path):
    from flows.demo_data import write_docstrings
    from flows.pipeline import pipeline_flow
    from tasks.registry import ORDER

    warc = write_prose_warc(tmp_path / "web.warc.gz", 30)
    docstrings = write_docstrings(tmp_path / "docstrings.jsonl")
    data = {
        "paths": {"work_dir": str(tmp_path / "work")},
        "ingest": {"inputs": [str(warc)], "shard_max_docs": 10},
        "sources": [{"name": "docstrings", "inputs": [str(docstrings)], "format": "jsonl", "id_field": "id",
                     "epochs": 0, "val_docs": 50}],
        "select": {"reference": "docstrings", "shard_max_docs": 100,
                   "classifier": {"enabled": True, "epochs": 20, "top_fraction": 0.5},
                   "perplexity": {"enabled": True, "vocab_size": 512, "depth": 1, "d_model": 64, "seq_len": 64,
                                  "batch_size": 4, "steps": 20, "device": "cpu"}},
        "tokenize": {"vocab_size": 512},
        "train": TINY_TRAIN,
    }
    stages = ORDER[:ORDER.index("tokenize") + 1]
    run_id = pipeline_flow(parse_config(data, base=tmp_path), stages, "manual", None)
    wh = Warehouse(tmp_path / "work" / "warehouse.duckdb")
    runs = {s["stage"]: s for s in wh.stage_runs(run_id)}
    assert runs["select"]["status"] == "completed"
    web_in = next(f["docs_in"] for f in wh.source_figures(run_id) if f["stage"] == "select" and f["source"] == "web")
    funnel = {(f["source"], f["reason"]): f["docs"] for f in wh.source_funnel(run_id) if f["stage"] == "select"}
    assert funnel[("web", "quality_classifier")] == web_in - -(-web_in // 2)  # the top half stays
    assert ("web", "perplexity") in funnel and not any(s == "docstrings" for s, _ in funnel)

    # decontaminate read select's output, and the scores travel on
    decon = wh.run_dataset(run_id, "decontaminate")
    assert [d["stage"] for d in wh.lineage(decon["dataset_id"])][:3] == ["decontaminate", "select", "dedup"]
    rows = [r for f in wh.dataset_files(decon["dataset_id"])
            for r in pq.read_table(f["path"], columns=["source", "quality_score", "perplexity"]).to_pylist()]
    assert all(r["quality_score"] is not None and r["perplexity"] > 1 for r in rows if r["source"] == "web")
    assert all(r["quality_score"] is None for r in rows if r["source"] == "docstrings")

    # both models are datasets named by their hashes, made from dedup's output, with their training samples
    dedup_id = wh.run_dataset(run_id, "dedup")["dataset_id"]
    models = {d["stage"]: d for d in wh.query("SELECT * FROM datasets WHERE stage IN "
                                              "('quality_classifier', 'reference_lm')")}
    assert set(models) == {"quality_classifier", "reference_lm"}
    for model in models.values():
        files = [f["path"] for f in wh.dataset_files(model["dataset_id"])]
        assert any(p.endswith("_sample.parquet") for p in files)
        assert [d["stage"] for d in wh.lineage(model["dataset_id"])][1] == "dedup"
        assert wh.lineage(model["dataset_id"])[1]["dataset_id"] == dedup_id
    auc = wh.query("SELECT value FROM metrics WHERE name = 'select.classifier.val_auc'")
    assert auc and auc[0]["value"] > 0.9

    # the report shows the models and the cut-offs
    from tasks.report import build
    from warehouse.report import report_data

    markdown = build(report_data(wh, run_id)).markdown()
    assert "### Model-based selection" in markdown and "held-out ROC AUC" in markdown
    assert "| select | quality_classifier |" in markdown

    # a new fraction reruns select and what follows; everything before is a cache hit
    data["select"]["classifier"]["top_fraction"] = 0.8
    again = pipeline_flow(parse_config(data, base=tmp_path), stages, "manual", None)
    hits = {s["stage"]: s["cache_hit"] for s in wh.stage_runs(again)}
    assert all(hits[s] for s in ("ingest", "extract", "language", "quality", "dedup")) and not hits["select"]

    # selection off: select is skipped and decontaminate reads dedup
    data["select"]["classifier"]["enabled"] = data["select"]["perplexity"]["enabled"] = False
    off = pipeline_flow(parse_config(data, base=tmp_path), stages, "manual", None)
    assert "select" not in {s["stage"] for s in wh.stage_runs(off)}
    decon = wh.run_dataset(off, "decontaminate")
    assert [d["stage"] for d in wh.lineage(decon["dataset_id"])][:2] == ["decontaminate", "dedup"]
