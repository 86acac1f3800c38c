"""Ingestion: every source's files into Parquet shards of documents, each tagged with its source's name.

Sources (``[[sources]]``, plus ``ingest.inputs`` as the source 'web' and a crawl's WARCs as 'crawl') are read by
format: WARC 1.0/1.1/0.17/0.18, ARC and WET files (gzip or plain) and saved pages give HTML documents; plain text,
JSON Lines and Parquet (tasks/readers.py) give text documents (content type text/plain, which extract passes
through). One unit is one input file, or a run of row groups of a Parquet file. Every record either becomes a
document or a counted skip with a reason (``not_html``, ``payload_too_large``, ``read_error`` …; records that are not documents, such as requests, warcinfo and
revisits, are counted by type as notes: ``record_request`` …); a damaged region of a file is skipped
by resynchronising on the next record, so one bad record never costs the rest of the file. A file that is not an
archive at all fails its unit with a message naming the file.

    from tasks.ingest import IngestStage
    stage = IngestStage(cfg.ingest)
    units = stage.plan(stage.sources())
"""
from __future__ import annotations

from email.utils import parsedate_to_datetime
import gzip
import hashlib
import io
import time
import zlib
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import fsspec

from tasks.config import IngestConfig, SourceConfig, stable_hash
from tasks.charsets import charset_of as _charset_of, decode_html, fetch_time as _fetch_time, looks_binary  # noqa: F401
from tasks.inputs import (InputFile, expand_inputs, expand_listing, file_url, is_html_file,  # noqa: F401
                          make_doc_id, size_of)
from tasks.remote import HTTPInput, is_http, open_input
from tasks.readers import parquet_row_groups, read_curated
from tasks.shards import DropLog, ShardResult, ShardWriter
from tasks.sharded import ShardedStage, Source, Unit, UnitIndex, prepare_output
from tasks.stage import Dataset, Input, StageContext, StageResult, UnitFailed
from tasks.records import ArchiveReader
from tasks.schemas import INGEST as SCHEMA
from tasks.warc import is_archive


def page_time(fh: IO[bytes], uri: str) -> datetime | None:
    """When a saved page was fetched: the server's Last-Modified for a page read over http(s), else the file's
    modification time; None where there is none to read (no header, one that is not an HTTP date, a filesystem
    that keeps no times: fsspec's raise NotImplementedError)."""
    streamed = getattr(fh, "raw", None)
    if isinstance(streamed, HTTPInput):
        try:
            when = parsedate_to_datetime(streamed.last_modified or "")
        except (TypeError, ValueError):
            return None
    else:
        try:
            fs, _, paths = fsspec.get_fs_token_paths(uri)
            when = fs.modified(paths[0])
        except (OSError, NotImplementedError):
            return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


# ---------------------------------------------------------------------------------------------------------------
# The stage


class IngestStage(ShardedStage):
    name = "ingest"
    role = "collection"
    schema = SCHEMA
    size_column = "html"

    config: IngestConfig

    def source_list(self) -> list[SourceConfig]:
        """The sources this stage reads: those it was given (``Config.all_sources``), else ingest.inputs as 'web'."""
        if self.source_configs:
            return list(self.source_configs)
        return [SourceConfig(name="web", inputs=self.config.inputs)] if self.config.inputs else []

    def source_named(self, name: str | None) -> SourceConfig:
        for s in self.source_list():
            if s.name == name:
                return s
        if name == "crawl":  # a crawl's WARC files, for a stage made without the config's sources
            return SourceConfig(name="crawl", format="warc")
        raise ValueError(f"no source named {name!r}; the sources are {[s.name for s in self.source_list()]}")

    def source_params(self) -> Any:
        """How the [[sources]] beyond ingest.inputs and the crawl are read (their weights and filters are not
        ingest's business, so changing those reads nothing again)."""
        return [s.reading() for s in self.source_list()
                if s.has_files and not (s.name == "web" and s.inputs == self.config.inputs)] or None

    def sources(self, crawled: list[InputFile] = ()) -> list[InputFile]:
        """Every source's input files, plus the WARC files of an upstream crawl (the source 'crawl')."""
        files: dict[str, InputFile] = {}
        for src in self.source_list():
            if src.has_files:
                for f in expand_inputs(src.inputs, src.name, src.format) + expand_listing(src):
                    if f.uri in files and files[f.uri].source != src.name:
                        raise ValueError(f"{f.uri} is an input of both sources {files[f.uri].source!r} and "
                                         f"{src.name!r}; a file belongs to one source")
                    files[f.uri] = f
        files.update({f.uri: InputFile(f.uri, f.size, f.version, "crawl", "warc") for f in crawled})
        if not files:
            raise FileNotFoundError("nothing to ingest: set ingest.inputs (WARC/ARC/WET files), [[sources]] or "
                                    "crawl.seeds")
        return [files[k] for k in sorted(files)]

    @staticmethod
    def sources_fingerprint(files: list[InputFile]) -> str:
        return stable_hash([[f.uri, f.size, f.version, f.source, f.format] for f in files])

    def read_input(self, ctx: StageContext, upstream: dict[str, Any] | None) -> Input:
        """The input files (and a crawl's WARC files, when there is a crawl upstream); the raw files are a dataset
        of their own, ``source-<fingerprint>``, so lineage ends at the input files themselves."""
        crawled = []
        if upstream is not None:
            super().read_input(ctx, upstream)  # it must be a crawl's
            crawled = [InputFile(f["path"], f["bytes"], f["content_hash"])
                       for f in ctx.warehouse.dataset_files(upstream["dataset_id"])]
        files = self.sources(crawled)
        fp = self.sources_fingerprint(files)
        return Input(fp, [f"source-{fp[:12]}"], upstream, files, sum(f.size for f in files))

    def execute(self, ctx: StageContext, inp: Input, out_dir: Path, key: str) -> StageResult:
        t0 = time.perf_counter()
        named = {s.name: [*s.inputs, *([s.listing.paths] if s.listing else [])] for s in self.source_list()}
        described = "; ".join(f"{n}: {', '.join(files) or 'the crawl'}" for n, files in named.items()) or "crawl"
        sources = Dataset(inp.dataset_ids[0], "source", None, described, "warc",
                          inp.fingerprint, [(f.uri, None, f.size, f.version) for f in inp.files],
                          [inp.dataset["dataset_id"]] if inp.dataset else [])
        units = self.plan(inp.files)
        prepare_output(out_dir)
        # A recrawl adds WARC files: read only those, and take over the units an earlier dataset read.
        by_uri = {f.uri: f for f in inp.files}
        unit_keys = {u.name: self.unit_key(by_uri[u.sources[0].uri], u.sources[0]) for u in units}
        index = UnitIndex(ctx.work_dir / "datasets" / self.name / "_units")
        reused = sum(index.adopt(unit_keys[u.name], out_dir, u) is not None for u in units)
        if reused:
            ctx.say(f"{self.name}: {reused} of {len(units)} units were read by an earlier run; reusing those")
        results = self.run_units(ctx, units, out_dir)
        for r in results:
            index.record(unit_keys[r.unit], out_dir, r.unit)
        streamed = {uri: got for r in results for uri, got in r.inputs.items()}  # files read over http(s)
        sources.files = [(uri, rows, streamed[uri][0] or size, streamed[uri][1] or version) if uri in streamed
                         else (uri, rows, size, version) for uri, rows, size, version in sources.files]
        result = self.seal(ctx, inp, units, results, out_dir, key, t0)
        result.datasets.append(sources)
        return result

    def plan(self, files: list[InputFile]) -> list[Unit]:  # type: ignore[override]
        """One unit per input file; a Parquet file is cut into runs of whole row groups of up to shard_max_docs
        rows (a file whose footer cannot be read is one unit, which counts it as a read error)."""
        sources: list[tuple[Source, int]] = []  # and about the bytes each reads
        for f in files:
            size = f.size or 0
            groups = None
            if f.format == "parquet":
                try:
                    groups = parquet_row_groups(f.uri)
                except Exception:  # not a Parquet file: its unit says so, counted
                    groups = None
            if not groups:
                sources.append((Source(f.uri, origin=f.source), size))
                continue
            start, rows, total = 0, 0, sum(groups)
            for g, n in enumerate(groups):
                if rows and rows + n > self.config.shard_max_docs:
                    sources.append((Source(f.uri, start, g, origin=f.source), size * rows // max(total, 1)))
                    start, rows = g, 0
                rows += n
            sources.append((Source(f.uri, start, len(groups), origin=f.source), size * rows // max(total, 1)))
        return [Unit(i, (src,), len(sources), cost) for i, (src, cost) in enumerate(sources)]

    def unit_key(self, file: InputFile, part: Source | None = None) -> str:
        """What reading one input file (or row groups of it) depends on: the settings, how its source is read, the
        code, and that exact version of the file. A later run over more files reuses every unit with a key it has
        seen (``tasks.sharded.UnitIndex``)."""
        span = [part.start, part.stop] if part is not None and part.stop is not None else None
        return stable_hash({"stage": self.name, "config": self.config.model_dump(mode="json"),
                            "source": self.source_named(file.source).reading(), "code": self.code_version(),
                            "file": [file.uri, file.size, file.version], "span": span})

    def process(self, unit: Unit, writer: ShardWriter, drops: DropLog, result: ShardResult) -> None:
        part = unit.sources[0]
        uri = part.uri
        source = self.source_named(part.origin)
        drops.source = source.name
        if source.curated:
            read_curated(part, source, writer, drops, result, self.config.max_payload_bytes, self.schema)
            return
        try:
            opened = open_input(uri)
        except OSError as err:
            raise UnitFailed(f"ingest {unit.name}: cannot open {uri}: {err}") from err
        try:
            self._read_file(unit, uri, opened, source, writer, drops, result)
        finally:
            streamed = getattr(opened, "raw", None)
            if isinstance(streamed, HTTPInput):  # what came over the network: its bytes, hash and reconnects
                result.inputs[uri], result.bytes_in = [streamed.length, streamed.sha256], streamed.length or 0
                if streamed.reconnects:
                    result.stats["http_reconnects"] = result.stats.get("http_reconnects", 0) + streamed.reconnects

    def _read_file(self, unit: Unit, uri: str, opened: IO[bytes], source: Any, writer: ShardWriter,
                   drops: DropLog, result: ShardResult) -> None:
        if source.format == "html" or is_html_file(uri):
            with opened as fh:
                doc = self.html_file(fh, uri, drops, result)
            if doc is not None:
                writer.add({**doc, "source": source.name})
            result.bytes_in = 0 if is_http(uri) else size_of(uri)  # http: what was streamed (process, above)
            return
        with opened as fh:
            if not fh.seekable():
                fh = io.BytesIO(fh.read())
            if not is_archive(fh):
                raise UnitFailed(f"ingest {unit.name}: {uri} is not a WARC, ARC or WET file")
            for record in ArchiveReader(self.config).records(fh, uri, drops, result):
                record["source"] = source.name
                writer.add(record)
        result.bytes_in = 0 if is_http(uri) else size_of(uri)

    def html_file(self, fh: IO[bytes], uri: str, drops: DropLog, result: ShardResult) -> dict[str, Any] | None:
        """A saved web page (``.html``, ``.htm``, ``.xhtml``, each maybe ``.gz``) is one document; its URL is the
        file's, its fetch time the file's modification time."""
        result.docs_in += 1
        where = {"url": file_url(uri), "warc_file": uri, "warc_offset": 0}
        try:
            raw = fh.read(self.config.max_payload_bytes + 1) if not uri.endswith(".gz") else \
                gzip.GzipFile(fileobj=fh).read(self.config.max_payload_bytes + 1)
        except (OSError, EOFError, zlib.error) as err:
            drops.add("read_error", detail=f"{type(err).__name__}: {err}", **where)
            return None
        if ArchiveReader(self.config).unusable(raw, drops, where):
            return None
        text, charset, fell_back = decode_html(raw, None)
        if fell_back:
            result.notes["charset_fallback"] = result.notes.get("charset_fallback", 0) + 1
        fetch_time = page_time(fh, uri)
        if fetch_time is None:  # kept, undated, and counted
            result.notes["invalid_date"] = result.notes.get("invalid_date", 0) + 1
        return {"doc_id": make_doc_id(f"{where['url']} {hashlib.sha1(raw).hexdigest()}"), "url": where["url"],
                "host": None, "warc_file": uri, "warc_offset": 0, "fetch_time": fetch_time, "http_status": None,
                "content_type": "text/html", "record_id": None, "charset": charset, "html": text,
                "source": None, "metadata": None}

