// One experiment: facts, every verdict with its reason, its runs against main's baselines with the margin,
// the log tail. The diff is rendered by the server (escaped); this part follows the live run.
"use strict";

(function () {
  const { get, el, link, expUrl, num, time, clear, watch, plotConfig } = window.farm;
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

  function facts(r) {
    const dl = document.getElementById("facts");
    clear(dl);
    for (const [k, f] of FACTS) {
      const v = f(r);
      if (v === undefined || v === null || v === "") continue;
      dl.appendChild(el("dt", k));
      dl.appendChild(el("dd", v));
    }
    const status = document.getElementById("exp-status");
    status.textContent = r.status || "?";
    status.className = "tag st-" + r.status;
  }

  function verdicts(list) {
    const ol = document.getElementById("verdicts");
    clear(ol);
    if (!list.length) ol.appendChild(el("li", "no verdict (yet)", "muted"));
    for (const v of list) {
      const li = el("li");
      li.appendChild(el("span", v.verdict, "tag v-" + v.verdict));
      li.appendChild(el("span", " " + time(v.ts) + " ", "muted"));
      li.appendChild(el("div", v.reason || "", "reason"));
      ol.appendChild(li);
    }
  }

  function replicates(d) {
    const runs = d.replicates.filter((r) => r && r.status === "ok" && r.val_bpb !== null);
    const base = d.decision.baselines;
    const self = d.row.kind === "baseline" ? "this run" : "this experiment";
    const traces = [
      { type: "scatter", mode: "markers", name: "main's runs", x: base.map(() => "main"), y: base.map((b) => b.val_bpb),
        customdata: base.map((b) => b.experiment_id), marker: { size: 10, color: "#7f8c8d" },
        hovertemplate: "%{customdata}: %{y:.4f}<extra>main</extra>" },
      { type: "scatter", mode: "markers", name: "its runs", x: runs.map(() => self), y: runs.map((r) => r.val_bpb),
        customdata: runs.map((r) => r.experiment_id),
        marker: { size: 11, color: runs.map((r) => (r.experiment_id === id ? "#2f6fde" : "#8e44ad")),
          symbol: runs.map((r) => (r.experiment_id === id && r.kind !== "baseline" ? "circle-open" : "circle")), line: { width: 2 } },
        hovertemplate: "%{customdata}: %{y:.4f}<extra></extra>" },
    ];
    const shapes = [];
    const annotations = [];
    const line = (y, color, dash, label, x, anchor) => {
      annotations.push({ xref: "paper", x: x, xanchor: anchor, y: y, yanchor: "bottom", showarrow: false, text: label,
        font: { color: color, size: 11 } });
      return { type: "line", xref: "paper", x0: 0, x1: 1, y0: y, y1: y, line: { color: color, dash: dash, width: 2 } };
    };
    const notes = [];
    if (d.decision.main_mean !== null) {
      shapes.push(line(d.decision.main_mean, "#27ae60", "solid", "main's mean", 0, "left"));
      notes.push("main " + num(d.decision.main_mean));
      if (d.decision.margin !== null) {
        shapes.push(line(d.decision.main_mean - d.decision.margin, "#c0392b", "dot", "main − margin (to beat)", 0.5, "center"));
        notes.push("to beat: main − margin " + num(d.decision.margin) + " = " + num(d.decision.main_mean - d.decision.margin));
      }
    }
    if (runs.length) {
      const mean = runs.reduce((a, r) => a + r.val_bpb, 0) / runs.length;
      shapes.push(line(mean, "#2f6fde", "dash", "its mean", 1, "right"));
      notes.push("its mean " + num(mean) + " (n=" + runs.length + ")");
    }
    const div = document.getElementById("chart-replicates");
    Plotly.react(div, traces, {
      margin: { t: 20, r: 10, b: 40, l: 60 }, shapes: shapes, annotations: annotations, yaxis: { title: { text: "val_bpb" } },
      legend: { orientation: "h", y: -0.2 }, uirevision: "keep",
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
    if (d.decision.reason) p.appendChild(el("div", "decided by: " + d.decision.verdict + " — " + d.decision.reason, "reason"));
    const list = el("div", "runs: ");
    for (const r of d.replicates) {
      if (!r) continue;
      list.appendChild(link(expUrl(r.experiment_id), r.experiment_id));
      list.appendChild(el("span", " (" + (r.status || "?") + (r.val_bpb !== null ? " " + num(r.val_bpb) : "") + ") "));
    }
    p.appendChild(list);
  }

  async function load() {
    const d = await get("/api/experiment/" + encodeURIComponent(id));
    facts(d.row);
    verdicts(d.verdicts);
    replicates(d);
    const log = document.getElementById("log");
    log.textContent = d.log || "(no log)";
    document.getElementById("log-note").textContent = d.log_note || "";
  }

  watch(load);
})();
