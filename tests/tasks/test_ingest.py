import collections
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tasks.config import IngestConfig
from tasks.ingest import IngestStage, decode_html, expand_inputs
from tasks.shards import read_unit_manifest
from tasks.sharded import UnitFailed, run_unit
from tests.conftest import shared_path
from tests.helpers import page, write_cc2008_arc, write_mixed_warc, write_pages_warc


def ingest(tmp_path: Path, *inputs: Path, **cfg):
    stage = IngestStage(IngestConfig(inputs=[str(p) for p in inputs], **cfg))
    out = tmp_path / "out"
    results = [run_unit(stage, u, out) for u in stage.plan(stage.sources())]
    rows = [r for res in results for f in res.files for r in pq.read_table(out / f.name).to_pylist()]
    return rows, results


def test_mixed_warc_keeps_html_and_counts_every_skip(tmp_path):
    rows, [res] = ingest(tmp_path, write_mixed_warc(tmp_path / "m.warc.gz"), max_payload_bytes=20_000)
    by_url = {r["url"]: r for r in rows}
    assert set(by_url) == {"http://example.com/a", "http://example.com/latin", "http://example.com/gz",
                           "http://example.com/br", "http://example.com/nodate"}
    assert res.drops == {"not_html": 1, "http_status": 1, "payload_too_large": 1}
    # records that are not documents are counted by type, not as dropped documents
    assert res.notes == {"invalid_date": 1, "record_warcinfo": 1, "record_request": 1, "record_revisit": 1,
                         "record_metadata": 1}
    assert res.docs_in == 8 and res.docs_out == 5
    assert "Café ñandú" in by_url["http://example.com/latin"]["html"]
    assert by_url["http://example.com/latin"]["charset"] == "iso8859-1"
    assert "<h1>Gzipped</h1>" in by_url["http://example.com/gz"]["html"]
    assert "<h1>Brotli</h1>" in by_url["http://example.com/br"]["html"]
    a = by_url["http://example.com/a"]
    assert a["host"] == "example.com" and a["http_status"] == 200 and a["content_type"] == "text/html"
    assert a["fetch_time"].year == 2024 and by_url["http://example.com/nodate"]["fetch_time"] is None
    assert a["warc_file"] == str(tmp_path / "m.warc.gz") and a["warc_offset"] > 0


def test_offsets_point_at_the_record(tmp_path):
    from warcio.archiveiterator import ArchiveIterator

    path = write_mixed_warc(tmp_path / "m.warc.gz")
    rows, _ = ingest(tmp_path, path)
    with open(path, "rb") as fh:
        for row in rows:
            fh.seek(row["warc_offset"])
            record = next(iter(ArchiveIterator(fh)))
            assert record.rec_headers.get_header("WARC-Target-URI") == row["url"]


def test_uncompressed_warc(tmp_path):
    rows, [res] = ingest(tmp_path, write_mixed_warc(tmp_path / "m.warc", gzip_records=False))
    assert len(rows) == 6 and res.notes["record_request"] == 1


def test_doc_ids_are_stable_across_runs(tmp_path):
    path = write_mixed_warc(tmp_path / "m.warc.gz")
    a, _ = ingest(tmp_path / "1", path)
    b, _ = ingest(tmp_path / "2", path)
    assert [r["doc_id"] for r in a] == [r["doc_id"] for r in b]
    assert len({r["doc_id"] for r in a}) == len(a)


def test_truncated_gzip_keeps_what_came_before(tmp_path):
    import zlib

    path = write_pages_warc(tmp_path / "t.warc.gz", 20)
    data = path.read_bytes()
    ends, pos = [], 0
    while pos < len(data):  # where each record's gzip member ends
        member = zlib.decompressobj(31)
        member.decompress(data[pos:])
        pos = len(data) - len(member.unused_data)
        ends.append(pos)
    cut = int(len(data) * 0.55)
    while any(end - 24 <= cut <= end for end in ends):  # a cut in a member's trailer leaves its record whole
        cut -= 40
    path.write_bytes(data[:cut])
    rows, [res] = ingest(tmp_path, path)
    assert 8 <= len(rows) <= 11
    assert res.drops == {"read_error": 1}


def test_garbage_between_records_is_skipped_and_reading_resumes(tmp_path):
    a = write_pages_warc(tmp_path / "a.warc.gz", 5).read_bytes()
    b = write_pages_warc(tmp_path / "b.warc.gz", 5, start=5).read_bytes()
    path = tmp_path / "g.warc.gz"
    path.write_bytes(a + b"\x00garbage that is no gzip member\xff" * 50 + b)
    rows, [res] = ingest(tmp_path, path)
    assert len(rows) == 10
    assert res.drops == {"read_error": 1}


def test_garbage_in_uncompressed_warc(tmp_path):
    a = write_pages_warc(tmp_path / "a.warc", 3)
    import gzip

    raw = gzip.decompress(a.read_bytes())
    half = raw.index(b"WARC/1.", 10)
    path = tmp_path / "g.warc"
    path.write_bytes(raw[:half] + b"this line is junk\nand so is this\n" + raw[half:])
    rows, [res] = ingest(tmp_path, path)
    assert len(rows) == 3
    assert res.notes.get("malformed_record_boundary", 0) >= 1 or res.drops.get("read_error") == 1


def test_malformed_warc_header_is_a_counted_skip(tmp_path):
    import gzip

    raw = gzip.decompress(write_pages_warc(tmp_path / "a.warc.gz", 4).read_bytes())
    second = raw.index(b"WARC/1.", 10)
    broken = raw[:second] + raw[second:].replace(b"Content-Length: ", b"Content-Length: x", 1)
    path = tmp_path / "bad.warc"
    path.write_bytes(broken)
    rows, [res] = ingest(tmp_path, path)
    assert len(rows) >= 2 and sum(res.drops.values()) >= 1


def test_not_an_archive_fails_the_unit_naming_the_file(tmp_path):
    path = tmp_path / "notes.warc"
    path.write_text("this is a licence text, not an archive\n")
    with pytest.raises(UnitFailed, match=r"notes.warc is not a WARC, ARC or WET file"):
        ingest(tmp_path, path)


def test_missing_input_pattern(tmp_path):
    with pytest.raises(FileNotFoundError, match="matches no file"):
        expand_inputs([str(tmp_path / "*.warc.gz")])


def test_common_crawl_2008_arc_layout(tmp_path):
    bodies = [page(f"Arc {i}").encode() for i in range(3)]
    rows, [res] = ingest(tmp_path, write_cc2008_arc(tmp_path / "x.arc", bodies))
    assert [r["url"] for r in rows] == [f"http://arc.example.com/{i}" for i in range(3)]
    assert res.drops == {} and res.notes["record_warcinfo"] == 1 and res.docs_in == 3
    assert rows[0]["fetch_time"].year == 2008


def test_wet_conversion_records(tmp_path):
    import io

    from warcio.warcwriter import WARCWriter

    path = tmp_path / "x.warc.wet.gz"
    with open(path, "wb") as fh:
        w = WARCWriter(fh, gzip=True)
        w.write_record(w.create_warc_record("http://example.com/t", "conversion",
                                            payload=io.BytesIO("Plain text body.".encode()),
                                            warc_content_type="text/plain"))
    rows, _ = ingest(tmp_path, path)
    assert rows[0]["content_type"] == "text/plain" and rows[0]["html"] == "Plain text body."
    rows, [res] = ingest(tmp_path / "2", path, keep_conversions=False)
    assert rows == [] and res.drops == {} and res.notes == {"record_conversion": 1} and res.docs_in == 0


def test_output_shards_are_bounded(tmp_path):
    rows, [res] = ingest(tmp_path, write_pages_warc(tmp_path / "p.warc.gz", 25), shard_max_docs=10)
    assert [f.rows for f in res.files] == [10, 10, 5]


def test_finished_unit_is_skipped_on_rerun(tmp_path):
    path = write_pages_warc(tmp_path / "p.warc.gz", 5)
    _, [first] = ingest(tmp_path, path)
    assert not first.resumed
    _, [again] = ingest(tmp_path, path)
    assert again.resumed and again.files == first.files
    assert read_unit_manifest(tmp_path / "out", "part-00000") is not None


def test_decode_html_fallbacks():
    assert decode_html("é".encode("utf-8"), "bogus-charset")[0] == "é"
    text, charset, fell_back = decode_html(b"caf\xe9 \x81", "utf-8")
    assert charset == "cp1252" and fell_back and text.startswith("café")
    assert decode_html('<meta charset="iso-8859-2">\xb1'.encode("latin-1"), None)[0].endswith("ą")


def test_shared_corpora_ingest_without_crashing(tmp_path):
    warc_dir = shared_path("corpora", "warc")
    inputs = [str(warc_dir / "**" / p) for p in ("*.warc", "*.warc.gz", "*.arc", "*.wet.gz")]
    stage = IngestStage(IngestConfig(inputs=inputs))
    files = stage.sources()
    totals, kept = collections.Counter(), 0
    for unit in stage.plan(files):
        res = run_unit(stage, unit, tmp_path / "out")
        totals.update(res.drops)
        totals.update(res.notes)
        kept += res.docs_out
    assert len(files) >= 18
    assert kept >= 400  # ~400 HTML responses across the archives
    assert totals["record_request"] > 0 and totals["record_revisit"] > 0 and totals["not_html"] > 0
    assert "record_error" not in totals


def test_fsspec_urls(tmp_path):
    import fsspec

    data = write_pages_warc(tmp_path / "p.warc.gz", 4).read_bytes()
    with fsspec.open("memory://crawl/p.warc.gz", "wb") as fh:
        fh.write(data)
    rows, [res] = ingest(tmp_path / "mem", "memory://crawl/*.warc.gz")
    assert len(rows) == 4 and rows[0]["warc_file"].startswith("memory://") and rows[0]["warc_file"].endswith("/crawl/p.warc.gz") and res.bytes_in == len(data)
    rows, _ = ingest(tmp_path / "file", f"file://{tmp_path}/p.warc.gz")
    assert len(rows) == 4


def test_whole_file_gzip_stream(tmp_path, monkeypatch):
    import gzip

    plain = write_mixed_warc(tmp_path / "m.warc", gzip_records=False).read_bytes()
    path = tmp_path / "single.warc.gz"
    path.write_bytes(gzip.compress(plain))  # one gzip stream, not a member per record
    rows, [res] = ingest(tmp_path / "a", path)
    assert len(rows) == 6 and "single_gzip_stream" not in res.notes
    monkeypatch.setattr("tasks.records.MAX_MEMBER_BYTES", 1000)  # as if the stream were too big to hold
    rows, [res] = ingest(tmp_path / "b", path)
    assert len(rows) == 6 and res.notes["single_gzip_stream"] == 1


def test_a_corrupt_member_costs_one_record(tmp_path):
    from tasks.warc import gzip_members

    path = write_pages_warc(tmp_path / "p.warc.gz", 6)
    with open(path, "rb") as fh:
        members = list(gzip_members(fh))
    third = members[2]
    data = bytearray(path.read_bytes())
    data[third.offset + 40:third.offset + 60] = b"\xff" * 20  # inside the deflate stream
    path.write_bytes(bytes(data))
    rows, [res] = ingest(tmp_path, path)
    assert len(rows) == 5 and res.drops == {"read_error": 1}
    assert "corrupt gzip data" in pq.read_table(tmp_path / "out" / res.drops_file).column("detail")[0].as_py()


def test_looks_binary():
    from tasks.ingest import looks_binary

    assert looks_binary(b"<html>" + bytes(range(256)) * 40)
    assert looks_binary(b"\x89PNG\r\n\x1a\n" + bytes(300))
    assert not looks_binary(page("Text").encode())
    assert not looks_binary("<p>é ü 中文</p>".encode("utf-16"))


def test_saved_html_pages_are_one_document_each(tmp_path):
    import gzip as gz

    (tmp_path / "a.html").write_bytes(page("Plain page").encode("cp1252"))
    (tmp_path / "b.htm.gz").write_bytes(gz.compress(page("Gzipped page").encode()))
    (tmp_path / "empty.html").write_bytes(b"  \n")
    (tmp_path / "cut.html.gz").write_bytes(gz.compress(page("Cut").encode())[:60])
    stage = IngestStage(IngestConfig(inputs=[str(tmp_path / "*")]))
    results = [run_unit(stage, u, tmp_path / "out") for u in stage.plan(stage.sources([]))]
    assert sum(r.docs_in for r in results) == 4 and sum(r.docs_out for r in results) == 2
    drops = {k: v for r in results for k, v in r.drops.items()}
    assert drops == {"empty_payload": 1, "read_error": 1}
    rows = [row for f in sorted((tmp_path / "out").glob("part-*-0*.parquet")) for row in pq.read_table(f).to_pylist()]
    first = next(r for r in rows if r["warc_file"].endswith("a.html"))
    assert first["url"] == (tmp_path / "a.html").as_uri() and "Plain page" in first["html"]
    assert first["fetch_time"] is not None and first["warc_offset"] == 0


@pytest.mark.parametrize("shared", [False, True])
def test_arc_records_get_the_same_doc_ids_on_every_run(tmp_path, shared):
    """warcio gives an ARC record read as WARC a random WARC-Record-ID; keyed on it, a rerun would make new ids,
    new fingerprints and cache misses. ARC documents are keyed on URL and payload digest instead."""
    if shared:
        path = shared_path("corpora", "warc", "commoncrawl_2008_arc", "small-sample-1262850551027_8.arc")
    else:
        path = write_cc2008_arc(tmp_path / "x.arc", [page(f"Page {i}").encode() for i in range(4)])
    first, _ = ingest(tmp_path / "a", path)
    second, _ = ingest(tmp_path / "b", path)
    assert len(first) > 0 and [r["doc_id"] for r in first] == [r["doc_id"] for r in second]
