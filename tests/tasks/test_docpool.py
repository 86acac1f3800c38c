"""tasks/docpool.py: language ID and the quality rules on worker processes write exactly what they write inline."""
import os
import signal
import zipfile
from pathlib import Path

import pytest

from tasks import docpool
from tasks.config import LanguageConfig, QualityConfig
from tasks.language import LanguageStage, identifier
from tasks.quality import QualityStage
from tasks.shards import DropLog, ShardResult, ShardWriter, finish_unit, read_dataset_manifest, write_dataset_manifest
from tasks.sharded import ShardedStage, run_unit
from tests.conftest import shared_path
from tests.tasks.test_language import chunks


@pytest.fixture(scope="module")
def udhr(tmp_path_factory):
    """An extract-shaped dataset of real text in many languages and scripts: pieces of the Universal Declaration
    of Human Rights in the first 60 of NLTK's ~380 translations, a few pieces each (the kept and the dropped)."""
    from tasks.extract import SCHEMA

    archive = shared_path("corpora", "langid", "nltk_udhr", "udhr2.zip")
    up = tmp_path_factory.mktemp("udhr") / "extract"
    writer = ShardWriter(up, "part-00000", SCHEMA, max_docs=37, max_bytes=10**9)  # small shards, as extract writes
    with zipfile.ZipFile(archive) as z:
        names = sorted(n for n in z.namelist() if n.endswith(".txt"))[:60]
        for name in names:
            text = z.read(name).decode("utf-8", errors="replace")
            for i, piece in enumerate(chunks(text, 1200)[:6]):
                writer.add({"doc_id": f"{name}:{i}", "url": f"http://udhr.example/{name}/{i}", "text": piece,
                            "source": "udhr"})
    write_dataset_manifest(up, "extract", "k", [finish_unit(up, ShardResult("part-00000"), writer, DropLog())])
    return up


def run_whole(stage: ShardedStage, up, out) -> list[tuple[str, bytes]]:
    """Every unit of the stage over ``up``; the bytes of every shard and drop log it wrote, by name."""
    results = [run_unit(stage, unit, out) for unit in stage.plan(up)]
    write_dataset_manifest(out, stage.name, "k", results)
    manifest = read_dataset_manifest(out)
    names = [f.name for f in manifest.files] + list(manifest.drops_files)
    return [(name, (out / name).read_bytes()) for name in sorted(names)]


@pytest.fixture
def pool():
    docpool.configure(2)
    yield
    docpool.shutdown()


def test_language_then_quality_on_two_workers_write_the_same_bytes_as_inline(udhr, tmp_path, pool):
    keep_all = {code: 0.0 for code in identifier().nb_classes}
    runs = {}
    sent = docpool.batches_sent
    for mode in ("inline", "pool"):
        docpool.configure(1 if mode == "inline" else 2)
        language = LanguageStage(LanguageConfig(keep={"en": 0.5, "fr": 0.5, "de": 0.5, "es": 0.5, "pt": 0.5}))
        everything = LanguageStage(LanguageConfig(keep=keep_all))
        quality = QualityStage(QualityConfig())
        runs[mode] = (run_whole(language, udhr, tmp_path / mode / "language"),
                      run_whole(everything, udhr, tmp_path / mode / "all"),
                      run_whole(quality, tmp_path / mode / "all", tmp_path / mode / "quality"))
    assert runs["pool"] == runs["inline"]
    assert docpool.batches_sent - sent >= 4  # two batches each for language, everything and quality
    language, _, quality = runs["pool"]
    assert any("drops" in name for name, _ in language) and any("drops" in name for name, _ in quality)
    assert len(read_dataset_manifest(tmp_path / "pool" / "all").files) >= 1
    assert read_dataset_manifest(tmp_path / "pool" / "quality").records > 0


def test_dedup_scan_on_two_workers_writes_the_same_bytes_as_inline(udhr, tmp_path, pool):
    """Exact hashes, MinHash signatures and band keys of real multilingual text (with near-copies and an empty text
    added), computed in the workers, are byte for byte what the scan computes in this process."""
    import pyarrow.parquet as pq

    from tasks.config import DedupConfig
    from tasks.dedup import DedupStage, signatures
    from tasks.sharded import run_scan

    rows = pq.read_table(sorted(udhr.glob("part-*.parquet"))).to_pylist()
    extra = [{**rows[0], "doc_id": "copy", "text": rows[0]["text"] + " ."}, {**rows[1], "doc_id": "empty", "text": ""}]
    writer = ShardWriter(tmp_path / "in", "part-00000", QualityStage.schema, max_docs=10**6, max_bytes=10**9)
    for row in [*rows, *extra]:
        writer.add({k: row.get(k) for k in QualityStage.schema.names})
    write_dataset_manifest(tmp_path / "in", "quality", "k",
                           [finish_unit(tmp_path / "in", ShardResult("part-00000"), writer, DropLog())])
    stage = DedupStage(DedupConfig(incremental=False, shard_max_docs=100))
    written = {}
    sent = docpool.batches_sent
    for mode in ("inline", "pool"):
        docpool.configure(1 if mode == "inline" else 2)
        out = tmp_path / mode
        for unit in stage.plan(tmp_path / "in"):
            run_scan(stage, unit, out)
        written[mode] = {p.name: p.read_bytes() for p in sorted(stage.scratch_dir(out).glob("*.parquet"))}
    assert written["pool"] == written["inline"] and len(written["pool"]) >= 4  # docs and bands of >= 2 units
    assert docpool.batches_sent - sent >= 2
    docs = pq.read_table(sorted(stage.scratch_dir(tmp_path / "pool").glob("docs-*.parquet"))).to_pylist()
    by_id = {d["doc_id"]: d for d in docs}
    first = by_id[rows[0]["doc_id"]]
    assert by_id["copy"]["sig"] == first["sig"] and by_id["copy"]["exact_hash"] != first["exact_hash"]
    assert by_id["empty"]["sig"] == list(signatures([""], stage.config)[0])  # all ones: it never collides


def test_a_killed_worker_costs_its_batch_a_pass_inline_not_the_unit(pool):
    from tasks.language import classify, classify_texts

    texts = [f"Numéro {i}: le comité a examiné la proposition et a convenu que les salles resteraient ouvertes."
             for i in range(200)]
    expected = [classify(t) for t in texts]
    assert docpool.map(classify_texts, texts, 20_000) == expected
    workers = worker_pids()
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)  # between batches: found dead when next lent, and replaced
    assert docpool.map(classify_texts, texts, 20_000) == expected
    assert workers[0] not in worker_pids()
    items = [f"item {i}" for i in range(100)] + ["die"] + [f"item {i}" for i in range(100, 199)]
    sent = docpool.batches_sent
    assert docpool.map(lengths_or_die, items, os.getpid()) == [len(x) for x in items]  # died mid-batch: inline
    assert docpool.batches_sent == sent
    assert docpool.map(classify_texts, texts, 20_000) == expected  # and new workers after it
    assert docpool.batches_sent == sent + 1 and len(worker_pids()) == 2


def lengths_or_die(chunk: list[str], parent: int) -> list[int]:
    """In a worker, a chunk holding "die" ends the worker before it answers (here, it is just counted)."""
    if "die" in chunk and os.getpid() != parent:
        os._exit(1)
    return [len(x) for x in chunk]


def worker_pids() -> list[int]:
    """The pids of the pool's worker processes (children of this one running tasks.docpool)."""
    import subprocess

    out = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(os.getpid())], capture_output=True, text=True)
    return [int(line.split()[0]) for line in out.stdout.splitlines() if "tasks.docpool" in line]


def test_the_pool_outlives_the_task_runner_thread_that_started_it(pool):
    """A unit on a task runner's thread may start the pool; that thread ends with its stage, the pool must not."""
    import threading
    import time

    from tasks.language import classify_texts

    texts = [f"Item {i}: the committee agreed that the reading rooms stay open late." for i in range(100)]
    starter = threading.Thread(target=docpool.map, args=(classify_texts, texts, 20_000))
    starter.start()
    starter.join()
    time.sleep(2.5)  # Linux's parent-death signal would have come by now; the watchdog polls once a second
    sent = docpool.batches_sent
    docpool.map(classify_texts, texts, 20_000)
    assert docpool.batches_sent == sent + 1


def test_an_error_in_a_worker_is_raised_here_and_the_next_batch_is_answered_in_step(pool):
    from tasks.language import classify, classify_texts

    texts = [f"Article {i}. Everyone has the right to education, and education shall be free." for i in range(120)]
    with pytest.raises(TypeError):
        docpool.map(classify_texts, [*texts[:100], None, *texts[100:]], 20_000)
    assert docpool.map(classify_texts, texts, 20_000) == [classify(t) for t in texts]


def test_workers_lent_when_the_pool_is_replaced_end_when_given_back(pool):
    old = docpool._get_pool()
    lent = old.borrow(2)
    assert all(w.proc.poll() is None for w in lent)
    docpool.configure(3)  # another size: a new pool; the old one's lent workers are not kept
    old.give_back(lent)
    assert all(w.proc.poll() is not None for w in lent)


def test_workers_end_when_their_parent_is_killed(tmp_path):
    """SIGKILL to the process that started the pool (a `crucible run` killed with -9) leaves no worker behind."""
    import subprocess
    import sys
    import time

    script = ("import sys, time\nfrom tasks import docpool\ndocpool.configure(2)\ndocpool.warm()\n"
              "print(' '.join(str(w.proc.pid) for w in docpool._pool.borrow(2)), flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            cwd=str(Path(docpool.__file__).resolve().parents[1]))
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)


def _alive(pid: int) -> bool:
    """Running (a zombie that init has not reaped yet counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_workers_that_die_at_start_are_said_once_and_the_pool_goes_off(caplog, monkeypatch):
    """A stage module that no longer imports kills every worker as it starts: each batch is still right (inline),
    the log says why (the worker's own last words), and after two such deaths no more workers are started."""
    from tasks.language import classify, classify_texts

    texts = [f"Line {i}: the library keeps its reading rooms open until ten at night." for i in range(100)]
    expected = [classify(t) for t in texts]
    monkeypatch.setattr(docpool, "_preload", ())  # put back after the test, as the pool's modules
    docpool.configure(2, preload=("tasks.no_such_stage_module",))
    try:
        sent = docpool.batches_sent
        with caplog.at_level("WARNING", logger="crucible.docpool"):
            for _ in range(4):
                assert docpool.map(classify_texts, texts, 20_000) == expected
        assert docpool.batches_sent == sent
        said = [r.getMessage() for r in caplog.records if r.name == "crucible.docpool"]
        assert any("No module named 'tasks.no_such_stage_module'" in m for m in said), said
        assert sum("from now on" in m for m in said) == 1, said
        assert docpool._get_pool() is None and worker_pids() == []
    finally:
        docpool.configure(1)
