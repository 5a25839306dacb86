// One experiment: facts, every verdict with its reason, its runs against main's baselines with the margin,
// the log tail. The diff is rendered by the server (escaped); this part follows the live run.
"use strict";

(function () {
  const { get, el, link, expUrl, num, time, clear, watch, plotConfig, drawCurves } = window.farm;
  const id = document.getElementById("page").dataset.experiment;

  const FACTS = [
    ["status", (r) => r.status], ["val_bpb", (r) => num(r.val_bpb, 6)], ["verdict", (r) => r.verdict],
    ["kind", (r) => r.kind], ["agent", (r) => r.agent], ["seed", (r) => r.seed], ["gpu class", (r) => r.gpu_class],
    ["node", (r) => r.node], ["training s", (r) => num(r.training_seconds, 1)], ["total s", (r) => num(r.total_seconds, 1)],
    ["startup s", (r) => num(r.startup_seconds, 1)], ["eval s", (r) => num(r.eval_seconds, 1)],
    ["peak memory MB", (r) => num(r.peak_memory_mb, 0)], ["steps", (r) => r.num_steps], ["params M", (r) => num(r.num_params_M, 2)],
    ["MFU %", (r) => num(r.mfu_percent, 1)], ["queued", (r) => time(r.queued_ts)], ["started", (r) => time(r.started_ts)],
    ["finished", (r) => time(r.finished_at)], ["LLM tokens", (r) => (r.tokens_in ? r.tokens_in + " in / " + r.tokens_out + " out" : "")],
    ["LLM cost", (r) => (r.cost_usd ? "$" + num(r.cost_usd, 4) : "")], ["commit", (r) => r.commit], ["parent", (r) => r.parent_commit],
    ["train.py sha", (r) => r.train_sha], ["reason", (r) => r.reason],
  ];

  const NOT_DONE = ["queued", "running"];

  // A run that stopped leaves its queued and running experiments as they were: they will never finish.
  function shownStatus(r, run) {
    if (run.state === "finished" && NOT_DONE.includes(r.status)) return "never ran (the run stopped)";
    return r.status || "?";
  }

  function facts(r, run) {
    const dl = document.getElementById("facts");
    clear(dl);
    for (const [k, f] of FACTS) {
      const v = k === "status" ? shownStatus(r, run) : f(r);
      if (v === undefined || v === null || v === "") continue;
      dl.appendChild(el("dt", k));
      dl.appendChild(el("dd", v));
    }
    const status = document.getElementById("exp-status");
    status.textContent = shownStatus(r, run);
    status.className = "tag st-" + (run.state === "finished" && NOT_DONE.includes(r.status) ? "stopped" : r.status);
  }

  // Why an experiment has no verdict of its own: a replicate feeds its candidate's, a baseline measures main.
  function noVerdict(d) {
    const r = d.row;
    if (d.fate.fed) {
      const li = el("li", "a confirmation run: no verdict of its own; it fed the decision on ", "muted");
      li.appendChild(link(expUrl(d.fate.fed), d.fate.fed));
      if (d.fate.fed_verdict) li.appendChild(el("span", " (" + d.fate.fed_verdict + ")"));
      return li;
    }
    if (r.kind === "baseline") return el("li", "a run of main: no verdict of its own; candidates are judged against main's runs", "muted");
    if (d.run.state === "finished") return el("li", "no verdict: the run stopped first (" + d.run.reason + ")", "muted");
    if (NOT_DONE.includes(r.status)) return el("li", "no verdict yet: it is " + r.status, "muted");
    return el("li", "no verdict yet", "muted");
  }

  function verdicts(d) {
    const ol = document.getElementById("verdicts");
    clear(ol);
    if (!d.verdicts.length) ol.appendChild(noVerdict(d));
    for (const v of d.verdicts) {
      const li = el("li");
      li.appendChild(el("span", v.verdict, "tag v-" + v.verdict));
      li.appendChild(el("span", " " + time(v.ts) + " ", "muted"));
      li.appendChild(el("div", v.reason || "", "reason"));
      ol.appendChild(li);
    }
  }

  // Points of one group side by side (by seed order) around x, so equal values do not hide each other.
  function spread(n, x) {
    return Array.from({ length: n }, (_, i) => (n < 2 ? x : x - 0.25 + (0.5 * i) / (n - 1)));
  }

  function hover(r) {
    return r.experiment_id + (r.seed !== null && r.seed !== undefined ? " · seed " + r.seed : "") + " · " + num(r.val_bpb);
  }

  function replicates(d) {
    const runs = d.replicates.filter((r) => r && r.status === "ok" && r.val_bpb !== null);
    const base = d.decision.baselines;
    const ref = d.decision.reference === "parent" ? "its parent (main when it was proposed)" : "main";
    const isBaseline = d.row.kind === "baseline";
    const first = runs.filter((r) => r.experiment_id === id);
    const confirms = runs.filter((r) => r.experiment_id !== id);
    const xs = spread(first.length + confirms.length, 1);
    const points = (list, xsOf, name, color, symbol) => ({
      type: "scatter", mode: "markers", name: name, x: xsOf, y: list.map((r) => r.val_bpb),
      customdata: list.map((r) => r.experiment_id), text: list.map(hover), hovertemplate: "%{text}<extra></extra>",
      marker: { size: 11, color: color, symbol: symbol, line: { width: 2, color: color } },
    });
    const traces = [
      points(base, spread(base.length, 0), ref + "'s runs (as of the verdict)", "#7f8c8d", "circle"),
      points(first, xs.slice(0, first.length), isBaseline ? "this run" : "its first (screening) run", "#2f6fde",
        isBaseline ? "circle" : "circle-open"),
    ];
    if (confirms.length) traces.push(points(confirms, xs.slice(first.length), "its confirmation runs", "#8e44ad", "circle"));
    const level = (y, name, color, dash) => ({
      type: "scatter", mode: "lines", name: name + " " + num(y), x: [-0.5, 1.5], y: [y, y],
      line: { color: color, dash: dash, width: 2 }, hoverinfo: "skip",
    });
    const notes = [];
    const dec = d.decision;
    if (dec.main_mean !== null) {
      traces.push(level(dec.main_mean, ref + "'s mean", "#27ae60", "solid"));
      notes.push(ref + " " + num(dec.main_mean) + " (n=" + base.length + ", on " + dec.gpu_class + ")");
      if (dec.margin !== null) {
        traces.push(level(dec.main_mean - dec.margin, "to beat: mean − margin", "#c0392b", "dot"));
        notes.push("to beat: " + ref + " − margin " + num(dec.margin) + " = " + num(dec.main_mean - dec.margin));
      }
    }
    if (runs.length) {
      const mean = runs.reduce((a, r) => a + r.val_bpb, 0) / runs.length;
      traces.push(level(mean, "its mean", "#2f6fde", "dash"));
      notes.push("its mean " + num(mean) + " (n=" + runs.length + ")");
    }
    const div = document.getElementById("chart-replicates");
    Plotly.react(div, traces, {
      margin: { t: 10, r: 10, b: 10, l: 10 }, yaxis: { title: { text: "val_bpb (lower is better)" }, automargin: true },
      xaxis: { tickvals: [0, 1], ticktext: [ref, isBaseline ? "this run" : "this experiment"], range: [-0.5, 1.5],
        automargin: true, zeroline: false },
      legend: { orientation: "h", y: -0.12, yanchor: "top" }, uirevision: "keep", hovermode: "closest",
    }, plotConfig());
    if (!div.dataset.bound) {
      div.dataset.bound = "1";
      div.on("plotly_click", (ev) => {
        const target = ev.points && ev.points[0] && ev.points[0].customdata;
        if (target && target !== id) window.location.href = expUrl(target);
      });
    }
    const p = document.getElementById("decision");
    clear(p);
    p.appendChild(el("span", notes.join(" · ")));
    if (dec.reason) p.appendChild(el("div", "decided by: " + dec.verdict + " — " + dec.reason, "reason"));
    const list = el("div", "runs: ");
    for (const r of d.replicates) {
      if (!r) continue;
      list.appendChild(link(expUrl(r.experiment_id), r.experiment_id));
      list.appendChild(el("span", " (" + shownStatus(r, d.run) + (r.val_bpb !== null ? " " + num(r.val_bpb) : "") +
        (r.seed !== null ? ", seed " + r.seed : "") + ") "));
    }
    p.appendChild(list);
  }

  async function load() {
    const d = await get("/api/experiment/" + encodeURIComponent(id));
    facts(d.row, d.run);
    verdicts(d);
    replicates(d);
    const log = document.getElementById("log");
    log.textContent = d.log || "(no log)";
    document.getElementById("log-note").textContent = d.log_note || "";
    const runs = d.replicates.filter((r) => r).map((r) => r.experiment_id);
    await drawCurves(runs, document.getElementById("chart-loss"), document.getElementById("chart-speed"), document.getElementById("curves-note"));
  }

  watch(load);
})();
