import pyarrow.parquet as pq
import pytest

from tasks.config import CrawlConfig, IngestConfig, parse_config
from tasks.crawl import VISITED, CrawlStage, SeenPage
from tasks.urls import extract_links, normalize_url
from tasks.ingest import IngestStage
from tasks.sharded import run_unit
from tests.sites import LocalSite

PRIVATE = ["http://10.1.2.3/x", "http://192.168.0.7/", "http://169.254.169.254/latest/meta-data/",
           "http://100.64.1.1/", "http://localhost:9/", "/to-private"]


def crawl_config(site: LocalSite, **overrides) -> CrawlConfig:
    values = dict(seeds=[site.base + "/"], private_hosts=[f"127.0.0.1:{site.port}"], delay_s=0.0, timeout_s=0.5,
                  retries=2, backoff_s=0.05, max_page_bytes=64 * 1024, max_depth=2, concurrency=4)
    values.update(overrides)
    return CrawlConfig(**values)


def outcomes(result) -> dict[str, str]:
    rows = result.log_rows()
    return {r["url"]: r["outcome"] for r in rows}


def seen_from(result) -> dict[str, SeenPage]:
    rows = result.log_rows()
    return {r["url"]: SeenPage(r["depth"], r["etag"], r["last_modified"], r["payload_digest"])
            for r in rows if r["outcome"] in VISITED}


def test_crawl_respects_every_rule(tmp_path):
    with LocalSite(PRIVATE) as site:
        result = CrawlStage(crawl_config(site, scope="any")).run(tmp_path, {})
        got = outcomes(result)
        b = site.base
        assert got[b + "/"] == got[b + "/a"] == got[b + "/b"] == got[b + "/changing"] == "archived"
        assert got[b + "/flaky"] == "archived" and site.flaky_hits == 2  # a 500, then a retry that worked
        assert got[b + "/private/secret"] == "robots_disallowed"
        assert "/private/secret" not in site.paths()
        assert got[b + "/r1"] == got[b + "/r2"] == "redirect" and got[b + "/a"] == "archived"
        assert got[b + "/loop1"] == got[b + "/loop2"] == "redirect"
        assert got[b + "/slow"] == "timeout" and site.paths().count("/slow") == 3
        assert got[b + "/missing"] == "http_error"
        assert got[b + "/big"] == "too_large"
        assert got[b + "/file.bin"] == got[b + "/image.png"] == "not_html"
        assert got[b + "/fake.html"] == "binary"
        for url in PRIVATE[:-1] + ["http://10.9.8.7/admin"]:  # the last one is reached by a redirect
            assert got[normalize_url(url)] == "private_address", url
        assert got[b + "/to-private"] == "redirect"
        assert got[b + "/deep/1"] == "archived" and b + "/deep/3" not in got  # max_depth 2
        assert site.paths().count("/a") == 1  # /a, /a#section and the redirect target are one URL
        assert result.links["scheme_refused"] == 1  # file:///etc/passwd
        assert result.links["redirect_to_seen"] >= 2  # r2 -> /a and the loop back to /loop1


def test_crawl_delay_from_robots_is_honoured(tmp_path):
    with LocalSite(crawl_delay=0.3) as site:
        CrawlStage(crawl_config(site, per_host_concurrency=1, max_depth=1, max_pages=6)).run(tmp_path, {})
        times = [t for p, _, t in site.requests if p != "/slow"]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(gaps) >= 5 and min(gaps) >= 0.28  # Crawl-delay: 0.3


def test_user_agent_and_host_scope(tmp_path):
    with LocalSite([f"http://localhost:{0}/elsewhere"]) as site:
        result = CrawlStage(crawl_config(site, user_agent="TestBot/9", max_depth=1)).run(tmp_path, {})
        assert {h.get("User-Agent") for _, h, _ in site.requests} == {"TestBot/9"}
    assert result.links["out_of_scope"] >= 1
    assert not any("localhost" in u for u in outcomes(result))


def test_private_hosts_are_refused_by_default(tmp_path):
    with LocalSite() as site:
        result = CrawlStage(crawl_config(site, private_hosts=[])).run(tmp_path, {})
        assert site.requests == []  # refused before any connection
    assert outcomes(result) == {site.base + "/": "private_address"}


def test_warc_files_read_back_through_ingest(tmp_path):
    with LocalSite() as site:
        result = CrawlStage(crawl_config(site, max_depth=1)).run(tmp_path / "crawl", {})
    archived = {r["url"] for r in result.log_rows() if r["outcome"] == "archived"}
    stage = IngestStage(IngestConfig(inputs=[str(p) for p in result.warc_files]))
    rows = [r for u in stage.plan(stage.sources())
            for f in run_unit(stage, u, tmp_path / "ingest").files
            for r in pq.read_table(tmp_path / "ingest" / f.name).to_pylist()]
    assert {r["url"] for r in rows} == archived
    home = next(r for r in rows if r["url"] == site.base + "/")
    assert "<h1>Home</h1>" in home["html"] and home["http_status"] == 200
    log = {r["url"]: r for r in result.log_rows()}
    assert all(log[r["url"]]["warc_offset"] == r["warc_offset"] for r in rows)
    from warcio.archiveiterator import ArchiveIterator

    with open(result.warc_files[0], "rb") as fh:
        records = [(r.rec_type, r.rec_headers) for r in ArchiveIterator(fh)]
    assert {t for t, _ in records} == {"request", "response"}
    for rec_type, headers in records:
        assert headers.protocol == "WARC/1.1"
        if rec_type == "response":
            digest = headers.get_header("WARC-Payload-Digest")
            assert digest == log[headers.get_header("WARC-Target-URI")]["payload_digest"]
    assert not list((tmp_path / "crawl").glob(".tmp-*"))


def test_recrawl_fetches_nothing_new_and_archives_what_changed(tmp_path):
    with LocalSite() as site:
        stage = CrawlStage(crawl_config(site, max_depth=1))
        first = stage.run(tmp_path, {})
        second = stage.run(tmp_path, seen_from(first))
        got = outcomes(second)
        assert "archived" not in got.values() and second.warc_files == []
        assert got[site.base + "/a"] == "not_modified" and got[site.base + "/b"] == "not_modified"
        assert got[site.base + "/"] == "unchanged"  # no validators: compared by payload digest
        assert site.requests[-1][0] != "/robots.txt"
        site.changing = "second version"
        third = stage.run(tmp_path, {**seen_from(first), **seen_from(second)})
    archived = [u for u, o in outcomes(third).items() if o == "archived"]
    assert archived == [site.base + "/changing"] and len(third.warc_files) == 1


def test_max_pages_caps_the_crawl(tmp_path):
    with LocalSite() as site:
        result = CrawlStage(crawl_config(site, max_pages=3)).run(tmp_path, {})
    assert result.pages == 3 and result.links["max_pages"] > 0


def test_warc_files_rotate_at_the_size_cap(tmp_path):
    import os
    from datetime import datetime, timezone

    from warcio.archiveiterator import ArchiveIterator

    from tasks.warc import RotatingWarcWriter

    writer = RotatingWarcWriter(tmp_path, "crawl-x", max_bytes=3000)
    when = datetime.now(timezone.utc)
    for i in range(6):
        writer.write(f"http://e.com/{i}", [("User-Agent", "t")], "200 OK", [("Content-Type", "text/html")],
                     os.urandom(1500).hex().encode(), when)
        assert len(list(tmp_path.glob("crawl-x-*.warc.gz"))) == len(writer.finished)  # only closed files are named
    files = writer.close()
    assert len(files) >= 3 and not list(tmp_path.glob(".tmp-*"))
    urls = []
    for path in files:
        with open(path, "rb") as fh:
            urls += [r.rec_headers.get_header("WARC-Target-URI") for r in ArchiveIterator(fh) if r.rec_type == "response"]
    assert urls == [f"http://e.com/{i}" for i in range(6)]


@pytest.mark.parametrize("raw, expected", [
    ("HTTP://Example.COM:80/a/../b?x=1#frag", "http://example.com/b?x=1"),
    ("https://example.com:443", "https://example.com/"),
    ("http://example.com:8080/%7Euser/a%20b", "http://example.com:8080/~user/a%20b"),
    ("http://example.com/p?b=2&a=1", "http://example.com/p?b=2&a=1"),
    ("http://example.com:99999/", None),
])
def test_normalize_url(raw, expected):
    assert normalize_url(raw) == expected


def test_normalize_url_sorts_query_when_asked():
    assert normalize_url("http://e.com/p?b=2&a=1", sort_query=True) == "http://e.com/p?a=1&b=2"


def test_extract_links_honours_base_and_skips_non_links():
    body = (b'<html><head><base href="/docs/"></head><body><a href="x.html">x</a><a href="#top">t</a>'
            b'<a href="javascript:void(0)">j</a><a href="https://other.org/">o</a></body></html>')
    assert extract_links(body, "http://e.com/index.html") == ["http://e.com/docs/x.html", "https://other.org/"]


def test_config_rejects_bad_seeds_and_regexes(tmp_path):
    from tasks.config import ConfigError

    with pytest.raises(ConfigError, match="crawl.seeds: Value error, seeds must be http"):
        parse_config({"crawl": {"seeds": ["file:///etc"]}}, base=tmp_path)
    with pytest.raises(ConfigError, match="crawl.deny: Value error, bad regex"):
        parse_config({"crawl": {"deny": ["("]}}, base=tmp_path)


def test_seeds_file(tmp_path):
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("# start here\nhttp://a.example/\n\nhttp://b.example/x\n")
    stage = CrawlStage(CrawlConfig(seeds_file=seeds))
    assert stage.enabled and stage.seeds() == ["http://a.example/", "http://b.example/x"]
    with pytest.raises(FileNotFoundError, match="crawl.seeds_file"):
        CrawlStage(CrawlConfig(seeds_file=tmp_path / "nope.txt")).seeds()
