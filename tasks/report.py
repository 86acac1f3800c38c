"""The run report: Markdown plus one self-contained HTML file (images inline as data URIs, no external URL).

``write_report(data, out_dir)`` takes what ``warehouse.report.report_data`` gathered and writes ``report.md`` (with
its plots in ``images/``) and ``report.html``. Sections: header, data funnel, tokenizer, training, compute,
evaluation, samples, datasheet, model card, lineage. Plots are drawn with matplotlib's Agg backend.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.atomic import atomic_write_bytes, file_sha256
from tasks.config import stable_hash
from tasks.report_doc import Doc, _bars, _plot
from tasks.stage import Artifact, Dataset, Input, Stage, StageContext, StageResult
from warehouse.report import report_data

# Published small-model CORE-style figures are not shipped: their protocols differ from CORE-7's (shots, item caps,
# tasks), and mixing them in would invite a wrong comparison. The reference row is the random baseline.
NOTE_REFERENCES = ("Reference rows: the random baseline per task (centered 0). No published figures are listed: "
                   "CORE-7 is 7 of the 22 DCLM CORE tasks, so the 22-task CORE scores of published models are "
                   "not comparable.")


def build(data: dict[str, Any]) -> Doc:
    doc = Doc()
    run, facts = data["run"], data.get("facts", {})
    doc.h(1, f"Crucible report: {run['run_id']}")
    section_header(doc, data)
    section_funnel(doc, data)
    section_sources(doc, data)
    section_tokenizer(doc, facts)
    section_training(doc, data)
    section_compute(doc, facts, data.get("training") or {})
    section_evaluation(doc, data)
    section_samples(doc, data)
    section_datasheet(doc, data)
    section_model_card(doc, data)
    section_lineage(doc, data)
    return doc


def section_header(doc: Doc, data: dict[str, Any]) -> None:
    run, env = data["run"], data["environment"]
    doc.h(2, "Run")
    doc.table(["field", "value"], [
        ["run id", run["run_id"]], ["status", run["status"]], ["trigger", run["trigger"]],
        ["started", str(run["started_at"])], ["ended", str(run["ended_at"])], ["code version", run["code_version"]],
        ["config hash", (run.get("config_hash") or "")[:16]], ["config", run.get("config_path")],
        ["hardware", ", ".join(f"{k} {v}" for k, v in env["hardware"].items())],
        ["libraries", ", ".join(f"{k} {v}" for k, v in env["libraries"].items() if v)]])
    doc.table(["stage", "status", "cache hit", "seconds", "output"],
              [[s["stage"], s["status"], s["cache_hit"], s["seconds"], s["output_dataset_id"]]
               for s in data["stages"]])


def section_funnel(doc: Doc, data: dict[str, Any]) -> None:
    doc.h(2, "Data funnel")
    stages = [s for s in data["stages"] if s["stage"] not in ("train", "evaluate", "report")]
    doc.table(["stage", "docs in", "docs out", "bytes in", "bytes out"],
              [[s["stage"], s["docs_in"], s["docs_out"], s["bytes_in"], s["bytes_out"]] for s in stages])
    counted = [s for s in stages if s["docs_out"] is not None]
    if counted:
        doc.image("funnel", _bars([s["stage"] for s in counted], [s["docs_out"] for s in counted],
                                  "documents kept after each stage", "documents"), "documents kept per stage")
    drops = [f for f in data.get("funnel", []) if f["dropped"]]
    doc.h(3, "Drops per reason")
    doc.table(["stage", "reason", "docs", "bytes"], [[f["stage"], f["reason"], f["docs"], f["bytes"]] for f in drops])
    if data.get("languages"):
        doc.h(3, "Languages (language stage output)")
        doc.table(["language", "documents"], [[r["lang"], r["docs"]] for r in data["languages"]])
    if data.get("dedup_clusters") is not None:
        doc.h(3, "Duplicate clusters")
        doc.table(["cluster size", "clusters"], [[r["size"], r["clusters"]] for r in data["dedup_clusters"]])
    if data.get("removed_segments"):
        doc.h(3, "Repeated segments removed (segment-level dedup)")
        doc.p("The lines held by the most documents; each was kept in one document and removed from the others.")
        doc.table(["documents", "removed from", "segment"],
                  [[r["docs"], r["removed_from"], (r["text"] or "")[:160]] for r in data["removed_segments"]])
    section_selection(doc, data.get("facts", {}))
    contamination = {k.split(".", 2)[2]: v for k, v in data.get("facts", {}).items()
                     if k.startswith("decontaminate.contaminated_items.")}
    if contamination:
        items = data["facts"]
        doc.h(3, "Contamination per benchmark")
        doc.table(["benchmark", "items checked", "contaminated items"],
                  [[t, items.get(f"decontaminate.items.{t}"), v] for t, v in sorted(contamination.items())])


def section_selection(doc: Doc, facts: dict[str, float]) -> None:
    """The select stage's models and cut-offs, when it ran."""
    rows = [(label, facts.get(name)) for label, name in (
        ("classifier: reference documents trained on", "select.classifier.train_positive"),
        ("classifier: crawl documents trained on", "select.classifier.train_negative"),
        ("classifier: held-out accuracy", "select.classifier.val_accuracy"),
        ("classifier: held-out ROC AUC", "select.classifier.val_auc"),
        ("documents scored", "select.docs_scored"),
        ("median quality_score", "select.quality_score_median"),
        ("quality_score cut-off", "select.classifier_cutoff"),
        ("reference LM: tokens trained on", "select.perplexity.tokens"),
        ("reference LM: final training loss (nats)", "select.perplexity.final_loss"),
        ("median perplexity", "select.perplexity_median")) if facts.get(name) is not None]
    if rows:
        doc.h(3, "Model-based selection")
        doc.table(["figure", "value"], [[label, round(v, 4) if isinstance(v, float) else v] for label, v in rows])


def section_sources(doc: Doc, data: dict[str, Any]) -> None:
    """Every figure per source: documents after each stage, the mixture at tokenize, the drops."""
    overview = data.get("source_overview") or {}
    if not overview.get("rows"):
        return
    doc.h(2, "Sources")
    stages = overview["stages"]
    doc.p("Documents of each source after each stage; at tokenize the mixture: training tokens (each document "
          "once), the target and realised share of a training pass, and how many times a pass uses the source.")
    doc.table(["source", "in", *stages, "tokens", "target", "share", "epochs", "val docs"], [
        [r["source"], r["docs_in"], *(r.get(f"out.{s}") for s in stages), r.get("tokens"),
         f"{r['target_share']:.1%}" if r.get("target_share") else "",
         f"{r['share']:.1%}" if r.get("share") is not None else "",
         f"{r['epochs']:.2f}" if r.get("epochs") is not None else "", r.get("val_docs")]
        for r in overview["rows"]])
    if overview["drops"]:
        doc.h(3, "Drops per source")
        doc.table(["stage", "source", "reason", "docs", "bytes"],
                  [[d["stage"], d["source"], d["reason"], d["docs"], d["bytes"]] for d in overview["drops"]])


def section_tokenizer(doc: Doc, facts: dict[str, float]) -> None:
    doc.h(2, "Tokenizer")
    doc.table(["figure", "value"], [
        ["vocabulary", facts.get("tokenize.vocab_size")], ["separator id", facts.get("tokenize.separator_id")],
        ["train tokens", facts.get("tokenize.train_tokens")], ["val tokens", facts.get("tokenize.val_tokens")],
        ["bytes per token (val)", facts.get("tokenize.val_bytes_per_token")]])


def section_training(doc: Doc, data: dict[str, Any]) -> None:
    curves = data.get("training")
    doc.h(2, "Training")
    if not curves:
        doc.p("This run did not train.")
        return
    doc.image("loss", _plot({"train loss": curves.get("loss", []), "val loss": curves.get("val_loss", [])},
                            "loss (nats per token)", "loss"), "training and validation loss")
    if curves.get("val_bpb"):
        per_source = {f"val bpb: {k.split('/', 1)[1]}": v for k, v in sorted(curves.items())
                      if k.startswith("val_bpb/")}
        doc.image("val_bpb", _plot({"val bpb (all)": curves["val_bpb"], **per_source}, "validation bits per byte"
                                   + (" by source" if per_source else ""), "bits/byte"),
                  "validation bits per byte" + (", overall and per source" if per_source else ""))
    doc.image("lr", _plot({"lr": curves.get("lr", [])}, "learning rate", "lr"), "learning-rate schedule")
    doc.image("throughput", _plot({"tokens/s": curves.get("tokens_per_s", [])}, "throughput", "tokens/s"),
              "tokens per second")
    if curves.get("mfu"):
        doc.image("mfu", _plot({"MFU": curves["mfu"]}, "model FLOPs utilisation", "MFU"), "MFU")
    else:
        doc.p("MFU: not measured (no GPU with a known peak; CPU runs report none).")


def section_compute(doc: Doc, facts: dict[str, float], curves: dict[str, list[tuple[int, float]]]) -> None:
    doc.h(2, "Compute")
    if "train.params" not in facts:
        doc.p("No training in this run.")
        return
    # training logs its peak with every step (metrics.jsonl); a run-level figure, where there is one, counts too
    keys = ("peak_memory_bytes", "peak_rss_bytes")
    peak = max([facts.get(f"train.{k}") or 0 for k in keys] + [v for k in keys for _, v in curves.get(k, [])])
    doc.table(["figure", "value"], [
        ["parameters N", facts.get("train.params")], ["non-embedding parameters", facts.get("train.params_non_embedding")],
        ["tokens planned D", facts.get("train.tokens")], ["tokens seen", facts.get("train.tokens_seen")],
        ["6ND FLOPs", facts.get("train.train_flops_6nd")], ["tokens per parameter", facts.get("train.tokens_per_param")],
        ["Chinchilla tokens per parameter", facts.get("train.chinchilla_tokens_per_param")],
        ["estimated memory per rank (16 B/param + activations)", facts.get("train.memory_estimate_bytes_per_rank")],
        ["measured peak memory (GPU allocated, or process RSS on CPU)", peak or None]])


def section_evaluation(doc: Doc, data: dict[str, Any]) -> None:
    doc.h(2, "Evaluation")
    results = data.get("results")
    if not results:
        doc.p("This run did not evaluate.")
        return
    facts = data.get("facts", {})
    rows = []
    for task, r in sorted(results["results"].items()):
        rows.append([task, r["items"], r["shots"], r.get("cropped_items"), r.get("shots_kept_mean"), r["accuracy"],
                     r["centered"], r["baseline"], facts.get(f"evaluate.accuracy_clean.{task}"),
                     facts.get(f"evaluate.contaminated_items.{task}"),
                     facts.get(f"evaluate.accuracy_contaminated.{task}")])
    rows.append(["CORE-7 (mean centered)", None, None, None, None, None, results.get("core7"), None, None, None,
                 None])
    rows.append(["random baseline", None, None, None, None, None, 0.0, None, None, None, None])
    doc.table(["task", "items", "shots", "items cropped", "shots kept (mean)", "accuracy", "centered", "baseline",
               "accuracy clean", "contaminated items", "accuracy contaminated"], rows)
    doc.p("Centered accuracy = (accuracy - baseline) / (1 - baseline). " + NOTE_REFERENCES)
    cropped = {t: r for t, r in sorted(results["results"].items()) if r.get("cropped_items")}
    if cropped:
        seq_len = results.get("seq_len") or "?"
        doc.p("A prompt longer than the model's context is cut from the left, as CORE does, so these scores saw "
              "fewer examples than their shots: " + "; ".join(
                  f"{t}: {r['cropped_items']} of {r['items']} items cropped, {r['shots_kept_mean']:.1f} of "
                  f"{r['shots']} shots kept on average" for t, r in cropped.items())
              + f" (context {seq_len} tokens). A model with a longer context sees more of them.")
    if results.get("val"):
        v = results["val"]
        doc.p(f"Validation split: loss {v['val_loss']:.4f} nats/token, perplexity {v['val_ppl']:.2f}, "
              f"{v['val_bpb']:.4f} bits per byte over {int(v['val_bytes']):,} bytes.")


def section_samples(doc: Doc, data: dict[str, Any]) -> None:
    doc.h(2, "Samples")
    samples = data.get("samples") or []
    if not samples:
        doc.p("No samples.")
    for s in samples:
        doc.pre(f"[temperature {s['temperature']}] {s['prompt']}|{s['completion']}")


def section_datasheet(doc: Doc, data: dict[str, Any]) -> None:
    doc.h(2, "Datasheet")
    collection = data.get("collection", {})
    sources = data.get("sources", [])
    doc.p(f"Sources: {len(sources)} archive file(s)" + (f", first {Path(sources[0]).name}" if sources else "")
          + (f"; {collection.get('hosts')} host(s), fetched between {collection.get('first_fetch')} and "
             f"{collection.get('last_fetch')}." if collection else "."))
    cfg = data.get("config", {})
    quality = cfg.get("quality", {})
    doc.p("Filters, in the order this run applied them, with the reasons they recorded: " + filters_applied(data)
          + f". Language ID kept {cfg.get('language', {}).get('keep')}; near-duplicates were judged at Jaccard "
          f"{cfg.get('dedup', {}).get('threshold')}. Every drop is counted in the funnel above with its reason; "
          "text is NFC-normalised, never lowercased.")
    doc.p(f"PII: e-mail and IP addresses (and URLs when redact_urls is set) are replaced with <EMAIL>, <IP>, <URL> "
          f"(pii = {quality.get('pii')}, redact_urls = {quality.get('redact_urls')}); documents with replacements "
          "are counted as pii_redacted_docs. Names, postal addresses and phone numbers are not detected.")
    doc.p("Licence: the crawled pages keep their publishers' rights; this dataset is for research on the pipeline "
          "and must not be redistributed without checking each source's terms.")
    doc.p("Known limitations: heuristic filters have false positives and negatives; language ID is unreliable on "
          "short or mixed-language text; near-duplicate detection misses pairs below the threshold; "
          "decontamination only finds n-gram overlaps of 8+ words.")


def filters_applied(data: dict[str, Any]) -> str:
    """The stages that dropped documents in this run, in pipeline order, each with the reasons it recorded."""
    reasons: dict[str, list[str]] = {}
    for f in data.get("funnel", []):
        if f["dropped"]:
            reasons.setdefault(f["stage"], []).append(f["reason"])
    order = [s["stage"] for s in data.get("stages", [])]
    named = [f"{stage} ({', '.join(sorted(reasons[stage]))})" for stage in order if stage in reasons]
    return "; ".join(named) or "none dropped anything"


def model_description(model: dict[str, Any]) -> str:
    """The architecture as configured (not as usually configured), and whether it exports to Llama."""
    from model.gpt import GPTConfig

    cfg = GPTConfig(vocab_size=1, **{k: v for k, v in model.items() if v is not None})
    parts = ["pre-norm RMSNorm" + ("" if cfg.norm_weight else " without learned weights"), "rotary embeddings",
             "causal attention" + (f" with {cfg.n_kv_heads} key/value heads for {cfg.n_heads} query heads"
                                   if cfg.n_kv_heads != cfg.n_heads else f" ({cfg.n_heads} heads)")]
    if cfg.qk_norm:
        parts.append("RMSNorm on queries and keys")
    parts.append("ReLU² MLP" if cfg.activation == "relu2" else "gated-SiLU (SwiGLU) MLP")
    if cfg.logit_softcap:
        parts.append(f"logits soft-capped at {cfg.logit_softcap:g}")
    parts.append("tied input and output embeddings" if cfg.tie_embeddings else "untied embeddings")
    problems = cfg.export_problems()
    export = ("exportable to Hugging Face Llama with `crucible export`" if not problems
              else "not exportable to Hugging Face Llama (" + "; ".join(problems) + ")")
    return f"d_model {cfg.d_model}, " + ", ".join(parts) + "; " + export


def section_model_card(doc: Doc, data: dict[str, Any]) -> None:
    doc.h(2, "Model card")
    model = data.get("config", {}).get("train", {}).get("model", {})
    facts = data.get("facts", {})
    doc.p(f"Model: a decoder-only GPT (depth {model.get('depth')}, {facts.get('train.params', 0):,.0f} parameters), "
          f"{model_description(model)}.")
    doc.p(f"Intended use: studying the data and training pipeline; not for production or any user-facing use. "
          f"Training data: the documents kept by the funnel above ({facts.get('tokenize.train_tokens', 0):,.0f} "
          "training tokens).")
    doc.p("Evaluation: CORE-7 and validation bits per byte, above. Limitations: a small model trained on little "
          "data; it produces fluent-looking but unreliable text, may reproduce biases of its web sources, and was "
          "not aligned or safety-tuned.")


def section_lineage(doc: Doc, data: dict[str, Any]) -> None:
    doc.h(2, "Lineage")
    doc.table(["depth", "dataset", "stage", "format", "records", "bytes", "fingerprint"],
              [[r["depth"], r["dataset_id"], r["stage"], r["format"], r["records"], r["bytes"],
                (r["fingerprint"] or "")[:16]] for r in data.get("lineage", [])])
    if data.get("sources"):
        doc.p("Input archives: " + ", ".join(Path(s).name for s in data["sources"][:20])
              + (f" and {len(data['sources']) - 20} more" if len(data["sources"]) > 20 else ""))


def write_report(data: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write report.md (+ images/) and report.html into out_dir, each file atomically; returns their paths."""
    return _write(build(data), Path(out_dir), "report", f"Crucible report {data['run']['run_id']}")


def _write(doc: Doc, out_dir: Path, stem: str, title: str) -> tuple[Path, Path]:
    """<stem>.md with its images in images/, and <stem>.html with them inline; every file atomically."""
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    for kind, value in doc.blocks:
        if kind == "img":
            atomic_write_bytes(out_dir / "images" / f"{value[0]}.png", value[1])
    md, page = out_dir / f"{stem}.md", out_dir / f"{stem}.html"
    atomic_write_bytes(md, doc.markdown().encode())
    atomic_write_bytes(page, doc.html(title).encode())
    return md, page


def write_run_report(wh: Any, run_id: str, out_dir: Path) -> tuple[Path, Path]:
    """Regenerate the report of any run from the warehouse (the report stage, and `crucible report`)."""
    return write_report(report_data(wh, run_id), out_dir)


class ReportStage(Stage):
    """The last stage: a report of the run it belongs to (always regenerated; it is cheap)."""

    name = "report"

    @classmethod
    def code_roots(cls) -> list[str]:
        return [__name__, "warehouse.report"]

    def read_input(self, ctx: StageContext, upstream: dict[str, Any] | None) -> Input:
        """The run's last dataset, when there is one (the report reads the whole run from the warehouse)."""
        return Input(upstream["fingerprint"], [upstream["dataset_id"]], upstream) if upstream else Input()

    def stage_key(self, inp: Input, ctx: StageContext) -> str:
        return stable_hash({"stage": self.name, "run": ctx.run_id, "code": self.code_version()})

    def output_dir(self, ctx: StageContext, key: str) -> Path:
        return Path(self.config.dir) / ctx.run_id

    def execute(self, ctx: StageContext, inp: Input, out_dir: Path, key: str) -> StageResult:
        md, page = write_run_report(ctx.warehouse, ctx.run_id, out_dir)
        files = [md, page]
        output = Dataset(f"report-{ctx.run_id.removeprefix('run-')}", self.name, key, str(out_dir), "report",
                         file_sha256(md), [(str(f), None, f.stat().st_size, None) for f in files], inp.dataset_ids)
        return StageResult(output=output, shards_out=len(files), bytes_out=sum(f.stat().st_size for f in files),
                           artifact=Artifact("crucible-report", md.read_text(),
                                             f"Crucible report for {ctx.run_id} (plots in {page})"),
                           message=f"report: {page}")


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): value}


def build_comparison(a: dict[str, Any], b: dict[str, Any]) -> Doc:
    """Two runs side by side: config diff, funnel, training curves and evaluation deltas."""
    ra, rb = a["run"]["run_id"], b["run"]["run_id"]
    doc = Doc()
    doc.h(1, f"Crucible comparison: {ra} vs {rb}")
    doc.table(["", "A", "B"], [["run", ra, rb], ["code version", a["run"]["code_version"], b["run"]["code_version"]],
                               ["started", str(a["run"]["started_at"]), str(b["run"]["started_at"])]])
    doc.h(2, "Config differences")
    fa, fb = _flatten(a.get("config", {})), _flatten(b.get("config", {}))
    diff = [[k, fa.get(k), fb.get(k)] for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]
    if diff:
        doc.table(["key", "A", "B"], [[k, str(x), str(y)] for k, x, y in diff])
    else:
        doc.p("The two runs have the same config.")
    doc.h(2, "Data funnel")
    sa = {s["stage"]: s for s in a["stages"]}
    sb = {s["stage"]: s for s in b["stages"]}
    order = [s["stage"] for s in a["stages"]] + [s["stage"] for s in b["stages"] if s["stage"] not in sa]
    doc.table(["stage", "docs out A", "docs out B", "bytes out A", "bytes out B", "seconds A", "seconds B"],
              [[st, sa.get(st, {}).get("docs_out"), sb.get(st, {}).get("docs_out"), sa.get(st, {}).get("bytes_out"),
                sb.get(st, {}).get("bytes_out"), sa.get(st, {}).get("seconds"), sb.get(st, {}).get("seconds")]
               for st in order])
    doc.h(2, "Training")
    ca, cb = a.get("training") or {}, b.get("training") or {}
    if ca or cb:
        doc.image("compare_loss", _plot({"A train loss": ca.get("loss", []), "B train loss": cb.get("loss", []),
                                         "A val loss": ca.get("val_loss", []), "B val loss": cb.get("val_loss", [])},
                                        "loss (nats per token)", "loss"), "loss of both runs")
    else:
        doc.p("Neither run trained.")
    doc.h(2, "Evaluation")
    ea = (a.get("results") or {}).get("results", {})
    eb = (b.get("results") or {}).get("results", {})
    rows = []
    for task in sorted(set(ea) | set(eb)):
        x, y = ea.get(task, {}).get("accuracy"), eb.get(task, {}).get("accuracy")
        rows.append([task, x, y, None if x is None or y is None else y - x])
    ka, kb = (a.get("results") or {}).get("core7"), (b.get("results") or {}).get("core7")
    rows.append(["CORE-7 (centered)", ka, kb, None if ka is None or kb is None else kb - ka])
    doc.table(["task", "accuracy A", "accuracy B", "B - A"], rows)
    return doc


def write_comparison(a: dict[str, Any], b: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    return _write(build_comparison(a, b), Path(out_dir), "compare",
                  f"Crucible comparison {a['run']['run_id']} vs {b['run']['run_id']}")
