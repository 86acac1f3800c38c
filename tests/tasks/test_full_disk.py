"""A full disk is a permanent error with a plain message, never retried as if it were a network blip."""
import errno
import os
import subprocess
from pathlib import Path

import pytest
from warcio.warcwriter import WARCWriter

from flows.stages import is_transient
from tasks.config import IngestConfig
from tasks.ingest import IngestStage
from tasks.sharded import UnitFailed, run_unit
from tests.helpers import response


def test_a_full_disk_or_quota_is_not_transient_but_a_connection_reset_is():
    assert not is_transient(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert not is_transient(OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)))
    assert not is_transient(FileNotFoundError(errno.ENOENT, "gone"))
    assert is_transient(ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"))


@pytest.fixture
def tiny_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_unit_that_fills_the_disk_fails_saying_so(tmp_path, tiny_disk):
    warc = tmp_path / "pages.warc.gz"
    with open(warc, "wb") as fh:  # pages of random words: they do not compress below the disk's 64 KiB
        writer = WARCWriter(fh, gzip=True)
        for i in range(60):
            words = " ".join(os.urandom(4).hex() for _ in range(600))
            response(writer, f"http://full.example.org/{i}", f"<html><body><p>{words}</p></body></html>".encode())
    stage = IngestStage(IngestConfig(inputs=[str(warc)]))
    [unit] = stage.plan(stage.sources())
    with pytest.raises(UnitFailed, match="the disk is full .* free some space and rerun") as failed:
        run_unit(stage, unit, Path(tiny_disk) / "out")
    assert not is_transient(failed.value.__cause__)
    assert not list((Path(tiny_disk) / "out").glob("part-*.json"))  # nothing recorded as finished


def test_a_full_disk_while_writing_a_curated_source_fails_the_unit_not_the_file(tmp_path, tiny_disk):
    import json

    from tasks.config import SourceConfig

    path = tmp_path / "notes.jsonl"
    with open(path, "w") as fh:  # random words: they do not compress below the disk's 64 KiB
        for _ in range(60):
            fh.write(json.dumps({"text": " ".join(os.urandom(4).hex() for _ in range(600))}) + "\n")
    stage = IngestStage(IngestConfig(shard_max_docs=10), [SourceConfig(name="notes", inputs=[str(path)],
                                                                      format="jsonl")])
    [unit] = stage.plan(stage.sources())
    with pytest.raises(UnitFailed, match="the disk is full"):
        run_unit(stage, unit, Path(tiny_disk) / "out")
    assert not list((Path(tiny_disk) / "out").glob("part-*.json"))  # not finished with a 'read_error'
