/* edgekit dashboard: builds the tables and charts from the JSON block in the page.
 * Text from result files goes into the DOM only through textContent, and into chart labels only
 * through esc() (plotly reads a subset of HTML in labels). No network, no eval of data. */
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("edgekit-data").textContent);
  var runs = DATA.runs;
  // Maps keyed by text from result files: no prototype, so a run id of "__proto__" is just a key.
  var byId = Object.create(null);
  runs.forEach(function (r) { byId[r.run_id] = r; });
  var flagsByRun = Object.create(null);
  DATA.regressions.forEach(function (f) { (flagsByRun[f.run_id] = flagsByRun[f.run_id] || []).push(f); });

  /* For chart labels only: plotly reads <br>, <b>, <a href=...> in labels, and decodes &amp; &lt; &gt;.
   * With those three escaped no tag can form; quotes outside a tag are plain text. */
  function esc(s) {
    return String(s == null ? "" : s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  }
  function el(tag, text, cls) {
    var node = document.createElement(tag);
    if (text != null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }
  function fmt(v, digits) {
    if (v == null || v === "") return "–";
    if (typeof v === "number") return v.toFixed(digits == null ? 3 : digits);
    return String(v);
  }
  function label(r) { return r.variant + " " + r.precision + " " + r.placement; }
  function runName(r) { return (r.created || "").slice(0, 19).replace("T", " ") + "  " + r.target + "  " + label(r); }
  var PLOT_CONFIG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["sendDataToCloud"] };
  var LAYOUT = { margin: { l: 60, r: 20, t: 20, b: 50 }, legend: { orientation: "h", y: -0.2 },
                 font: { family: "system-ui, sans-serif", size: 12 } };
  function layout(extra) { return Object.assign({}, LAYOUT, extra); }
  /* One line per trace in a legend beside the plot, the chart as tall as the legend needs: a legend under
   * the plot with many runs ran off the bottom of the chart. */
  function sideLegend(entries, extra) {
    return Object.assign({ height: Math.max(420, 70 + 19 * entries), margin: { l: 60, r: 20, t: 20, b: 50 },
                           legend: { orientation: "v", x: 1.01, xanchor: "left", y: 1, yanchor: "top",
                                     font: { size: 11 } }, showlegend: true }, extra);
  }

  /* Latest run of each series (target, recipe, variant, precision, placement, runner). */
  function latestRuns() {
    var latest = Object.create(null);
    runs.forEach(function (r) {
      var prev = latest[r.series];
      if (!prev || (r.created || "") >= (prev.created || "")) latest[r.series] = r;
    });
    return Object.keys(latest).sort().map(function (k) { return latest[k]; });
  }

  // ---- header and skipped files
  document.getElementById("meta").textContent = runs.length + " runs from " + DATA.results_root +
    " · index " + DATA.index + " · generated " + DATA.generated + " by edgekit " + DATA.edgekit +
    " · regression threshold " + Math.round(DATA.threshold * 100) + "%";
  if (DATA.problems.length) {
    document.getElementById("problems-section").hidden = false;
    var ul = document.getElementById("problems");
    DATA.problems.forEach(function (p) {
      var li = el("li");
      li.appendChild(el("code", p.file));
      li.appendChild(document.createTextNode(": " + p.reason));
      ul.appendChild(li);
    });
  }

  // ---- failed device jobs: what failed, at which step, and the job's own error line (text only)
  var failures = DATA.failures || [];
  if (failures.length) {
    document.getElementById("failures-section").hidden = false;
    var ftable = document.getElementById("failures-table");
    var fhead = ftable.tHead.insertRow();
    var FCOLUMNS = [["created", "created"], ["target", "target"], ["recipe", "recipe"], ["variant", "variant"],
      ["precision", "precision"], ["placement", "placement"], ["stage", "failed at"], ["message", "reason"],
      ["run_id", "run"]];
    FCOLUMNS.forEach(function (c) { fhead.appendChild(el("th", c[1])); });
    failures.forEach(function (f) {
      var tr = ftable.tBodies[0].insertRow();
      tr.className = "failed";
      FCOLUMNS.forEach(function (c) { tr.appendChild(el("td", f[c[0]] == null ? "-" : String(f[c[0]]))); });
    });
  }

  // ---- runs table: sortable, filterable, details row with the environment
  // Fits 1,400 px: the model is one column, runner and run id are in the row's details (and its tooltip).
  var COLUMNS = [
    ["created", "created"], ["target", "target"], ["recipe", "recipe"], ["model", "model"],
    ["top1", "top-1 %", 2], ["top1_check_delta", "top-1 Δ vs host", 2], ["p50_ms", "p50 ms", 3], ["p99_ms", "p99 ms", 3],
    ["best_throughput", "best img/s", 1], ["best_batch", "best batch", 0], ["total_w", "W", 2],
    ["mj_per_inference", "mJ/inf", 2], ["power_mode", "power mode"], ["loadgen_validity", "LoadGen"],
    ["flag", "regressed"]
  ];
  var sortKey = "created", sortDir = -1;
  var table = document.getElementById("runs-table");
  var headRow = el("tr");
  COLUMNS.forEach(function (c) {
    var th = el("th", c[1]);
    th.dataset.key = c[0];
    th.addEventListener("click", function () {
      sortDir = (sortKey === c[0]) ? -sortDir : 1;
      sortKey = c[0];
      renderRuns();
    });
    headRow.appendChild(th);
  });
  table.tHead.appendChild(headRow);

  function fillSelect(id, key) {
    var select = document.getElementById(id);
    var values = Object.create(null);
    runs.forEach(function (r) { values[r[key]] = true; });
    Object.keys(values).sort().forEach(function (v) {
      var o = el("option", v);
      o.value = v;
      select.appendChild(o);
    });
    select.addEventListener("change", renderRuns);
  }
  fillSelect("filter-target", "target");
  fillSelect("filter-precision", "precision");
  fillSelect("filter-variant", "variant");
  document.getElementById("filter-text").addEventListener("input", renderRuns);
  document.getElementById("filter-latest").addEventListener("change", renderRuns);

  function cellValue(r, key) {
    if (key === "flag") return (flagsByRun[r.run_id] || []).map(function (f) { return f.label; }).join(", ");
    if (key === "model") return label(r);
    return r[key];
  }

  function envSummary(r) {
    var e = r.environment || {};
    return [e.device_model || e.cpu, e.l4t, r.power_mode && ("power mode " + r.power_mode),
            e.jetson_clocks && ("jetson_clocks " + e.jetson_clocks), r.runner + " " + (r.runtime_version || ""),
            "python " + (e.python || "?")].filter(Boolean).join(" · ");
  }

  function detailsRow(r) {
    var tr = el("tr", null, "details");
    var td = el("td");
    td.colSpan = COLUMNS.length;
    var dl = el("dl", null, "env");
    var env = r.environment || {};
    var items = [["run", r.run_id], ["model", r.model], ["inputs", r.inputs], ["runner", r.runner + " " + (r.runtime_version || "")],
                 ["file", r.file], ["series", r.series],
                 ["top-1 from", r.top1_source],
                 ["top-1 scored here", r.top1_check == null ? null : fmt(r.top1_check, 2) + "% (" +
                   (r.top1_check_delta == null ? "no host figure" : (r.top1_check_delta >= 0 ? "+" : "") +
                    fmt(r.top1_check_delta, 2) + " points vs the host") + ")"],
                 ["power", r.power_status === "ok" ? (r.power_source + ", idle " + fmt(r.idle_w, 2) + " W")
                   : (r.power_unavailable || r.power_status || "–")]];
    if (r.harness === "loadgen") {
      items.push(["MLPerf LoadGen", (r.loadgen_validity || "accuracy only") + ", logs " + (r.loadgen_logs || "–")]);
    }
    Object.keys(env).sort().forEach(function (k) {
      var v = env[k];
      items.push([k, (v !== null && typeof v === "object") ? JSON.stringify(v) : v]);
    });
    items.forEach(function (kv) {
      dl.appendChild(el("dt", kv[0]));
      dl.appendChild(el("dd", kv[1] == null ? "–" : kv[1]));
    });
    td.appendChild(dl);
    tr.appendChild(td);
    return tr;
  }

  function visibleRuns() {
    var text = document.getElementById("filter-text").value.toLowerCase();
    var target = document.getElementById("filter-target").value;
    var precision = document.getElementById("filter-precision").value;
    var variant = document.getElementById("filter-variant").value;
    var pool = document.getElementById("filter-latest").checked ? latestRuns() : runs;
    return pool.filter(function (r) {
      if (target && r.target !== target) return false;
      if (precision && r.precision !== precision) return false;
      if (variant && r.variant !== variant) return false;
      if (text) {
        var hay = [r.run_id, r.model, r.variant, r.target, r.recipe, r.precision, r.placement, r.runner,
                   r.device].join(" ").toLowerCase();
        if (hay.indexOf(text) < 0) return false;
      }
      return true;
    });
  }

  function renderRuns() {
    var rows = visibleRuns().slice().sort(function (a, b) {
      var x = cellValue(a, sortKey), y = cellValue(b, sortKey);
      if (x == null && y == null) return 0;
      if (x == null) return 1;
      if (y == null) return -1;
      return (x < y ? -1 : x > y ? 1 : 0) * sortDir;
    });
    Array.prototype.forEach.call(headRow.children, function (th) {
      th.className = th.dataset.key === sortKey ? (sortDir > 0 ? "sorted-asc" : "sorted-desc") : "";
    });
    var body = table.tBodies[0];
    body.textContent = "";
    rows.forEach(function (r) {
      var tr = el("tr", null, "run" + (flagsByRun[r.run_id] ? " regressed" : ""));
      tr.dataset.runId = r.run_id;
      tr.title = "run " + r.run_id + " · " + envSummary(r);
      COLUMNS.forEach(function (c) {
        var v = cellValue(r, c[0]);
        var td = el("td", c[2] != null ? fmt(v, c[2]) : (c[0] === "created" ? fmt(v).slice(0, 19).replace("T", " ")
                                                           : fmt(v)), c[2] != null ? "num" : ({ flag: "flag", created: "when" }[c[0]] || "text"));
        tr.appendChild(td);
      });
      tr.addEventListener("click", function () {
        var next = tr.nextSibling;
        if (next && next.className === "details") { body.removeChild(next); return; }
        body.insertBefore(detailsRow(r), tr.nextSibling);
      });
      body.appendChild(tr);
    });
    document.getElementById("runs-count").textContent = rows.length + " of " + runs.length + " runs shown";
  }
  renderRuns();

  function groupBy(list, keyFn) {
    var groups = Object.create(null);
    list.forEach(function (r) { var k = keyFn(r); (groups[k] = groups[k] || []).push(r); });
    return groups;
  }
  function empty(id, message) {
    var node = document.getElementById(id);
    node.textContent = "";
    node.appendChild(el("p", message, "muted"));
    node.style.minHeight = "0";
    node.dataset.empty = "1";
  }

  // ---- Pareto: top-1 vs p50 (bar to p99), one panel per recipe (each with its own top-1 scale), front per target
  var PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];
  var LABEL_FONT = 11, CHAR_PX = 6.8, LABEL_PX = 15, MARKER_PX = 6;

  /* Ticks a reader can use on a log axis: 1-2-5 steps (1-1.5-2-3-5-7 over a short span, finer still when
     that leaves fewer than two ticks, as runs a few microseconds apart do), labelled plainly. */
  function logTicks(lo, hi) {
    var tiers = (hi - lo) < 0.8 ? [[1, 1.5, 2, 3, 5, 7], [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9]] : [[1, 2, 5]];
    var ticks = [];
    tiers.forEach(function (steps) {
      if (ticks.length >= 2) return;
      ticks = [];
      for (var e = Math.floor(lo) - 1; e <= Math.ceil(hi); e++) {
        steps.forEach(function (m) {
          var v = m * Math.pow(10, e), l = Math.log10(v);
          if (l >= lo - 1e-9 && l <= hi + 1e-9) ticks.push(v);
        });
      }
    });
    return { vals: ticks, text: ticks.map(function (v) { return String(+v.toPrecision(3)); }) };
  }

  /* Axis ranges with room around every point, bar and label, so nothing touches the frame. */
  function paretoRanges(points) {
    var xs = [], ys = points.map(function (r) { return r.top1; });
    points.forEach(function (r) { xs.push(Math.log10(r.p50_ms)); xs.push(Math.log10(Math.max(r.p50_ms, r.p99_ms || 0))); });
    var xlo = Math.min.apply(null, xs), xhi = Math.max.apply(null, xs);
    var xpad = Math.max(0.12 * (xhi - xlo), 0.08);
    var ylo = Math.min.apply(null, ys), yhi = Math.max.apply(null, ys);
    var ypad = Math.max(0.15 * (yhi - ylo), 0.5);
    return { x: [xlo - xpad, xhi + xpad], y: [ylo - ypad, yhi + 1.6 * ypad] };
  }

  var POSITIONS = [["top center", 0, -1], ["bottom center", 0, 1], ["middle right", 1, 0], ["middle left", -1, 0],
                   ["top right", 1, -1], ["top left", -1, -1], ["bottom right", 1, 1], ["bottom left", -1, 1]];
  function overlaps(a, b) { return a.x0 < b.x1 && b.x0 < a.x1 && a.y0 < b.y1 && b.y0 < a.y1; }
  function labelBox(px, py, text, pos) {
    var w = text.length * CHAR_PX, h = LABEL_PX, gap = MARKER_PX + 2;
    var cx = pos[1] === 0 ? px - w / 2 : (pos[1] > 0 ? px + gap : px - gap - w);
    var cy = pos[2] === 0 ? py - h / 2 : (pos[2] > 0 ? py + gap : py - gap - h);
    return { x0: cx, x1: cx + w, y0: cy, y1: cy + h };
  }
  /* Plotly does not keep labels apart: place each where it overlaps no marker, label or frame edge, trying
   * eight positions around its point; a label with no free place is left to the hover text. */
  function placeLabels(points, texts, ranges, width, height) {
    var toPx = function (r) {
      return [(Math.log10(r.p50_ms) - ranges.x[0]) / (ranges.x[1] - ranges.x[0]) * width,
              (1 - (r.top1 - ranges.y[0]) / (ranges.y[1] - ranges.y[0])) * height];
    };
    var xy = points.map(toPx);
    var taken = xy.map(function (p) { return { x0: p[0] - MARKER_PX, x1: p[0] + MARKER_PX, y0: p[1] - MARKER_PX, y1: p[1] + MARKER_PX }; });
    var order = points.map(function (r, i) { return i; }).sort(function (a, b) { return xy[a][0] - xy[b][0]; });
    var placed = points.map(function () { return null; });
    order.forEach(function (i) {
      for (var k = 0; k < POSITIONS.length; k++) {
        var box = labelBox(xy[i][0], xy[i][1], texts[i], POSITIONS[k]);
        var inside = box.x0 >= 0 && box.x1 <= width && box.y0 >= 0 && box.y1 <= height;
        if (inside && !taken.some(function (t) { return overlaps(t, box); })) {
          taken.push(box);
          placed[i] = POSITIONS[k][0];
          return;
        }
      }
    });
    return placed;
  }

  function paretoFront(g) {
    var sorted = g.slice().sort(function (a, b) { return a.p50_ms - b.p50_ms || b.top1 - a.top1; });
    var front = [], best = -Infinity;
    sorted.forEach(function (r) { if (r.top1 > best) { front.push(r); best = r.top1; } });
    return front;
  }

  function paretoPanel(node, points, targets) {
    var ranges = paretoRanges(points);
    var margin = { l: 60, r: 20, t: 40, b: 50 };
    var width = (node.clientWidth || 1200) - margin.l - margin.r, height = 400 - margin.t - margin.b;
    var ambiguous = Object.create(null), seen = Object.create(null);
    points.forEach(function (r) {
      var k = r.target + "|" + r.variant + "|" + r.precision;
      if (seen[k]) ambiguous[k] = true;
      seen[k] = true;
    });
    var texts = points.map(function (r) {
      return r.variant + " " + r.precision + (ambiguous[r.target + "|" + r.variant + "|" + r.precision] ? " " + r.placement : "");
    });
    var positions = placeLabels(points, texts, ranges, width, height);
    var bars = [], fronts = [], marks = [];
    targets.forEach(function (target, t) {
      var color = PALETTE[t % PALETTE.length];
      var idx = points.map(function (r, i) { return i; }).filter(function (i) { return points[i].target === target; });
      if (!idx.length) return;
      var g = idx.map(function (i) { return points[i]; });
      var xs = g.map(function (r) { return r.p50_ms; }), ys = g.map(function (r) { return r.top1; });
      // Drawn first, so the front and the markers lie on top of the bars.
      bars.push({ type: "scatter", mode: "markers", x: xs, y: ys, showlegend: false, hoverinfo: "skip",
                  marker: { size: 1, opacity: 0 }, name: esc(target + " p99"),
                  error_x: { type: "data", symmetric: false, color: "rgba(90,100,115,0.45)", thickness: 2, width: 0,
                             array: g.map(function (r) { return Math.max(0, (r.p99_ms || r.p50_ms) - r.p50_ms); }),
                             arrayminus: g.map(function () { return 0; }) } });
      var front = paretoFront(g);
      fronts.push({ type: "scatter", mode: "lines", line: { dash: "dot", shape: "hv", width: 2, color: color }, legendrank: 2,
                    name: esc(target + " Pareto front"), x: front.map(function (r) { return r.p50_ms; }),
                    y: front.map(function (r) { return r.top1; }), hoverinfo: "skip" });
      marks.push({ type: "scatter", mode: "markers+text", name: esc(target), x: xs, y: ys, cliponaxis: false, legendrank: 1,
                   marker: { size: 2 * MARKER_PX, color: color, line: { color: "#fff", width: 1 } },
                   text: idx.map(function (i) { return positions[i] ? esc(texts[i]) : ""; }),
                   textposition: idx.map(function (i) { return positions[i] || "top center"; }),
                   textfont: { size: LABEL_FONT },
                   hovertext: g.map(function (r) {
                     return esc(label(r)) + "<br>top-1 " + fmt(r.top1, 2) + "%<br>p50 " + fmt(r.p50_ms) + " ms, p99 " +
                       fmt(r.p99_ms) + " ms<br>" + esc(r.target) + " · " + esc(r.runner);
                   }), hoverinfo: "text" });
    });
    var ticks = logTicks(ranges.x[0], ranges.x[1]);
    Plotly.newPlot(node, bars.concat(fronts, marks), layout({
      height: 400, margin: margin, showlegend: true, legend: { orientation: "h", x: 0, y: 1.02, yanchor: "bottom" },
      xaxis: { title: { text: "latency, ms (p50 marker, bar to p99)" }, type: "log", range: ranges.x,
               tickvals: ticks.vals, ticktext: ticks.text, showline: true, mirror: true, linecolor: "#c4cbd4" },
      yaxis: { title: { text: "top-1 %" }, range: ranges.y, showline: true, mirror: true, linecolor: "#c4cbd4" }
    }), PLOT_CONFIG);
    node.dataset.unlabelled = String(positions.filter(function (p) { return !p; }).length);
  }

  (function () {
    var points = latestRuns().filter(function (r) { return r.top1 != null && r.p50_ms != null && r.p50_ms > 0; });
    var box = document.getElementById("pareto-panels");
    if (!points.length) { empty("pareto-panels", "No run records a top-1 (benchmark with --summary)."); return; }
    var targets = Object.keys(groupBy(points, function (r) { return r.target; })).sort();
    var byRecipe = groupBy(points, function (r) { return r.recipe || "(no recipe)"; });
    Object.keys(byRecipe).sort().forEach(function (recipe) {
      var panel = el("div", null, "panel");
      var count = byRecipe[recipe].length;
      panel.appendChild(el("h3", "recipe " + recipe + " · " + count + (count === 1 ? " model" : " models")));
      var chart = el("div", null, "chart");
      chart.dataset.recipe = recipe;
      panel.appendChild(chart);
      box.appendChild(panel);
      paretoPanel(chart, byRecipe[recipe], targets);
    });
  })();

  // ---- Throughput vs batch
  (function () {
    var traces = [];
    latestRuns().forEach(function (r) {
      var rows = (r.rows || []).filter(function (x) { return x.scenario === "offline"; });
      if (!rows.length) return;
      rows.sort(function (a, b) { return a.batch - b.batch; });
      traces.push({ type: "scatter", mode: "lines+markers", name: esc(r.target + " · " + label(r)),
                    x: rows.map(function (x) { return x.batch; }), y: rows.map(function (x) { return x.throughput; }) });
    });
    if (!traces.length) { empty("chart-throughput", "No run has an offline batch sweep."); return; }
    Plotly.newPlot("chart-throughput", traces, layout(sideLegend(traces.length, {
      xaxis: { title: { text: "batch size" }, type: "log", dtick: Math.log10(2) },
      yaxis: { title: { text: "images / s" }, rangemode: "tozero" } })), PLOT_CONFIG);
  })();

  // ---- Latency distribution (percentiles)
  (function () {
    var keys = [["p50_ms", "p50"], ["p90_ms", "p90"], ["p95_ms", "p95"], ["p99_ms", "p99"], ["max_ms", "max"]];
    var traces = [];
    latestRuns().forEach(function (r) {
      var ss = (r.rows || []).filter(function (x) { return x.scenario === "single_stream"; })[0];
      if (!ss) return;
      traces.push({ type: "scatter", mode: "lines+markers", name: esc(r.target + " · " + label(r)),
                    x: keys.map(function (k) { return k[1]; }), y: keys.map(function (k) { return ss[k[0]]; }) });
    });
    if (!traces.length) { empty("chart-latency", "No run has a single-stream scenario."); return; }
    Plotly.newPlot("chart-latency", traces, layout(sideLegend(traces.length, {
      xaxis: { title: { text: "percentile" } },
      yaxis: { title: { text: "ms" }, type: "log", dtick: 1, exponentformat: "none" } })), PLOT_CONFIG);
  })();

  // ---- Power: W per rail (stacked), energy per inference, inferences per joule, power mode
  (function () {
    var withPower = latestRuns().filter(function (r) { return r.power_status === "ok"; });
    var note = document.getElementById("power-note");
    if (!withPower.length) {
      var reasons = Object.create(null);
      runs.forEach(function (r) { if (r.power_unavailable) reasons[r.power_unavailable] = true; });
      note.textContent = "No run has power data. " + Object.keys(reasons).slice(0, 3).join(" | ");
      empty("chart-power", "Power is measured on a Jetson (INA3221), with NVML or with RAPL.");
      return;
    }
    note.textContent = "Average watts per rail over the single-stream window (or the best batch), latest run of each series.";
    var rails = Object.create(null);
    withPower.forEach(function (r) {
      (r.rows || []).forEach(function (x) { Object.keys(x.rails_w || {}).forEach(function (k) { rails[k] = true; }); });
    });
    function windowOf(r) {
      var rows = (r.rows || []).filter(function (x) { return x.rails_w; });
      var ss = rows.filter(function (x) { return x.scenario === "single_stream"; })[0];
      return ss || rows.filter(function (x) { return x.batch === r.best_batch; })[0] || rows[0] || {};
    }
    var names = withPower.map(function (r) { return esc(r.series); });  // one bar per series, never two summed
    var traces = Object.keys(rails).sort().map(function (rail) {
      return { type: "bar", name: esc(rail), x: names,
               y: withPower.map(function (r) { return (windowOf(r).rails_w || {})[rail] || 0; }) };
    });
    Plotly.newPlot("chart-power", traces, layout({ barmode: "stack", yaxis: { title: { text: "W" } } }), PLOT_CONFIG);
    var t = document.getElementById("power-table");
    var head = el("tr");
    ["run", "power mode", "source", "total W", "idle W", "mJ / inference", "inferences / J"].forEach(function (h) { head.appendChild(el("th", h)); });
    t.tHead.appendChild(head);
    withPower.forEach(function (r) {
      var w = windowOf(r);
      var tr = el("tr");
      [runName(r), r.power_mode || "not recorded", r.power_source].forEach(function (v) { tr.appendChild(el("td", v == null ? "–" : v)); });
      [[w.total_w, 2], [r.idle_w, 2], [w.mj_per_inference, 3], [w.inferences_per_joule, 1]].forEach(function (v) {
        tr.appendChild(el("td", fmt(v[0], v[1]), "num"));
      });
      t.tBodies[0] || t.appendChild(document.createElement("tbody"));
      t.tBodies[0].appendChild(tr);
    });
  })();

  // ---- A vs B
  (function () {
    var a = document.getElementById("compare-a"), b = document.getElementById("compare-b");
    var ordered = runs.slice().sort(function (x, y) { return (y.created || "") < (x.created || "") ? -1 : 1; });
    ordered.forEach(function (r) {
      var oa = el("option", runName(r)); oa.value = r.run_id; a.appendChild(oa);
      var ob = el("option", runName(r)); ob.value = r.run_id; b.appendChild(ob);
    });
    if (ordered.length > 1) { a.value = ordered[1].run_id; b.value = ordered[0].run_id; }
    var t = document.getElementById("compare-table");
    var head = el("tr");
    ["metric", "A", "B", "B / A", ""].forEach(function (h) { head.appendChild(el("th", h)); });
    t.tHead.appendChild(head);
    if (!t.tBodies.length) t.appendChild(document.createElement("tbody"));
    var warning = document.getElementById("compare-warning");
    /* A ratio of two runs means something only when they ran the same recipe on the same input. */
    function differences(ra, rb) {
      return [["recipe", ra.recipe, rb.recipe], ["input", ra.inputs, rb.inputs], ["target", ra.target, rb.target]]
        .filter(function (d) { return (d[1] || "") !== (d[2] || ""); });
    }
    function render() {
      var ra = byId[a.value], rb = byId[b.value];
      var body = t.tBodies[0];
      body.textContent = "";
      warning.hidden = true;
      if (!ra || !rb) return;
      var differ = differences(ra, rb);
      if (differ.length && differ[0][0] !== "target") {
        warning.textContent = "A and B differ in " + differ.map(function (d) {
          return d[0] + " (" + (d[1] || "–") + " vs " + (d[2] || "–") + ")";
        }).join(" and ") + ": the ratios below compare different jobs, not one job measured twice.";
        warning.hidden = false;
      }
      [["series", ra.series, rb.series]].concat(DATA.metrics.map(function (m) { return [m, ra[m.key], rb[m.key]]; }))
        .forEach(function (row) {
          var tr = el("tr");
          if (typeof row[0] === "string") {
            tr.appendChild(el("td", row[0])); tr.appendChild(el("td", row[1])); tr.appendChild(el("td", row[2]));
            tr.appendChild(el("td", "")); tr.appendChild(el("td", ""));
          } else {
            var m = row[0], va = row[1], vb = row[2];
            var ratio = (va != null && vb != null && va !== 0) ? vb / va : null;
            var verdict = "", cls = "";
            if (ratio != null && ratio !== 1) {
              var better = m.better === "higher" ? ratio > 1 : ratio < 1;
              verdict = better ? "B better" : "B worse"; cls = better ? "better" : "worse";
            }
            tr.appendChild(el("td", m.label)); tr.appendChild(el("td", fmt(va), "num")); tr.appendChild(el("td", fmt(vb), "num"));
            tr.appendChild(el("td", ratio == null ? "–" : ratio.toFixed(3) + "×", "num")); tr.appendChild(el("td", verdict, cls));
          }
          body.appendChild(tr);
        });
    }
    a.addEventListener("change", render); b.addEventListener("change", render);
    render();
  })();

  // ---- Regressions
  (function () {
    var note = document.getElementById("regressions-note");
    note.textContent = DATA.regressions.length
      ? DATA.regressions.length + " metric(s) worse than the previous run of the same series by more than " +
        Math.round(DATA.threshold * 100) + "% (top-1: 0.5 points; a p50 must also exceed the p90, and a best " +
        "throughput fall below the best batch's throughput at its p90 latency, of the last three runs, as a median), " +
        "or a top-1 scored on the device more than 1 point below the host's on the same images."
      : "No regressions: no p50, throughput, energy or top-1 got worse than the previous run of its series by " +
        "more than " + Math.round(DATA.threshold * 100) + "% (top-1: 0.5 points).";
    var t = document.getElementById("regressions-table");
    var head = el("tr");
    ["run", "series", "metric", "before", "after", "worse by", "compared with"].forEach(function (h) { head.appendChild(el("th", h)); });
    t.tHead.appendChild(head);
    if (!t.tBodies.length) t.appendChild(document.createElement("tbody"));
    DATA.regressions.forEach(function (f) {
      var r = byId[f.run_id] || {};
      var tr = el("tr", null, "regressed");
      [f.run_id, r.series, f.label].forEach(function (v) { tr.appendChild(el("td", v)); });
      tr.appendChild(el("td", fmt(f.before), "num")); tr.appendChild(el("td", fmt(f.after), "num"));
      tr.appendChild(el("td", (f.change * 100).toFixed(1) + (f.metric === "top1" || f.metric === "top1_vs_host" ? " points" : "%"), "num flag"));
      tr.appendChild(el("td", f.previous));
      t.tBodies[0].appendChild(tr);
    });
  })();

  window.edgekitReady = true;
})();
