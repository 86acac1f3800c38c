"""`crucible ablate`: variants from --vary, one tokenizer for every run, equal tokens, the results written and
summarised; a time-limited training is refused (it would give the variants different token counts)."""
import json

import pytest
from click.testing import CliRunner

from flows.ablate import parse_vary, summarize, variant_config, variants
from flows.cli import main
from tasks.config import ConfigError
from tests.helpers import TINY_TRAIN, write_prose_warc


def test_vary_reads_toml_values_and_makes_every_combination():
    assert parse_vary("select.classifier.enabled=true,false") == ("select.classifier.enabled", [True, False])
    assert parse_vary("select.classifier.top_fraction=0.3,0.5")[1] == [0.3, 0.5]
    assert parse_vary("tokenize.encoder=auto,tokenizers")[1] == ["auto", "tokenizers"]
    assert variants(["a.b=1,2", "c=x,y"]) == [{"a.b": 1, "c": "x"}, {"a.b": 1, "c": "y"}, {"a.b": 2, "c": "x"},
                                               {"a.b": 2, "c": "y"}]
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_vary("select.classifier.enabled")


def test_a_variant_is_the_config_with_its_overrides_and_seed(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[select]\nreference = "books"\n[[sources]]\nname = "books"\ninputs = ["b.txt"]\n'
                    'format = "text"\n[train]\nmax_steps = 7\n')
    cfg = variant_config(path, {"select.classifier.enabled": True, "select.classifier.top_fraction": 0.3}, 4)
    assert cfg.select.classifier.enabled and cfg.select.classifier.top_fraction == 0.3 and cfg.train.seed == 4
    assert cfg.train.max_steps == 7 and cfg.source == path.resolve()
    with pytest.raises(ConfigError, match="top_fraction"):
        variant_config(path, {"select.classifier.top_fraction": 2}, 0)


def test_the_summary_gives_each_variant_its_mean_and_spread():
    rows = [{"variant": "a", "tokens": 10, "bpb": b, "core7": None} for b in (1.0, 1.2, 1.1)]
    rows += [{"variant": "b", "tokens": 10, "bpb": 0.9, "core7": 0.1}]
    a, b = summarize(rows)
    assert a["bpb_mean"] == pytest.approx(1.1) and (a["bpb_min"], a["bpb_max"]) == (1.0, 1.2)
    assert a["bpb_std"] == pytest.approx(0.1) and a["core7_mean"] is None
    assert b["runs"] == 1 and b["bpb_std"] == 0.0 and b["core7_mean"] == 0.1


@pytest.mark.usefixtures("prefect_harness")
def test_ablate_runs_each_variant_at_equal_tokens_with_one_tokenizer(tmp_path):
    from flows.demo_data import write_docstrings
    from warehouse.lineage import Warehouse

    warc = write_prose_warc(tmp_path / "web.warc.gz", 24)
    docstrings = write_docstrings(tmp_path / "docstrings.jsonl")
    train = "\n".join(f"{k} = {json.dumps(v)}" for k, v in TINY_TRAIN.items() if k != "model")
    path = tmp_path / "c.toml"
    path.write_text(f'[paths]\nwork_dir = "{tmp_path / "work"}"\n[ingest]\ninputs = ["{warc}"]\nshard_max_docs = 8\n'
                    f'[[sources]]\nname = "docstrings"\ninputs = ["{docstrings}"]\nformat = "jsonl"\nepochs = 0\n'
                    f'val_docs = 40\n[select]\nreference = "docstrings"\n[select.classifier]\nepochs = 20\n'
                    f'[tokenize]\nvocab_size = 512\n[train]\n{train}\n[train.model]\ndepth = 1\nd_model = 32\n')
    result = CliRunner().invoke(main, ["ablate", str(path), "--vary", "select.classifier.enabled=false,true",
                                       "--seeds", "0,1", "--eval-source", "docstrings", "--to", "train"])
    assert result.exit_code == 0, result.output
    assert "every run uses the tokenizer of the first variant" in result.output
    [written] = (tmp_path / "work" / "ablations").glob("ablation-*.json")
    results = json.loads(written.read_text())
    runs = results["runs"]
    assert [(r["variant"], r["seed"]) for r in runs] == [("select.classifier.enabled=False", 0),
                                                         ("select.classifier.enabled=False", 1),
                                                         ("select.classifier.enabled=True", 0),
                                                         ("select.classifier.enabled=True", 1)]
    assert len({r["tokens"] for r in runs}) == 1 and all(r["bpb"] > 0 for r in runs)
    by_variant = {}  # a unigram model of each run's training tokens: one per variant, whatever the seed
    for r in runs:
        by_variant.setdefault(r["variant"], set()).add(round(r["unigram_bpb"], 9))
    assert all(len(v) == 1 for v in by_variant.values()) and all(v > 0 for vs in by_variant.values() for v in vs)
    assert "unigram bpb" in result.output and "beyond their training tokens' frequencies" in result.output
    assert len(results["summary"]) == 2 and written.with_suffix(".md").is_file()
    wh = Warehouse(tmp_path / "work" / "warehouse.duckdb")
    tokenizers = {json.loads(wh.resolve_run(r["run_id"])["config_json"])["tokenize"]["tokenizer_path"] for r in runs}
    assert len(tokenizers) == 1 and None not in tokenizers
    stages = {r["run_id"]: {s["stage"] for s in wh.stage_runs(r["run_id"])} for r in runs}
    assert all(("select" in stages[r["run_id"]]) == ("True" in r["variant"]) for r in runs)

    path.write_text(path.read_text().replace("[train]\n", "[train]\nmax_seconds = 60\n"))
    refused = CliRunner().invoke(main, ["ablate", str(path), "--vary", "select.classifier.enabled=false,true",
                                        "--eval-source", "docstrings", "--to", "train"])
    assert refused.exit_code == 1 and "max_seconds" in refused.output
