"""Provenance per checkpoint: exact documents with their split, times seen and source; unchanged for an older
checkpoint after a rerun, and different for the newer one by exactly the documents the rerun changed."""
import json

import pytest
from click.testing import CliRunner

from flows.cli import main
from tasks.config import parse_config
from tasks.registry import ORDER
from tests.helpers import TINY_TRAIN, write_prose_warc
from warehouse.lineage import Warehouse
from warehouse.provenance import checkpoint_documents, checkpoints_trained_on

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.slow]


def _config(tmp_path, **quality):
    data = {"paths": {"work_dir": str(tmp_path / "work")},
            "ingest": {"inputs": [str(tmp_path / "in" / "*.warc.gz")]},
            "tokenize": {"val_fraction": 0.2, "vocab_size": 300},
            "train": {**TINY_TRAIN, "max_steps": 6, "checkpoint_every": 3}, "quality": quality}
    return parse_config(data, base=tmp_path)


def _documents(wh, checkpoint):
    return {r["doc_id"]: r for r in checkpoint_documents(wh, checkpoint)["documents"]}


def test_provenance_is_exact_per_checkpoint_and_follows_a_rerun(tmp_path):
    from flows.pipeline import pipeline_flow

    (tmp_path / "in").mkdir()
    write_prose_warc(tmp_path / "in" / "prose.warc.gz", 30)
    to_train = ORDER[ORDER.index("ingest"):ORDER.index("train") + 1]
    cfg = _config(tmp_path)
    first_run = pipeline_flow(cfg, to_train, "manual", None)
    wh = Warehouse(cfg.warehouse_path)
    first = wh.run_dataset(first_run, "train")["dataset_id"]
    before = _documents(wh, first)
    tokens = wh.run_dataset(first_run, "tokenize")
    assert len(before) == tokens["records"] >= 20
    splits = {r["split"] for r in before.values()}
    assert splits == {"train", "val"} and all(r["times_seen"] == 0 for r in before.values() if r["split"] == "val")
    assert sum(r["times_seen"] > 0 for r in before.values()) > 0
    assert all(r["url"].startswith("http://site") and r["warc_file"].endswith("prose.warc.gz") and
               r["warc_offset"] is not None and r["record_id"].startswith("<urn:uuid:") for r in before.values())
    # tokens seen = rows x (seq_len + 1): every token of every training row is accounted for
    state_file = next(f["path"] for f in wh.dataset_files(first) if f["path"].endswith("state.json"))
    with open(state_file) as fh:
        state = json.load(fh)
    rows = state["tokens"] // TINY_TRAIN["seq_len"]
    assert sum(r["tokens_seen"] for r in before.values()) == rows * (TINY_TRAIN["seq_len"] + 1)

    # Rerun quality with a new parameter (one host blocked), and everything after it.
    blocked = "site1.example.org"
    cfg2 = _config(tmp_path, host_blocklist=[blocked])
    second_run = pipeline_flow(cfg2, to_train[to_train.index("quality"):], "rerun",
                               wh.run_dataset(first_run, "language"))
    second = wh.run_dataset(second_run, "train")["dataset_id"]
    assert second != first
    assert _documents(wh, first) == before  # the older checkpoint's answer is as it was
    after = _documents(wh, second)
    dropped = {d for d, r in before.items() if r["url"].startswith(f"http://{blocked}/")}
    assert dropped and set(after) == set(before) - dropped
    assert all(after[d]["split"] == before[d]["split"] for d in after)  # the split follows the document

    # The SQL view holds the same answer for every checkpoint.
    [row] = wh.user_query(f"SELECT count(*) AS n, sum(times_seen) AS t FROM checkpoint_documents "
                          f"WHERE checkpoint = '{second}'")
    assert (row["n"], row["t"]) == (len(after), sum(r["times_seen"] for r in after.values()))

    # The reverse questions: which checkpoints trained on a document, by id or by URL.
    for checkpoint, documents in ((first, before), (second, after)):
        seen = next(d for d, r in documents.items() if r["times_seen"] > 0)
        assert checkpoint in {r["checkpoint"] for r in checkpoints_trained_on(wh, doc_id=seen)}
        unseen = [d for d, r in documents.items() if r["times_seen"] == 0 and r["split"] == "train"]
        assert not unseen or checkpoint not in {r["checkpoint"] for r in checkpoints_trained_on(wh, doc_id=unseen[0])}
    kept = next(d for d, r in after.items() if r["times_seen"] > 0)
    gone = next(iter(dropped))
    by_url = {r["checkpoint"] for r in checkpoints_trained_on(wh, url=before[gone]["url"])}
    assert second not in by_url and (before[gone]["times_seen"] == 0 or first in by_url)

    runner = CliRunner()
    out = runner.invoke(main, ["provenance", second, "--warehouse", str(cfg.warehouse_path), "-n", "0", "--json"])
    assert out.exit_code == 0, out.output
    assert {json.loads(line)["doc_id"] for line in out.output.splitlines()} == set(after)
    out = runner.invoke(main, ["provenance", "--doc", kept, "--warehouse", str(cfg.warehouse_path)])
    assert out.exit_code == 0 and second in out.output
