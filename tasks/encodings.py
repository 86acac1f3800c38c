"""HTTP content decoding with a cap on the DECODED size, shared by ingest (archived payloads) and crawl (live pages).

A 1 KB brotli or gzip body can inflate to gigabytes, so a cap on the bytes read proves nothing. ``ContentDecoder``
is fed the body as it arrives and never produces more than ``limit`` bytes: zlib gets ``max_length`` and brotli
``output_buffer_limit``, so the memory a page can cost is bounded by the cap, whatever its compression ratio.

    decoder = ContentDecoder(response.headers.get("Content-Encoding"), limit=5 * 2**20)
    for chunk in raw_chunks:
        body += decoder.feed(chunk)
        if decoder.full:
            break              # the page is larger than the cap: drop it as too large
    body += decoder.flush()

Stacked encodings (``gzip, gzip``) are refused: no real server needs them and they multiply the ratio. An encoding
that is not a compression (``identity``, or the junk some servers send, such as ``UTF-8``) passes bytes through.
"""
from __future__ import annotations

import zlib

import brotli

COMPRESSIONS = {"gzip": "gzip", "x-gzip": "gzip", "deflate": "deflate", "br": "br"}


class EncodingRefused(ValueError):
    """A Content-Encoding that is not decoded (stacked compressions); ``reason`` is the drop reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def compression_of(header: str | None) -> str | None:
    """'gzip', 'deflate', 'br' or None for a Content-Encoding header; EncodingRefused for stacked compressions."""
    codings = [c.strip().lower() for c in (header or "").split(",") if c.strip()]
    known = [COMPRESSIONS[c] for c in codings if c in COMPRESSIONS]
    if len(known) > 1:
        raise EncodingRefused("stacked_content_encoding", f"Content-Encoding {header!r}: stacked compressions")
    return known[0] if known else None


class ContentDecoder:
    """Undo one content encoding incrementally, producing at most ``limit`` bytes in all.

    When the output reaches ``limit``, ``full`` is set and the rest of the input is ignored: the caller drops the
    payload as too large (``limit`` is usually the cap plus one byte, so a payload exactly at the cap passes).
    A stream that does not decode at its very start is passed through as it is (servers label plain bodies gzip),
    noted in ``mislabelled``; a stream that breaks later raises zlib.error or brotli.error.
    """

    def __init__(self, header: str | None, limit: int) -> None:
        self.kind = compression_of(header)
        self.limit = limit
        self.produced = 0
        self.full = False
        self.mislabelled = False
        self._started = False
        self._raw_tried = False
        self._zlib = None
        self._brotli = None
        if self.kind == "gzip":
            self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif self.kind == "deflate":
            self._zlib = zlib.decompressobj()
        elif self.kind == "br":
            self._brotli = brotli.Decompressor()

    def feed(self, data: bytes) -> bytes:
        if self.full or not data:
            return b""
        if self.kind is None or self.mislabelled:
            return self._take(data)
        try:
            out = self._zlib_feed(data) if self._zlib is not None else self._brotli_feed(data)
        except (zlib.error, brotli.error):
            if self._started:
                raise
            if self.kind == "deflate" and self._zlib is not None and not self._raw_tried:
                # "deflate" is meant to be zlib-wrapped, but some servers send raw deflate (as browsers allow)
                self._raw_tried = True
                self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
                return self.feed(data)
            self.mislabelled = True
            return self._take(data)
        self._started = self._started or bool(out)
        return out

    def flush(self) -> bytes:
        if self.full or self.kind is None or self.mislabelled:
            return b""
        if self._zlib is not None:
            return self._take(self._zlib.flush())  # the tail is drained in feed, so this is small
        return b""

    def _take(self, out: bytes) -> bytes:
        room = self.limit - self.produced
        if len(out) >= room:
            self.full = True
            out = out[:room]
        self.produced += len(out)
        return out

    def _zlib_feed(self, data: bytes) -> bytes:
        parts = []
        while data and not self.full:
            out = self._zlib.decompress(data, self.limit - self.produced + 1)
            self._started = self._started or bool(out)
            parts.append(self._take(out))
            data = self._zlib.unconsumed_tail
            if self._zlib.eof:
                break
        return b"".join(parts)

    def _brotli_feed(self, data: bytes) -> bytes:
        d = self._brotli
        parts = [self._take(d.process(data, output_buffer_limit=self.limit - self.produced + 1))]
        while not self.full and not d.is_finished() and not d.can_accept_more_data():
            parts.append(self._take(d.process(b"", output_buffer_limit=self.limit - self.produced + 1)))
        return b"".join(parts)


def decode_all(header: str | None, chunks, limit: int) -> tuple[bytes, ContentDecoder]:
    """Decode an iterable of byte chunks with ``ContentDecoder``; stops reading once the cap is reached."""
    decoder = ContentDecoder(header, limit)
    parts = []
    for chunk in chunks:
        parts.append(decoder.feed(chunk))
        if decoder.full:
            break
    parts.append(decoder.flush())
    return b"".join(parts), decoder
