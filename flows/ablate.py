"""`crucible ablate`: the same pipeline under settings that differ in one thing, compared at equal training tokens.

Each variant is the config with ``--vary`` overrides (``select.classifier.enabled=true,false``: one variant per
value; several --vary give every combination), run once per training seed (``train.seed``). The stages every
variant shares are cache hits after the first, so only what a setting changes is computed again. Training stops at
``train.max_steps`` (a time limit would give the variants different token counts, so it is refused), and each run is
scored on the held-out slice of one source (``--eval-source``): the same documents in every variant when that source
skips the stage being varied, which is what a curated source does by default (use ``epochs = 0`` on it so no variant
trains on any of it). Every run uses one tokenizer, the first variant's (``shared_tokenizer``). CORE-7 comes from
the evaluate stage when the runs go that far.

    rows = run_ablation(Path("configs/selection_ablation.toml"), ["select.classifier.enabled=true,false"],
                        seeds=[0, 1, 2], eval_source="wikitext", run=run_pipeline)
"""
from __future__ import annotations

import itertools
import json
import math
import statistics
import tomllib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from tasks.atomic import atomic_file
from tasks.config import Config, ConfigError, parse_config


def parse_vary(spec: str) -> tuple[str, list[Any]]:
    """``a.b.c=v1,v2`` -> ("a.b.c", [v1, v2]); each value is read as TOML (true, 0.5, "text"), else as a string."""
    key, sep, values = spec.partition("=")
    if not sep or not key.strip() or not values.strip():
        raise ConfigError(f"--vary {spec!r}: write KEY=VALUE,VALUE (e.g. select.classifier.enabled=true,false)")
    return key.strip(), [_value(v.strip()) for v in values.split(",")]


def _value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def set_key(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {part} is not a section")
    node[last] = value


def variants(varies: list[str]) -> list[dict[str, Any]]:
    """Every combination of the --vary values, in the order given."""
    parsed = [parse_vary(v) for v in varies]
    return [dict(zip([k for k, _ in parsed], combo)) for combo in itertools.product(*(vs for _, vs in parsed))]


def variant_config(path: Path, overrides: dict[str, Any], seed: int | None) -> Config:
    text = path.read_text(encoding="utf-8")
    data = tomllib.loads(text)
    for key, value in overrides.items():
        set_key(data, key, value)
    if seed is not None:
        set_key(data, "train.seed", seed)
    label = ", ".join(f"{k}={v}" for k, v in overrides.items())
    cfg = parse_config(data, origin=f"{path} with {label}")
    return cfg.model_copy(update={"source": path.resolve()})


def check_equal_tokens(cfg: Config) -> None:
    if cfg.train.max_seconds is not None:
        raise ConfigError(f"train.max_seconds = {cfg.train.max_seconds:g}: a time limit trains the variants on "
                          "different numbers of tokens; remove it and set train.max_steps")


def shared_tokenizer(path: Path, varies: list[str], tokenize: Callable[[Config], Path],
                     say: Callable[[str], None] = print) -> dict[str, Any]:
    """The override that gives every run one tokenizer: the one the first variant's data trains (put the baseline
    first). Bits per byte and tokens then compare like with like: with a tokenizer per variant, one that packs more
    bytes into a token would see more text at equal tokens. None when the config fixes a tokenizer or a --vary
    changes tokenize."""
    base = variant_config(path, variants(varies)[0], None)
    if base.tokenize.tokenizer_path is not None or any(v.strip().startswith("tokenize.") for v in varies):
        return {}
    made = tokenize(base)
    say(f"ablate: every run uses the tokenizer of the first variant, {made}")
    return {"tokenize.tokenizer_path": str(made)}


def run_ablation(path: Path, varies: list[str], *, seeds: list[int], eval_source: str,
                 run: Callable[[Config], str], facts: Callable[[Config, str], dict[str, float]],
                 say: Callable[[str], None] = print, fixed: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Run every variant with every seed (``fixed`` settings applied to all); one row each with the run id, its
    tokens, bpb on the evaluation text and CORE-7 (None where the run did not evaluate)."""
    rows = []
    for overrides in variants(varies):
        for seed in seeds:
            cfg = variant_config(path, {**(fixed or {}), **overrides}, seed)
            check_equal_tokens(cfg)
            if eval_source not in {s.name for s in cfg.all_sources()}:
                raise ConfigError(f"--eval-source {eval_source}: no such source in {path}")
            label = ", ".join(f"{k}={v}" for k, v in overrides.items())
            say(f"ablate: {label}, seed {seed}")
            run_id = run(cfg)
            got = facts(cfg, run_id)
            bpb = got.get(f"train.final_val_bpb/{eval_source}")
            rows.append({"variant": label, **{f"vary.{k}": v for k, v in overrides.items()}, "seed": seed,
                         "run_id": run_id, "tokens": got.get("train.tokens_seen"), "bpb": bpb,
                         "unigram_bpb": got.get("unigram_bpb"), "core7": got.get("evaluate.core7")})
            say(f"ablate: {label}, seed {seed}: run {run_id}, {_fmt(rows[-1]['tokens'], ',.0f')} tokens, "
                f"bpb on {eval_source} {_fmt(bpb, '.4f')} (token frequencies alone: "
                f"{_fmt(rows[-1]['unigram_bpb'], '.4f')}), CORE-7 {_fmt(rows[-1]['core7'], '+.4f')}")
    return rows


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per variant: the runs, mean bpb with its spread (min..max and standard deviation over seeds), the unigram
    model's bpb (its training tokens' frequencies; the same for every seed), mean CORE-7."""
    out = []
    for label in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == label]
        bpb = [r["bpb"] for r in mine if r["bpb"] is not None]
        core = [r["core7"] for r in mine if r["core7"] is not None]
        unigram = [r["unigram_bpb"] for r in mine if r.get("unigram_bpb") is not None]
        out.append({"variant": label, "runs": len(mine), "tokens": mine[0]["tokens"],
                    "bpb_mean": statistics.fmean(bpb) if bpb else None,
                    "unigram_bpb": statistics.fmean(unigram) if unigram else None,
                    "bpb_min": min(bpb) if bpb else None, "bpb_max": max(bpb) if bpb else None,
                    "bpb_std": statistics.stdev(bpb) if len(bpb) > 1 else 0.0 if bpb else None,
                    "core7_mean": statistics.fmean(core) if core else None,
                    "core7_std": statistics.stdev(core) if len(core) > 1 else None})
    return out


def paired(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each variant against the first, seed by seed: the seed sets the initialisation and the data order, which
    move bpb more than many a data change, so the per-seed difference is the sharper comparison."""
    labels = list(dict.fromkeys(r["variant"] for r in rows))
    base = {r["seed"]: r["bpb"] for r in rows if r["variant"] == labels[0] and r["bpb"] is not None}
    out = []
    for label in labels[1:]:
        diffs = {r["seed"]: r["bpb"] - base[r["seed"]] for r in rows
                 if r["variant"] == label and r["bpb"] is not None and r["seed"] in base}
        if diffs:
            values = list(diffs.values())
            out.append({"variant": label, "against": labels[0], "by_seed": diffs,
                        "mean": statistics.fmean(values), "min": min(values), "max": max(values),
                        "lower_in": sum(v < 0 for v in values), "seeds": len(values)})
    return out


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def table(rows: list[dict[str, Any]], summary: list[dict[str, Any]], eval_source: str) -> str:
    """The runs and the summary as Markdown."""
    lines = [f"| variant | seed | run | tokens | bpb on {eval_source} | unigram bpb | CORE-7 |",
             "|---|---:|---|---:|---:|---:|---:|"]
    lines += [f"| {r['variant']} | {r['seed']} | {r['run_id']} | {_fmt(r['tokens'], ',.0f')} | {_fmt(r['bpb'], '.4f')} "
              f"| {_fmt(r.get('unigram_bpb'), '.4f')} | {_fmt(r['core7'], '+.4f')} |" for r in rows]
    lines += ["", f"| variant | runs | bpb on {eval_source}: mean | min..max | std | unigram bpb | CORE-7 mean (std) |",
              "|---|---:|---:|---|---:|---:|---|"]
    lines += [f"| {s['variant']} | {s['runs']} | {_fmt(s['bpb_mean'], '.4f')} | {_fmt(s['bpb_min'], '.4f')}.."
              f"{_fmt(s['bpb_max'], '.4f')} | {_fmt(s['bpb_std'], '.4f')} | {_fmt(s.get('unigram_bpb'), '.4f')} "
              f"| {_fmt(s['core7_mean'], '+.4f')} ({_fmt(s['core7_std'], '.4f')}) |" for s in summary]
    learned = [s["unigram_bpb"] - s["bpb_mean"] for s in summary
               if s.get("unigram_bpb") is not None and s["bpb_mean"] is not None]
    if learned:
        lines += ["", f"Each variant's mean bpb is {min(learned):+.4f} to {max(learned):+.4f} below its unigram bpb: "
                  "what its runs learned beyond their training tokens' frequencies (near 0, a data change can show "
                  "only through those frequencies)."]
    pairs = paired(rows)
    if pairs:
        lines += ["", f"| variant - {pairs[0]['against']} | per seed | mean | min..max | lower in |",
                  "|---|---|---:|---|---:|"]
        lines += [f"| {p['variant']} | {', '.join(f'{k}: {v:+.4f}' for k, v in p['by_seed'].items())} | "
                  f"{p['mean']:+.4f} | {p['min']:+.4f}..{p['max']:+.4f} | {p['lower_in']} of {p['seeds']} seeds |"
                  for p in pairs]
    return "\n".join(lines) + "\n"


def write_results(out_dir: Path, rows: list[dict[str, Any]], summary: list[dict[str, Any]], eval_source: str,
                  meta: dict[str, Any]) -> tuple[Path, Path]:
    """ablation-<time>.json and .md in ``out_dir``, written atomically."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / f"ablation-{stamp}.md", out_dir / f"ablation-{stamp}.json"
    with atomic_file(js) as tmp:
        tmp.write_text(json.dumps({**meta, "eval_source": eval_source, "runs": rows, "summary": summary,
                                   "paired": paired(rows)}, indent=1, default=str))
    with atomic_file(md) as tmp:
        tmp.write_text(f"# Ablation {stamp}\n\n{meta.get('config')}; varied: {', '.join(meta.get('vary', []))}\n\n"
                       + table(rows, summary, eval_source))
    return md, js


__all__ = ["parse_vary", "variants", "variant_config", "run_ablation", "shared_tokenizer", "summarize", "paired",
           "table", "write_results", "check_equal_tokens"]
