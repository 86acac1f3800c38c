"""Inputs over the network: Common Crawl style file listings, and an http(s) reader that survives a dropped
connection.

A listing (``warc.paths.gz``, ``wet.paths.gz``) names one file per line relative to a base URL; ``listed_urls``
picks a slice, the first N or a seeded sample of it. ``HTTPInput`` streams a file and, when the connection drops
or stalls mid-file (a reset, a timeout, a short body), opens it again at the byte it stopped at with a Range request,
waiting a little longer each time (up to ``retries`` times), so a transient fault costs a reconnect, not the file.
It is seekable (a seek elsewhere is another Range request), and it hashes what it streamed from the start to the
end, so the file's SHA-256 is known once it has been read through.
"""
from __future__ import annotations

import hashlib
import http.client
import io
import random
import socket
import time
import urllib.error
import urllib.request
from typing import Any

import fsspec
import fsspec.utils

RETRIES = 5
TIMEOUT_S = 60.0
BACKOFF_S = 0.5  # the first retry's wait; each next one doubles it
USER_AGENT = "crucible (+https://github.com/; data pipeline)"

# What a retry may get past: the connection, not the request. 4xx answers (but 408, 429) are not transient.
TRANSIENT_STATUSES = {408, 429, 500, 502, 503, 504}


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


class Incomplete(OSError):
    """The server ended the body before Content-Length bytes (a dropped connection)."""


def _request(url: str, start: int = 0, method: str = "GET", timeout_s: float = TIMEOUT_S) -> Any:
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if start:
        headers["Range"] = f"bytes={start}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers, method=method), timeout=timeout_s)


def _transient(err: BaseException) -> bool:
    if isinstance(err, urllib.error.HTTPError):
        return err.code in TRANSIENT_STATUSES
    return isinstance(err, (OSError, http.client.HTTPException, socket.timeout))


def with_retries(action: Any, what: str, retries: int = RETRIES, backoff_s: float = BACKOFF_S) -> Any:
    """``action()``, again after a transient network error, up to ``retries`` more times with doubling waits."""
    for attempt in range(retries + 1):
        try:
            return action()
        except Exception as err:  # noqa: BLE001 (sorted into transient or not just below)
            if attempt == retries or not _transient(err):
                raise OSError(f"{what}: {type(err).__name__}: {err}") from err
            time.sleep(backoff_s * 2 ** attempt)
    raise AssertionError("unreachable")


def head(url: str) -> tuple[int, str]:
    """(size, version) of an http(s) file: its Content-Length and its ETag (else Last-Modified)."""
    def ask() -> tuple[int, str]:
        with _request(url, method="HEAD") as response:
            size = int(response.headers.get("Content-Length") or 0)
            return size, response.headers.get("ETag") or response.headers.get("Last-Modified") or ""
    return with_retries(ask, f"HEAD {url}")


class HTTPInput(io.RawIOBase):
    """A seekable, resuming, hashing reader of one http(s) file (see the module docstring)."""

    def __init__(self, url: str, retries: int = RETRIES, backoff_s: float = BACKOFF_S,
                 timeout_s: float = TIMEOUT_S) -> None:
        super().__init__()
        self.url, self.retries, self.backoff_s, self.timeout_s = url, retries, backoff_s, timeout_s
        self.pos = 0
        self.length: int | None = None
        self.reconnects = 0  # connections opened again after a transient fault
        self.last_modified: str | None = None  # the server's Last-Modified header, if it sent one
        self._response: Any = None
        self._at = 0  # where the open response's next byte is
        self._sha = hashlib.sha256()
        self._hashed = 0  # bytes hashed, always a prefix of the file
        for attempt in range(retries + 1):  # the first response, also retried on a transient fault
            try:
                self._open(0)
                break
            except Exception as err:  # noqa: BLE001 (a transient fault is retried, anything else raised)
                self._drop()
                if attempt == retries or not _transient(err):
                    raise OSError(f"GET {url}: {type(err).__name__}: {err}") from err
                self.reconnects += 1
                time.sleep(backoff_s * 2 ** attempt)

    # -- io.RawIOBase -----------------------------------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self.pos
        elif whence == io.SEEK_END:
            offset += self.length or 0
        self.pos = max(0, offset)
        return self.pos

    def readinto(self, buffer: Any) -> int:
        if self.length is not None and self.pos >= self.length:
            return 0
        for attempt in range(self.retries + 1):
            try:
                if self._response is None or self._at != self.pos:
                    self._open(self.pos)
                n = self._response.readinto(buffer)
                if n == 0 and self.length is not None and self.pos < self.length:
                    raise Incomplete(f"the body ended at byte {self.pos} of {self.length}")
                break
            except Exception as err:  # noqa: BLE001 (a transient fault is retried, anything else raised)
                self._drop()
                if attempt == self.retries or not _transient(err):
                    raise OSError(f"reading {self.url} at byte {self.pos}: {type(err).__name__}: {err}") from err
                self.reconnects += 1
                time.sleep(self.backoff_s * 2 ** attempt)
        end = self.pos + n
        if self.pos <= self._hashed < end:  # the bytes past what is hashed so far, always a prefix of the file
            self._sha.update(memoryview(buffer)[self._hashed - self.pos:n])
            self._hashed = end
        self.pos = end
        self._at += n
        return n

    def close(self) -> None:
        self._drop()
        super().close()

    # -- what it knows once read ------------------------------------------------------------------------------

    @property
    def sha256(self) -> str | None:
        """The file's SHA-256 once every byte has been streamed in order (else None)."""
        return self._sha.hexdigest() if self.length is not None and self._hashed == self.length else None

    def _open(self, start: int) -> None:
        self._drop()
        response = _request(self.url, start, timeout_s=self.timeout_s)
        status = getattr(response, "status", 200)
        if start and status != 206:  # the server ignored the Range: read up to where we were
            skip = start
            while skip:
                got = response.read(min(skip, 1 << 20))
                if not got:
                    raise Incomplete(f"the body ended at byte {start - skip} while skipping to {start}")
                skip -= len(got)
        if self.length is None:
            size = response.headers.get("Content-Length")
            self.length = int(size) + (start if status == 206 else 0) if size is not None else None
        self._response, self._at = response, start
        if start == 0 or self.last_modified is None:
            self.last_modified = response.headers.get("Last-Modified")

    def _drop(self) -> None:
        if self._response is not None:
            try:
                self._response.close()
            except OSError:
                pass
            self._response = None


def open_input(uri: str, compression: str | None = None) -> io.BufferedReader | Any:
    """A binary file object for an input: http(s) through ``HTTPInput``, anything else through fsspec.
    ``compression="infer"`` decompresses by the name's suffix (.gz, .bz2, .zst, .xz), as fsspec does."""
    if not is_http(uri):
        return fsspec.open(uri, "rb", compression=compression).open()
    stream = io.BufferedReader(HTTPInput(uri), buffer_size=1 << 20)
    codec = fsspec.utils.infer_compression(uri) if compression == "infer" else compression
    if codec is None:
        return stream
    from fsspec.compression import compr

    return compr[codec](stream, mode="rb")


def read_listing(listing: str) -> list[str]:
    """The paths a listing names, one per line (gzip-compressed or not; blank lines and # comments skipped)."""
    def fetch() -> bytes:
        with open_input(listing) as fh:
            return fh.read()
    raw = with_retries(fetch, f"the listing {listing}")
    if raw[:2] == b"\x1f\x8b":
        import gzip

        raw = gzip.decompress(raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"the listing {listing} is not UTF-8 text with one path per line (byte {err.start} "
                         f"is {raw[err.start:err.start + 1]!r}); a listing is a warc.paths.gz-style file") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def listed_urls(paths: list[str], base: str, line_range: list[int] | None = None, first: int | None = None,
                sample: int | None = None, seed: int = 0) -> list[str]:
    """The URLs of a listing's selection: lines [start, stop) of it, then the first N or a seeded sample of N (in
    listing order), each path joined to ``base`` (a path that is already a URL stays as it is)."""
    chosen = paths[slice(*line_range)] if line_range else list(paths)
    if sample is not None:
        picked = set(random.Random(seed).sample(range(len(chosen)), min(sample, len(chosen))))
        chosen = [p for i, p in enumerate(chosen) if i in picked]
    elif first is not None:
        chosen = chosen[:first]
    return [p if "://" in p else base.rstrip("/") + "/" + p.lstrip("/") for p in chosen]
