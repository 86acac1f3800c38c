"""Fault injection sweep: SIGKILL or Ctrl-C `crucible run` at a random point of each data stage, and SIGKILL a
crawl between WARC rotations; rerun, and count what was lost or duplicated.

    python benchmarks/faults.py                                  # every mode, every data stage x 3 seeds
    python benchmarks/faults.py --modes sigint --stages extract dedup --seeds 5 --pages 200
    python benchmarks/faults.py --modes crawl --seeds 5

Input: Python's own pydoc pages written into a WARC (no network, no ../shared), and for the crawl mode a local site
of 40 linked pages crawled with a WARC file rotated every few pages. A reference run gives each stage's
fingerprint, documents and duration; then for every (mode, stage, seed) a fresh work directory runs `crucible run
--to tokenize` in its own process group, which gets the signal a seeded random fraction of the stage's reference
duration after the stage's output directory appears: SIGKILL (reporting to a Prefect test server), or SIGINT to the
whole group as a terminal's Ctrl-C sends it (the command on its own local Prefect server; the table gives its exit
code and how long it took to stop). Then it runs again to completion. The tables say where the signal landed, how
many units the rerun found finished, the rerun's wall time, documents lost and duplicated against the reference
(every stage's output), and whether every dataset is byte-identical. It exits 1 if anything was lost, duplicated
or differs.
"""
from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows import configure_prefect  # noqa: E402

MODES = {"kill": signal.SIGKILL, "sigint": signal.SIGINT}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", default=["kill", "sigint", "crawl"], choices=[*MODES, "crawl"])
    parser.add_argument("--stages", nargs="+", default=None, help="Stages to signal in (default: every data stage).")
    parser.add_argument("--seeds", type=int, default=3, help="Faults per stage (and crawls).")
    parser.add_argument("--pages", type=int, default=120, help="pydoc pages in the input WARC.")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="crucible-faults-"))
    configure_prefect(tmp)
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from tests.faults import (KILLABLE, crawl_kill_and_rerun, doc_ids, kill_and_rerun, reference, write_config,
                              _warehouse)
    from tests.pydoc_pages import write_pydoc_warc

    stages = args.stages or KILLABLE
    warc = write_pydoc_warc(tmp / "pydoc.warc.gz", args.pages)
    rows, crawls = [], []
    with prefect_test_harness(server_startup_timeout=120):
        api = PREFECT_API_URL.value()
        ref_config = write_config(tmp / "ref.toml", tmp / "ref", str(warc))
        ref = reference(ref_config, api)
        ref_docs = doc_ids(_warehouse(ref_config))
        print(f"reference: {', '.join(f'{s} {sec:.1f}s' for s, (_, sec) in ref.items())}", flush=True)
        for mode in [m for m in args.modes if m in MODES]:
            for stage in stages:
                for seed in range(args.seeds):
                    name = f"{mode}-{stage}-{seed}"
                    result = kill_and_rerun(write_config(tmp / f"{name}.toml", tmp / name, str(warc)), stage, seed,
                                            ref, api, MODES[mode], ref_docs)
                    rows.append(result)
                    print(f"  {mode:<6} {stage:<13} seed {seed}: after {result.delay_s:.2f}s in {result.landed}, "
                          f"lost {result.lost}, duplicated {result.duplicated}, "
                          f"{'identical' if result.identical else 'DIFFERENT: ' + ', '.join(result.differing)}",
                          flush=True)
        if "crawl" in args.modes:
            for seed in range(args.seeds):
                c = crawl_kill_and_rerun(tmp / f"crawl-{seed}", seed, api)
                crawls.append(c)
                print(f"  crawl  seed {seed}: {c.archived_before} pages in {c.warc_files_before} WARC files at the "
                      f"kill, lost {c.lost}, duplicated {c.duplicated}", flush=True)
    if rows:
        print()
        print("| signal | in stage | seed | after (s) | landed in | exit | stopped in (s) | units resumed | rerun (s) "
              "| docs lost | docs duplicated | datasets identical |")
        print("|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|")
        for r in rows:
            print(f"| {r.signal_name} | {r.stage} | {r.seed} | {r.delay_s:.2f} | {r.landed} | {r.exit_code} | "
                  f"{r.stop_s:.1f} | {r.resumed_units} | {r.rerun_s:.1f} | {r.lost} | {r.duplicated} | "
                  f"{'yes' if r.identical else 'NO (' + ', '.join(r.differing) + ')'} |")
    if crawls:
        print()
        print("| crawl seed | after (s) | WARC files at the kill | pages archived at the kill | pages | lost "
              "| archived twice |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for c in crawls:
            print(f"| {c.seed} | {c.delay_s:.2f} | {c.warc_files_before} | {c.archived_before} | {c.pages} | "
                  f"{c.lost} | {c.duplicated} |")
    bad = sum(not r.identical or r.lost or r.duplicated for r in rows) + sum(bool(c.lost or c.duplicated)
                                                                            for c in crawls)
    total = len(rows) + len(crawls)
    print(f"\n{total - bad}/{total} faults left nothing lost, nothing duplicated and identical datasets on rerun")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
