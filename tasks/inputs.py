"""Input files: paths, globs and fsspec URLs resolved to a sorted list of files with their size and version.

A version (mtime or ETag) tells a changed file from the same one, so a rerun over more files reuses the units of
the files it has read before (tasks/ingest.py).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec

from tasks.remote import head, is_http, listed_urls, read_listing


@dataclass(frozen=True)
class InputFile:
    uri: str
    size: int
    version: str  # mtime or ETag: what tells a changed file from the same one
    source: str = "web"  # the [[sources]] entry it belongs to, and how that source is read
    format: str = "warc"


def expand_inputs(patterns: list[str], source: str = "web", format: str = "warc") -> list[InputFile]:
    """Resolve paths, globs and fsspec URLs to a sorted file list; a pattern that matches nothing is an error."""
    files: dict[str, InputFile] = {}
    for pattern in patterns:
        if is_http(pattern):  # one file (http has no globs); asked with HEAD, retried (tasks/remote.py)
            size, version = head(pattern)
            files[pattern] = InputFile(pattern, size, version, source, format)
            continue
        fs, _, paths = fsspec.get_fs_token_paths(pattern)
        matched = [p for p in paths if fs.isfile(p)]
        if not matched:
            raise FileNotFoundError(f"ingest input {pattern!r} matches no file")
        for p in matched:
            info = fs.info(p)
            uri = fs.unstrip_protocol(p) if fs.protocol not in ("file", ("file", "local")) else p
            version = str(info.get("mtime") or info.get("ETag") or info.get("LastModified") or info.get("created"))
            files[uri] = InputFile(uri, int(info.get("size") or 0), version, source, format)
    return [files[k] for k in sorted(files)]


def expand_listing(src: Any) -> list[InputFile]:
    """The files a source's listing selects (``SourceConfig.listing``), each with its size and ETag (http: HEAD;
    other URLs: fsspec), in listing order; none when the source has no listing."""
    listing = src.listing
    if listing is None:
        return []
    urls = listed_urls(read_listing(listing.paths), listing.base, listing.range, listing.first, listing.sample,
                       listing.seed)
    if not urls:
        raise FileNotFoundError(f"source {src.name}: the listing {listing.paths} selects no file "
                                f"(range {listing.range}, first {listing.first}, sample {listing.sample})")
    return expand_inputs(urls, src.name, src.format)


_HTML_FILE = re.compile(r"\.(html?|xhtml)(\.gz)?$", re.I)


def is_html_file(uri: str) -> bool:
    """A saved page rather than an archive, by its name."""
    return bool(_HTML_FILE.search(uri))


def file_url(uri: str) -> str:
    return uri if "://" in uri else Path(uri).resolve().as_uri()


def size_of(uri: str) -> int:
    if is_http(uri):
        try:
            return head(uri)[0]
        except OSError:
            return 0
    try:
        fs, _, paths = fsspec.get_fs_token_paths(uri)
        return int(fs.info(paths[0]).get("size") or 0)
    except (OSError, IndexError):
        return 0


def make_doc_id(key: str) -> str:
    """A document's id: 24 hex digits of a hash of what names it (a WARC-Record-ID, a source and place)."""
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()
