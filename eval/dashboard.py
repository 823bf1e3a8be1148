"""One self-contained HTML page of the experiment log: `python -m eval.dashboard --out FILE`.

  python -m eval.dashboard --out runs/dashboard.html [--db runs/experiments.db] [--title TEXT]

The page needs no network to view: the data is embedded as JSON and drawn as inline SVG by inline
JavaScript (no CDN, no fonts, no images). It shows
- every experiment in run order as a point coloured by status (kept / discarded / invalid, with
  invalidations folded in), and the running-best line of each (ruler, judge);
- the five rubric dimensions' means over time (experiments that are not invalid);
- a table of experiments; selecting a row (or a point) shows its per-case results and notes.
"""
from __future__ import annotations

import argparse
import html
import json
import sys
from pathlib import Path

from data.appendlog import write_text_atomically
from data.contract import RUBRIC_DIMENSIONS
from eval.log import (DEFAULT_DB, LogError, case_records, connect_readonly, read_experiments,
                      running_best_series)

STATUS_COLOURS = {"kept": "#1b9e77", "discarded": "#9e9e9e", "invalid": "#d62728"}


def _case_row(rec: dict) -> dict:
    v = rec.get("verdict") or {}
    spec = rec.get("spec") or {}
    return {"case_id": rec.get("case_id"), "input": rec.get("input"),
            "quality": rec.get("quality"), "spec_passed": spec.get("passed"),
            "violations": spec.get("violations", []), "pairwise": v.get("pairwise"),
            "rubric": v.get("rubric"), "notes": v.get("notes", ""), "error": rec.get("error"),
            "title": (rec.get("candidate") or {}).get("taskTitle")}


def dashboard_data(db_path) -> dict:
    """Everything the page draws, as plain JSON-able data."""
    exps = read_experiments(db_path)
    series = running_best_series(exps)
    keys = sorted({e.key for e in exps}, key=lambda k: (str(k[2]), k[0] or 0, str(k[1])))
    key_names = {k: f"{k[2]} | ruler v{k[0]} {str(k[1])[:8]}" for k in keys}
    rows = []
    for order, e in enumerate(exps, 1):
        m = e.metrics or {}
        rows.append({
            "id": e.id, "order": order, "time": e.created_at, "label": e.label,
            "note": e.note, "lever": e.lever, "pipeline": e.pipeline, "judge": e.judge,
            "key": key_names[e.key], "base": e.base_model, "adapter": e.adapter,
            "ruler": f"v{e.ruler_version} {str(e.ruler_hash)[:8]}",
            "headline": e.headline, "ci": [e.headline_ci_lo, e.headline_ci_hi],
            "answered": e.headline_answered, "spec": e.spec_pass_rate,
            "errors": e.error_rate, "wtl": [e.wins, e.ties, e.losses],
            "dims": m.get("dimension_means") or {},
            "status": e.effective_status, "logged_status": e.row["status"],
            "reason": e.invalid_reason or e.row["reason"], "invalidated_by": e.invalidated_by,
            "cases": [_case_row(r) for r in case_records(db_path, e.id)],
        })
    best = {key_names[k]: [{"id": i, "best": b} for i, b in pts] for k, pts in series.items()}
    return {"experiments": rows, "best": best, "keys": [key_names[k] for k in keys],
            "dimensions": list(RUBRIC_DIMENSIONS), "colours": STATUS_COLOURS,
            "db": str(db_path)}


def _json_for_script(obj) -> str:
    # Inside <script>, "</" could close the element and "<!--" open a comment: escape "<".
    return json.dumps(obj, ensure_ascii=False).replace("<", "\\u003c")


def render_html(data: dict, title: str = "fmdistill experiments") -> str:
    return (PAGE.replace("__TITLE__", html.escape(title))
                .replace("__DATA__", _json_for_script(data))
                .replace("__SCRIPT__", SCRIPT))


def write_dashboard(db_path, out_path, title: str = "fmdistill experiments") -> Path:
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(out, render_html(dashboard_data(db_path), title))
    return out


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>__TITLE__</title>
<style>
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 20px; color: #222; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 18px 0 6px; }
.sub { color: #666; margin-bottom: 10px; }
.chart { border: 1px solid #ddd; background: #fff; }
.legend span { display: inline-block; margin-right: 14px; }
.sw { display: inline-block; width: 10px; height: 10px; border-radius: 5px; margin-right: 4px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { border-bottom: 1px solid #eee; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #f6f6f6; position: sticky; top: 0; }
tr.exp { cursor: pointer; } tr.exp:hover { background: #f3f8ff; }
tr.selected { background: #e3efff !important; }
.status-kept { color: #1b9e77; font-weight: 600; } .status-discarded { color: #777; }
.status-invalid { color: #d62728; font-weight: 600; }
#detail { margin-top: 10px; } .muted { color: #888; } .num { text-align: right; }
.exp-point { cursor: pointer; } .exp-point.selected { stroke: #000; stroke-width: 2.5; }
</style></head>
<body>
<h1>__TITLE__</h1>
<div class="sub" id="summary"></div>
<h2>Headline quality per experiment (run order) and running best per judge</h2>
<div class="legend" id="legend"></div>
<svg id="headline-chart" class="chart" width="960" height="320" role="img"
     aria-label="headline per experiment"></svg>
<h2>Rubric dimension means over time (experiments that are not invalid)</h2>
<div class="legend" id="dim-legend"></div>
<svg id="dims-chart" class="chart" width="960" height="260" role="img"
     aria-label="dimension means"></svg>
<h2>Experiments</h2>
<table id="exp-table"><thead><tr><th>#</th><th>time</th><th>label</th><th>lever</th>
<th>pipeline</th><th>judge | ruler</th><th class="num">quality</th><th>95% CI</th>
<th class="num">spec</th><th>W/T/L</th><th>status</th><th>note</th></tr></thead>
<tbody></tbody></table>
<div id="detail"><p class="muted">Select an experiment (row or point) to see its per-case
notes.</p></div>
<script type="application/json" id="fm-data">__DATA__</script>
<script>
__SCRIPT__
</script>
</body></html>
"""

SCRIPT = r"""
"use strict";
const DATA = JSON.parse(document.getElementById("fm-data").textContent);
const SVGNS = "http://www.w3.org/2000/svg";
const LINE_COLOURS = ["#1f77b4", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"];
const DIM_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b"];
const M = {left: 48, right: 16, top: 14, bottom: 34};

function el(tag, attrs, parent) {
  const node = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}
function h(tag, text, parent, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  if (parent) parent.appendChild(node);
  return node;
}
function fmt(v, d) { return (v === null || v === undefined) ? "-" : Number(v).toFixed(d); }
function pct(v) { return (v === null || v === undefined) ? "-" : Math.round(v * 100) + "%"; }

function axes(svg, yMin, yMax, ticks, n) {
  const W = +svg.getAttribute("width"), H = +svg.getAttribute("height");
  const x = i => M.left + (n <= 1 ? (W - M.left - M.right) / 2
                                  : (i - 1) * (W - M.left - M.right) / (n - 1));
  const y = v => H - M.bottom - (v - yMin) / (yMax - yMin) * (H - M.top - M.bottom);
  for (const t of ticks) {
    el("line", {x1: M.left, x2: W - M.right, y1: y(t), y2: y(t), stroke: "#eee"}, svg);
    el("text", {x: M.left - 6, y: y(t) + 4, "text-anchor": "end", "font-size": 11,
                fill: "#666"}, svg).textContent = t;
  }
  const step = Math.max(1, Math.ceil(n / 20));
  for (let i = 1; i <= n; i += step) {
    el("text", {x: x(i), y: H - M.bottom + 16, "text-anchor": "middle", "font-size": 11,
                fill: "#666"}, svg).textContent = i;
  }
  el("text", {x: (W + M.left) / 2, y: H - 4, "text-anchor": "middle", "font-size": 11,
              fill: "#444"}, svg).textContent = "experiment (run order)";
  return {x, y};
}

function headlineChart() {
  const svg = document.getElementById("headline-chart");
  const exps = DATA.experiments;
  const {x, y} = axes(svg, 0, 1, [0, 0.25, 0.5, 0.75, 1], exps.length);
  const orderOf = {};
  exps.forEach(e => { orderOf[e.id] = e.order; });
  const legend = document.getElementById("legend");
  for (const [status, colour] of Object.entries(DATA.colours)) {
    const s = h("span", null, legend);
    h("span", null, s, "sw").style.background = colour;
    s.appendChild(document.createTextNode(status));
  }
  DATA.keys.forEach((key, i) => {
    const pts = DATA.best[key] || [];
    const colour = LINE_COLOURS[i % LINE_COLOURS.length];
    const s = h("span", null, legend);
    const sw = h("span", null, s, "sw");
    sw.style.background = colour; sw.style.borderRadius = "0"; sw.style.height = "3px";
    s.appendChild(document.createTextNode("running best: " + key));
    if (!pts.length) return;
    // A step line: the best stays flat until a later experiment raises it.
    // It starts a little left of its first point so that a single point still shows a line.
    const x0 = x(orderOf[pts[0].id]);
    let d = "M" + (x0 - 10).toFixed(1) + " " + y(pts[0].best).toFixed(1);
    for (const p of pts.slice(1)) {
      d += " H" + x(orderOf[p.id]).toFixed(1) + " V" + y(p.best).toFixed(1);
    }
    d += " H" + Math.max(x(exps.length), x0 + 10).toFixed(1);
    el("path", {d: d, fill: "none", stroke: colour, "stroke-width": 2,
                "stroke-dasharray": i ? "6 3" : "", class: "best-line",
                "data-key": key}, svg);
  });
  for (const e of exps) {
    if (e.headline === null || e.headline === undefined) continue;
    const c = el("circle", {cx: x(e.order), cy: y(e.headline), r: 6,
                            fill: DATA.colours[e.status] || "#000", stroke: "#fff",
                            "stroke-width": 1.5, class: "exp-point",
                            "data-id": e.id, "data-status": e.status}, svg);
    el("title", {}, c).textContent = "#" + e.id + " " + e.label + ": " + fmt(e.headline, 3) +
      " (" + e.status + ")";
    c.addEventListener("click", () => select(e.id));
  }
}

function dimsChart() {
  const svg = document.getElementById("dims-chart");
  const exps = DATA.experiments;
  const {x, y} = axes(svg, 1, 5, [1, 2, 3, 4, 5], exps.length);
  const legend = document.getElementById("dim-legend");
  DATA.dimensions.forEach((dim, i) => {
    const colour = DIM_COLOURS[i % DIM_COLOURS.length];
    const s = h("span", null, legend);
    h("span", null, s, "sw").style.background = colour;
    s.appendChild(document.createTextNode(dim));
    const pts = exps.filter(e => e.status !== "invalid" && e.dims &&
                                 e.dims[dim] !== null && e.dims[dim] !== undefined)
                    .map(e => [x(e.order), y(e.dims[dim])]);
    if (!pts.length) return;
    el("polyline", {points: pts.map(p => p[0].toFixed(1) + "," + p[1].toFixed(1)).join(" "),
                    fill: "none", stroke: colour, "stroke-width": 1.5, class: "dim-line"}, svg);
    for (const p of pts) el("circle", {cx: p[0], cy: p[1], r: 2.5, fill: colour}, svg);
  });
}

function table() {
  const body = document.querySelector("#exp-table tbody");
  for (const e of DATA.experiments) {
    const tr = h("tr", null, body, "exp");
    tr.dataset.id = e.id;
    const ci = (e.ci && e.ci[0] !== null) ? fmt(e.ci[0], 3) + "-" + fmt(e.ci[1], 3) : "-";
    const cells = [e.id, (e.time || "").slice(0, 19), e.label, e.lever, e.pipeline,
                   e.key, fmt(e.headline, 3), ci, pct(e.spec), e.wtl.join("/")];
    cells.forEach((v, i) => h("td", v, tr, (i === 6 || i === 8) ? "num" : ""));
    const st = h("td", e.status + (e.invalidated_by ? " (was " + e.logged_status + ")" : ""),
                 tr, "status-" + e.status);
    if (e.reason) st.title = e.reason;
    h("td", e.note, tr);
    tr.addEventListener("click", () => select(e.id));
  }
}

function select(id) {
  const e = DATA.experiments.find(x => x.id === id);
  if (!e) return;
  document.querySelectorAll("tr.exp").forEach(tr =>
    tr.classList.toggle("selected", Number(tr.dataset.id) === id));
  document.querySelectorAll(".exp-point").forEach(c =>
    c.classList.toggle("selected", Number(c.getAttribute("data-id")) === id));
  const box = document.getElementById("detail");
  box.textContent = "";
  h("h2", "#" + e.id + " " + e.label + " - " + e.status, box);
  const facts = [["hypothesis", e.note], ["base", e.base], ["adapter", e.adapter || "-"],
                 ["pipeline", e.pipeline], ["judge | ruler", e.key],
                 ["quality", fmt(e.headline, 3) + "  (answered only " + fmt(e.answered, 3) + ")"],
                 ["spec pass / errors", pct(e.spec) + " / " + pct(e.errors)]];
  if (e.reason) facts.push(["why " + e.status, e.reason]);
  const dl = h("table", null, box);
  for (const [k, v] of facts) { const tr = h("tr", null, dl); h("th", k, tr); h("td", v, tr); }
  h("h2", "Per-case results (" + e.cases.length + ")", box);
  const t = h("table", null, box, "cases");
  const head = h("tr", null, h("thead", null, t));
  for (const c of ["case", "input", "quality", "spec", "pairwise", "rubric", "notes"]) h("th", c, head);
  const tb = h("tbody", null, t);
  for (const c of e.cases) {
    const tr = h("tr", null, tb, "case-row");
    h("td", c.case_id, tr); h("td", c.input, tr); h("td", fmt(c.quality, 3), tr, "num");
    h("td", c.spec_passed ? "pass" : "FAIL", tr);
    h("td", c.pairwise || "-", tr);
    h("td", c.rubric ? DATA.dimensions.map(d => fmt(c.rubric[d], 1)).join(" ") : "-", tr);
    const notes = [c.notes, c.error, (c.violations || []).join("; ")].filter(Boolean).join(" | ");
    h("td", notes || "-", tr, "case-notes");
  }
}

function summary() {
  const n = DATA.experiments.length;
  const counts = {kept: 0, discarded: 0, invalid: 0};
  DATA.experiments.forEach(e => { counts[e.status] = (counts[e.status] || 0) + 1; });
  document.getElementById("summary").textContent = n + " experiment" + (n === 1 ? "" : "s") +
    " in " + DATA.db + ": " + counts.kept + " kept, " + counts.discarded + " discarded, " +
    counts.invalid + " invalid.";
}

summary();
headlineChart();
dimsChart();
table();
document.body.dataset.ready = "1";
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.dashboard", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/dashboard.html", help="HTML file to write")
    p.add_argument("--db", default=str(DEFAULT_DB), help=f"experiment log (default {DEFAULT_DB})")
    p.add_argument("--title", default="fmdistill experiments")
    args = p.parse_args(argv)
    try:
        connect_readonly(args.db).close()       # missing, foreign or not SQLite: exit 2
    except LogError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = write_dashboard(args.db, args.out, args.title)
    n = len(read_experiments(args.db))
    print(f"dashboard of {n} experiment(s) written to {out} (self-contained; open it in a browser)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
