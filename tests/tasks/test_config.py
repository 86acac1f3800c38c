from pathlib import Path

import pytest

from tasks.config import ConfigError, load_config, parse_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_defaults_fill_every_section(tmp_path):
    cfg = load_config(write(tmp_path, ""), base=tmp_path)
    assert cfg.runner.kind == "threads"
    assert cfg.ingest.mime_types == ["text/html", "application/xhtml+xml"]
    assert cfg.work_dir == (tmp_path / "work").resolve()
    assert cfg.warehouse_path == cfg.work_dir / "warehouse.duckdb"


def test_unknown_key_names_the_key_and_what_is_allowed(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "[ingest]\nmax_payload = 5\n"))
    message = str(err.value)
    assert "ingest.max_payload: unknown key" in message
    assert "max_payload_bytes" in message and str(tmp_path) in message


def test_unknown_section_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"dedupe: unknown key; allowed keys here: .*extract.*ingest"):
        load_config(write(tmp_path, "[dedupe]\nx = 1\n"))


def test_wrong_type_names_key_and_value(tmp_path):
    with pytest.raises(ConfigError, match=r"runner.workers: Input should be a valid integer.*'two'"):
        load_config(write(tmp_path, "[runner]\nworkers = 'two'\n"))


def test_out_of_range_value(tmp_path):
    with pytest.raises(ConfigError, match=r"ingest.max_payload_bytes: Input should be greater than or equal to 1"):
        load_config(write(tmp_path, "[ingest]\nmax_payload_bytes = 0\n"))


def test_invalid_choice(tmp_path):
    with pytest.raises(ConfigError, match=r"runner.kind: Input should be 'threads', 'processes' or 'dask'"):
        load_config(write(tmp_path, "[runner]\nkind = 'ray'\n"))


def test_several_nodes_need_a_rendezvous_endpoint(tmp_path):
    for bad in ("", "rdzv_endpoint = 'node0'\n", "rdzv_endpoint = 'node0:port'\n"):
        with pytest.raises(ConfigError, match=r"nnodes = 2 needs rdzv_endpoint = \"HOST:PORT\""):
            load_config(write(tmp_path, f"[train]\nnnodes = 2\n{bad}"))
    assert load_config(write(tmp_path, "[train]\nnnodes = 2\nrdzv_endpoint = 'node0:29400'\n")).train.nnodes == 2


def test_bad_http_status(tmp_path):
    with pytest.raises(ConfigError, match=r"ingest.http_statuses: Value error, HTTP statuses must be 100..599"):
        load_config(write(tmp_path, "[ingest]\nhttp_statuses = [200, 999]\n"))


def test_every_error_is_reported_at_once(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "[runner]\nworkers = 0\nkind = 'x'\n"))
    assert "runner.workers" in str(err.value) and "runner.kind" in str(err.value)


def test_each_error_names_the_line_that_set_the_value(tmp_path):
    text = 'name = "x"\n\n[runner]\nkind = "threads"\nworkers = 0\n\n[train.model]\n"depth" = 0\n[ingest]\nmax_payload = 5\n'
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    message = str(err.value)
    assert "line 5: runner.workers" in message and "line 8: train.model.depth" in message
    assert "line 10: ingest.max_payload: unknown key" in message


def test_bad_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(write(tmp_path, "[ingest\n"))
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.toml")


def test_relative_paths_resolve_against_base_and_urls_stay(tmp_path):
    cfg = parse_config({"ingest": {"inputs": ["data/*.warc.gz", "s3://bucket/x.warc.gz"]}}, base=tmp_path)
    assert cfg.ingest.inputs == [str(tmp_path / "data/*.warc.gz"), "s3://bucket/x.warc.gz"]


def test_digest_changes_with_any_setting(tmp_path):
    a = parse_config({}, base=tmp_path)
    b = parse_config({"extract": {"include_tables": False}}, base=tmp_path)
    assert a.digest() != b.digest()
    assert a.digest() == parse_config({}, base=tmp_path).digest()


@pytest.mark.parametrize("name", ["demo.toml", "shared_corpora.toml"])
def test_shipped_configs_load(name):
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / name)
    assert cfg.crawl.seeds or cfg.ingest.inputs


def test_every_shipped_config_loads():
    from tests.conftest import REPO

    shipped = sorted((REPO / "configs").glob("*.toml"))
    assert len(shipped) >= 5
    for path in shipped:
        load_config(path, base=REPO)
    cc = load_config(REPO / "configs" / "commoncrawl.toml", base=REPO)
    [web] = cc.all_sources()
    assert web.listing.paths.endswith("warc.paths.gz") and web.listing.sample == 80
