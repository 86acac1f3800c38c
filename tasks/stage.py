"""The stage contract: what every stage is, and the one result it hands back. No Prefect here.

Every stage (crawl, the sharded and reduce stages, the torchrun stages, the report) is a class with:

- ``name`` and ``upstream`` (upstream set by tasks/registry.py from the pipeline order), ``enabled`` and
  ``disabled_because`` (a stage its config switches off is skipped and says why), ``config`` (its section);
- ``code_roots()``: the modules whose imports, followed, are the code it runs (its code version, in its key);
- ``read_input(ctx, upstream) -> Input``: the upstream dataset it reads, checked, and that input's fingerprint;
- ``stage_key(input, ctx)``: hash(stage, config, code, input fingerprint); ``output_dir(ctx, key)``;
- ``cached(ctx, key, out_dir)``: the recorded dataset for this key when it is still whole on disk, else None;
- ``execute(ctx, input, out_dir, key) -> StageResult``: do the work and say what it made.

flows/stages.py runs that lifecycle for all of them (key, cache lookup, start, execute, record, finish; failure and
interrupt recorded in one place), and ``StageContext`` is what it lends a stage while it runs: where to log, the
warehouse to read, and ``map``/``call`` to run units of work. This base context runs everything here, in order, so
that a stage runs and is tested without Prefect; the flow's context runs units as tasks on the configured runner.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from pydantic import BaseModel

from tasks.atomic import file_sha256
from tasks.codeversion import code_version
from tasks.config import stable_hash

FULL_DISK = frozenset({errno.ENOSPC, errno.EDQUOT})
Metric = tuple[int | None, str, float]  # (step or None, name, value)
FileRow = tuple[str, int | None, int | None, str | None]  # (path, rows, bytes, sha256)


class StageFailed(RuntimeError):
    """A stage that cannot finish: units that failed after their retries (each named with its input), or an
    upstream of the wrong kind."""


class UnitFailed(RuntimeError):
    """A unit of work that could not finish; the message names the unit and its input."""


@dataclass
class Input:
    """What a stage reads: the upstream dataset (None for a stage that reads the web or only its config), its
    fingerprint (part of the key) and the ids recorded as the stage run's inputs."""

    fingerprint: str = ""
    dataset_ids: list[str] = field(default_factory=list)
    dataset: dict[str, Any] | None = None
    files: list[Any] = field(default_factory=list)  # a stage's own listing of what it reads (ingest's input files)
    bytes: int | None = None

    @property
    def dir(self) -> Path:
        return Path(self.dataset["uri"])


@dataclass
class Dataset:
    """A dataset a stage made, as the warehouse records it (its parents make the lineage)."""

    dataset_id: str
    stage: str
    stage_key: str | None
    uri: str
    format: str
    fingerprint: str
    files: list[FileRow]
    parents: list[str]
    tokens: int | None = None


@dataclass
class Records:
    """Parquet files a stage wrote for one warehouse table (workers never open the warehouse), with any constant
    columns the table needs (the crawl job); ``announce`` says the count in the run's log."""

    table: str
    files: list[Path]
    constants: dict[str, Any] = field(default_factory=dict)
    announce: bool = False


@dataclass
class Artifact:
    """A markdown page for the orchestrator's UI (a Prefect artifact); the files on disk are the product."""

    key: str
    markdown: str
    description: str


@dataclass
class StageResult:
    """Everything a stage run made and counted; flows/stages.py records all of it in the warehouse."""

    output: Dataset                                         # what the next stage reads
    datasets: list[Dataset] = field(default_factory=list)   # others it made (its sources, a tokenizer, checkpoints)
    units: int = 1
    units_resumed: int = 0
    shards_out: int = 0
    docs_in: int | None = None
    docs_out: int | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None
    drops: dict[str, int] = field(default_factory=dict)      # the drop funnel: reason -> documents
    drop_bytes: dict[str, int] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)      # counted events that are not drops (note_counts)
    metrics: list[Metric] = field(default_factory=list)
    records: list[Records] = field(default_factory=list)
    artifact: Artifact | None = None
    message: str = ""                                       # one line for the run's log
    # per source: {"docs_in", "docs_out", "drops": {reason: (docs, bytes)}, and where known "tokens", "share"…}
    by_source: dict[str, dict[str, Any]] = field(default_factory=dict)


NOTE_COUNTS = (("link_", "links"), ("record_", "records"), ("single_gzip_stream", "files"))


def note_counts(reason: str) -> str:
    """What a note counts, by its reason's prefix: links a crawl met (``link_max_pages``), WARC records that are
    not documents (``record_request``), archives read as one gzip stream; any other note counts documents."""
    return next((what for prefix, what in NOTE_COUNTS if reason.startswith(prefix)), "documents")


PROGRESS_FILE = ".progress.json"  # in a running stage's output directory: the dashboard's "3/8 units, 1,234 docs/s"


def write_progress(out_dir: Path, **progress: Any) -> None:
    """How far a running stage's units are (step, units_done, units_total, docs, seconds), for readers of its
    output directory. Replaced whole on every write (its own temporary name, which a unit's clean-up of ``.tmp-*``
    files never takes); not fsynced: it only ever says how far a live run got."""
    path = Path(out_dir) / PROGRESS_FILE
    part = path.with_name(PROGRESS_FILE + ".part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        part.write_text(json.dumps(progress, sort_keys=True))
        os.replace(part, path)
    except OSError:  # a full disk or a vanished directory must not fail the stage over a progress line
        pass


def read_progress(out_dir: str | Path) -> dict[str, Any] | None:
    """The progress a running stage last wrote, or None (none written, or unreadable)."""
    try:
        return json.loads((Path(out_dir) / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return None


class StageContext:
    """What the lifecycle lends a running stage. This one runs every unit here, one after another, and reads the
    warehouse it was given (if any); flows/stages.py's ``FlowContext`` submits units to the task runner."""

    def __init__(self, work_dir: Path, *, warehouse: Any = None, run_id: str = "local",
                 stage_run_id: str = "local", recrawl: bool = False,
                 log: Callable[[str], None] = print) -> None:
        self.work_dir = Path(work_dir)
        self.warehouse = warehouse
        self.run_id = run_id
        self.stage_run_id = stage_run_id
        self.recrawl = recrawl
        self.log = log

    def say(self, message: str) -> None:
        self.log(message)

    def map(self, step: str, fn: Callable[..., dict[str, Any]], stage: Any, units: list[Any],
            out_dir: Path) -> list[dict[str, Any]]:
        """``fn(stage, unit, out_dir)`` for every unit (JSON-able results, in unit order); raises StageFailed naming
        every unit that failed, after all of them ran."""
        results, failures = [], []
        for unit in units:
            try:
                results.append(fn(stage, unit, out_dir))
            except Exception as err:
                failures.append(str(err) if isinstance(err, UnitFailed) else f"{unit.describe()}: {err!r}")
        raise_failures(stage.name, step, failures, len(units))
        return sorted(results, key=lambda r: r["unit"])

    def call(self, label: str, fn: Callable[..., Any], *args: Any) -> Any:
        """One step that runs whole (a reduce, a crawl, a torchrun launch)."""
        return fn(*args)

    def load(self, records: Records) -> int:
        """Hand records to the warehouse now, when the stage needs them there before it finishes (the crawl log
        it reads back, evaluation items it joins); returns the rows the table holds for this stage run."""
        if self.warehouse is None:
            return 0
        return self.warehouse.load_records(records.table, self.stage_run_id, records.files, **records.constants)


def raise_failures(stage: str, step: str, failures: list[str], units: int) -> None:
    if failures:
        detail = "\n  ".join(failures[:20])
        more = f"\n  … and {len(failures) - 20} more" if len(failures) > 20 else ""
        what = f"{step} units" if step else "units"
        raise StageFailed(f"stage {stage}: {len(failures)} of {units} {what} failed:\n  {detail}{more}")


class Stage(ABC):
    """The contract. Subclasses set ``name`` and implement ``execute``; the rest has defaults that fit a stage
    reading its upstream's dataset into ``<work_dir>/datasets/<name>/<key>``."""

    name: ClassVar[str]
    upstream: ClassVar[str | None] = None  # set by tasks/registry.py from the pipeline order
    upstreams: ClassVar[tuple[str, ...]] = ()  # upstream, and those before it when it is optional (registry.py)
    optional: ClassVar[bool] = False  # its config may switch it off, and the next stage then reads its upstream
    enabled: ClassVar[bool] = True  # a stage that is switched off by its config is skipped, and says why
    disabled_because: ClassVar[str] = ""
    role: ClassVar[str | None] = None  # what the report and dashboard show it as (warehouse/migrations/0006)
    uses_docpool: ClassVar[bool] = False  # sends per-document work to tasks/docpool.py's processes

    def __init__(self, config: BaseModel | None, sources: Any = ()) -> None:
        self.config = config
        self.source_configs = tuple(sources)  # tasks.config.SourceConfig, each source's settings (all_sources())

    def source_params(self) -> Any:
        """The part of the sources' settings this stage's output depends on (its skips, their weights…), hashed
        into its key; None when it depends on none."""
        return None

    # -- identity ------------------------------------------------------------------------------------------------

    @classmethod
    def code_roots(cls) -> list[str]:
        """The modules whose imports, followed, are the code this stage runs."""
        return [cls.__module__, __name__]

    @classmethod
    def code_version(cls) -> str:
        """A hash of every project module the stage runs (tasks/codeversion.py): editing any invalidates its cache."""
        return code_version(cls.code_roots())

    def params(self) -> dict[str, Any]:
        params = self.config.model_dump(mode="json") if self.config is not None else {}
        sources = self.source_params()
        return {**params, "sources": sources} if sources else params

    def skip_params(self) -> Any:
        """source_params for a stage whose only use of the sources is letting some pass through."""
        return sorted(self.skipping()) or None

    def skipping(self) -> frozenset[str]:
        """The sources whose documents pass through this stage untouched (``skip`` in ``[[sources]]``)."""
        return frozenset(s.name for s in self.source_configs if s.skips(self.name))

    def key(self, input_fingerprint: str) -> str:
        """The cache key: stage name, its config section, its code version and its input's fingerprint."""
        return stable_hash({"stage": self.name, "config": self.params(), "code": self.code_version(),
                            "input": input_fingerprint})

    # -- the lifecycle's steps -----------------------------------------------------------------------------------

    def prepare(self, ctx: StageContext) -> None:
        """Before the key: make what the stage's input depends on that the project writes itself."""

    def warm(self) -> None:
        """On the thread runner, when this stage or one before it in the run finds no cached dataset: start in the
        background what this stage's units will use (extraction's child processes), so it is ready when the stages
        before it have run."""

    def read_input(self, ctx: StageContext, upstream: dict[str, Any] | None) -> Input:
        """The upstream dataset, which must be the upstream stage's (a stage without one reads nothing)."""
        if self.upstream is None:
            return Input()
        if upstream is None or upstream["stage"] not in self.upstreams:
            got = upstream["dataset_id"] if upstream else "nothing"
            raise StageFailed(f"stage {self.name} reads a {' or '.join(self.upstreams)} dataset, got {got}")
        return Input(upstream["fingerprint"], [upstream["dataset_id"]], upstream, bytes=upstream.get("bytes"))

    def stage_key(self, inp: Input, ctx: StageContext) -> str:
        return self.key(inp.fingerprint)

    def output_dir(self, ctx: StageContext, key: str) -> Path:
        return ctx.work_dir / "datasets" / self.name / key[:16]

    def cached(self, ctx: StageContext, key: str, out_dir: Path) -> dict[str, Any] | None:
        """The recorded dataset with this key, when it is still whole on disk (else it is made again)."""
        return None

    def cache_note(self) -> str:
        """Said after 'cache hit': how to make the stage run anyway, where that is not obvious."""
        return ""

    @abstractmethod
    def execute(self, ctx: StageContext, inp: Input, out_dir: Path, key: str) -> StageResult:
        """Do the work into ``out_dir`` and say what was made (nothing here writes the warehouse)."""


def file_artifact(path: Path, parents: list[str]) -> Dataset:
    """A single file a stage made besides its output (a tokenizer), as a dataset of its own named by its hash."""
    digest = file_sha256(path)
    kind = path.stem
    return Dataset(f"{kind}-{digest[:12]}", kind, None, str(path), path.suffix.lstrip("."), digest,
                   [(str(path), None, path.stat().st_size, digest)], parents)


def describe_os_error(err: OSError, out_dir: Path) -> str:
    """An OSError in words a user can act on; a full disk is said plainly (it is not retried)."""
    if err.errno in FULL_DISK:
        free = shutil.disk_usage(out_dir).free if out_dir.exists() else 0
        return (f"the disk is full writing {err.filename or out_dir} ({free / 2**20:,.0f} MiB free): free some "
                "space and rerun; finished units are kept")
    return f"{type(err).__name__}: {err}"
