import json

import pyarrow as pa
import pytest

from tasks.config import ExtractConfig
from tasks.extract import ExtractStage
from tasks.shards import (DropLog, ShardResult, ShardWriter, finish_unit, fingerprint, iter_rows,
                          read_dataset_manifest, write_dataset_manifest)

SCHEMA = pa.schema([("doc_id", pa.string()), ("text", pa.string())])


def make_dataset(directory, sizes):
    """A dataset whose shards hold the given numbers of rows, as an upstream stage would leave it."""
    results = []
    n = 0
    for i, size in enumerate(sizes):
        w = ShardWriter(directory, f"part-{i:05d}", SCHEMA, max_docs=10**9, max_bytes=10**12)
        for _ in range(size):
            w.add({"doc_id": f"d{n}", "text": "x" * 10})
            n += 1
        results.append(finish_unit(directory, ShardResult(f"part-{i:05d}"), w, DropLog()))
    return write_dataset_manifest(directory, "up", "key", results)


def test_writer_rolls_on_docs_and_bytes(tmp_path):
    w = ShardWriter(tmp_path, "part-00000", SCHEMA, max_docs=3, max_bytes=25, size_column="text")
    for i in range(7):
        w.add({"doc_id": str(i), "text": "y" * 10})
    w.flush()
    assert [f.rows for f in w.files] == [2, 2, 2, 1]  # 25 bytes fit two 10-byte texts
    assert not list(tmp_path.glob(".tmp-*"))


def test_batches_and_rows_share_the_bounds_and_keep_their_order(tmp_path):
    import pyarrow.parquet as pq

    w = ShardWriter(tmp_path, "part-00000", SCHEMA, max_docs=4, max_bytes=25, size_column="text")
    w.add({"doc_id": "0", "text": "x" * 5})
    w.add_batch(pa.RecordBatch.from_pylist([{"doc_id": str(i), "text": "y" * 5} for i in range(1, 9)], schema=SCHEMA))
    w.add_batch(pa.RecordBatch.from_pylist([{"doc_id": "9", "text": "z" * 40}], schema=SCHEMA))  # a shard alone
    w.add({"doc_id": "10", "text": None})
    w.flush()
    shards = [[int(i) for i in pq.read_table(tmp_path / f.name)["doc_id"].to_pylist()] for f in w.files]
    assert shards == [[0, 1, 2, 3], [4, 5, 6, 7], [8], [9], [10]]
    assert [f.rows for f in w.files] == [4, 4, 1, 1, 1] and (w.docs_out, w.bytes_out) == (11, 85)


def test_drop_batches_and_rows_keep_their_order_counts_and_sources(tmp_path):
    import pyarrow.parquet as pq

    drops = DropLog()
    drops.source = "web"  # a record without a source gets the log's
    drops.add("too_short", doc_id="a", nbytes=3, detail="x" * 900)
    batch = pa.RecordBatch.from_pylist([{"doc_id": "b", "source": "books", "url": "u", "warc_offset": 7},
                                        {"doc_id": "c", "source": None, "url": None, "warc_offset": None}])
    drops.add_batch(batch, ["quality_classifier", "perplexity"], ["quality_classifier:0.1 < 0.5", None],
                    [10, 20])
    drops.add("too_short", doc_id="d", nbytes=4)
    writer = ShardWriter(tmp_path, "part-00000", SCHEMA, max_docs=10, max_bytes=1000)
    result = finish_unit(tmp_path, ShardResult("part-00000"), writer, drops)
    table = pq.read_table(tmp_path / result.drops_file)
    assert table.schema == DropLog.SCHEMA
    assert table["doc_id"].to_pylist() == ["a", "b", "c", "d"]
    assert table["source"].to_pylist() == ["web", "books", "web", "web"]
    assert table["detail"].to_pylist() == ["x" * 500, "quality_classifier:0.1 < 0.5", None, None]
    assert table["warc_offset"].to_pylist() == [None, 7, None, None] and table["warc_file"].null_count == 4
    assert result.drops == {"too_short": 2, "quality_classifier": 1, "perplexity": 1}
    assert result.drop_bytes == {"too_short": 7, "quality_classifier": 10, "perplexity": 20}


def test_plan_balances_uneven_upstream_shards(tmp_path):
    make_dataset(tmp_path, [1, 2, 95, 3, 1, 0, 18])
    stage = ExtractStage(ExtractConfig(shard_max_docs=20))
    units = stage.plan(tmp_path)
    sizes = [sum(s.stop - s.start for s in u.sources) for u in units]
    assert sizes == [20, 20, 20, 20, 20, 20]
    rows = [r["doc_id"] for u in units for r in stage.input_rows(u, ["doc_id"])]
    assert rows == [f"d{i}" for i in range(120)]  # every row once, in order


def test_iter_rows_slices_across_row_groups(tmp_path):
    make_dataset(tmp_path, [2500])
    path = tmp_path / "part-00000-000.parquet"
    got = [r["doc_id"] for r in iter_rows(path, ["doc_id"], 990, 2010)]
    assert got == [f"d{i}" for i in range(990, 2010)]


def test_dataset_manifest_and_fingerprint(tmp_path):
    m = make_dataset(tmp_path, [3, 4])
    again = read_dataset_manifest(tmp_path)
    assert again.fingerprint == m.fingerprint == fingerprint(m.files)
    assert again.records == 7 and len(again.files) == 2
    assert json.loads((tmp_path / "_dataset.json").read_text())["stage"] == "up"


def test_sealing_removes_files_no_manifest_claims(tmp_path):
    make_dataset(tmp_path, [3])
    stray = tmp_path / "part-00009-000.parquet"
    stray.write_bytes(b"half-written by a unit the plan no longer has")
    (tmp_path / ".tmp-part-00000-000.parquet.x").write_bytes(b"killed writer")
    results = [ShardResult.from_json(json.loads((tmp_path / "part-00000.json").read_text()))]
    write_dataset_manifest(tmp_path, "up", "key", results)
    assert not stray.exists() and not list(tmp_path.glob(".tmp-*"))


def test_incomplete_dataset_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="_dataset.json is missing"):
        read_dataset_manifest(tmp_path)
