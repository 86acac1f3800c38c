"""Out-of-core dedup clustering with DuckDB (an ephemeral database of its own, not the lineage warehouse).

This engine and warehouse/ are the only code that opens DuckDB; this one never opens the warehouse file.

The dedup stage's scan writes, per unit, ``docs-*.parquet`` (doc_id, exact_hash, length, unit, sig) and
``bands-*.parquet`` (doc_id, band, band_hash). Here DuckDB, within ``memory_limit`` and spilling to disk beyond it:

1. picks one survivor per exact hash (earlier runs' documents first, then the highest source priority, then the
   longest, then the smallest doc_id);
2. groups the band keys of the survivors; documents sharing a key in any band become candidate pairs (each
   colliding bucket is chained in doc order, so a bucket of k documents gives k-1 pairs, not k²/2);
3. streams the candidate pairs with both signatures to numpy, which keeps the pairs whose estimated Jaccard
   reaches the threshold;
4. joins the kept pairs into clusters with a vectorised union-find over an array of one integer per document;
5. picks one survivor per cluster by the same rule, and writes every document's decision per unit.

``count_segments`` is segment-level dedup's count (tasks/segments.py): every kept document's segments, how many
distinct documents hold each across the whole dataset, and which holders lose it.

Memory: DuckDB stays within its limit; Python holds the union-find array (8 bytes per document) and the verified
pairs (16 bytes each), and streams everything else in batches.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from tasks.atomic import atomic_file
from warehouse.sql import literal, literal_list


def union_find(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The root (smallest member index) of each of n nodes' components, given edges a[i] -- b[i].

    Vectorised union-find: each round points every root at the smallest root it has an edge to (roots only ever
    point lower, so no cycles), then compresses all paths by pointer jumping. Edges inside one component leave.
    """
    parent = np.arange(n, dtype=np.int64)
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    while len(a):
        ra, rb = parent[a], parent[b]
        apart = ra != rb
        a, b, ra, rb = a[apart], b[apart], ra[apart], rb[apart]
        if not len(a):
            break
        np.minimum.at(parent, np.maximum(ra, rb), np.minimum(ra, rb))
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
    return parent


def cluster_documents(*, docs: list[Path], bands: list[Path], out_dir: Path, exact: bool, near: bool,
                      threshold: float | None, memory_limit: str, state_dir: Path | None,
                      state_name: str, batch_rows: int = 65_536) -> dict[str, Any]:
    """Decide every document's fate; writes ``out_dir/<unit>.parquet`` and, with ``state_dir``, the state files.

    Returns counts: docs, exact_duplicates, near_duplicates, earlier_run (dropped for an earlier run's document),
    clusters (with more than one member), candidate_pairs, verified_pairs, state_docs (earlier documents compared).
    """
    t0 = time.perf_counter()
    scratch = out_dir.parent / "duckdb"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    con = duckdb.connect(str(scratch / "cluster.duckdb"))
    try:
        con.execute(f"SET memory_limit = {literal(memory_limit)}")
        con.execute(f"SET temp_directory = {literal(scratch / 'spill')}")
        con.execute("SET preserve_insertion_order = false")
        facts = _cluster(con, docs, bands, out_dir, exact, near, threshold, state_dir, state_name, batch_rows)
    finally:
        con.close()
        shutil.rmtree(scratch, ignore_errors=True)
    facts["seconds"] = round(time.perf_counter() - t0, 3)
    return facts


def _cluster(con: duckdb.DuckDBPyConnection, docs: list[Path], bands: list[Path], out_dir: Path, exact: bool,
             near: bool, threshold: float | None, state_dir: Path | None, state_name: str,
             batch_rows: int) -> dict[str, Any]:
    sig = ", sig" if near else ""
    if docs:
        con.execute(f"CREATE TABLE cur AS SELECT doc_id, exact_hash, priority, length, unit{sig}, false AS earlier "
                    f"FROM read_parquet({literal_list(docs)}, union_by_name = true)")
    else:
        con.execute("CREATE TABLE cur (doc_id VARCHAR, exact_hash VARCHAR, priority INTEGER, length BIGINT, "
                    "unit VARCHAR, "
                    f"{'sig UINTEGER[], ' if near else ''}earlier BOOLEAN)")
    earlier_docs, earlier_bands = [], []
    if state_dir is not None and state_dir.is_dir():
        earlier_docs = sorted(p for p in state_dir.glob("*.docs.parquet") if not p.name.startswith(state_name))
        earlier_bands = sorted(p for p in state_dir.glob("*.bands.parquet") if not p.name.startswith(state_name))
    if earlier_docs:  # an earlier run's document that is in this input is this document, not its duplicate
        con.execute(f"""
            INSERT INTO cur BY NAME
            SELECT doc_id, exact_hash, 0 AS priority, length, NULL AS unit{sig}, true AS earlier
            FROM read_parquet({literal_list(earlier_docs)}) p
            WHERE NOT EXISTS (SELECT 1 FROM cur c WHERE c.doc_id = p.doc_id)
            QUALIFY row_number() OVER (PARTITION BY doc_id ORDER BY exact_hash) = 1""")
    state_docs = con.execute("SELECT count(*) FROM cur WHERE earlier").fetchone()[0]

    order = "earlier DESC, priority DESC, length DESC, doc_id"
    exact_of = f"first_value(doc_id) OVER (PARTITION BY exact_hash ORDER BY {order})" if exact else "doc_id"
    con.execute(f"CREATE TABLE ex AS SELECT *, {exact_of} AS exact_of FROM cur")
    con.execute("CREATE TABLE nodes AS SELECT doc_id, earlier, priority, length, row_number() OVER (ORDER BY doc_id) - 1 "
                "AS idx FROM ex WHERE exact_of = doc_id")
    n = con.execute("SELECT count(*) FROM nodes").fetchone()[0]

    candidates = verified = 0
    roots = np.arange(n, dtype=np.int64)
    if near and n and bands:
        con.execute(f"""
            CREATE TABLE b AS SELECT DISTINCT n.idx, k.band, k.band_hash
            FROM read_parquet({literal_list(bands + earlier_bands)}) k JOIN nodes n USING (doc_id)""")
        con.execute("CREATE TABLE hot AS SELECT band, band_hash FROM b GROUP BY ALL HAVING count(*) > 1")
        con.execute("""
            CREATE TABLE pairs AS SELECT DISTINCT a, idx AS b FROM (
                SELECT idx, lag(idx) OVER (PARTITION BY band, band_hash ORDER BY idx) AS a
                FROM b SEMI JOIN hot USING (band, band_hash))
            WHERE a IS NOT NULL""")
        candidates = con.execute("SELECT count(*) FROM pairs").fetchone()[0]
        keep_a, keep_b = [], []
        if threshold is None:
            for batch in con.execute("SELECT a, b FROM pairs").fetch_record_batch(batch_rows):
                keep_a.append(batch.column(0).to_numpy())
                keep_b.append(batch.column(1).to_numpy())
        else:
            reader = con.execute("""
                SELECT p.a, p.b, x.sig AS sa, y.sig AS sb FROM pairs p
                JOIN nodes na ON na.idx = p.a JOIN ex x ON x.doc_id = na.doc_id
                JOIN nodes nb ON nb.idx = p.b JOIN ex y ON y.doc_id = nb.doc_id""").fetch_record_batch(batch_rows)
            for batch in reader:
                if not batch.num_rows:
                    continue
                sa = _matrix(batch.column(2))
                sb = _matrix(batch.column(3))
                ok = (sa == sb).mean(axis=1) >= threshold
                keep_a.append(batch.column(0).to_numpy()[ok])
                keep_b.append(batch.column(1).to_numpy()[ok])
        a = np.concatenate(keep_a) if keep_a else np.empty(0, np.int64)
        b = np.concatenate(keep_b) if keep_b else np.empty(0, np.int64)
        verified = len(a)
        roots = union_find(n, a, b)

    con.register("roots_arrow", pa.table({"idx": pa.array(np.arange(n, dtype=np.int64)), "root": pa.array(roots)}))
    con.execute(f"""
        CREATE TABLE clusters AS
        SELECT n.doc_id, first_value(n.doc_id) OVER (PARTITION BY r.root ORDER BY {order}) AS cluster_id,
               count(*) OVER (PARTITION BY r.root) AS members
        FROM nodes n JOIN roots_arrow r USING (idx)""")
    con.unregister("roots_arrow")
    con.execute("""
        CREATE TABLE decisions AS
        SELECT e.doc_id, e.unit, e.exact_hash, c.cluster_id, e.earlier,
               e.doc_id = c.cluster_id AS kept,
               CASE WHEN e.doc_id = c.cluster_id THEN NULL
                    WHEN e.exact_of <> e.doc_id THEN 'exact_duplicate'
                    ELSE 'near_duplicate' END
               || CASE WHEN e.doc_id <> c.cluster_id AND s.earlier THEN '_earlier_run' ELSE '' END AS reason,
               CASE WHEN e.exact_of <> e.doc_id THEN e.exact_of ELSE c.cluster_id END AS duplicate_of
        FROM ex e JOIN clusters c ON c.doc_id = e.exact_of
        JOIN ex s ON s.doc_id = CASE WHEN e.exact_of <> e.doc_id THEN e.exact_of ELSE c.cluster_id END""")

    facts = dict(zip(["docs", "exact_duplicates", "near_duplicates", "earlier_run"], con.execute("""
        SELECT count(*), count(*) FILTER (reason LIKE 'exact%'), count(*) FILTER (reason LIKE 'near%'),
               count(*) FILTER (reason LIKE '%earlier_run')
        FROM decisions WHERE NOT earlier""").fetchone()))
    facts["clusters"] = con.execute("SELECT count(DISTINCT cluster_id) FROM clusters WHERE members > 1").fetchone()[0]
    facts.update(candidate_pairs=candidates, verified_pairs=verified, state_docs=state_docs)

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.mkdir(parents=True)
    units = [u for (u,) in con.execute("SELECT DISTINCT unit FROM decisions WHERE NOT earlier").fetchall()]
    if units:
        con.execute(f"""
            COPY (SELECT doc_id, unit, exact_hash, cluster_id, kept, reason, duplicate_of FROM decisions
                  WHERE NOT earlier ORDER BY unit, doc_id)
            TO {literal(tmp)} (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (unit), OVERWRITE_OR_IGNORE)""")
        for part in tmp.glob("unit=*"):
            files = sorted(part.glob("*.parquet"))
            for i, f in enumerate(files):
                f.rename(tmp / f"{part.name[5:]}{'' if i == 0 else f'.{i}'}.parquet")
            shutil.rmtree(part)
    os.replace(tmp, out_dir)

    if state_dir is not None:
        _write_state(con, state_dir, state_name, bands, near)
    return facts


def _matrix(column: pa.Array) -> np.ndarray:
    """A list-of-uint32 column as a (rows, width) matrix."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    values = column.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(len(column), -1)


def _write_state(con: duckdb.DuckDBPyConnection, state_dir: Path, name: str, bands: list[Path],
                 near: bool) -> None:
    """The accepted documents of this run, for later runs to compare against (renamed into place when whole)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    sig = ", sig" if near else ""
    targets = [(state_dir / f"{name}.docs.parquet",
                f"SELECT ex.doc_id, ex.exact_hash, ex.length{sig} FROM ex JOIN decisions USING (doc_id) "
                f"WHERE kept AND NOT decisions.earlier")]
    if near and bands:
        targets.append((state_dir / f"{name}.bands.parquet",
                        f"SELECT k.* FROM read_parquet({literal_list(bands)}) k SEMI JOIN "
                        f"(SELECT doc_id FROM decisions WHERE kept AND NOT earlier) USING (doc_id)"))
    for path, query in targets:
        with atomic_file(path) as tmp:
            con.execute(f"COPY ({query}) TO {literal(tmp)} (FORMAT parquet, COMPRESSION zstd)")


TOP_SEGMENTS = 30  # the most repeated segments kept for the report


def count_segments(*, segments: list[Path], decisions: Path, out_dir: Path, max_repeats: int,
                   memory_limit: str) -> dict[str, Any]:
    """Write ``out_dir/<unit>.parquet`` (doc_id, seg) of the segments to remove and ``out_dir/top.parquet`` (seg,
    docs) of the most repeated; only documents dedup kept take part. Returns counts."""
    scratch = out_dir.parent / "duckdb-segments"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    con = duckdb.connect(str(scratch / "segments.duckdb"))
    kept = sorted(decisions.glob("*.parquet"))
    facts = {"segments_repeated": 0, "segments_removed": 0}
    try:
        con.execute(f"SET memory_limit = {literal(memory_limit)}")
        con.execute(f"SET temp_directory = {literal(scratch / 'spill')}")
        con.execute("SET preserve_insertion_order = false")
        if segments and kept:
            facts = _count(con, segments, kept, tmp, max_repeats)
    finally:
        con.close()
        shutil.rmtree(scratch, ignore_errors=True)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return facts


def _count(con: duckdb.DuckDBPyConnection, segments: list[Path], kept: list[Path], tmp: Path,
           max_repeats: int) -> dict[str, Any]:
    con.execute(f"""
        CREATE TABLE segs AS SELECT s.doc_id, s.unit, s.seg FROM read_parquet({literal_list(segments)}) s
        SEMI JOIN (SELECT doc_id FROM read_parquet({literal_list(kept)}) WHERE kept) USING (doc_id)""")
    con.execute(f"""
        CREATE TABLE repeated AS SELECT seg, count(DISTINCT doc_id) AS docs, min(doc_id) AS keeper
        FROM segs GROUP BY seg HAVING count(DISTINCT doc_id) > {int(max_repeats)}""")
    con.execute("""
        CREATE TABLE removal AS SELECT s.doc_id, s.unit, s.seg FROM segs s JOIN repeated r USING (seg)
        WHERE s.doc_id <> r.keeper""")
    repeated, removed = con.execute(
        "SELECT (SELECT count(*) FROM repeated), (SELECT count(*) FROM removal)").fetchone()
    for (unit,) in con.execute("SELECT DISTINCT unit FROM removal").fetchall():
        with atomic_file(tmp / f"{unit}.parquet") as path:
            con.execute(f"COPY (SELECT doc_id, seg FROM removal WHERE unit = {literal(unit)} ORDER BY doc_id) "
                        f"TO {literal(path)} (FORMAT parquet)")
    with atomic_file(tmp / "top.parquet") as path:
        con.execute(f"COPY (SELECT seg, docs FROM repeated ORDER BY docs DESC, seg LIMIT {TOP_SEGMENTS}) "
                    f"TO {literal(path)} (FORMAT parquet)")
    return {"segments_repeated": repeated, "segments_removed": removed}
