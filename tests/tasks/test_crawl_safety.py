"""The crawler against hostile servers: decompression bombs, a trickling server, robots.txt redirects and sizes,
DNS rebinding, IPv6 forms that embed private IPv4 addresses, and a page budget that also bounds robots.txt."""
import json
import subprocess
import sys
import time

import pytest

from tasks.crawl import CrawlStage, Crawler
from tasks.urls import refused_address
from tests.conftest import REPO
from tests.sites import LocalSite
from tests.tasks.test_crawl import crawl_config, outcomes

MAX_RSS_MIB = 600


def probe(*args: str) -> dict:
    """Run tests/bombs.py in a fresh process, so that its peak RSS is the work's alone."""
    out = subprocess.run([sys.executable, "-m", "tests.bombs", *args], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_compressed_bombs_are_dropped_within_bounded_memory():
    from tests import bombs

    for make in (bombs.gzip_bomb, bombs.brotli_bomb, bombs.double_gzip_bomb):
        make()  # compressed once here, before the site serves them, so no answer waits on compression
    with LocalSite() as site:
        got = probe("crawl", *(site.base + p for p in ("/bomb.br", "/bomb.gz", "/bomb.gzgz", "/a")))
    outcome = {url.removeprefix(site.base): o for url, o in got["outcomes"].items()}
    assert outcome["/bomb.br"][0] == "too_large" and outcome["/bomb.gz"][0] == "too_large"
    assert outcome["/bomb.gzgz"][0] == "stacked_content_encoding"
    assert outcome["/a"][0] == "archived"
    assert got["peak_rss_mib"] < MAX_RSS_MIB, got


@pytest.mark.slow
def test_a_huge_robots_txt_is_read_only_500_kib_deep():
    with LocalSite(robots="huge") as site:
        got = probe("crawl", site.base + "/private/secret", site.base + "/a")
    outcome = {url.removeprefix(site.base): o[0] for url, o in got["outcomes"].items()}
    assert outcome == {"/private/secret": "robots_disallowed", "/a": "archived"}  # its rules still hold
    assert got["peak_rss_mib"] < MAX_RSS_MIB, got


def test_a_trickling_server_is_cut_at_the_fetch_deadline(tmp_path):
    with LocalSite() as site:
        cfg = crawl_config(site, seeds=[site.base + "/trickle"], timeout_s=2, fetch_deadline_s=3, retries=2)
        t0 = time.monotonic()
        result = CrawlStage(cfg).run(tmp_path, {})
        took = time.monotonic() - t0
    row = next(r for r in result.log_rows() if r["url"].endswith("/trickle"))
    assert row["outcome"] == "timeout" and "deadline" in row["detail"]
    assert took < 8, took  # one deadline, not retried: a trickle is not a transient error


def test_robots_txt_redirects_are_followed(tmp_path):
    with LocalSite(robots="redirect") as site:
        result = CrawlStage(crawl_config(site, max_depth=1)).run(tmp_path, {})
        assert "/robots-real.txt" in site.paths()
    got = outcomes(result)
    assert got[site.base + "/private/secret"] == "robots_disallowed"  # the redirect's target rules apply
    assert got[site.base + "/a"] == "archived"


def test_a_robots_txt_redirect_loop_disallows_everything(tmp_path):
    with LocalSite(robots="loop") as site:
        result = CrawlStage(crawl_config(site)).run(tmp_path, {})
        robots_requests = [p for p in site.paths() if p.startswith("/robots.txt")]
    assert outcomes(result) == {site.base + "/": "robots_disallowed"}
    assert result.log_rows()[0]["detail"] == "robots.txt: more than 5 redirects"  # the log says why
    assert len(robots_requests) == 6  # the first request and five redirects (RFC 9309)


def test_the_connection_goes_to_the_address_that_was_checked(tmp_path, monkeypatch):
    """DNS rebinding: the name resolves to a public address when checked, to loopback afterwards. The crawler
    resolves once and connects to the checked address; a second resolution would reach the local site."""
    answers = {}

    async def resolve(self, host, port):
        answers[host] = answers.get(host, 0) + 1
        return ["203.0.113.7" if host == "nowhere.test" else "127.0.0.1"] if answers[host] == 1 else ["127.0.0.1"]

    monkeypatch.setattr(Crawler, "resolve", resolve)
    with LocalSite() as site:
        # a name exempt from the private check, pinned to 127.0.0.1: reached with its own Host header
        named = f"pinned.test:{site.port}"
        cfg = crawl_config(site, seeds=[f"http://{named}/a"], private_hosts=[named], max_depth=0)
        got = outcomes(CrawlStage(cfg).run(tmp_path / "a", {}))
        assert got == {f"http://{named}/a": "archived"}
        assert {h.get("Host") for _, h, _ in site.requests} == {named}
        # 203.0.113.7 is TEST-NET (not global), so the check refuses the first answer and nothing connects
        before = len(site.requests)
        cfg = crawl_config(site, seeds=[f"http://nowhere.test:{site.port}/a"], private_hosts=[], max_depth=0)
        got = outcomes(CrawlStage(cfg).run(tmp_path / "b", {}))
        assert got == {f"http://nowhere.test:{site.port}/a": "private_address"}
        assert len(site.requests) == before and answers["nowhere.test"] == 1


@pytest.mark.parametrize("address, refused", [
    ("8.8.8.8", False), ("2606:4700:4700::1111", False),
    ("::ffff:10.0.0.1", True), ("::ffff:8.8.8.8", False),
    ("::127.0.0.1", True), ("::10.1.2.3", True),
    ("64:ff9b::a9fe:a9fe", True), ("64:ff9b::808:808", False),  # NAT64 of 169.254.169.254 / of 8.8.8.8
    ("2002:c0a8:0101::1", True), ("2002:0808:0808::1", False),  # 6to4 of 192.168.1.1 / of 8.8.8.8
    ("::1", True), ("fe80::1", True), ("fc00::1", True),
])
def test_ipv6_forms_that_embed_ipv4_are_checked_as_their_ipv4(address, refused):
    assert refused_address(address) is refused


def test_the_page_budget_bounds_robots_txt_fetches(tmp_path, monkeypatch):
    async def resolve(self, host, port):
        return ["127.0.0.1"]

    monkeypatch.setattr(Crawler, "resolve", resolve)
    with LocalSite() as site:
        hosts = [f"h{i}.test:{site.port}" for i in range(15)]
        site.private_links = [f"http://{h}/" for h in hosts]
        cfg = crawl_config(site, scope="any", max_pages=2, max_depth=1,
                           private_hosts=hosts + [f"127.0.0.1:{site.port}"])
        result = CrawlStage(cfg).run(tmp_path, {})
        robots = [h.get("Host") for p, h, _ in site.requests if p == "/robots.txt"]
    assert result.pages == 2
    assert len(robots) <= 2, robots
