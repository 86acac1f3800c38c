"""The crawler: a polite breadth-first web crawler that archives what it fetches as WARC 1.1 files.

Scope (seeds, host/domain, allow/deny regexes, depth, page and byte caps), politeness (robots.txt with Crawl-delay,
per-host concurrency and delay, a User-Agent), safety (http(s) only; a host is resolved once, refused when any of
its addresses is private, loopback or link-local, also inside an IPv6 form that embeds IPv4, and the connection goes
to the address that passed the check, so DNS rebinding cannot move it; bodies are decoded with a cap on the decoded
bytes; a total deadline per fetch) and incremental recrawls (conditional GETs with the ETag and Last-Modified of the
last visit; a page whose payload digest did not change is not archived again).

Every fetch, archived or not, becomes a row of the crawl log with its outcome. The log is written in parts, one
per WARC file, each made durable before its WARC file is renamed into place, so a killed crawl leaves every finished
WARC file with its log and the rerun knows those pages; the orchestrator records the parts in the warehouse. The
stage around it is tasks/crawl.py; run it without Prefect:

    from tasks.crawl import CrawlStage
    result = CrawlStage(cfg.crawl).run(out_dir, seen={})

Why one module of ~500 lines: ``Crawler`` is one object whose fetch loop, robots cache, per-host politeness and DNS
pinning share its state (hosts, clients, the log); split apart, each part would reach into the others.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import re
import socket
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import brotli
import httpx
import pyarrow as pa
import pyarrow.parquet as pq
from protego import Protego

from tasks.config import CrawlConfig
from tasks.encodings import ContentDecoder, EncodingRefused
from tasks.charsets import looks_binary
from tasks.shards import write_parquet_atomic
from tasks.urls import DEFAULT_PORTS, extract_links, is_ip, normalize_url, refused_address, registered_domain
from tasks.warc import RotatingWarcWriter

LOG_SCHEMA = pa.schema([
    ("url", pa.string()), ("depth", pa.int32()), ("status", pa.int32()), ("outcome", pa.string()),
    ("detail", pa.string()), ("bytes", pa.int64()), ("content_type", pa.string()), ("warc_file", pa.string()),
    ("warc_offset", pa.int64()), ("etag", pa.string()), ("last_modified", pa.string()),
    ("payload_digest", pa.string()), ("redirect_to", pa.string()), ("fetched_at", pa.timestamp("us", tz="UTC")),
    ("seconds", pa.float64()),
])
# Outcomes that leave a page's validators worth remembering for the next crawl.
VISITED = ("archived", "not_modified", "unchanged")
ROBOTS_MAX_BYTES = 500 * 1024  # RFC 9309: parse at least 500 KiB; what follows may be ignored
ROBOTS_MAX_REDIRECTS = 5  # RFC 9309: follow at least five consecutive redirects


# ---------------------------------------------------------------------------------------------------------------
# The crawler


@dataclass
class SeenPage:
    """What the last crawl learnt of a URL: validators for a conditional GET and the payload digest."""

    depth: int
    etag: str | None = None
    last_modified: str | None = None
    payload_digest: str | None = None


@dataclass
class CrawlResult:
    warc_files: list[Path]
    log_files: list[Path]  # the fetch log's parts: one per WARC file, and one for the fetches after the last
    outcomes: dict[str, int]
    links: dict[str, int]  # links not followed, by reason
    pages: int
    seconds: float

    def log_rows(self) -> list[dict[str, Any]]:
        return [r for f in self.log_files for r in pq.read_table(f).to_pylist()]


@dataclass
class _Item:
    url: str
    depth: int
    hops: int = 0  # redirects followed to reach it


@dataclass
class Robots:
    """A host's robots.txt rules; ``rules`` None means everything is allowed (or, with disallow_all, nothing)."""

    rules: Protego | None = None
    disallow_all: bool = False
    why: str | None = None  # why everything is disallowed (the crawl log's detail)

    def can_fetch(self, url: str, user_agent: str) -> bool:
        if self.disallow_all:
            return False
        return True if self.rules is None else self.rules.can_fetch(url, user_agent)


@dataclass
class _Host:
    sem: asyncio.Semaphore
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    next_time: float = 0.0
    delay: float = 0.0
    robots: Robots | None = None
    robots_ready: asyncio.Event = field(default_factory=asyncio.Event)
    robots_loading: bool = False


class _Refused(Exception):
    """A URL we will not fetch; the message is the outcome."""


class Crawler:
    def __init__(self, cfg: CrawlConfig, out_dir: Path, seen: dict[str, SeenPage], prefix: str) -> None:
        self.cfg = cfg
        self.out_dir = out_dir
        self.seen = seen
        self.prefix = prefix
        self.allow = [re.compile(p) for p in cfg.allow]
        self.deny = [re.compile(p) for p in cfg.deny]
        self.writer = RotatingWarcWriter(out_dir, prefix, cfg.warc_max_bytes, on_close=self._write_log_part)
        self.log: list[dict[str, Any]] = []
        self.logged = 0  # rows of self.log already in a durable part
        self.log_files: list[Path] = []
        self.links: Counter[str] = Counter()
        self.hosts: dict[str, _Host] = {}
        self.queued: set[str] = set()
        self.pages = 0
        self.robots_fetches = 0
        self.seed_hosts: set[str] = set()
        self.seed_domains: set[str] = set()
        self.addresses: dict[str, list[str]] = {}
        self.clients: dict[str, httpx.AsyncClient] = {}

    # -- the fetch log ---------------------------------------------------------------------------------------------

    def _write_log_part(self, warc: Path) -> None:
        """Make the rows logged so far durable, as the part of the WARC file about to be renamed into place."""
        self._flush_log(warc.with_name(warc.name.removesuffix(".warc.gz") + ".log.parquet"))

    def _flush_log(self, path: Path) -> None:
        rows = self.log[self.logged:]
        if rows:
            write_parquet_atomic(pa.Table.from_pylist(rows, schema=LOG_SCHEMA), path)
            self.log_files.append(path)
            self.logged = len(self.log)

    def finish(self) -> list[Path]:
        """Close the last WARC file (with its log part) and write the rows after it; returns the WARC files."""
        warcs = self.writer.close()
        self._flush_log(self.out_dir / f"{self.prefix}-rest.log.parquet")
        return warcs

    # -- scope -----------------------------------------------------------------------------------------------------

    def in_scope(self, url: str) -> str | None:
        """None when the URL may be crawled, else why not (a link reason)."""
        parts = urlsplit(url)
        if parts.scheme not in DEFAULT_PORTS:
            return "scheme_refused"
        host = parts.hostname or ""
        if self.cfg.scope == "host" and parts.netloc not in self.seed_hosts:
            return "out_of_scope"
        if self.cfg.scope == "domain" and registered_domain(host) not in self.seed_domains:
            return "out_of_scope"
        if self.allow and not any(p.search(url) for p in self.allow):
            return "not_allowed"
        if any(p.search(url) for p in self.deny):
            return "denied"
        return None

    async def resolve(self, host: str, port: int) -> list[str]:
        """The host's addresses (the system resolver)."""
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return [info[4][0] for info in infos]

    async def check_address(self, url: str) -> str:
        """Resolve the URL's host once per crawl and refuse it when any address is not public (SSRF); returns the
        address to connect to, so that a second lookup (DNS rebinding) cannot send the request elsewhere."""
        parts = urlsplit(url)
        host, netloc = parts.hostname or "", parts.netloc
        if host not in self.addresses:
            if is_ip(host):
                self.addresses[host] = [host]
            else:
                try:
                    found = await self.resolve(host, parts.port or DEFAULT_PORTS[parts.scheme])
                except OSError as err:
                    raise _Refused(f"dns_error: {err}") from None
                # the IPv4 answer first, as most clients connect
                self.addresses[host] = sorted(dict.fromkeys(found), key=lambda a: (":" in a, a))
                if not self.addresses[host]:
                    raise _Refused(f"dns_error: no address for {host}")
        exempt = self.cfg.allow_private or host in self.cfg.private_hosts or netloc in self.cfg.private_hosts
        bad = [a for a in self.addresses[host] if refused_address(a)]
        if bad and not exempt:
            raise _Refused(f"private_address: {host} -> {', '.join(bad)}")
        return self.addresses[host][0]

    def _client(self, netloc: str) -> httpx.AsyncClient:
        """One client (one connection pool) per host: connections go to a pinned address, and a pool keyed by
        address alone would let two names on one address (a CDN) share a TLS connection made for the other."""
        if netloc not in self.clients:
            per_host = self.cfg.per_host_concurrency
            self.clients[netloc] = httpx.AsyncClient(
                timeout=httpx.Timeout(self.cfg.timeout_s), follow_redirects=False, trust_env=False,
                limits=httpx.Limits(max_connections=per_host, max_keepalive_connections=per_host),
                headers={"User-Agent": self.cfg.user_agent})
        return self.clients[netloc]

    async def _open(self, url: str, headers: dict[str, str]):
        """``client.stream`` GET of ``url``, connected to its checked address, with Host (and SNI) of its name."""
        address = await self.check_address(url)
        parts = urlsplit(url)
        extensions = {}
        if address != parts.hostname:
            ip = f"[{address}]" if ":" in address else address
            port = f":{parts.port}" if parts.port else ""
            url = urlunsplit((parts.scheme, ip + port, parts.path or "/", parts.query, ""))
            headers = {**headers, "Host": parts.netloc}
            if parts.scheme == "https":
                extensions["sni_hostname"] = parts.hostname  # also the name the certificate is checked against
        return self._client(parts.netloc).stream("GET", url, headers=headers, extensions=extensions)

    # -- politeness ------------------------------------------------------------------------------------------------

    def host(self, netloc: str) -> _Host:
        if netloc not in self.hosts:
            self.hosts[netloc] = _Host(asyncio.Semaphore(self.cfg.per_host_concurrency), delay=self.cfg.delay_s)
        return self.hosts[netloc]

    @contextlib.asynccontextmanager
    async def turn(self, host: _Host):
        """One request to ``host``: it starts ``delay`` seconds after the last one to it started and after the last
        one finished, so the server sees requests at least ``delay`` apart however long a connection took to open."""
        async with host.lock:
            now = time.monotonic()
            start = max(now, host.next_time)
            host.next_time = start + host.delay
        if start > now:
            await asyncio.sleep(start - now)
        try:
            yield
        finally:
            if host.delay:
                host.next_time = max(host.next_time, time.monotonic() + host.delay)

    async def robots(self, url: str) -> Robots:
        """robots.txt of the URL's host, fetched once (RFC 9309): up to 5 redirects followed, at most 500 KiB read;
        a 4xx allows all; a 5xx, no answer, or too many redirects disallows all."""
        parts = urlsplit(url)
        host = self.host(parts.netloc)
        if host.robots_loading:
            await host.robots_ready.wait()
            return host.robots
        host.robots_loading = True
        self.robots_fetches += 1
        parser = Robots(disallow_all=True, why=f"robots.txt: more than {ROBOTS_MAX_REDIRECTS} redirects")
        target = f"{parts.scheme}://{parts.netloc}/robots.txt"
        try:
            async with host.sem, self.turn(host):
                async with asyncio.timeout(self.cfg.fetch_deadline_s):
                    for _ in range(ROBOTS_MAX_REDIRECTS + 1):
                        status, location, body = await self._robots_get(target)
                        if status in (301, 302, 303, 307, 308) and location:
                            target = normalize_url(location, target)
                            if target is None or urlsplit(target).scheme not in DEFAULT_PORTS:
                                parser.why = f"robots.txt: redirect to {location!r}"
                                break
                            continue
                        if status >= 500 or 300 <= status < 400:
                            parser.why = f"robots.txt: HTTP {status}"
                            break
                        parser.disallow_all, parser.why = False, None
                        if status < 300:
                            parser.rules = Protego.parse(body.decode("utf-8", "replace"))
                            delay = parser.rules.crawl_delay(self.cfg.user_agent)
                            if delay:
                                host.delay = max(host.delay, float(delay))  # robots.txt's own turn ends with it
                        break
        except Exception as err:  # RFC 9309: an unreachable robots.txt means everything is disallowed
            parser = Robots(disallow_all=True, why=f"robots.txt: {type(err).__name__}: {err}"[:300])
        finally:  # whatever happened, the fetches waiting on this host go on (else the crawl would hang)
            host.robots = parser
            host.robots_ready.set()
        return parser

    async def _robots_get(self, url: str) -> tuple[int, str | None, bytes]:
        async with await self._open(url, {"User-Agent": self.cfg.user_agent}) as response:
            if response.status_code != 200:
                return response.status_code, response.headers.get("location"), b""
            decoder = ContentDecoder(response.headers.get("content-encoding"), ROBOTS_MAX_BYTES)
            body = bytearray()
            async for chunk in response.aiter_raw():
                body += decoder.feed(chunk)
                if decoder.full:  # the rest is ignored, as RFC 9309 allows
                    break
            else:
                body += decoder.flush()
            return 200, None, bytes(body)

    # -- fetching --------------------------------------------------------------------------------------------------

    def record(self, item: _Item, outcome: str, *, status: int | None = None, detail: str | None = None,
               nbytes: int = 0, content_type: str | None = None, warc: tuple[str, int] | None = None,
               etag: str | None = None, last_modified: str | None = None, digest: str | None = None,
               redirect_to: str | None = None, seconds: float = 0.0) -> None:
        self.log.append({
            "url": item.url, "depth": item.depth, "status": status, "outcome": outcome, "detail": detail,
            "bytes": nbytes, "content_type": content_type, "warc_file": warc[0] if warc else None,
            "warc_offset": warc[1] if warc else None, "etag": etag, "last_modified": last_modified,
            "payload_digest": digest, "redirect_to": redirect_to, "fetched_at": datetime.now(timezone.utc),
            "seconds": seconds})

    async def fetch(self, item: _Item, queue: asyncio.Queue) -> None:
        cfg = self.cfg
        try:
            await self.check_address(item.url)
        except _Refused as refused:
            reason, _, detail = str(refused).partition(": ")
            self.record(item, reason, detail=detail)
            return
        # The page budget bounds robots.txt fetches too: a slot is taken before robots.txt is asked for, and
        # robots.txt is fetched for at most max_pages hosts.
        robots_known = self.host(urlsplit(item.url).netloc).robots_loading
        if self.pages >= cfg.max_pages or (cfg.respect_robots and not robots_known
                                           and self.robots_fetches >= cfg.max_pages):
            self.links["max_pages"] += 1
            return
        self.pages += 1
        if cfg.respect_robots:
            robots = await self.robots(item.url)
            if not robots.can_fetch(item.url, cfg.user_agent):
                self.pages -= 1
                self.record(item, "robots_disallowed", detail=robots.why)
                return

        previous = self.seen.get(item.url)
        headers = {"User-Agent": cfg.user_agent, "Accept": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.1"}
        if previous and previous.etag:
            headers["If-None-Match"] = previous.etag
        if previous and previous.last_modified:
            headers["If-Modified-Since"] = previous.last_modified
        host = self.host(urlsplit(item.url).netloc)
        t0 = time.monotonic()
        for attempt in range(cfg.retries + 1):
            if attempt:
                await asyncio.sleep(cfg.backoff_s * 2 ** (attempt - 1))
            try:
                async with host.sem, self.turn(host):
                    async with asyncio.timeout(cfg.fetch_deadline_s):  # a trickling server cannot hold us longer
                        outcome = await self._one_request(item, headers, previous, queue, t0)
            except TimeoutError:
                outcome = ("done", "timeout", f"deadline of {cfg.fetch_deadline_s:g}s passed")
            except httpx.TimeoutException as err:
                outcome = ("retry", "timeout", f"{type(err).__name__}")
            except httpx.HTTPError as err:
                outcome = ("retry", "connect_error", f"{type(err).__name__}: {err}")
            if outcome == ("done",):
                return
            if outcome[0] == "done":
                break
        _, reason, detail = outcome[:3]
        self.record(item, reason, status=outcome[3] if len(outcome) > 3 else None, detail=detail,
                    seconds=time.monotonic() - t0)

    async def _one_request(self, item, headers, previous, queue, t0):
        """One attempt; records the outcome and returns ('done',), or ('retry', reason, detail[, status])."""
        cfg = self.cfg
        async with await self._open(item.url, headers) as response:
            status = response.status_code
            if status >= 500:
                return ("retry", "http_error", f"HTTP {status}", status)
            ctype = (response.headers.get("content-type") or "").split(";")[0].strip().lower()
            meta = {"status": status, "content_type": ctype or None, "seconds": 0.0}
            if status in (301, 302, 303, 307, 308):
                target = normalize_url(response.headers.get("location", ""), item.url, cfg.sort_query)
                meta["seconds"] = time.monotonic() - t0
                self.record(item, "redirect", redirect_to=target, **meta)
                if target is None:
                    return ("done",)
                if item.hops + 1 > cfg.max_redirects:
                    self.record(_Item(target, item.depth, item.hops + 1), "too_many_redirects")
                else:
                    self.enqueue(queue, target, item.depth, item.hops + 1, from_redirect=True)
                return ("done",)
            if status == 304:
                self.record(item, "not_modified", etag=previous.etag if previous else None,
                            last_modified=previous.last_modified if previous else None,
                            digest=previous.payload_digest if previous else None,
                            **{**meta, "seconds": time.monotonic() - t0})
                return ("done",)
            if status != 200:
                self.record(item, "http_error", detail=f"HTTP {status}", **{**meta, "seconds": time.monotonic() - t0})
                return ("done",)
            if ctype not in cfg.mime_types:
                self.record(item, "not_html", detail=ctype or "(none)", **meta)
                return ("done",)
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > cfg.max_page_bytes:
                self.record(item, "too_large", detail=f"Content-Length {declared}", **meta)
                return ("done",)
            # Raw bytes, decoded here with a cap on the DECODED size: httpx would inflate each chunk unbounded.
            try:
                decoder = ContentDecoder(response.headers.get("content-encoding"), cfg.max_page_bytes + 1)
                body = bytearray()
                async for chunk in response.aiter_raw():
                    body += decoder.feed(chunk)
                    if decoder.full:
                        break
                else:
                    body += decoder.flush()
            except EncodingRefused as err:
                self.record(item, err.reason, detail=str(err), **meta)
                return ("done",)
            except (zlib.error, brotli.error) as err:
                self.record(item, "decoding_error", detail=f"{type(err).__name__}: {err}", **meta)
                return ("done",)
            if len(body) > cfg.max_page_bytes:
                self.record(item, "too_large", detail=f"> {cfg.max_page_bytes} bytes decoded", nbytes=len(body),
                            **meta)
                return ("done",)
            body = bytes(body)
            meta["seconds"] = time.monotonic() - t0
            if looks_binary(body):
                self.record(item, "binary", nbytes=len(body), **meta)
                return ("done",)
            digest = "sha1:" + base64.b32encode(hashlib.sha1(body).digest()).decode()  # as WARC-Payload-Digest
            etag, modified = response.headers.get("etag"), response.headers.get("last-modified")
            if previous and previous.payload_digest == digest:
                self.record(item, "unchanged", nbytes=len(body), etag=etag, last_modified=modified, digest=digest,
                            **meta)
            else:
                # The body is stored decoded, so the encodings that described the wire form no longer apply.
                kept = [(k, v) for k, v in response.headers.multi_items()
                        if k.lower() not in ("content-encoding", "transfer-encoding", "content-length")]
                kept.append(("Content-Length", str(len(body))))
                warc = self.writer.write(item.url, list(headers.items()),
                                         f"{status} {response.reason_phrase or 'OK'}", kept, body,
                                         datetime.now(timezone.utc))
                self.record(item, "archived", nbytes=len(body), warc=warc, etag=etag, last_modified=modified,
                            digest=digest, **meta)
            if item.depth < cfg.max_depth:
                for link in extract_links(body, item.url):
                    self.enqueue(queue, link, item.depth + 1, 0)
            return ("done",)

    def enqueue(self, queue: asyncio.Queue, url: str | None, depth: int, hops: int,
                from_redirect: bool = False) -> None:
        if url is None:
            self.links["unparseable"] += 1
            return
        url = normalize_url(url, sort_query=self.cfg.sort_query)
        if url is None:
            self.links["unparseable"] += 1
            return
        reason = self.in_scope(url)
        if reason:
            self.links[reason] += 1
            return
        if url in self.queued:
            self.links["redirect_to_seen" if from_redirect else "seen"] += 1
            return
        self.queued.add(url)
        queue.put_nowait(_Item(url, depth, hops))

    async def crawl(self, seeds: list[str]) -> None:
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        normalized = [u for u in (normalize_url(s, sort_query=self.cfg.sort_query) for s in seeds) if u]
        for url in normalized:
            parts = urlsplit(url)
            self.seed_hosts.add(parts.netloc)
            self.seed_domains.add(registered_domain(parts.hostname or ""))
        for url in normalized:
            self.enqueue(queue, url, 0, 0)
        # Pages from earlier crawls are revisited too, so a recrawl notices changes below unchanged pages.
        for url, page in sorted(self.seen.items(), key=lambda kv: (kv[1].depth, kv[0])):
            if page.depth <= self.cfg.max_depth:
                self.enqueue(queue, url, page.depth, 0)
        async def worker() -> None:
            while True:
                item = await queue.get()
                try:
                    await self.fetch(item, queue)
                except Exception as err:  # a bug or a hostile answer costs one URL, never the crawl
                    self.record(item, "fetch_error", detail=f"{type(err).__name__}: {err}")
                finally:
                    queue.task_done()

        workers = [asyncio.create_task(worker()) for _ in range(self.cfg.concurrency)]
        try:
            await queue.join()
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            await asyncio.gather(*(c.aclose() for c in self.clients.values()), return_exceptions=True)
