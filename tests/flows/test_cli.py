"""The CLI as a user runs it: --help everywhere, the run/show/lineage/sql round trip, clear errors."""
import json
import re

import pytest
from click.testing import CliRunner

from flows.cli import main
from tasks.registry import ORDER

COMMANDS = [[], ["run"], ["stage"], ["demo"], ["runs"], ["show"], ["lineage"], ["provenance"], ["sql"], ["config"],
            ["config", "show"], ["benchmarks"], ["benchmarks", "fetch"], ["benchmarks", "smoke"],
            ["benchmarks", "check"], ["check-shards"], ["export"], ["report"], ["dashboard"], ["serve"], ["ablate"],
            ["train-node"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "crucible")
def test_every_command_has_help_with_an_example(command):
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example:" in result.output and "crucible" in result.output


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "crucible")
def test_help_fits_an_80_column_terminal(command):
    """Choice lists are named by a metavar (STAGE) and listed below, so no line wraps mid-word; only the examples,
    which are printed verbatim for copying, may run longer."""
    out = CliRunner().invoke(main, [*command, "--help"], terminal_width=80).output
    examples = out.split("Example")[1].split("Options:")[0].splitlines()[1:] if "Example" in out else []
    assert "Options:" in out and all(len(line) <= 80 for line in out.splitlines() if line not in examples), out


def test_the_stage_command_names_its_stages():
    out = CliRunner().invoke(main, ["stage", "--help"], terminal_width=80).output
    assert "[OPTIONS] STAGE CONFIG" in out and ", ".join(ORDER).split(", ")[-1] in out
    assert all(stage in out for stage in ORDER)


def test_every_command_is_covered():
    listed = {c[0] for c in COMMANDS if c}
    assert listed == set(main.commands)


def write_config(tmp_path, inputs_glob, extra=""):
    path = tmp_path / "c.toml"
    path.write_text(f'[paths]\nwork_dir = "{tmp_path / "work"}"\n[ingest]\ninputs = ["{inputs_glob}"]\n'
                    f'shard_max_docs = 5\n[extract]\nshard_max_docs = 5\n{extra}')
    return path


def test_config_show_prints_defaults_as_toml_that_loads_back(tmp_path):
    from tasks.config import load_config

    path = write_config(tmp_path, "x.warc.gz")
    result = CliRunner().invoke(main, ["config", "show", str(path)])
    assert result.exit_code == 0
    assert "max_payload_bytes = 10485760" in result.output and 'kind = "threads"' in result.output
    assert "# address = (unset)" in result.output
    shown = tmp_path / "shown.toml"
    shown.write_text(result.output)
    assert load_config(shown).digest() == load_config(path).digest()
    as_json = CliRunner().invoke(main, ["config", "show", str(path), "--json"])
    assert json.loads(as_json.output)["ingest"]["shard_max_docs"] == 5


def test_bad_config_exits_1_with_the_key_named(tmp_path):
    path = write_config(tmp_path, "x.warc.gz", "[runner]\nkind = 'ray'\n")
    result = CliRunner().invoke(main, ["run", str(path)])
    assert result.exit_code == 1
    assert "runner.kind" in result.output and "Traceback" not in result.output


def test_read_commands_on_a_missing_warehouse(tmp_path):
    result = CliRunner().invoke(main, ["runs", "--warehouse", str(tmp_path / "none.duckdb")])
    assert result.exit_code == 1 and "no warehouse at" in result.output


@pytest.mark.usefixtures("prefect_harness")
def test_run_show_lineage_sql_round_trip(tmp_path):
    from tests.helpers import TINY_TRAIN, write_prose_warc

    write_prose_warc(tmp_path / "a.warc.gz", 12)
    train = "\n".join(f"{k} = {json.dumps(v)}" for k, v in TINY_TRAIN.items() if k != "model")
    path = write_config(tmp_path, str(tmp_path / "*.warc.gz"), f"[train]\n{train}\n[train.model]\ndepth = 1\n"
                                                              f"d_model = 32\n")
    cli = CliRunner()
    result = cli.invoke(main, ["run", str(path)])
    assert result.exit_code == 0, result.output
    assert "ingest" in result.output and "completed" in result.output

    again = cli.invoke(main, ["run", str(path)])
    stages = len(ORDER) - 2  # every stage but crawl and select (off); all cache hits but the report, written anew
    assert again.exit_code == 0 and len(re.findall(r"│\s*hit\s*│", again.output)) == stages - 1, again.output

    wh = ["--config", str(path)]
    runs = cli.invoke(main, ["runs", *wh])
    assert runs.exit_code == 0 and runs.output.count("completed") == 2 and f"{stages} ({stages - 1} cached)" in runs.output

    report = cli.invoke(main, ["report", "latest", "--out", str(tmp_path / "report"), *wh])
    assert report.exit_code == 0, report.output
    page = (tmp_path / "report" / "report.html").read_text()
    assert "<h2>Evaluation</h2>" in page and "data:image/png;base64," in page
    listed = cli.invoke(main, ["sql", "SELECT run_id FROM pipeline_runs ORDER BY started_at", "--json", *wh])
    first, second = (json.loads(line)["run_id"] for line in listed.output.splitlines())
    compared = cli.invoke(main, ["report", "--compare", first, second, "--out", str(tmp_path / "cmp"), *wh])
    assert compared.exit_code == 0, compared.output
    cmp = (tmp_path / "cmp" / "compare.md").read_text()
    assert "The two runs have the same config." in cmp and "| CORE-7 (centered) |" in cmp and "| 0 |" in cmp

    show = cli.invoke(main, ["show", "latest", *wh])
    assert show.exit_code == 0 and "extract" in show.output and "hit" in show.output
    assert "contamination per benchmark" in show.output and "lambada_openai" in show.output  # the smoke set

    lineage = cli.invoke(main, ["lineage", "latest", "--files", *wh])
    assert lineage.exit_code == 0
    assert "source-" in lineage.output and "ingest-" in lineage.output and "a.warc.gz" in lineage.output
    assert "lineage of checkpoint-" in lineage.output  # a run's chain starts at what it trained, not its report
    assert "datasets/extract/" in lineage.output and str(tmp_path / "work") + "/datasets" not in lineage.output
    from flows.cli_base import console

    width = console.width
    console.width = 80  # a terminal of 80 columns: one line per dataset, nothing cut
    try:
        narrow = cli.invoke(main, ["lineage", "latest", *wh]).output
    finally:
        console.width = width
    assert max(len(line) for line in narrow.splitlines()) <= 80, narrow
    assert len([line for line in narrow.splitlines() if re.match(r"\s+\d+\s+\S+-", line)]) == stages - 1, narrow
    whole = [json.loads(line) for line in cli.invoke(main, ["lineage", "latest", "--json", *wh]).output.splitlines()]
    assert whole[0]["dataset_id"] in narrow and whole[0]["fingerprint"][:12] in narrow
    assert len(whole[0]["fingerprint"]) == 64 and whole[-1]["stage"] == "source"

    sql = cli.invoke(main, ["sql", "SELECT count(*) AS n FROM doc_lineage WHERE kept_extract", "--json", *wh])
    assert sql.exit_code == 0 and json.loads(sql.output) == {"n": 12}
    first = cli.invoke(main, ["sql", "SELECT * FROM doc_lineage LIMIT 1", "--json", *wh])
    kept = [c for c in json.loads(first.output) if c.startswith("kept_")]  # in pipeline order, whatever ran last
    assert kept == ["kept_extract", "kept_language", "kept_quality", "kept_dedup", "kept_decontaminate"], kept

    checked = cli.invoke(main, ["check-shards", "latest", *wh])
    assert checked.exit_code == 0 and "shards check out" in checked.output, checked.output

    exported = cli.invoke(main, ["export", "latest", str(tmp_path / "hf"), *wh])
    assert exported.exit_code == 0, exported.output
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert (tmp_path / "hf" / "model.safetensors").is_file() and (tmp_path / "hf" / "tokenizer.json").is_file()

    rerun = cli.invoke(main, ["stage", "extract", str(path), "--input", "latest"])
    assert rerun.exit_code == 0 and "rerun" in cli.invoke(main, ["runs", *wh]).output

    bad = cli.invoke(main, ["stage", "extract", str(path), "--input", "no-such-run"])
    assert bad.exit_code == 1 and "no pipeline run 'no-such-run'" in bad.output


def test_benchmarks_smoke_then_check_and_a_bad_file_named_by_line(tmp_path):
    result = CliRunner().invoke(main, ["benchmarks", "smoke", str(tmp_path / "smoke")])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["benchmarks", "check", str(tmp_path / "smoke")])
    assert result.exit_code == 0 and "lambada_openai" in result.output and "schema" in result.output
    (tmp_path / "smoke" / "copa.jsonl").write_text('{"query": "q", "choices": ["a", "b"], "gold": 0}\nnope\n')
    result = CliRunner().invoke(main, ["benchmarks", "check", str(tmp_path / "smoke")])
    assert result.exit_code == 1 and "copa.jsonl:2:" in result.output
