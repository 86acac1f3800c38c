"""Inputs over HTTP (tasks/remote.py) against a real local server: a dropped connection is resumed where it
stopped, a server that ignores Range is read past what was already read, permanent errors are not retried, and a
listing's selection is what it says."""
import gzip
import hashlib
import os

import pytest

from tasks.remote import HTTPInput, listed_urls, open_input, read_listing
from tests.sites import FileServer


@pytest.fixture
def blob(tmp_path):
    data = os.urandom(3 * 2**20 + 12345)
    (tmp_path / "f.bin").write_bytes(data)
    return data


@pytest.mark.parametrize("how", ["reset", "close"])
@pytest.mark.parametrize("ranges", [True, False])
def test_a_connection_dropped_mid_file_is_resumed_and_the_bytes_and_hash_are_the_files(tmp_path, blob, ranges, how):
    with FileServer(tmp_path, cut={"/f.bin": 1_000_003}, ranges=ranges, how=how) as server:
        with open_input(f"{server.base}/f.bin") as fh:  # buffered, as ingest reads it
            got = b"".join(iter(lambda: fh.read(65536), b""))
            reader = fh.raw
    assert got == blob and reader.sha256 == hashlib.sha256(blob).hexdigest() and reader.length == len(blob)
    assert reader.reconnects == 1
    gets = [r[2] for r in server.requests if r[0] == "GET"]
    assert len(gets) == 2 and gets[0] is None
    if how == "close" and ranges:  # the body ended cleanly at the cut: the second request asks for the rest only
        assert gets[1] == "bytes=1000003-"
    elif ranges:  # a reset loses what was in flight: the rest from wherever the reader had got to
        assert gets[1] is None or 0 < int(gets[1][len("bytes="):-1]) <= 1_000_003


def test_the_reader_seeks_with_range_requests_and_hashes_only_a_whole_prefix(tmp_path, blob):
    with FileServer(tmp_path) as server:
        reader = HTTPInput(f"{server.base}/f.bin")
        reader.seek(2 * 2**20)
        assert reader.read(10) == blob[2 * 2**20: 2 * 2**20 + 10] and reader.sha256 is None
        reader.seek(0)
        assert reader.read() == blob and reader.sha256 == hashlib.sha256(blob).hexdigest()
        assert ("GET", "/f.bin", f"bytes={2 * 2**20}-") in server.requests


def test_a_missing_file_fails_at_once_and_is_not_retried(tmp_path):
    with FileServer(tmp_path) as server:
        with pytest.raises(OSError, match="404"):
            HTTPInput(f"{server.base}/nope.warc.gz", backoff_s=0.01)
        assert len(server.requests) == 1


def test_a_listing_selects_a_range_then_the_first_or_a_seeded_sample(tmp_path):
    lines = [f"crawl-data/CC-MAIN-2024-51/segments/s/warc/f{i:05d}.warc.gz" for i in range(20)]
    (tmp_path / "warc.paths.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    with FileServer(tmp_path) as server:
        assert read_listing(f"{server.base}/warc.paths.gz") == lines
    assert read_listing(str(tmp_path / "warc.paths.gz")) == lines
    base = "https://data.commoncrawl.org/"
    assert listed_urls(lines, base, [5, 10], first=2) == [base + lines[5], base + lines[6]]
    sample = listed_urls(lines, base, None, sample=4, seed=7)
    assert len(sample) == 4 and sample == sorted(sample) and sample == listed_urls(lines, base, None, sample=4,
                                                                                     seed=7)
    assert sample != listed_urls(lines, base, None, sample=4, seed=8)
    assert listed_urls(lines, base) == [base + p for p in lines]


def test_a_listing_that_is_not_a_listing_is_a_clear_error(tmp_path):
    (tmp_path / "warc.paths.gz").write_bytes(gzip.compress(os.urandom(64) + b"\xff\xfe"))
    with pytest.raises(ValueError, match="is not UTF-8 text with one path per line"):
        read_listing(str(tmp_path / "warc.paths.gz"))
