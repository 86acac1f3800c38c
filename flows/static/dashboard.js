// The Crucible dashboard: polls /api/runs and /api/runs/<run>, and draws everything itself (no libraries).
"use strict";

const STAGE_ORDER = ["crawl", "ingest", "extract", "language", "quality", "dedup", "select", "decontaminate", "tokenize",
  "train", "evaluate", "report"];
const CURVE_TITLES = { loss: "training loss (nats)", val_bpb: "validation bits per byte", lr: "learning rate",
  tokens_per_s: "tokens per second", mfu: "model FLOPs utilisation", grad_norm: "gradient norm" };
let selected = decodeURIComponent(location.hash.slice(1)) || null;
let timer = null;

const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;",
  '"': "&quot;", "'": "&#39;" })[c]);
const num = (v, digits = 0) => v == null ? "" : Number(v).toLocaleString("en-US",
  { maximumFractionDigits: digits, minimumFractionDigits: digits });
const short = (v) => {
  if (v == null) return "";
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e7)) return Number(v).toExponential(2);
  if (a >= 1000) return num(v);
  return Number(v).toPrecision(4).replace(/\.?0+$/, "");
};
const bytes = (b) => {
  if (b == null) return "";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (b >= 1000 && i < units.length - 1) { b /= 1000; i++; }
  return `${b.toFixed(i ? 1 : 0)} ${units[i]}`;
};
const when = (t) => t ? new Date(t).toLocaleString() : "";
const seconds = (a, b) => a ? ((b ? new Date(b) : new Date()) - new Date(a)) / 1000 : null;
const duration = (s) => s == null ? "" : s < 90 ? `${s.toFixed(1)} s` : s < 5400 ? `${(s / 60).toFixed(1)} min`
  : `${(s / 3600).toFixed(1)} h`;
const badge = (status, extra = "") => `<span class="badge ${esc(status)} ${extra}">${esc(status)}</span>`;

async function getJSON(url) {
  const response = await fetch(url, { cache: "no-store" });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function renderRuns(runs) {
  if (!selected && runs.length) selected = runs[0].run_id;
  document.getElementById("run-list").innerHTML = runs.map((r) => `
    <li><a href="#${esc(r.run_id)}" class="${r.run_id === selected ? "selected" : ""}" data-run="${esc(r.run_id)}">
      <div class="id">${esc(r.run_id)}</div>
      <div class="config" title="${esc(r.config_path || "built-in defaults")}">${esc(configName(r.config_path))}</div>
      <div>${badge(r.status, r.status === "running" ? "pulse" : "")} <span class="muted">${esc(r.trigger)} ·
        ${esc(when(r.started_at))}</span></div></a></li>`).join("") || `<li class="muted">No runs yet.</li>`;
}

// The config a run read, by its file name without .toml: runs of different configs look different.
function configName(path) {
  if (!path) return "built-in defaults";
  return path.split(/[\\/]/).pop().replace(/\.toml$/, "");
}

function stageStrip(run, stages) {
  const last = {};
  for (const s of stages) last[s.stage] = s;
  const planned = (run.stages || []).slice();
  for (const s of stages) if (!planned.includes(s.stage)) planned.push(s.stage);
  planned.sort((a, b) => STAGE_ORDER.indexOf(a) - STAGE_ORDER.indexOf(b));
  return `<div class="strip" id="stage-strip">${planned.map((name) => {
    const s = last[name];
    const status = !s ? (run.status === "running" ? "pending" : "skipped")
      : s.cache_hit && s.status === "completed" ? "cached" : s.status;
    const took = s ? duration(s.seconds ?? seconds(s.started_at, s.ended_at)) : "";
    return `<span class="badge ${esc(status)} ${status === "running" ? "pulse" : ""}"
      data-stage="${esc(name)}" title="${esc(status)} ${esc(took)}">${esc(name)} · ${esc(status)}${
      status === "running" && s.progress && s.progress.units_total
        ? ` ${num(s.progress.units_done)}/${num(s.progress.units_total)}` : ""}</span>`;
  }).join("")}</div>`;
}

// A running stage's units done / total and documents per second (its output directory's .progress.json).
function progress(s) {
  const p = s.status === "running" ? s.progress : null;
  if (!p || !p.units_total) return "";
  const rate = p.seconds > 0 ? `${num(p.docs / p.seconds)} docs/s` : "";
  const failed = p.units_failed ? `, ${num(p.units_failed)} failed` : "";
  return `<div class="progress" data-done="${p.units_done}" data-total="${p.units_total}">
    <span class="meter"><span style="width:${(100 * p.units_done / p.units_total).toFixed(1)}%"></span></span>
    ${p.step ? `${esc(p.step)}: ` : ""}${num(p.units_done)}/${num(p.units_total)} units${failed}${rate ? ` · ${rate}` : ""}</div>`;
}

function stageTable(stages) {
  const rows = stages.map((s) => `<tr data-stage="${esc(s.stage)}"><td>${esc(s.stage)}</td>
    <td>${badge(s.cache_hit && s.status === "completed" ? "cached" : s.status)}${progress(s)}</td>
    <td class="num">${num(s.docs_in)}</td><td class="num">${num(s.docs_out)}</td>
    <td class="num">${bytes(s.bytes_out)}</td>
    <td class="num">${duration(s.seconds ?? seconds(s.started_at, s.ended_at))}</td>
    <td class="mono">${esc(s.output_dataset_id)}</td></tr>
    ${s.error ? `<tr><td></td><td colspan="6" class="error">${esc(s.error)}</td></tr>` : ""}`).join("");
  return `<table><thead><tr><th>stage</th><th>status</th><th class="num">docs in</th><th class="num">docs out</th>
    <th class="num">bytes out</th><th class="num">time</th><th>dataset</th></tr></thead><tbody>${rows}</tbody></table>`;
}

function funnel(stages, drops) {
  const rows = stages.filter((s) => s.status === "completed" && s.docs_out != null
    && !["train", "evaluate", "report"].includes(s.stage));
  if (!rows.length) return `<p class="muted">No stage has finished yet.</p>`;
  // bars are to scale with the largest output: ingest's input counts every WARC record, requests included
  const top = Math.max(...rows.map((s) => s.docs_out || 0), 1);
  return rows.map((s) => {
    const reasons = drops.filter((d) => d.stage === s.stage && d.dropped)
      .map((d) => `${esc(d.reason)} ${num(d.docs)}`).join(" · ");
    // notes are counted, not dropped, and may count links or WARC records rather than documents
    const notes = drops.filter((d) => d.stage === s.stage && !d.dropped)
      .map((d) => `${esc(d.reason)} ${num(d.docs)} ${esc(d.counts || "documents")}`).join(" · ");
    return `<div class="funnel-row" data-stage="${esc(s.stage)}"><strong>${esc(s.stage)}</strong>
      <div class="bar" title="${num(s.docs_out)} of ${num(s.docs_in)} kept">
        <span style="width:${(100 * (s.docs_out || 0) / top).toFixed(2)}%"></span></div>
      <span class="muted">${num(s.docs_in)} → <strong>${num(s.docs_out)}</strong> docs</span>
      ${reasons ? `<div class="reasons">dropped: ${reasons}</div>` : ""}
      ${notes ? `<div class="reasons notes">noted, not dropped: ${notes}</div>` : ""}</div>`;
  }).join("");
}

// Nice tick values (1, 2 or 5 times a power of ten) covering lo..hi, about `count` of them.
function niceTicks(lo, hi, count) {
  const raw = (hi - lo) / Math.max(count, 1);
  const power = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw) || raw;
  const ticks = [];
  for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  return { ticks, step };
}

// A tick's label with no more digits than its step needs (0.0008, not 8.00e-4; 1,500, not 1.5e+3).
function tickLabel(v, step) {
  if (v === 0) return "0";
  if (Math.abs(step) >= 1) return num(v);
  if (Math.abs(step) < 1e-4) return v.toExponential(Math.max(0, Math.ceil(-Math.log10(step / Math.abs(v)))))
    .replace(/\.?0+e/, "e");
  return num(v, Math.min(8, Math.ceil(-Math.log10(step) - 1e-9)));
}

// The y-range a reader can use: one spike (a gradient-norm blow-up) must not flatten everything else. Points far
// above the bulk (beyond q90 + 5 x (q90 - q10), nearest-rank quantiles) are drawn clipped at the top edge.
function robustTop(ys) {
  const sorted = ys.slice().sort((a, b) => a - b);
  if (sorted.length < 10) return sorted[sorted.length - 1];
  const q = (p) => sorted[Math.floor((sorted.length - 1) * p)];
  const fence = q(0.9) + 5 * Math.max(q(0.9) - q(0.1), Math.abs(q(0.5)) * 0.05);
  return Math.max(...sorted.filter((y) => y <= fence));
}

function chart(name, points, more = []) {
  // more: [[label, points]] drawn on the same axes (validation bits per byte per source)
  const W = 340, H = 160, L = 46, R = 10, T = 10, B = 24;
  const all = [points, ...more.map((m) => m[1])].flat();
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  let [x0, x1, y0] = [Math.min(...xs), Math.max(...xs), Math.min(...ys)];
  const yMax = Math.max(...ys);
  let y1 = robustTop(ys);
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y1 += Math.abs(y1) * 0.05 || 1; y0 -= Math.abs(y0) * 0.05 || 1; }
  const yt = niceTicks(y0, y1, 4);
  y0 = Math.floor(y0 / yt.step + 1e-9) * yt.step;  // the y-axis ends on gridlines
  y1 = Math.ceil(y1 / yt.step - 1e-9) * yt.step;
  const { ticks: yTicks, step: yStep } = niceTicks(y0, y1, 4);
  const xTicks = niceTicks(x0, x1, 4).ticks;
  const px = (x) => L + (x - x0) / (x1 - x0) * (W - L - R);
  const py = (y) => T + (1 - (Math.min(y, y1) - y0) / (y1 - y0)) * (H - T - B);
  const line = (pts) => pts.map((p) => `${px(p[0]).toFixed(1)},${py(p[1]).toFixed(1)}`).join(" ");
  const clipped = all.filter((p) => p[1] > y1);
  const lastPoint = points[points.length - 1];
  const grid = yTicks.map((v) => `<line class="grid" x1="${L}" y1="${py(v).toFixed(1)}" x2="${W - R}"
      y2="${py(v).toFixed(1)}"/><text x="${L - 4}" y="${(py(v) + 3).toFixed(1)}" text-anchor="end">${tickLabel(v, yStep)}</text>`)
    .join("") + xTicks.map((v) => `<line class="grid" x1="${px(v).toFixed(1)}" y1="${T}" x2="${px(v).toFixed(1)}"
      y2="${H - B}"/><text x="${px(v).toFixed(1)}" y="${H - B + 12}" text-anchor="middle">${num(v)}</text>`).join("");
  const marks = clipped.map((p) => `<path class="clip" d="M${(px(p[0]) - 3.5).toFixed(1)},${T + 5} l3.5,-5 l3.5,5 z">
      <title>step ${num(p[0])}: ${short(p[1])} (off scale)</title></path>`).join("");
  const extra = more.map(([label, pts], i) => pts.length > 1
    ? `<polyline class="series s${i % 6}" data-source="${esc(label)}" points="${line(pts)}"/>` : "").join("");
  const legend = more.length ? `<p class="legend"><span class="key s-all">all</span> ${more.map(([label, pts], i) =>
    `<span class="key s${i % 6}">${esc(label)} ${short(pts[pts.length - 1][1])}</span>`).join(" ")}</p>` : "";
  const off = clipped.length ? ` · <span class="clip-note">${num(clipped.length)} off scale, up to ${short(yMax)}</span>`
    : "";
  return `<div class="chart" data-curve="${esc(name)}" data-points="${points.length}" data-clipped="${clipped.length}">
    <h3>${esc(CURVE_TITLES[name] || name)} <span class="muted">· ${short(lastPoint[1])} at step ${num(lastPoint[0])}${off}</span></h3>
    <svg viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(name)} by step">
      ${grid}
      <line class="axis" x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}"/>
      <line class="axis" x1="${L}" y1="${T}" x2="${L}" y2="${H - B}"/>
      <text x="${W - R}" y="${H - 2}" text-anchor="end">step</text>
      ${extra}
      ${points.length > 1 ? `<polyline points="${line(points)}"/>` : ""}
      ${marks}
      <circle cx="${px(lastPoint[0]).toFixed(1)}" cy="${py(lastPoint[1]).toFixed(1)}" r="2.5"/>
    </svg>${legend}</div>`;
}

function training(t) {
  if (!t) return `<p class="muted">This run has no train stage (yet).</p>`;
  const names = Object.keys(CURVE_TITLES).filter((n) => (t.curves[n] || []).length);
  const steps = (t.curves.loss || []).length ? t.curves.loss[t.curves.loss.length - 1][0] : null;
  const head = `<p>${badge(t.status, t.status === "running" ? "pulse" : "")}
    ${t.live ? `<span class="muted">live from <code>${esc(t.out_dir)}/metrics.jsonl</code></span>` : ""}
    ${t.from_file && !t.live ? `<span class="muted" id="train-from-file">${esc(t.status)} after step ${num(steps)}: the
      curves come from <code>${esc(t.out_dir)}/metrics.jsonl</code> (not recorded in the warehouse)</span>` : ""}
    ${t.checkpoint ? `checkpoint <code>${esc(t.checkpoint)}</code>` : ""}</p>
    ${t.resumable ? `<p class="muted" id="train-resume">A rerun resumes from <code>${esc(t.resumable)}</code>.</p>` : ""}`;
  if (!names.length) return head + `<p class="muted">No step has been logged yet.</p>`;
  const perSource = Object.keys(t.curves).filter((k) => k.startsWith("val_bpb/") && t.curves[k].length).sort()
    .map((k) => [k.slice("val_bpb/".length), t.curves[k]]);
  return head + `<div class="charts">${names.map((n) => chart(n, t.curves[n], n === "val_bpb" ? perSource : []))
    .join("")}</div>`;
}

function sources(overview) {
  if (!overview || !overview.rows.length) return `<p class="muted">No per-source figures for this run.</p>`;
  const stages = overview.stages;
  const pct = (v) => v == null ? "" : `${(100 * v).toFixed(1)}%`;
  const dropsOf = (source, stage) => overview.drops.filter((d) => d.source === source && d.stage === stage)
    .map((d) => `${d.reason} ${d.docs}`).join(", ");
  const rows = overview.rows.map((r) => `<tr data-source="${esc(r.source)}"><td>${esc(r.source)}</td>
    <td class="num">${num(r.docs_in)}</td>${stages.map((s) => `<td class="num" title="${esc(dropsOf(r.source, s))}">
    ${num(r["out." + s])}</td>`).join("")}<td class="num">${num(r.tokens)}</td><td class="num">${pct(r.target_share)}</td>
    <td class="num">${pct(r.share)}</td><td class="num">${r.epochs == null ? "" : r.epochs.toFixed(2)}</td>
    <td class="num">${num(r.val_docs)}</td></tr>`).join("");
  return `<div class="wide"><table id="sources-table"><thead><tr><th>source</th><th class="num">in</th>
    ${stages.map((s) => `<th class="num">${esc(s)}</th>`).join("")}<th class="num">tokens</th><th class="num">target</th>
    <th class="num">share</th><th class="num">epochs</th><th class="num">val docs</th></tr></thead>
    <tbody>${rows}</tbody></table></div><p class="muted">Documents of each source after each stage (hover a count for its
    drops); the mixture at tokenize: tokens once each, target and realised share of a training pass, passes.</p>`;
}

function evaluation(e) {
  if (!e) return `<p class="muted">This run has no evaluate stage (yet).</p>`;
  if (!e.tasks.length) return `<p>${badge(e.status)} <span class="muted">no scores recorded.</span></p>`;
  const pct = (v) => v == null ? "" : `${(100 * v).toFixed(1)}%`;
  const rows = e.tasks.map((t) => `<tr data-task="${esc(t.task)}"><td>${esc(t.task)}</td>
    <td class="num">${num(t.items)}</td><td class="num">${pct(t.accuracy)}</td>
    <td class="num">${t.centered == null ? "" : t.centered.toFixed(3)}</td>
    <td class="num">${pct(t.accuracy_clean)}</td><td class="num">${pct(t.accuracy_contaminated)}</td>
    <td class="num">${num(t.contaminated_items)}</td></tr>`).join("");
  return `<table id="eval-table"><thead><tr><th>task</th><th class="num">items</th><th class="num">accuracy</th>
    <th class="num">centered</th><th class="num">clean</th><th class="num">contaminated</th>
    <th class="num">contaminated items</th></tr></thead><tbody>${rows}</tbody>
    <tfoot><tr><th>CORE-7</th><td></td><td></td><td class="num" id="core7">${e.core7 == null ? "" : e.core7.toFixed(4)}</td>
    <td colspan="3" class="muted">${e.val_bpb != null ? `val bpb ${e.val_bpb.toFixed(4)}` : ""}
    ${e.val_ppl != null ? ` · val perplexity ${short(e.val_ppl)}` : ""}</td></tr></tfoot></table>${cropNote(e.tasks)}`;
}

// Prompts longer than the model's context are cut from the left (as CORE does): say how many shots were left.
function cropNote(tasks) {
  const cut = tasks.filter((t) => t.cropped_items);
  if (!cut.length) return "";
  const parts = cut.map((t) => `${esc(t.task)} ${num(t.cropped_items)} of ${num(t.items)} items cropped,
    ${t.shots_kept_mean == null ? "?" : t.shots_kept_mean.toFixed(1)} of ${num(t.shots)} shots kept`);
  return `<p class="muted" id="crop-note">Prompts longer than the model's context are cut from the left, as CORE
    does: ${parts.join("; ")}.</p>`;
}

function lineage(items, sources) {
  if (!items.length) return `<p class="muted">Lineage starts at the checkpoint, once training has made one.</p>`;
  const rows = items.map((d) => `<tr><td class="num">${d.depth}</td><td class="mono">${esc(d.dataset_id)}</td>
    <td>${esc(d.stage)}</td><td class="num">${num(d.records)}</td><td class="num">${bytes(d.bytes)}</td>
    <td class="mono">${esc((d.fingerprint || "").slice(0, 16))}</td></tr>`).join("");
  const files = sources.length ? `<p class="muted">${num(sources.length)} input files, first:
    <code>${esc(sources[0])}</code></p>` : "";
  return `<table id="lineage-table"><thead><tr><th class="num">depth</th><th>dataset</th><th>stage</th>
    <th class="num">records</th><th class="num">bytes</th><th>fingerprint</th></tr></thead>
    <tbody>${rows}</tbody></table>${files}`;
}

function renderRun(snap) {
  const r = snap.run;
  const took = duration(seconds(r.started_at, r.ended_at));
  document.getElementById("run").innerHTML = `
    <section id="summary" data-status="${esc(r.status)}"><h2>${esc(r.run_id)}
      ${badge(r.status, r.status === "running" ? "pulse" : "")}</h2>
      <dl class="kv"><dt>trigger</dt><dd>${esc(r.trigger)}</dd>
      <dt>started</dt><dd>${esc(when(r.started_at))} (${esc(took)}${r.ended_at ? "" : " so far"})</dd>
      <dt>config</dt><dd><code>${esc(r.config_path || "(built in)")}</code> · hash <code>${esc((r.config_hash || "").slice(0, 12))}</code></dd>
      <dt>code</dt><dd><code>${esc(r.code_version)}</code></dd>
      <dt>Prefect</dt><dd>${r.prefect_url ? `<a id="prefect-link" href="${esc(r.prefect_url)}" target="_blank" rel="noopener">this run in the Prefect UI</a>`
        : r.prefect_hint ? `<span id="prefect-hint" class="muted">${esc(r.prefect_hint)}</span>` : "no flow run id"}</dd></dl>
      ${r.error ? `<p class="error">${esc(r.error)}</p>` : ""}
      ${stageStrip(r, snap.stages)}</section>
    <section id="stages"><h2>Stages</h2>${stageTable(snap.stages)}</section>
    <section id="funnel"><h2>Data funnel</h2>${funnel(snap.stages, snap.funnel)}</section>
    <section id="sources"><h2>Sources</h2>${sources(snap.source_overview)}</section>
    <section id="curves"><h2>Training</h2>${training(snap.training)}</section>
    <section id="eval"><h2>Evaluation</h2>${evaluation(snap.evaluation)}</section>
    <section id="lineage"><h2>Lineage from the checkpoint back to its inputs</h2>${lineage(snap.lineage, snap.sources)}</section>`;
}

async function refresh() {
  clearTimeout(timer);
  let running = false;
  const fresh = document.getElementById("freshness");
  try {
    const runs = await getJSON("/api/runs");
    renderRuns(runs.data);
    running = runs.data.some((r) => r.status === "running");
    if (selected) {
      const snap = await getJSON(`/api/runs/${encodeURIComponent(selected)}`);
      renderRun(snap.data);
      running = running || snap.data.run.status === "running";
      fresh.textContent = snap.stale ? snap.note : `updated ${new Date(snap.read_at).toLocaleTimeString()}`;
    } else {
      fresh.textContent = `updated ${new Date(runs.read_at).toLocaleTimeString()}`;
    }
    document.body.dataset.loaded = "true";
  } catch (err) {
    fresh.textContent = `cannot read the warehouse: ${err.message}`;
  }
  timer = setTimeout(refresh, running ? 2000 : 10000);
}

window.addEventListener("hashchange", () => { selected = decodeURIComponent(location.hash.slice(1)) || null; refresh(); });
refresh();
