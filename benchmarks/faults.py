"""Fault injection sweep: SIGKILL `crucible run` at a random point of each data stage, rerun, compare datasets.

    python benchmarks/faults.py                       # every data stage x 3 seeds on 120 pydoc pages
    python benchmarks/faults.py --stages dedup tokenize --seeds 5 --pages 200

Input: Python's own pydoc pages written into a WARC (no network, no ../shared). A reference run gives each
stage's fingerprint and duration; then for every (stage, seed) a fresh work directory runs `crucible run --to
tokenize` in its own process group, which is SIGKILLed a seeded random fraction of the stage's reference duration
after the stage's output directory appears, and run again to completion. The table says where the kill landed,
how many units the rerun found already finished, the rerun's wall time, and whether every stage's dataset has the
reference's fingerprint (byte-identical shards). It exits 1 if any does not.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows import configure_prefect  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", nargs="+", default=None, help="Stages to kill in (default: every data stage).")
    parser.add_argument("--seeds", type=int, default=3, help="Kills per stage.")
    parser.add_argument("--pages", type=int, default=120, help="pydoc pages in the input WARC.")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="crucible-faults-"))
    configure_prefect(tmp)
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from tests.faults import KILLABLE, kill_and_rerun, reference, write_config
    from tests.pydoc_pages import write_pydoc_warc

    stages = args.stages or KILLABLE
    warc = write_pydoc_warc(tmp / "pydoc.warc.gz", args.pages)
    rows = []
    with prefect_test_harness(server_startup_timeout=120):
        api = PREFECT_API_URL.value()
        ref = reference(write_config(tmp / "ref.toml", tmp / "ref", str(warc)), api)
        print(f"reference: {', '.join(f'{s} {sec:.1f}s' for s, (_, sec) in ref.items())}", flush=True)
        for stage in stages:
            for seed in range(args.seeds):
                work = tmp / f"{stage}-{seed}"
                result = kill_and_rerun(write_config(tmp / f"{stage}-{seed}.toml", work, str(warc)), stage, seed,
                                        ref, api)
                rows.append(result)
                print(f"  {stage:<13} seed {seed}: killed after {result.delay_s:.2f}s in {result.landed}, "
                      f"{'identical' if result.identical else 'DIFFERENT: ' + ', '.join(result.differing)}",
                      flush=True)
    print()
    print("| kill in | seed | after (s) | landed in | units resumed | rerun (s) | datasets identical |")
    print("|---|---:|---:|---|---:|---:|---|")
    for r in rows:
        print(f"| {r.stage} | {r.seed} | {r.delay_s:.2f} | {r.landed} | {r.resumed_units} | {r.rerun_s:.1f} | "
              f"{'yes' if r.identical else 'NO (' + ', '.join(r.differing) + ')'} |")
    bad = sum(not r.identical for r in rows)
    print(f"\n{len(rows) - bad}/{len(rows)} killed runs gave byte-identical datasets on rerun")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
