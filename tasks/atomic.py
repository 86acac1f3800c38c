"""Atomic files: a file is either absent or whole, whatever kills the writer and whenever.

Every writer in Crucible goes through ``atomic_file``: write a temporary file in the target's own directory (a
rename is atomic only within one file system), fsync it, rename it over the target, then fsync the directory so the
rename itself survives a power cut. A killed writer leaves only a ``.tmp-*`` file, which the next run removes.

    with atomic_file(path) as tmp:          # for writers that want a path (Parquet, Arrow IPC, DuckDB COPY)
        pq.write_table(table, tmp)
    atomic_write_bytes(path, data)
    atomic_write_json(path, value)
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

TMP_PREFIX = ".tmp-"


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened, as on Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends cleanly it becomes ``path``, durably."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}.", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, value: Any, **dumps: Any) -> None:
    options = {"indent": 1, "sort_keys": True, "default": str, **dumps}
    atomic_write_text(path, json.dumps(value, **options) + "\n")


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in blocks."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def hash_cache_dir() -> Path:
    """Where ``cached_sha256`` keeps its entries: $CRUCIBLE_CACHE_DIR, else $XDG_CACHE_HOME/crucible, else
    ~/.cache/crucible."""
    if os.environ.get("CRUCIBLE_CACHE_DIR"):
        return Path(os.environ["CRUCIBLE_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "crucible"


def cached_sha256(path: Path) -> str:
    """A large file's SHA-256 (a user's ~1 GB model), read once and then remembered by its stat, as git's index
    and DVC do: the entry is named by the file's real path, size, mtime and inode, so any rewrite misses it. A file
    modified within the last two seconds is hashed but not remembered (git's "racy" rule: a second write in the
    same clock tick could keep the size and mtime). Where the cache cannot be written, the file is hashed."""
    st = os.stat(path)
    key = hashlib.blake2b(f"{os.path.realpath(path)}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}".encode(),
                          digest_size=16).hexdigest()
    entry = hash_cache_dir() / "sha256" / key
    try:
        known = entry.read_text().strip()
        if len(known) == 64 and all(c in "0123456789abcdef" for c in known):  # else damaged: hash again
            return known
    except OSError:
        pass
    digest = file_sha256(path)
    if time.time() - st.st_mtime > 2:
        try:
            atomic_write_text(entry, digest + "\n")
            prune_hash_cache(entry.parent)
        except OSError:
            pass
    return digest


HASH_CACHE_ENTRIES = 4096  # kept at most; a new entry past it drops the least recently written half


def prune_hash_cache(directory: Path, keep: int = HASH_CACHE_ENTRIES) -> int:
    """Drop the oldest entries (by mtime) once there are more than ``keep``, down to half of it; entries of files
    that changed or went are never read again, so without this the cache would only grow. Returns how many went."""
    with os.scandir(directory) as found:
        entries = [e for e in found if e.is_file() and not e.name.startswith(TMP_PREFIX)]
    if len(entries) <= keep:
        return 0
    entries.sort(key=lambda e: e.stat().st_mtime_ns)
    gone = entries[:len(entries) - keep // 2]
    for e in gone:
        try:
            os.unlink(e.path)
        except OSError:  # another process pruned it first
            pass
    return len(gone)
