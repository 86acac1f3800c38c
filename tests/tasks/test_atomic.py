"""Remembered file hashes: a large model file is read once, and any change to it is seen."""
import hashlib
import os
import time

from tasks.atomic import cached_sha256, hash_cache_dir


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_remembered_hash_is_reused_and_any_rewrite_misses_it(tmp_path, monkeypatch):
    monkeypatch.setenv("CRUCIBLE_CACHE_DIR", str(tmp_path / "cache"))
    model = tmp_path / "model.bin"
    model.write_bytes(os.urandom(1 << 20))
    old = time.time() - 60
    os.utime(model, (old, old))  # older than the racy window
    assert cached_sha256(model) == _sha(model)
    entries = list((hash_cache_dir() / "sha256").iterdir())
    assert len(entries) == 1
    entries[0].write_text("f" * 64 + "\n")  # the entry is what a second run reads: it does not hash again
    assert cached_sha256(model) == "f" * 64
    entries[0].write_text("not a digest, a damaged entry\n")  # hashed again, not trusted
    assert cached_sha256(model) == _sha(model)
    with open(model, "r+b") as fh:  # the same size, rewritten in place
        fh.write(b"changed")
    os.utime(model, (old + 1, old + 1))
    assert cached_sha256(model) == _sha(model)


def test_a_file_written_just_now_is_hashed_but_not_remembered(tmp_path, monkeypatch):
    monkeypatch.setenv("CRUCIBLE_CACHE_DIR", str(tmp_path / "cache"))
    model = tmp_path / "model.bin"
    model.write_bytes(b"fresh")
    assert cached_sha256(model) == _sha(model)
    assert not (hash_cache_dir() / "sha256").exists()


def test_an_unwritable_cache_still_hashes(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv("CRUCIBLE_CACHE_DIR", str(blocker))
    model = tmp_path / "model.bin"
    model.write_bytes(b"x" * 100)
    os.utime(model, (1, 1))
    assert cached_sha256(model) == _sha(model)


def test_the_cache_drops_its_oldest_entries_past_its_size(tmp_path, monkeypatch):
    import tasks.atomic as atomic

    monkeypatch.setenv("CRUCIBLE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(atomic.prune_hash_cache, "__defaults__", (8,))  # keep at most 8 entries
    files = []
    for i in range(12):  # twelve files hashed in turn: one entry each
        f = tmp_path / f"model-{i}.bin"
        f.write_bytes(os.urandom(1000))
        os.utime(f, (1000 + i, 1000 + i))
        files.append(f)
        cached_sha256(f)
    entries = sorted((hash_cache_dir() / "sha256").iterdir(), key=lambda e: e.stat().st_mtime_ns)
    assert len(entries) == 7  # the 9th entry pruned them to the newest 4, then three more came
    entries[-1].write_text("e" * 64 + "\n")  # the newest entry is the last file's, and still answers
    assert cached_sha256(files[-1]) == "e" * 64
    assert cached_sha256(files[0]) == _sha(files[0])  # the oldest entry was dropped: hashed and written again
    assert len(list((hash_cache_dir() / "sha256").iterdir())) == 8
