"""Does model-based selection train a better model? The quality classifier on and off, at equal tokens, 3 seeds.

    python benchmarks/selection_ablation.py                       # configs/selection_ablation.toml, seeds 0,1,2
    python benchmarks/selection_ablation.py --seeds 0,1,2,3,4 --vary select.perplexity.enabled=false,true

Runs ``crucible ablate`` on the shared corpora: the crawl archives and saved pages of ../shared/corpora are the
training pool, 34 Gutenberg books the reference the classifier learns from, and the books' 2,000 held-out
paragraphs the fixed evaluation text (no variant trains on any book: ``epochs = 0``). Every run trains the same
GPT for the same number of tokens with one tokenizer. Prints each run, each variant's mean bits per byte on the
books with its spread over the seeds, the difference, and whether the classifier variant is lower; CORE-7 where
the runs evaluated (at this size it is noise, and said so when the spread covers the difference).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "corpora"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "selection_ablation.toml"))
    parser.add_argument("--vary", default="select.classifier.enabled=false,true",
                        help="The baseline value first: its data trains the tokenizer every run uses.")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--eval-source", default="books")
    parser.add_argument("--to", default="evaluate")
    args = parser.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"{SHARED} is absent: the ablation runs on the shared corpora")
    done = subprocess.run([sys.executable, "-m", "flows.cli", "ablate", args.config, "--vary", args.vary,
                           "--seeds", args.seeds, "--eval-source", args.eval_source, "--to", args.to],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"crucible ablate failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    written = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("wrote ")]
    results = json.loads(Path(written[-1].replace(".md", ".json")).read_text())
    runs, summary = results["runs"], results["summary"]
    if missing := [r["run_id"] for r in runs if r["bpb"] is None]:
        sys.exit(f"no bits per byte on {args.eval_source} in {len(missing)} runs ({', '.join(missing)}): the source "
                 "needs held-out documents (val_docs or val_fraction) and the runs must train (--to train)")
    print(f"{len(runs)} runs of {runs[0]['tokens']:,.0f} tokens each; bits per byte on the held-out "
          f"{args.eval_source} paragraphs (lower is better)")
    for r in runs:
        core = f"{r['core7']:+.4f}" if r["core7"] is not None else "-"
        print(f"  {r['variant']:42} seed {r['seed']}  bpb {r['bpb']:.4f}  CORE-7 {core}  {r['run_id']}")
    for s in summary:
        core = f", CORE-7 {s['core7_mean']:+.4f} (std {s['core7_std']:.4f})" if s["core7_std"] is not None else ""
        unigram = f"; unigram {s['unigram_bpb']:.4f}" if s.get("unigram_bpb") is not None else ""
        print(f"{s['variant']:44} bpb mean {s['bpb_mean']:.4f}  min..max {s['bpb_min']:.4f}..{s['bpb_max']:.4f}  "
              f"std {s['bpb_std']:.4f}{unigram}{core}")
    print("unigram: a unigram model of the variant's training tokens on the same text (token frequencies alone); "
          "a mean near it learned nothing more, so the data can show only through those frequencies")
    base, other = summary[0], summary[-1]
    diff = other["bpb_mean"] - base["bpb_mean"]
    separated = other["bpb_max"] < base["bpb_min"] or base["bpb_max"] < other["bpb_min"]
    spread = ("one seed: no spread to compare" if base["runs"] < 2 else
              f"the seeds' ranges {'do not overlap' if separated else 'overlap'}")
    print(f"{other['variant']} - {base['variant']}: {diff:+.4f} bpb ({diff / base['bpb_mean']:+.1%}); {spread}")
    for pair in results.get("paired", []):
        seeds = ", ".join(f"seed {k} {v:+.4f}" for k, v in pair["by_seed"].items())
        print(f"{pair['variant']} - {pair['against']}, seed by seed: {seeds}; mean {pair['mean']:+.4f}, lower in "
              f"{pair['lower_in']} of {pair['seeds']} seeds")
    print(f"lower bpb with {other['variant']}: {'yes' if diff < 0 else 'no'}")
    if base["core7_std"] is not None and other["core7_std"] is not None:
        noise = max(base["core7_std"], other["core7_std"])
        gap = other["core7_mean"] - base["core7_mean"]
        print(f"CORE-7 difference {gap:+.4f}: {'above' if abs(gap) > 2 * noise else 'within'} the noise "
              f"(2 x the larger seed std, {2 * noise:.4f})")


if __name__ == "__main__":
    main()
