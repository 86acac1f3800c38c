"""The bad-input corpus (tests/bad_inputs.py) through every data stage: no crash, no hang, and every record that
goes in comes out either kept or counted as dropped with its reason."""
from __future__ import annotations

import pytest

from tasks.config import parse_config
from tests.bad_inputs import write_bad_corpus
from tests.flows.test_pipeline import DATA, by_stage, run
from warehouse.lineage import Warehouse

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.mark.timeout(300)  # a hang fails here rather than at the suite's limit
def test_the_bad_input_corpus_passes_every_data_stage_and_every_drop_is_counted(tmp_path):
    files = write_bad_corpus(tmp_path / "bad")
    cfg = parse_config({"paths": {"work_dir": str(tmp_path / "work")},
                        "ingest": {"inputs": [str(p) for p in files.values()], "shard_max_docs": 10},
                        "quality": {"c4_drop_curly_bracket": False}}, base=tmp_path)
    stages, run_id = run(cfg, DATA[1:])  # no crawl: the corpus is the input
    data = [s for s in DATA[1:] if s != "select"]  # select is off, so skipped
    assert [s["status"] for s in stages] == ["completed"] * len(data)
    got = by_stage(stages)
    wh = Warehouse(cfg.warehouse_path)
    funnel = wh.funnel(run_id)
    for stage in data:
        dropped = sum(f["docs"] for f in funnel if f["stage"] == stage and f["dropped"])
        assert got[stage]["docs_in"] == got[stage]["docs_out"] + dropped, (stage, got[stage], dropped)
    ingest = {f["reason"]: f["docs"] for f in funnel if f["stage"] == "ingest"}
    assert ingest["read_error"] == 3  # two runs of garbage, one truncated member
    assert ingest["payload_too_large"] == 1 and ingest["binary_payload"] == 3 and ingest["empty_payload"] == 3
    assert ingest["content_length_overrun"] == 1  # and the records it swallowed are read again:
    assert ingest["invalid_date"] == 3 and ingest["charset_fallback"] >= 1  # kept, repaired, and noted
    kept = {r["url"] for r in wh.query("SELECT url FROM docs_extract")}
    for url in ["http://dates.example.org/0", "http://dates.example.org/1", "http://dates.example.org/2",
                "http://dates.example.org/3", "http://cs.example.org/latin-said-utf8", "http://cs.example.org/unknown",
                "http://cs.example.org/utf8-said-sjis", "http://cs.example.org/missing", "http://cs.example.org/bom",
                "http://good.example.org/garbage-a/1", "http://good.example.org/garbage-b/0",
                "http://good.example.org/truncated/1", "http://good.example.org/large/0",
                "http://good.example.org/empty/1", "http://good.example.org/lengths-b/0",
                "http://good.example.org/lengths-b/1"]:
        assert url in kept, url
    extract = {r["url"]: r["reason"] for r in wh.query("SELECT url, reason FROM doc_drops WHERE stage = 'extract'")}
    assert extract["http://empty.example.org/1"] == "extract_empty"
    assert extract["http://large.example.org/deep"] == "extract_too_deep"  # 100,000 levels: past libxml2's 255
    assert got["tokenize"]["docs_out"] > 0


def test_a_broken_benchmark_line_is_named_by_file_and_line(tmp_path):
    from click.testing import CliRunner

    from flows.cli import main
    from tests.bad_inputs import broken_benchmark

    path = broken_benchmark(tmp_path / "bench")
    result = CliRunner().invoke(main, ["benchmarks", "check", str(path.parent)])
    assert result.exit_code == 1 and f"{path}:2:" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_decompression_bombs_are_dropped_within_bounded_memory(tmp_path):
    """1 GiB behind Content-Encoding br, gzip and 'gzip, gzip', and a WARC record whose own gzip member inflates to
    1 GiB: each is a counted drop, the good page beside it is kept, and the process peaks under 600 MiB."""
    from tests.bombs import write_bomb_warcs
    from tests.tasks.test_crawl_safety import MAX_RSS_MIB, probe

    files = write_bomb_warcs(tmp_path / "bombs")
    got = probe("ingest", *(str(p) for p in files.values()))
    assert got["drops"] == {"payload_too_large": 3, "stacked_content_encoding": 1}, got
    assert got["urls"] == [f"http://good.example.org/{name}" for name in sorted(files)]
    assert got["peak_rss_mib"] < MAX_RSS_MIB, got


@pytest.mark.slow
def test_a_huge_benchmark_line_is_refused_within_bounded_memory(tmp_path):
    from tests.tasks.test_crawl_safety import MAX_RSS_MIB, probe

    bench = tmp_path / "bench"
    bench.mkdir()
    good = '{"query": "The glass fell off the table, therefore", "choices": ["it shattered.", "it sang."], "gold": 0}'
    with open(bench / "copa.jsonl", "w") as fh:
        fh.write(good + "\n")
        fh.write('{"query": "' + "word " * (106 * 2**20 // 5) + '", "choices": ["a", "b"], "gold": 0}\n')
    got = probe("benchmarks", str(bench))
    assert "copa.jsonl:2: a line longer than 1,048,576 bytes" in got["error"], got
    assert got["peak_rss_mib"] < MAX_RSS_MIB, got
