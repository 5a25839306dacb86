// Shared helpers. Everything shown from the run is set with textContent, never as HTML: agents wrote it.
"use strict";

window.farm = (function () {
  const POLL_MS = 2000;
  // Where this run is mounted: "" when `farm ui` serves one run, "/r/<name>" beside other runs. Every URL the
  // scripts build starts with it.
  const base = document.body.dataset.base || "";

  async function get(url) {
    const response = await fetch(base + url, { headers: { Accept: "application/json" }, cache: "no-store" });
    if (!response.ok) throw new Error(url + ": HTTP " + response.status);
    return response.json();
  }

  // The page's first data, asked for now: this script runs before the plotting library is parsed (~0.3 s of a
  // fresh load), so the answers arrive while it is. The page names them in main[data-prefetch]; its script takes
  // each once (first(url)) and checks its version against the first poll's.
  const early = {};
  const page = document.getElementById("page");
  for (const url of ((page && page.dataset.prefetch) || "").split(" ").filter(Boolean)) early[url] = get(url).catch(() => null);
  const firstVersion = get("/api/version").catch(() => null);

  async function first(url, version) {
    const hit = early[url];
    delete early[url];
    const data = hit ? await hit : null;
    return data && data.version === version ? data : get(url);
  }

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function link(href, text) {
    const a = el("a", text);
    a.href = href;
    return a;
  }

  function expUrl(id) {
    return base + "/experiment/" + encodeURIComponent(id);
  }

  function num(v, digits) {
    if (v === null || v === undefined || Number.isNaN(v)) return "";
    return Number(v).toFixed(digits === undefined ? 4 : digits);
  }

  function time(t) {
    if (t === null || t === undefined) return "";
    const d = new Date(t * 1000);
    return d.toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function fillSelect(select, values) {
    const keep = select.value;
    const first = select.options[0];
    clear(select);
    select.appendChild(first);
    for (const v of values) {
      const o = el("option", v);
      o.value = v;
      select.appendChild(o);
    }
    select.value = values.includes(keep) ? keep : first.value;
  }

  // What the header says of the run: the driver's status.json tells a finished run (a stop reason, nothing in
  // flight) from a live one; the ledger alone cannot.
  function runBadge(run, experiments) {
    const n = experiments + " experiments";
    if (run.state === "finished") return "finished · " + n + " · " + run.reason + (run.failure ? " (failed: " + run.failure + ")" : "");
    if (run.state === "stopping") return "stopping · " + n + " · " + run.reason;
    if (run.state === "quiet") return "no word from the farm for a while (stopped?) · " + n;
    return "live · " + n;
  }

  // Follow the live run: poll the ledger's version; call back when it or the run's state moves (and once at start).
  function watch(onChange) {
    let seen = null;
    const badge = document.getElementById("live");
    let started = false;
    async function tick() {
      let finished = false;
      try {
        const v = (!started && (await firstVersion)) || (await get("/api/version"));
        started = true;
        badge.textContent = runBadge(v.run, v.experiments);
        badge.className = "live run-" + v.run.state;
        badge.title = v.run.state === "finished" ? "the run has stopped: this page no longer changes" : "the page follows the ledger";
        api.run = v.run;
        const key = v.version + "/" + v.run.state;
        if (key !== seen) {
          seen = key;
          await onChange(v.version);
          document.body.dataset.version = String(v.version);
          document.body.dataset.run = v.run.state;
        }
        finished = v.run.state === "finished";
      } catch (err) {
        badge.textContent = "disconnected";
        badge.classList.add("stale");
      }
      setTimeout(tick, finished ? 5 * POLL_MS : POLL_MS);
    }
    tick();
  }

  function plotConfig() {
    return { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["sendDataToCloud", "lasso2d", "select2d"] };
  }

  // Training curves (loss and tokens/s against the step) of one or more experiments, overlaid: what each
  // candidate's train.py printed, so the candidate's claim, never a verdict. Numbers are checked by the server.
  const CURVE_COLORS = ["#2f6fde", "#e67e22", "#27ae60", "#8e44ad", "#c0392b", "#16a085", "#7f8c8d", "#d4ac0d"];

  async function drawCurves(ids, lossDiv, speedDiv, note) {
    const data = await get("/api/curves?ids=" + encodeURIComponent(ids.join(",")));
    const drawn = data.curves.filter((c) => c.step.length);
    const trace = (c, i, key) => ({
      type: "scatter", mode: "lines", name: c.experiment_id, x: c.step, y: c[key], connectgaps: true,
      line: { color: CURVE_COLORS[i % CURVE_COLORS.length], width: 1.5 }, customdata: c.step.map(() => c.experiment_id),
      hovertemplate: "%{customdata} step %{x}: %{y:.4~f}<extra></extra>",
    });
    const layout = (title) => ({
      margin: { t: 30, r: 10, b: 10, l: 10 }, title: { text: title, font: { size: 13 } },
      xaxis: { title: { text: "step" }, automargin: true }, yaxis: { automargin: true },
      legend: { orientation: "h", y: -0.18, yanchor: "top" }, hovermode: "closest", uirevision: "keep",
    });
    Plotly.react(lossDiv, drawn.map((c, i) => trace(c, i, "loss")), layout("training loss (as printed)"), plotConfig());
    Plotly.react(speedDiv, drawn.map((c, i) => trace(c, i, "tok_per_s")), layout("tokens/s (as printed)"), plotConfig());
    const missing = data.curves.filter((c) => !c.step.length || c.note).map((c) => c.experiment_id + ": " + (c.note || "no curve"));
    note.textContent = (drawn.length ? drawn.map((c) => c.experiment_id + " " + c.lines + " step lines" + (c.lines > c.step.length ? " (" + c.step.length + " drawn)" : "")).join(" · ") : "no curve") +
      (missing.length ? " · " + missing.join(" · ") : "") + " — " + data.claim;
    lossDiv.dataset.curves = drawn.map((c) => c.experiment_id).join(" ");
  }

  const api = { base, get, first, el, link, expUrl, num, time, clear, fillSelect, watch, plotConfig, drawCurves, colors: CURVE_COLORS, run: { state: "live", reason: "" } };
  return api;
})();
