"""The evaluation's clean/contaminated split and `--item` use exactly the documents that trained the checkpoint."""
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.provenance import SCHEMA as PROVENANCE_SCHEMA
from warehouse.lineage import Warehouse
from warehouse.provenance import checkpoints_trained_on, item_provenance, provenance_file


def _parquet(path, rows, schema=None):
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def test_an_item_counts_as_contaminated_only_through_documents_that_trained_the_checkpoint(tmp_path):
    wh = Warehouse(tmp_path / "w.duckdb")
    run = wh.start_run(config={}, config_hash="h", config_path=None, code_version="t", trigger="manual", stages=[])
    decon = wh.start_stage(run_id=run, stage="decontaminate", stage_key="k1", params={}, params_hash="p",
                           code_version="c", input_dataset_ids=[])
    # copa 0 was found in d1 (which trained), copa 1 in d2 (never reached), copa 2 in d3 (validation only)
    hits = [{"doc_id": d, "task": "copa", "item": i, "n": 8, "position": 0, "ngram": "x", "score": 1.0,
             "segment": "full"} for d, i in (("d1", 0), ("d2", 1), ("d3", 2))]
    wh.load_records("contamination_hits", decon, [_parquet(tmp_path / "hits.parquet", hits)])
    prov = _parquet(tmp_path / "provenance-step-0000010.parquet", [
        {"doc_id": "d1", "split": "train", "times_seen": 3, "tokens_seen": 90, "tokens": 40},
        {"doc_id": "d2", "split": "train", "times_seen": 0, "tokens_seen": 0, "tokens": 40},
        {"doc_id": "d3", "split": "val", "times_seen": 0, "tokens_seen": 0, "tokens": 40},
        {"doc_id": "d4", "split": "train", "times_seen": 1, "tokens_seen": 30, "tokens": 40}], PROVENANCE_SCHEMA)
    train = wh.start_stage(run_id=run, stage="train", stage_key="k2", params={}, params_hash="p", code_version="c",
                           input_dataset_ids=[])
    wh.record_dataset(dataset_id="checkpoint-a-0000010", stage="train", stage_key="k2", uri=str(tmp_path),
                      format="checkpoint", fingerprint="f", files=[(str(prov), None, 1, None)], parents=[],
                      created_by=train)
    evaluate = wh.start_stage(run_id=run, stage="evaluate", stage_key="k3", params={}, params_hash="p",
                              code_version="c", input_dataset_ids=[])
    items = [{"task": "copa", "item": i, "position": i, "kind": "multiple_choice", "prediction": 0, "gold": 0,
              "correct": i == 0, "losses": [0.1, 0.2]} for i in range(4)]
    wh.load_records("eval_items", evaluate, [_parquet(tmp_path / "items.parquet", items)])

    [exact] = wh.accuracy_by_contamination(evaluate, decon, provenance_file(wh, "checkpoint-a-0000010"))
    assert (exact["contaminated_n"], exact["contaminated_acc"], exact["clean_n"]) == (1, 1.0, 3)
    [loose] = wh.accuracy_by_contamination(evaluate, decon)  # every item the run found, trained on or not
    assert loose["contaminated_n"] == 3

    assert {r["doc_id"] for r in checkpoints_trained_on(wh, doc_ids=["d1", "d2", "d3"])} == {"d1", "d3"}
    found = item_provenance(wh, "copa", 0)
    assert [d["doc_id"] for d in found["documents"]] == ["d1"]
    assert [(c["checkpoint"], c["times_seen"], c["contaminated_in_evaluation"]) for c in found["checkpoints"]] == \
        [("checkpoint-a-0000010", 3, True)]
    assert item_provenance(wh, "copa", 1)["checkpoints"] == []  # found, but in a document never trained on
