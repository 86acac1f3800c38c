"""Ingest from a Common Crawl style listing over HTTP, as a user with `warc.paths.gz` does: the listing and the
WARC files served by a real local server (Range, ETag; one connection reset mid-file), against reading the same
files from disk. The shared corpora's WARCs join the generated ones when ../shared is there."""
import gzip
import hashlib
import shutil

import pytest

from tasks.config import parse_config
from tests.conftest import SHARED
from tests.helpers import write_cc2008_arc, write_mixed_warc, write_pages_warc
from tests.sites import FileServer
from warehouse.lineage import Warehouse

pytestmark = pytest.mark.usefixtures("prefect_harness")
PREFIX = "crawl-data/CC-TEST/segments/0/warc"


def _served(tmp_path):
    """The files to serve, under the listing's paths: generated WARCs (and an ARC), plus the shared corpora's."""
    root = tmp_path / "served"
    segment = root / PREFIX
    segment.mkdir(parents=True)
    write_pages_warc(segment / "pages.warc.gz", 30)
    write_mixed_warc(segment / "mixed.warc.gz")
    write_cc2008_arc(segment / "old.arc.gz", [b"<html><body><p>An archived page from 2008.</p></body></html>"] * 3)
    archives = (SHARED / "corpora" / "warc").glob("*/*")  # every crawl archive there (15 MB), as the shared config
    shared = sorted(p for p in archives if p.name.endswith((".warc", ".warc.gz", ".wet.gz", ".arc")))
    for i, p in enumerate(shared):
        shutil.copy(p, segment / f"shared-{i}-{p.name}")
    names = sorted(p.name for p in segment.iterdir())
    (root / "warc.paths.gz").write_bytes(gzip.compress("".join(f"{PREFIX}/{n}\n" for n in names).encode()))
    return root, names


def _ingest(tmp_path, name, source):
    from flows.pipeline import pipeline_flow

    cfg = parse_config({"paths": {"work_dir": str(tmp_path / name)}, "sources": [source]}, base=tmp_path)
    run_id = pipeline_flow(cfg, ["ingest"], "manual", None)
    wh = Warehouse(cfg.warehouse_path)
    docs = wh.query("SELECT url, warc_offset, record_id, md5(html) AS h FROM docs_ingest ORDER BY ALL")
    return wh, run_id, docs


def test_a_listing_over_http_reads_what_the_files_on_disk_give_through_a_reset(tmp_path):
    root, names = _served(tmp_path)
    biggest = max(names, key=lambda n: (root / PREFIX / n).stat().st_size)
    size = (root / PREFIX / biggest).stat().st_size
    with FileServer(root, cut={f"/{PREFIX}/{biggest}": size // 2}, how="reset") as server:
        listing = {"paths": f"{server.base}/warc.paths.gz", "base": server.base + "/"}
        remote_wh, run_id, remote = _ingest(tmp_path, "remote", {"name": "cc", "listing": listing})
    local_wh, _, local = _ingest(tmp_path, "local", {"name": "cc", "inputs": [str(root / PREFIX / "*")]})
    assert len(names) == 3 + (18 if (SHARED / "corpora" / "warc").is_dir() else 0)

    # the same documents, once each: the dropped connection was resumed, nothing read twice or lost
    strip = [{k: v for k, v in d.items() if k != "record_id" or not str(v).startswith("<urn:uuid")} for d in remote]
    assert len(remote) == len(local) > 30 and strip == [{k: v for k, v in d.items() if k != "record_id"
                                                         or not str(v).startswith("<urn:uuid")} for d in local]
    ingest = [s for s in remote_wh.stage_runs(run_id) if s["stage"] == "ingest"][0]
    assert ingest["status"] == "completed" and ingest["bytes_in"] == sum(
        (root / PREFIX / n).stat().st_size for n in names)
    facts = {f["name"]: f["value"] for f in remote_wh.stage_facts(run_id)}
    assert facts["ingest.http_reconnects"] == 1
    # every file of the listing, by URL, with its size and the SHA-256 of what was streamed
    source = [d for d in remote_wh.lineage(ingest["output_dataset_id"]) if d["stage"] == "source"][0]
    files = {f["path"]: f for f in remote_wh.dataset_files(source["dataset_id"])}
    assert sorted(files) == [f"{server.base}/{PREFIX}/{n}" for n in names]
    for n in names:
        data = (root / PREFIX / n).read_bytes()
        row = files[f"{server.base}/{PREFIX}/{n}"]
        assert row["bytes"] == len(data) and row["content_hash"] == hashlib.sha256(data).hexdigest(), n
    # the same drops and notes, counted the same way
    assert sorted((f["reason"], f["docs"]) for f in remote_wh.funnel(run_id)) == sorted(
        (f["reason"], f["docs"]) for f in local_wh.funnel(local_wh.runs()[0]["run_id"]))


def test_a_listing_selection_and_an_unreachable_listing(tmp_path):
    from tasks.inputs import expand_listing
    from tasks.config import SourceConfig

    root, names = _served(tmp_path)
    with FileServer(root) as server:
        listing = {"paths": f"{server.base}/warc.paths.gz", "base": server.base + "/", "range": [1, 3], "first": 1}
        [one] = expand_listing(SourceConfig(name="cc", listing=listing))
        assert one.uri == f"{server.base}/{PREFIX}/{names[1]}" and one.size == (root / PREFIX / names[1]).stat().st_size
        assert one.version.startswith('"')  # the ETag
        gone = {"paths": f"{server.base}/missing.paths.gz", "base": server.base + "/"}
        with pytest.raises(OSError, match="404"):
            expand_listing(SourceConfig(name="cc", listing=gone))


def test_curated_text_and_a_saved_page_over_http(tmp_path):
    """Other formats over https: gzipped JSON Lines decompressed by their suffix, and a saved page dated by the
    server's Last-Modified (as a file on disk is by its mtime)."""
    import json
    import os

    root = tmp_path / "served"
    root.mkdir()
    lines = [json.dumps({"text": f"A curated note number {i}, long enough to count as a document."}) for i in range(7)]
    (root / "notes.jsonl.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n{broken\n").encode()))
    (root / "page.html").write_text("<html><head><title>T</title></head><body><p>A saved page.</p></body></html>")
    os.utime(root / "page.html", (1_700_000_000, 1_700_000_000))
    with FileServer(root) as server:
        wh, run_id, docs = _ingest(tmp_path, "notes", {"name": "notes", "format": "jsonl",
                                                       "inputs": [f"{server.base}/notes.jsonl.gz"]})
        assert len(docs) == 7
        assert {(f["reason"], f["docs"]) for f in wh.funnel(run_id) if f["dropped"]} == {("bad_json", 1)}
        wh, run_id, _ = _ingest(tmp_path, "page", {"name": "web", "format": "html",
                                                   "inputs": [f"{server.base}/page.html"]})
        [page] = wh.query("SELECT url, epoch(fetch_time) AS t FROM docs_ingest")
        assert page["url"] == f"{server.base}/page.html" and page["t"] == 1_700_000_000


def test_saved_pages_over_http_without_a_usable_last_modified_are_kept_undated_and_counted(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    for name in ("none", "garbage", "good"):
        (root / f"{name}.html").write_text(f"<html><body><p>A saved page, {name}.</p></body></html>")
    with FileServer(root, last_modified={"/none.html": None, "/garbage.html": "last Tuesday"}) as server:
        wh, run_id, _ = _ingest(tmp_path, "pages", {"name": "web", "format": "html", "inputs": [
            f"{server.base}/{name}.html" for name in ("none", "garbage", "good")]})
        dated = {r["url"].rsplit("/", 1)[1]: r["t"] for r in wh.query("SELECT url, fetch_time AS t FROM docs_ingest")}
        assert set(dated) == {"none.html", "garbage.html", "good.html"}
        assert dated["none.html"] is None and dated["garbage.html"] is None and dated["good.html"] is not None
        [ingest] = [s for s in wh.stage_runs(run_id) if s["stage"] == "ingest"]
        assert ingest["docs_out"] == 3
        notes = {f["reason"]: f["docs"] for f in wh.funnel(run_id) if not f["dropped"]}
        assert notes.get("invalid_date") == 2
