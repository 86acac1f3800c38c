import pyarrow.parquet as pq
import pytest

from tasks.config import ExtractConfig
from tasks.extract import SOURCE_COLUMNS, ExtractStage
from tasks.ingest import SCHEMA as INGEST_SCHEMA
from tasks.shards import DropLog, ShardResult, ShardWriter, finish_unit, write_dataset_manifest
from tasks.sharded import run_unit
from tests.helpers import page


def ingested(directory, htmls):
    """An ingest dataset holding the given (content_type, html) documents."""
    w = ShardWriter(directory, "part-00000", INGEST_SCHEMA, max_docs=10**6, max_bytes=10**12)
    for i, (ctype, html) in enumerate(htmls):
        w.add({"doc_id": f"d{i}", "url": f"http://e.com/{i}", "content_type": ctype, "html": html,
               "warc_file": "x.warc.gz", "warc_offset": i})
    write_dataset_manifest(directory, "ingest", "k", [finish_unit(directory, ShardResult("part-00000"), w, DropLog())])
    return directory


def extract(tmp_path, htmls, **cfg):
    stage = ExtractStage(ExtractConfig(**cfg))
    results = [run_unit(stage, u, tmp_path / "out") for u in stage.plan(ingested(tmp_path / "in", htmls))]
    rows = [r for res in results for f in res.files for r in pq.read_table(tmp_path / "out" / f.name).to_pylist()]
    drops = [r for res in results if res.drops_file
             for r in pq.read_table(tmp_path / "out" / res.drops_file).to_pylist()]
    return rows, {d["doc_id"]: d["reason"] for d in drops}


def test_main_text_and_title_without_boilerplate(tmp_path):
    rows, drops = extract(tmp_path, [("text/html", page("Library hours", 5))])
    [row] = rows
    assert row["title"] == "Library hours" and "reading rooms should stay open late" in row["text"]
    assert "Home | About | Contact" not in row["text"] and "html" not in row and drops == {}
    assert set(SOURCE_COLUMNS) <= set(row)


def test_plain_text_passes_through_and_empty_pages_are_dropped(tmp_path):
    rows, drops = extract(tmp_path, [("text/plain", "Already text."), ("text/html", "<html><body></body></html>")])
    assert [r["text"] for r in rows] == ["Already text."]
    assert drops == {"d1": "extract_empty"}


@pytest.mark.slow
def test_pathological_html_gives_counted_drops_not_crashes_or_hangs(tmp_path):
    deep = "<div>" * 100_000 + "deep text" + "</div>" * 100_000
    huge = "<html><body>" + "<p>word word word</p>" * 2_500_000 + "</body></html>"  # ~55 MB
    binary = "<html><body>" + "".join(chr(c) for c in range(1, 256)) * 200 + "</body></html>"
    bad_charset = "<html><body><p>" + "caf\ufffd na\ufffdve text " * 50 + "</p></body></html>"
    pages = [("text/html", deep), ("text/html", huge), ("text/html", binary), ("text/html", bad_charset),
             ("text/html", page("After the storm", 5))]
    rows, drops = extract(tmp_path, pages, cpu_time_limit_s=2)
    assert drops["d1"] == "extract_timeout"
    assert drops.get("d0") == "extract_too_deep"  # libxml2 keeps 255 levels: the text is out of reach
    assert rows[-1]["title"] == "After the storm"  # the worker was replaced and went on
    assert len(rows) + len(drops) == 5


def test_extraction_is_deterministic(tmp_path):
    pages = [("text/html", page(f"Page {i}", 4)) for i in range(5)]
    a, _ = extract(tmp_path / "a", pages)
    b, _ = extract(tmp_path / "b", pages)
    assert a == b


@pytest.mark.parametrize("sig, outcome", [("SIGTERM", "interrupted"), ("SIGINT", "interrupted"),
                                          ("SIGSEGV", "crash"), ("SIGKILL", "crash")])
def test_a_worker_stopped_by_a_user_signal_is_an_interruption_not_a_page_crash(sig, outcome):
    """A page that kills the extraction worker (a segfault, the OOM killer's SIGKILL) is that page's crash; a worker
    that someone stopped (Ctrl-C reaching it, a kill, a shutdown) says nothing about the page: the unit stops,
    unfinished, and is redone on the rerun."""
    import os
    import signal
    import time

    from tasks.extractors import IsolatedExtractor
    from tasks.procs import Interrupted

    extractor = IsolatedExtractor(ExtractConfig())
    try:
        assert extractor(page("Warm up"), "http://e.com/")[0] == "ok"
        os.kill(extractor._proc.pid, getattr(signal, sig))
        time.sleep(0.5)
        if outcome == "crash":
            status, message = extractor(page("Next"), "http://e.com/next")
            assert status == "crash" and f"exit code -{int(getattr(signal, sig))}" in message
        else:
            with pytest.raises(Interrupted, match=f"signal {int(getattr(signal, sig))}"):
                extractor(page("Next"), "http://e.com/next")
    finally:
        extractor.close()


@pytest.mark.slow
def test_pages_sent_ahead_come_back_in_order_past_a_replaced_worker():
    """The child is sent pages ahead of their answers; when one page takes it down (here the CPU cap), the pages
    queued behind it go to the new child, and every answer still comes back in its page's place."""
    from tasks.extractors import IsolatedExtractor

    huge = "<html><body>" + "<p>word word word</p>" * 2_500_000 + "</body></html>"
    pages = [(page("First"), "http://e.com/1"), None, (huge, "http://e.com/huge"), (page("Second"), "http://e.com/2"),
             None, (page("Third"), "http://e.com/3")]
    extractor = IsolatedExtractor(ExtractConfig(cpu_time_limit_s=1))
    try:
        answers = list(extractor.map(pages, ahead=2))
    finally:
        extractor.close()
    assert [status for status, _ in answers] == ["ok", "skip", "timeout", "ok", "skip", "ok"]
    assert [value[0] for status, value in answers if status == "ok"] == ["First", "Second", "Third"]


def test_a_reader_that_stops_early_leaves_no_answer_for_the_next():
    from tasks.extractors import IsolatedExtractor

    extractor = IsolatedExtractor(ExtractConfig())
    try:
        answers = extractor.map([(page(f"Page {i}"), None) for i in range(4)], ahead=3)
        assert next(answers)[1][0] == "Page 0"
        answers.close()  # three answers were still due: that child is gone, not read by the next caller
        assert extractor("<html><body><h1>Next</h1><p>" + "Words for the next page. " * 20 + "</p></body></html>",
                         None)[1][0] == "Next"
    finally:
        extractor.close()


def test_one_unit_alone_sends_its_pages_to_every_idle_child():
    """The last unit of a stage, or the only one, does not leave the pool's other children idle: its pages go to
    every child, and the answers come back in page order."""
    from tasks.extractors import ExtractorPool

    pool = ExtractorPool(ExtractConfig(), size=2)
    try:
        pages = [None if i % 4 == 0 else (page(f"Page {i}", 3), f"http://e.com/{i}") for i in range(14)]
        answers = list(pool.map(pages))
        assert [status for status, _ in answers] == ["skip" if i % 4 == 0 else "ok" for i in range(14)]
        assert [value[0] for status, value in answers if status == "ok"] == [f"Page {i}" for i in range(14) if i % 4]
        assert pool.count == 2 and len(pool.idle) == 2 and all(c._proc is not None for c in pool.idle)
    finally:
        pool.close()


def test_a_unit_that_starts_later_gets_a_borrowed_child_back():
    """A unit holding every child stops sending pages to the one it borrowed when another unit waits, and gives it
    back once it is empty: the later unit finishes long before the first, and no third child starts."""
    import threading
    import time

    from tasks.extractors import ExtractorPool

    pool = ExtractorPool(ExtractConfig(), size=2)
    later: list = []
    try:
        first = pool.map([(page(f"First {i}", 3), None) for i in range(60)])
        got = [next(first)]
        assert pool.count == 2 and not pool.idle  # both children are the first unit's now
        second = threading.Thread(target=lambda: later.extend(pool.map([(page(f"Second {i}", 3), None)
                                                                          for i in range(3)])))
        second.start()
        deadline = time.monotonic() + 10
        while not pool.waiting and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pool.waiting == 1
        second_done_at = None
        for answer in first:
            got.append(answer)
            if second_done_at is None and not second.is_alive():
                second_done_at = len(got)
        second.join(timeout=30)
        assert second_done_at is not None and second_done_at < 50, second_done_at
        assert [v[0] for _, v in got] == [f"First {i}" for i in range(60)]
        assert [v[0] for _, v in later] == [f"Second {i}" for i in range(3)]
        assert pool.count == 2 and len(pool.idle) == 2
    finally:
        pool.close()


def test_a_pool_made_smaller_lends_no_more_children_than_its_size():
    """A run with one worker after a run with two in the same process: its unit extracts on one child."""
    from tasks.extractors import ExtractorPool

    pool = ExtractorPool(ExtractConfig(), size=2)
    try:
        list(pool.map([(page(f"Page {i}", 3), None) for i in range(6)]))
        assert pool.count == 2
        pool.resize(1)
        assert pool.count == 1 and len(pool.idle) == 1
        answers = pool.map([(page(f"Again {i}", 3), None) for i in range(6)])
        next(answers)
        assert pool.count == 1 and not pool.idle  # nothing idle to borrow, and no second child started
        assert [v[0] for _, v in answers] == [f"Again {i}" for i in range(1, 6)]
    finally:
        pool.close()


def test_a_child_that_stops_answering_costs_one_page_its_wall_time_cap_and_nothing_else():
    """A child that blocks without using CPU (stopped here with SIGSTOP) is caught by the wall-time cap: its page is
    a timeout, the pages queued behind it go to a new child, and every other answer comes back in its place."""
    import os
    import signal

    from tasks.extractors import ExtractorPool

    pool = ExtractorPool(ExtractConfig(wall_time_limit_s=1), size=2)
    try:
        pool.warm()
        os.kill(pool.idle[0]._proc.pid, signal.SIGSTOP)
        answers = list(pool.map([(page(f"Page {i}", 3), None) for i in range(6)]))
    finally:
        pool.close()
    timeouts = [value for status, value in answers if status == "timeout"]
    assert len(timeouts) == 1 and "wall time" in timeouts[0]
    assert [value[0] for status, value in answers if status == "ok"] == [
        f"Page {i}" for i, (status, _) in enumerate(answers) if status == "ok"]
    assert len(answers) == 6


@pytest.mark.slow
def test_real_pages_give_the_same_shards_on_two_children_as_on_one(tmp_path):
    """Real news, blog and test pages (shared corpora) with their URLs: the unit's pages spread over two children
    give exactly the shards and drops one child gives."""
    from tasks import docpool, extractors

    htmls = [("text/html", html) for html, _ in _real_pages()[:80]]
    htmls[5] = ("text/plain", "Already text.")
    htmls[9] = ("text/html", "<html><body></body></html>")
    try:
        docpool.configure(2)
        two = extract(tmp_path / "two", htmls)
        assert extractors.pool_for(ExtractConfig()).count == 2
        extractors.shutdown()
        docpool.configure(1)
        one = extract(tmp_path / "one", htmls)
    finally:
        extractors.shutdown()
        docpool.configure(1)
    assert two == one and len(one[0]) > 60 and one[1]["d9"] == "extract_empty"


def test_ctrl_c_stops_a_unit_between_answers_and_the_pool_goes_on():
    from tasks.extractors import ExtractorPool
    from tasks.procs import STOP, Interrupted

    pool = ExtractorPool(ExtractConfig(), size=2)
    try:
        answers = pool.map([(page(f"Page {i}", 3), None) for i in range(10)])
        next(answers)
        STOP.set()
        with pytest.raises(Interrupted):
            list(answers)
        STOP.clear()
        assert [value[0] for _, value in pool.map([(page("After", 3), None)])] == ["After"]
    finally:
        STOP.clear()
        pool.close()


@pytest.mark.slow
def test_a_units_pages_spread_over_children_come_back_in_order_past_a_replaced_one():
    from tasks.extractors import ExtractorPool

    huge = "<html><body>" + "<p>word word word</p>" * 2_500_000 + "</body></html>"
    pages = [(page("First"), "http://e.com/1"), None, (huge, "http://e.com/huge"), (page("Second"), "http://e.com/2"),
             None, (page("Third"), "http://e.com/3"), (page("Fourth"), "http://e.com/4")]
    pool = ExtractorPool(ExtractConfig(cpu_time_limit_s=1), size=2)
    try:
        answers = list(pool.map(pages))
    finally:
        pool.close()
    assert [status for status, _ in answers] == ["ok", "skip", "timeout", "ok", "skip", "ok", "ok"]
    assert [value[0] for status, value in answers if status == "ok"] == ["First", "Second", "Third", "Fourth"]


def _with_metadata(html, url, cfg):
    """What extraction gave when it ran trafilatura's whole metadata pass to get the title."""
    import trafilatura

    doc = trafilatura.bare_extraction(html, url=url, with_metadata=True, include_comments=cfg.include_comments,
                                      include_tables=cfg.include_tables, favor_precision=cfg.favor_precision,
                                      favor_recall=cfg.favor_recall, deduplicate=cfg.deduplicate)
    return (None, "") if doc is None else (doc.title, doc.text or "")


def _real_pages():
    """Real pages from the shared corpora: news and blog pages with their URLs, and readability's test pages."""
    import gzip
    import json

    from tests.conftest import shared_path

    aeb = shared_path("corpora", "html", "scrapinghub_aeb")
    truth = json.loads((aeb / "ground-truth.json").read_text())
    pages = [(gzip.open(f).read().decode("utf-8", "replace"), truth.get(f.name.split(".")[0], {}).get("url"))
             for f in sorted((aeb / "html").glob("*.html.gz"))]
    moz = shared_path("corpora", "html", "mozilla_readability_testpages")
    return pages + [(gzip.open(f).read().decode("utf-8", "replace"), None)
                    for f in sorted(moz.glob("*/source.html.gz"))]


@pytest.mark.slow
def test_title_and_text_are_those_of_the_metadata_pass_on_real_pages():
    """The title is taken from the parsed tree, without trafilatura's metadata pass (2.2x the extraction's cost):
    on 311 real pages, with their URLs and without, title and text are exactly what the metadata pass gave."""
    from tasks.extractors import extract as extract_page

    cfg = ExtractConfig()
    pages = _real_pages()
    assert len(pages) > 300
    for html, url in pages:
        for u in (url, None):
            assert extract_page(html, u, cfg) == _with_metadata(html, u, cfg), u


def test_title_and_text_are_those_of_the_metadata_pass_on_pydoc_pages(pydoc_warc):
    from warcio.archiveiterator import ArchiveIterator

    from tasks.extractors import extract as extract_page

    cfg = ExtractConfig()
    with open(pydoc_warc, "rb") as fh:
        pages = [(r.content_stream().read().decode(), r.rec_headers.get_header("WARC-Target-URI"))
                 for r in ArchiveIterator(fh) if r.rec_type == "response"]
    assert len(pages) >= 30
    for html, url in pages[:30]:
        got = extract_page(html, url, cfg)
        assert got == _with_metadata(html, url, cfg) and got[0] and got[1]


def test_a_title_the_metadata_steps_fail_on_keeps_the_pages_text(monkeypatch):
    """Fault injection: trafilatura's meta-tag reader raising on a page costs its title, not its text."""
    import trafilatura.metadata

    from tasks.extractors import extract as extract_page

    def broken(tree):
        raise ValueError("a meta tag trafilatura cannot read")

    monkeypatch.setattr(trafilatura.metadata, "examine_meta", broken)
    title, text = extract_page(page("Library hours", 5), "http://e.com/1", ExtractConfig())
    assert title is None and "reading rooms should stay open late" in text
