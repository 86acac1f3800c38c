"""The lineage warehouse: the only code that talks to DuckDB.

DuckDB lets one process hold the file, and while a writer holds it nobody else can even read it. So every call
here opens the file, does its work and closes it again within milliseconds, and an open that meets another
process's lock retries until ``lock_timeout`` runs out. The orchestrator (flows/) is the only writer; the CLI's
read commands and the dashboard open it read-only the same way, so they work while a pipeline runs.

    wh = Warehouse("work/warehouse.duckdb")
    for run in wh.runs():
        print(run["run_id"], run["status"])

Why one module of ~600 lines: ``Warehouse`` is the one API over the DuckDB file and its locks; each method is a
few lines of SQL, grouped by table (runs, stage runs, funnel and metrics, crawl log, datasets, document views), and
every one shares the same open-briefly-and-retry connection. The dashboard's and the report's queries live beside
it (warehouse/dashboard.py, warehouse/report.py).
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterator

import duckdb

from warehouse.sql import literal, literal_list

SCHEMA_VERSION_TABLE = "schema_version"


class WarehouseError(RuntimeError):
    """The warehouse is missing, locked for too long, or asked for something it does not hold."""


class PipelineBusy(WarehouseError):
    """Another pipeline run writes this warehouse; the message names it."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


def new_id(prefix: str) -> str:
    return f"{prefix}-{_now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def _migrations() -> list[tuple[int, str]]:
    folder = resources.files("warehouse") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text()))
    return sorted(found)


_HELD_LOCKS: dict[Path, list[Any]] = {}  # pipeline locks this process holds: path -> [file, depth]


def _acquire(lock: Path, warehouse: Path, wait_s: float) -> Any:
    fh = open(lock, "a+")
    # At least a moment's retry: a reader asking whether a run is alive holds the lock for microseconds.
    deadline = time.monotonic() + max(wait_s, READER_PROBE_GRACE_S)
    while True:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fh
        except BlockingIOError:
            if time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            fh.seek(0)
            try:
                holder = json.loads(fh.read() or "{}")
            except ValueError:
                holder = {}
            fh.close()
            who = (f"run {holder.get('run_id')} (pid {holder.get('pid')} on {holder.get('host')}, since "
                   f"{holder.get('since')})") if holder else "another pipeline run"
            waited = f" (waited {wait_s:g}s)" if wait_s else ""
            raise PipelineBusy(f"{who} is writing {warehouse}{waited}: wait for it to finish, or set "
                               "warehouse.pipeline_wait_s to queue behind it") from None


READER_PROBE_GRACE_S = 1.0


def pipeline_alive(warehouse: Path) -> bool:
    """Whether a pipeline run holds ``<warehouse>.pipeline.lock`` now (this process included).

    The lock is a flock, released by the kernel when its holder dies however it dies, so unlike a pid it cannot
    be fooled by pid reuse (containers) or a different host name.
    """
    lock = warehouse.with_name(warehouse.name + ".pipeline.lock").resolve()
    if lock in _HELD_LOCKS:
        return True
    try:
        fh = open(lock, "r")
    except FileNotFoundError:
        return False
    except OSError:  # cannot look (permissions): do not call anyone's run crashed
        return True
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# A dataset (the parameter) and every ancestor, with its edge depth: prefix of a query over ``chain``.
_ANCESTORS = ("WITH RECURSIVE chain(dataset_id, depth) AS (SELECT ?::VARCHAR, 0 UNION SELECT e.parent_id, c.depth + 1 "
              "FROM dataset_edges e JOIN chain c ON e.child_id = c.dataset_id) ")


class Warehouse:
    def __init__(self, path: str | Path, lock_timeout: float = 60.0) -> None:
        self.path = Path(path)
        self.lock_timeout = lock_timeout
        self._batch = threading.local()
        self._schema_checked = False

    # -- connections ---------------------------------------------------------------------------------------------

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Hold one write connection for a group of calls from this thread (a stage's records: datasets, metrics,
        funnel, the finish); each call would otherwise open and close the file (~30 ms each). Readers in other
        processes wait for the group, as for any write."""
        if getattr(self._batch, "con", None) is not None:
            yield
            return
        with self.connect() as con:
            self._batch.con = con
            try:
                yield
            finally:
                self._batch.con = None

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short-lived connection; waits while another process holds the file. Inside ``batch`` (this thread),
        the batch's connection."""
        shared = getattr(self._batch, "con", None)
        if shared is not None:
            yield shared
            return
        if read_only and not self.path.exists():
            raise WarehouseError(f"no warehouse at {self.path}: run `crucible run CONFIG` first")
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        con = self._retry_locked(lambda: duckdb.connect(str(self.path), read_only=read_only))
        try:
            if not read_only:
                self._migrate(con)
            elif not self._schema_checked:
                behind = self._behind(con)
                if behind and not pipeline_alive(self.path):
                    con.close()  # a warehouse an older Crucible wrote: bring it up to date before the first read
                    with self.connect():
                        pass
                    con = self._retry_locked(lambda: duckdb.connect(str(self.path), read_only=True))
                    behind = False
                self._schema_checked = not behind  # else asked again next time (a running pipeline is the writer)
            yield con
        finally:
            con.close()

    @staticmethod
    def _behind(con: duckdb.DuckDBPyConnection) -> bool:
        """Whether the file's schema is older than this code's. While a pipeline runs on it, that run is the writer
        and a reader leaves the file be (it asks again on its next read)."""
        try:
            version = con.execute(f"SELECT coalesce(max(version), 0) FROM {SCHEMA_VERSION_TABLE}").fetchone()[0]
        except duckdb.Error:
            return False  # not a Crucible warehouse: the query that follows says so
        return version < _migrations()[-1][0]

    def _holds_pipeline_lock(self) -> bool:
        return self.path.with_name(self.path.name + ".pipeline.lock").resolve() in _HELD_LOCKS

    def present(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Rows of runs or stage runs as a reader should see them: 'running' while nobody holds the pipeline lock
        means the process was killed, so it reads 'crashed' (the next run records that for good)."""
        if any(r.get("status") == "running" for r in rows) and not pipeline_alive(self.path):
            for r in rows:
                if r.get("status") == "running":
                    r["status"] = "crashed"
        return rows

    @contextmanager
    def pipeline_lock(self, wait_s: float = 0.0) -> Iterator[Callable[[str], None]]:
        """Hold ``<warehouse>.pipeline.lock`` (flock, so a killed holder releases it) for a whole pipeline run.

        Two runs on one warehouse would compute the same datasets into the same directories; the second waits up to
        ``wait_s`` and then raises PipelineBusy naming the run that holds the lock. Yields ``claim(run_id)``, which
        writes the holder's run id, pid and host into the lock file for that message. Re-entrant within a process
        (the CLI takes it before starting the flow, which takes it again).
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.with_name(self.path.name + ".pipeline.lock").resolve()
        held = _HELD_LOCKS.get(lock)
        if held is None:
            held = [_acquire(lock, self.path, wait_s), 0]
            _HELD_LOCKS[lock] = held
        fh = held[0]
        held[1] += 1

        def claim(run_id: str) -> None:
            fh.seek(0)
            fh.truncate()
            fh.write(json.dumps({"run_id": run_id, "pid": os.getpid(), "host": socket.gethostname(),
                                 "since": _now().isoformat(timespec="seconds")}))
            fh.flush()

        try:
            if held[1] == 1:
                claim("(starting)")
            yield claim
        finally:
            held[1] -= 1
            if held[1] == 0:
                del _HELD_LOCKS[lock]
                fh.seek(0)
                fh.truncate()
                fh.close()  # closing releases the flock

    def _migrate(self, con: duckdb.DuckDBPyConnection) -> None:
        con.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA_VERSION_TABLE} (version INTEGER, applied_at TIMESTAMPTZ)")
        current = con.execute(f"SELECT coalesce(max(version), 0) FROM {SCHEMA_VERSION_TABLE}").fetchone()[0]
        for version, sql in _migrations():
            if version > current:
                con.execute("BEGIN")
                con.execute(sql)
                con.execute(f"INSERT INTO {SCHEMA_VERSION_TABLE} VALUES (?, ?)", [version, _now()])
                con.execute("COMMIT")

    def schema_version(self) -> int:
        with self.connect(read_only=True) as con:
            return con.execute(f"SELECT max(version) FROM {SCHEMA_VERSION_TABLE}").fetchone()[0]

    @staticmethod
    def _rows(cur: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]

    def query(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        """Run read-only SQL (tables and the document views) and return rows as dicts."""
        with self.connect(read_only=True) as con:
            try:
                return self._rows(con.execute(sql, params or []))
            except duckdb.Error as err:
                raise WarehouseError(f"query failed: {err}") from None

    def user_query(self, sql: str) -> list[dict[str, Any]]:
        """Run a user's query (`crucible sql`) read-only for real, on a snapshot, so it can never hold up a writer.

        Only one SELECT/WITH/EXPLAIN/DESCRIBE/SHOW statement is taken (COPY, ATTACH, INSTALL, SET ... are refused).
        The warehouse's tables and views are copied into an in-memory database while the file is open read-only
        (milliseconds; the writer retries through that), then the file is closed and the query runs on the copy,
        however long it takes. The copy may read files only in the dataset directories the document views use and
        in the warehouse's directory; external access is then switched off and the configuration locked.
        """
        mem = duckdb.connect(":memory:")
        try:
            try:
                statements = mem.extract_statements(sql)
            except duckdb.Error as err:
                raise WarehouseError(f"query failed: {err}") from None
            kinds = [s.type.name for s in statements]
            if len(statements) != 1 or kinds[0] not in ("SELECT", "EXPLAIN"):
                raise WarehouseError(f"crucible sql runs one read-only query (SELECT, WITH, EXPLAIN, DESCRIBE, "
                                     f"SHOW); got {', '.join(kinds) or 'nothing'}")
            if not self.path.exists():
                raise WarehouseError(f"no warehouse at {self.path}: run `crucible run CONFIG` first")
            self._retry_locked(lambda: mem.execute(f"ATTACH {literal(self.path)} AS wh (READ_ONLY)"))
            try:
                left_out = self._copy_into_memory(mem)
                dirs = {str(Path(r[0]).resolve()) for r in mem.execute(
                    "SELECT DISTINCT uri FROM datasets WHERE format = 'parquet'").fetchall()}
            finally:
                mem.execute("DETACH wh")
            dirs.add(str(self.path.resolve().parent))
            mem.execute("SET allowed_directories = ?", [sorted(dirs)])
            mem.execute("SET enable_external_access = false")
            mem.execute("SET lock_configuration = true")
            try:
                return self._rows(mem.execute(sql))
            except duckdb.Error as err:
                gone = f" (views left out, their files are gone: {', '.join(left_out)})" if left_out else ""
                raise WarehouseError(f"query failed: {err}{gone}") from None
        finally:
            mem.close()

    @staticmethod
    def _copy_into_memory(mem: duckdb.DuckDBPyConnection) -> list[str]:
        """Tables of the attached ``wh`` into ``mem``, then its views; returns the views left out (their files are
        gone)."""
        for (table,) in mem.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = 'wh' "
                                    "AND schema_name = 'main'").fetchall():
            mem.execute(f'CREATE TABLE "{table}" AS FROM wh.main."{table}"')
        views = mem.execute("SELECT view_name, sql FROM duckdb_views() WHERE database_name = 'wh' "
                            "AND schema_name = 'main' AND NOT internal").fetchall()
        while views:  # views over views (doc_lineage joins docs_*) need theirs first
            left = []
            for name, sql in views:
                try:
                    mem.execute(sql)
                except duckdb.Error:
                    left.append((name, sql))
            if len(left) == len(views):
                break
            views = left
        return sorted(name for name, _ in views)

    def _retry_locked(self, open_it: Callable[[], Any]) -> Any:
        """Call ``open_it`` until the file's lock lets it through (lock_timeout seconds at most)."""
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.02
        while True:
            try:
                return open_it()
            except duckdb.IOException as err:
                if "lock" not in str(err).lower() or time.monotonic() > deadline:
                    raise WarehouseError(f"cannot open warehouse {self.path}: {err}") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.1)

    # -- pipeline runs -------------------------------------------------------------------------------------------

    def start_run(self, *, config: dict[str, Any], config_hash: str, config_path: str | None, code_version: str,
                  trigger: str, stages: list[str], flow_run_id: str | None = None, run_id: str | None = None) -> str:
        run_id = run_id or new_id("run")
        with self.connect() as con:
            self._mark_crashed(con)
            con.execute(
                "INSERT INTO pipeline_runs (run_id, flow_run_id, config_path, config_json, config_hash, code_version,"
                " trigger, stages, status, host, pid, started_at) VALUES (?,?,?,?,?,?,?,?,'running',?,?,?)",
                [run_id, flow_run_id, config_path, json.dumps(config, sort_keys=True), config_hash, code_version,
                 trigger, stages, socket.gethostname(), os.getpid(), _now()])
        return run_id

    def finish_run(self, run_id: str, status: str, error: str | None = None) -> None:
        with self.connect() as con:
            con.execute("UPDATE pipeline_runs SET status = ?, error = ?, ended_at = ? WHERE run_id = ?",
                        [status, error, _now(), run_id])

    def _mark_crashed(self, con: duckdb.DuckDBPyConnection) -> None:
        """Runs left 'running' by a process that was killed: say so.

        A new run starts while holding the pipeline lock, and only one process can hold it, so every other run
        still marked running is dead, whatever its pid or host. Without the lock (a bare API call) only runs of
        this host whose process is gone are marked.
        """
        if self._holds_pipeline_lock():
            dead = [r[0] for r in con.execute("SELECT run_id FROM pipeline_runs WHERE status = 'running'").fetchall()]
        else:
            rows = con.execute("SELECT run_id, pid FROM pipeline_runs WHERE status = 'running' AND host = ?",
                               [socket.gethostname()]).fetchall()
            dead = [run_id for run_id, pid in rows if pid is None or not _pid_alive(pid)]
        for run_id in dead:
            con.execute("UPDATE pipeline_runs SET status = 'crashed', ended_at = coalesce(ended_at, ?) "
                        "WHERE run_id = ?", [_now(), run_id])
            con.execute("UPDATE stage_runs SET status = 'crashed', ended_at = coalesce(ended_at, ?) "
                        "WHERE run_id = ? AND status = 'running'", [_now(), run_id])

    # -- stage runs ----------------------------------------------------------------------------------------------

    def start_stage(self, *, run_id: str, stage: str, stage_key: str, params: dict[str, Any], params_hash: str,
                    code_version: str, input_dataset_ids: list[str], out_dir: str | Path | None = None,
                    role: str | None = None) -> str:
        """Record a running stage; ``out_dir`` is where it writes (a reader can follow its files while it runs)."""
        stage_run_id = new_id(stage)
        with self.connect() as con:
            con.execute(
                "INSERT INTO stage_runs (stage_run_id, run_id, stage, stage_key, params_json, params_hash,"
                " code_version, input_dataset_ids, status, started_at, out_dir, role)"
                " VALUES (?,?,?,?,?,?,?,?,'running',?,?,?)",
                [stage_run_id, run_id, stage, stage_key, json.dumps(params, sort_keys=True), params_hash,
                 code_version, input_dataset_ids, _now(), str(out_dir) if out_dir is not None else None, role])
        return stage_run_id

    def finish_stage(self, stage_run_id: str, *, status: str, output_dataset_id: str | None = None,
                     cache_hit: bool = False, error: str | None = None, units: int | None = None,
                     units_resumed: int | None = None, shards_out: int | None = None, docs_in: int | None = None, docs_out: int | None = None,
                     bytes_in: int | None = None, bytes_out: int | None = None, seconds: float | None = None) -> None:
        with self.connect() as con:
            con.execute(
                "UPDATE stage_runs SET status=?, output_dataset_id=?, cache_hit=?, error=?, units=?,"
                " units_resumed=?, shards_out=?, docs_in=?, docs_out=?, bytes_in=?, bytes_out=?, seconds=?, ended_at=?"
                " WHERE stage_run_id=?",
                [status, output_dataset_id, cache_hit, error, units, units_resumed, shards_out, docs_in, docs_out,
                 bytes_in, bytes_out, seconds, _now(), stage_run_id])
            if status == "completed":
                self._refresh_views(con)

    def record_funnel(self, stage_run_id: str, stage: str, drops: dict[str, int], drop_bytes: dict[str, int],
                      notes: dict[str, int], by_source: dict[str, dict[str, Any]] | None = None,
                      note_counts: dict[str, str] | None = None) -> None:
        """The drop funnel, one row per (source, reason) where the stage counted by source (the rest, and the
        notes, with source NULL), and the stage's per-source figures into stage_sources. Drops count documents;
        ``note_counts`` says what each note counts (links, records…; documents where not named)."""
        rows = []
        left, left_bytes = dict(drops), dict(drop_bytes)
        for source, counts in sorted((by_source or {}).items()):
            for reason, (n, nbytes) in sorted(counts.get("drops", {}).items()):
                rows.append((stage_run_id, stage, reason, True, n, nbytes, source or None, "documents"))
                left[reason] = left.get(reason, 0) - n
                left_bytes[reason] = left_bytes.get(reason, 0) - nbytes
        rows += [(stage_run_id, stage, r, True, n, max(left_bytes.get(r, 0), 0), None, "documents")
                 for r, n in sorted(left.items()) if n > 0]
        rows += [(stage_run_id, stage, r, False, n, 0, None, (note_counts or {}).get(r, "documents"))
                 for r, n in sorted(notes.items())]
        figures = [(stage_run_id, stage, source, c.get("docs_in"), c.get("docs_out"), c.get("tokens"),
                    c.get("target_share"), c.get("share"), c.get("epochs"), c.get("val_docs"))
                   for source, c in sorted((by_source or {}).items()) if source]
        if rows or figures:
            with self.connect() as con:
                if rows:
                    con.executemany("INSERT INTO drops (stage_run_id, stage, reason, dropped, docs, bytes, source, "
                                    "counts) VALUES (?,?,?,?,?,?,?,?)", rows)
                if figures:
                    con.executemany("INSERT INTO stage_sources VALUES (?,?,?,?,?,?,?,?,?,?)", figures)

    def record_metrics(self, run_id: str, metrics: list[tuple[int | None, str, float]],
                       stage_run_id: str | None = None) -> None:
        now = _now()
        with self.connect() as con:
            con.executemany("INSERT INTO metrics VALUES (?,?,?,?,?,?)",
                            [(run_id, stage_run_id, step, name, value, now) for step, name, value in metrics])

    RECORD_TABLES = ("contamination_hits", "eval_items", "crawl_log")

    def load_records(self, table: str, stage_run_id: str, files: list[Path], **constants: Any) -> int:
        """Load Parquet files a stage wrote for the warehouse (workers never open it) into one of its tables;
        returns the rows that table now holds for the stage run (for the crawl log: the rows added)."""
        if table not in self.RECORD_TABLES:
            raise WarehouseError(f"no record table {table!r}; known: {', '.join(self.RECORD_TABLES)}")
        if table == "crawl_log":
            return self.record_crawl_log(stage_run_id, constants["job"], files)
        if not files:
            return 0
        with self.connect() as con:
            columns = [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall() if r[0] != "stage_run_id"]
            source = f"read_parquet({literal_list(files)}, union_by_name = true)"
            present = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
            # a column added to the table later is NULL for files written before it existed
            picked = [c if c in present else f"NULL AS {c}" for c in columns]
            con.execute(f"INSERT INTO {table} SELECT ?, {', '.join(picked)} FROM {source}", [stage_run_id])
            return con.execute(f"SELECT count(*) FROM {table} WHERE stage_run_id = ?", [stage_run_id]).fetchone()[0]

    def accuracy_by_contamination(self, eval_stage_run_id: str, decontaminate_stage_run_id: str,
                                  trained: Path | None = None) -> list[dict[str, Any]]:
        """Per task: items and accuracy of an evaluation, split by whether the decontaminate run found the item;
        with ``trained`` (a checkpoint's provenance file), only in documents that trained the checkpoint."""
        only = (f"AND doc_id IN (SELECT doc_id FROM read_parquet({literal(trained)}) WHERE times_seen > 0)"
                if trained is not None else "")
        return self.query(
            "SELECT e.task, count(*) FILTER (WHERE h.item IS NULL) AS clean_n, "
            "  avg(e.correct::INT) FILTER (WHERE h.item IS NULL) AS clean_acc, "
            "  count(*) FILTER (WHERE h.item IS NOT NULL) AS contaminated_n, "
            "  avg(e.correct::INT) FILTER (WHERE h.item IS NOT NULL) AS contaminated_acc "
            f"FROM eval_items e LEFT JOIN (SELECT DISTINCT task, item FROM contamination_hits WHERE stage_run_id = ? "
            f"{only}) h "
            "  ON h.task = e.task AND h.item = e.item "
            "WHERE e.stage_run_id = ? GROUP BY e.task ORDER BY e.task",
            [decontaminate_stage_run_id, eval_stage_run_id])

    def stage_facts(self, run_id: str) -> list[dict[str, Any]]:
        """Whole-stage figures (dedup clusters, contamination counts) of a run's stages; a cache hit shows those of
        the run that computed its dataset."""
        return self.query(
            "SELECT s.stage, s.role, m.name, m.value FROM stage_runs s "
            "JOIN stage_runs origin ON origin.output_dataset_id = s.output_dataset_id AND NOT origin.cache_hit "
            "  AND origin.status = 'completed' "
            "JOIN metrics m ON m.stage_run_id = origin.stage_run_id AND m.step IS NULL "
            "WHERE s.run_id = ? AND s.status = 'completed' ORDER BY s.started_at, m.name", [run_id])

    # -- crawls --------------------------------------------------------------------------------------------------

    def record_crawl_log(self, stage_run_id: str, job: str, log_files: list[Path]) -> int:
        """Load a crawl's Parquet fetch log parts (written by the crawler, which never opens the warehouse).

        Idempotent: a fetch already recorded for the job (same URL and time) is not recorded again, so the parts a
        killed crawl left behind can be loaded by the next run whatever the kill had reached. Returns rows added.
        """
        if not log_files:
            return 0
        files = literal_list(log_files)
        with self.connect() as con:
            before = con.execute("SELECT count(*) FROM crawl_log WHERE job = ?", [job]).fetchone()[0]
            con.execute(f"INSERT INTO crawl_log SELECT ?, ?, p.* FROM read_parquet({files}) p "
                        f"WHERE NOT EXISTS (SELECT 1 FROM crawl_log c WHERE c.job = ? AND c.url = p.url "
                        f"AND c.fetched_at = p.fetched_at)", [stage_run_id, job, job])
            return con.execute("SELECT count(*) FROM crawl_log WHERE job = ?", [job]).fetchone()[0] - before

    def seen_pages(self, job: str, visited: tuple[str, ...]) -> list[dict[str, Any]]:
        """The latest visit of each URL a crawl job reached: depth, validators and payload digest."""
        if not self.path.exists():
            return []
        marks = ", ".join("?" for _ in visited)
        return self.query(
            f"SELECT url, depth, etag, last_modified, payload_digest FROM crawl_log "
            f"WHERE job = ? AND outcome IN ({marks}) "
            f"QUALIFY row_number() OVER (PARTITION BY url ORDER BY fetched_at DESC) = 1", [job, *visited])

    # -- datasets ------------------------------------------------------------------------------------------------

    def record_dataset(self, *, dataset_id: str, stage: str, stage_key: str | None, uri: str, format: str,
                       fingerprint: str, files: list[tuple[str, int | None, int | None, str | None]],
                       parents: list[str], created_by: str | None, tokens: int | None = None) -> None:
        """Insert a dataset, its files and its parent edges; a dataset that is already there is left as it is."""
        with self.connect() as con:
            if con.execute("SELECT 1 FROM datasets WHERE dataset_id = ?", [dataset_id]).fetchone():
                return
            con.execute("BEGIN")
            con.execute("INSERT INTO datasets VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                        [dataset_id, stage, stage_key, uri, format, fingerprint,
                         _total(f[1] for f in files), _total(f[2] for f in files), tokens, len(files),
                         created_by, _now()])
            if files:
                con.executemany("INSERT INTO dataset_files VALUES (?,?,?,?,?)", [(dataset_id, *f) for f in files])
            if parents:
                con.executemany("INSERT OR IGNORE INTO dataset_edges VALUES (?,?,?)",
                                [(p, dataset_id, created_by) for p in parents])
            con.execute("COMMIT")

    def dataset(self, dataset_id: str) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM datasets WHERE dataset_id = ?", [dataset_id])
        return rows[0] if rows else None

    def dataset_by_key(self, stage_key: str) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        rows = self.query("SELECT * FROM datasets WHERE stage_key = ? ORDER BY created_at DESC LIMIT 1", [stage_key])
        return rows[0] if rows else None

    def latest_output(self, stage_key: str) -> dict[str, Any] | None:
        """The dataset of the latest completed stage run with this key (for stages whose output ids follow content)."""
        rows = self.query(
            "SELECT d.* FROM stage_runs s JOIN datasets d ON d.dataset_id = s.output_dataset_id "
            "WHERE s.stage_key = ? AND s.status = 'completed' ORDER BY s.ended_at DESC LIMIT 1", [stage_key])
        return rows[0] if rows else None

    def origin_stage_run(self, dataset_id: str) -> dict[str, Any] | None:
        """The stage run that computed a dataset (not one that found it in the cache)."""
        rows = self.query("SELECT * FROM stage_runs WHERE output_dataset_id = ? AND NOT cache_hit "
                          "AND status = 'completed' ORDER BY ended_at DESC LIMIT 1", [dataset_id])
        return rows[0] if rows else None

    def latest_dataset(self, stage: str) -> dict[str, Any] | None:
        """The output of the most recent completed run of a stage (cache hits included)."""
        rows = self.query(
            "SELECT d.* FROM stage_runs s JOIN datasets d ON d.dataset_id = s.output_dataset_id "
            "WHERE s.stage = ? AND s.status = 'completed' ORDER BY s.ended_at DESC LIMIT 1", [stage])
        return rows[0] if rows else None

    def run_dataset(self, run_id: str, stage: str) -> dict[str, Any] | None:
        rows = self.query(
            "SELECT d.* FROM stage_runs s JOIN datasets d ON d.dataset_id = s.output_dataset_id "
            "WHERE s.run_id = ? AND s.stage = ? AND s.status = 'completed' ORDER BY s.ended_at DESC LIMIT 1",
            [run_id, stage])
        return rows[0] if rows else None

    # -- reading runs --------------------------------------------------------------------------------------------

    def runs(self, limit: int = 20) -> list[dict[str, Any]]:
        return self.present(self.query(
            "SELECT r.run_id, r.trigger, r.status, r.started_at, r.ended_at, r.code_version, r.config_path, "
            "  r.stages, r.error, "
            "  (SELECT count(*) FROM stage_runs s WHERE s.run_id = r.run_id) AS stage_runs, "
            "  (SELECT count(*) FROM stage_runs s WHERE s.run_id = r.run_id AND s.cache_hit) AS cache_hits "
            "FROM pipeline_runs r ORDER BY r.started_at DESC LIMIT ?", [limit]))

    def resolve_run(self, ref: str) -> dict[str, Any]:
        """A run by id, unique id prefix, or 'latest'."""
        if ref == "latest":
            rows = self.query("SELECT * FROM pipeline_runs ORDER BY started_at DESC LIMIT 1")
        else:
            # starts_with, not LIKE: a reference is text, never a pattern ('%' must not match every run)
            rows = self.query("SELECT * FROM pipeline_runs WHERE starts_with(run_id, ?) ORDER BY started_at DESC",
                              [ref])
        if not rows:
            raise WarehouseError(f"no pipeline run {ref!r} in {self.path} (see `crucible runs`)")
        if len(rows) > 1 and rows[0]["run_id"] != ref:
            raise WarehouseError(f"run prefix {ref!r} is ambiguous: {', '.join(r['run_id'] for r in rows[:5])}")
        return self.present(rows[:1])[0]

    def stage_runs(self, run_id: str) -> list[dict[str, Any]]:
        return self.present(self.query("SELECT * FROM stage_runs WHERE run_id = ? ORDER BY started_at", [run_id]))

    _ORIGINS = """
        WITH origins AS (  -- each completed stage of the run, with the stage run that made its output
            SELECT s.stage, s.started_at, origin.stage_run_id AS origin
            FROM stage_runs s JOIN stage_runs origin ON origin.output_dataset_id = s.output_dataset_id
                 AND NOT origin.cache_hit AND origin.status = 'completed'
            WHERE s.run_id = ? AND s.status = 'completed'
            QUALIFY row_number() OVER (PARTITION BY s.stage_run_id ORDER BY origin.ended_at DESC) = 1)"""

    def funnel(self, run_id: str) -> list[dict[str, Any]]:
        """Drops and notes per stage and reason for a run (all sources together), each with what it counts
        (``counts``: documents for every drop; links, records… for some notes); a cache hit shows the funnel of the
        run that computed it."""
        return self.query(self._ORIGINS + """
            SELECT o.stage, d.reason, d.dropped, sum(d.docs)::BIGINT AS docs, sum(d.bytes)::BIGINT AS bytes,
                   any_value(d.counts) AS counts
            FROM origins o JOIN drops d ON d.stage_run_id = o.origin
            GROUP BY o.stage, o.started_at, d.reason, d.dropped
            ORDER BY o.started_at, d.dropped DESC, docs DESC, d.reason""", [run_id])

    def source_funnel(self, run_id: str) -> list[dict[str, Any]]:
        """Drops per stage, source and reason for a run (sources as counted; NULL before sources existed)."""
        return self.query(self._ORIGINS + """
            SELECT o.stage, d.source, d.reason, d.docs, d.bytes
            FROM origins o JOIN drops d ON d.stage_run_id = o.origin AND d.dropped AND d.source IS NOT NULL
            ORDER BY o.started_at, d.source, d.docs DESC""", [run_id])

    def source_figures(self, run_id: str) -> list[dict[str, Any]]:
        """Per stage and source for a run: documents in, out and dropped, and at tokenize the mixture's tokens,
        shares and passes. Cache hits show the figures of the run that made the dataset."""
        return self.query(self._ORIGINS + """
            SELECT o.stage, f.source, f.docs_in, f.docs_out, f.docs_in - f.docs_out AS dropped, f.tokens,
                   f.target_share, f.share, f.epochs, f.val_docs
            FROM origins o JOIN stage_sources f ON f.stage_run_id = o.origin
            ORDER BY o.started_at, f.source""", [run_id])

    def lineage(self, dataset_id: str) -> list[dict[str, Any]]:
        """The dataset and every ancestor back to the raw inputs, nearest first, with the edge depth."""
        return self.query(_ANCESTORS + "SELECT c.depth, d.* FROM chain c JOIN datasets d USING (dataset_id) "
                                       "ORDER BY c.depth, d.dataset_id", [dataset_id])

    def dataset_files(self, dataset_id: str) -> list[dict[str, Any]]:
        return self.query("SELECT * FROM dataset_files WHERE dataset_id = ? ORDER BY path", [dataset_id])

    # -- document views ------------------------------------------------------------------------------------------

    def _refresh_views(self, con: duckdb.DuckDBPyConnection) -> None:
        """docs_<stage> and doc_drops over the Parquet shards of each stage's latest output; doc_lineage joins them
        (latest outputs, so after a rerun of one stage it mixes runs: ``checkpoint_documents`` is exact per
        checkpoint, one row per document of its token dataset with split and times seen).

        One query then follows a document from its WARC record through every stage:
            SELECT * FROM doc_lineage WHERE doc_id = '…'
        """
        latest = con.execute(
            "SELECT s.stage, s.output_dataset_id, d.uri, s.role FROM stage_runs s JOIN datasets d "
            "ON d.dataset_id = s.output_dataset_id WHERE s.status = 'completed' AND d.format = 'parquet' "
            "QUALIFY row_number() OVER (PARTITION BY s.stage ORDER BY s.ended_at DESC) = 1").fetchall()
        # in pipeline order: a stage's dataset has more ancestors than its upstream's, whichever ran last
        latest.sort(key=lambda row: (con.execute(_ANCESTORS + "SELECT count(DISTINCT dataset_id) FROM chain",
                                                 [row[1]]).fetchone()[0], row[0]))
        stages: list[str] = []
        drop_files: list[tuple[str, str]] = []
        base = next((stage for stage, _, _, role in latest if role == "collection"), None)
        for stage, dataset_id, uri, _ in latest:
            files = [r[0] for r in con.execute("SELECT path FROM dataset_files WHERE dataset_id = ? ORDER BY path",
                                                [dataset_id]).fetchall()]
            manifest = Path(uri) / "_dataset.json"
            if manifest.exists():
                drop_files += [(stage, str(Path(uri) / f)) for f in json.loads(manifest.read_text())["drops_files"]]
            if not files or not all(Path(f).exists() for f in files):
                continue
            con.execute(f"CREATE OR REPLACE VIEW docs_{stage} AS SELECT * FROM read_parquet({literal_list(files)})")
            stages.append(stage)
        union = " UNION ALL BY NAME ".join(f"SELECT '{stage}' AS stage, * FROM read_parquet({literal(f)})"
                                   for stage, f in drop_files if Path(f).exists())
        empty = ("SELECT NULL::VARCHAR AS stage, NULL::VARCHAR AS doc_id, NULL::VARCHAR AS reason, NULL::BIGINT AS bytes,"
                 " NULL::VARCHAR AS source,"
                 " NULL::VARCHAR AS url, NULL::VARCHAR AS warc_file, NULL::BIGINT AS warc_offset,"
                 " NULL::VARCHAR AS detail, NULL::VARCHAR AS text WHERE false")
        con.execute(f"CREATE OR REPLACE VIEW doc_drops AS {union or empty}")
        if base in stages:  # the documents as collected, joined to every later stage's
            have = {d[0] for d in con.execute(f"SELECT * FROM docs_{base} LIMIT 0").description}
            cols = ["i.doc_id", *(["i.source"] if "source" in have else []), "i.url", "i.warc_file",
                    "i.warc_offset", "i.fetch_time"]
            joins = []
            for stage in stages:
                if stage == base:
                    continue
                cols.append(f'"{stage}".doc_id IS NOT NULL AS kept_{stage}')  # quoted: a stage may be a keyword
                joins.append(f'LEFT JOIN (SELECT doc_id FROM docs_{stage}) "{stage}" USING (doc_id)')
            cols.append("(SELECT string_agg(dd.stage || ':' || dd.reason, ', ') FROM doc_drops dd "
                        "WHERE dd.doc_id = i.doc_id) AS drop_reasons")
            con.execute(f"CREATE OR REPLACE VIEW doc_lineage AS SELECT {', '.join(cols)} "
                        f"FROM docs_{base} i {' '.join(joins)}")
        # Exactly which documents trained each checkpoint (warehouse/provenance.py reads the same files).
        found = [(d, f) for d, f in con.execute(
            "SELECT f.dataset_id, f.path FROM dataset_files f JOIN datasets d USING (dataset_id) "
            "WHERE d.format = 'checkpoint' AND f.path LIKE '%/provenance-%.parquet'").fetchall() if Path(f).exists()]
        if found:
            pairs = ", ".join(f"({literal(f)}, {literal(d)})" for d, f in found)
            con.execute(f"CREATE OR REPLACE VIEW checkpoint_documents AS SELECT m.checkpoint, p.doc_id, p.split, "
                        f"p.times_seen, p.tokens_seen, p.tokens FROM read_parquet({literal_list([f for _, f in found])},"
                        f" filename = true) p JOIN (VALUES {pairs}) m(path, checkpoint) ON m.path = p.filename")


def _total(values: Any) -> int | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


