// Overview: cards, progress chart (every ok run, best so far, main with its noise band), status counts,
// the runs table (filtered and sorted by the server over the whole run) and the LLM spend.
"use strict";

(function () {
  const { get, first, el, link, expUrl, num, time, clear, fillSelect, watch, plotConfig } = window.farm;
  const KIND_COLORS = { baseline: "#7f8c8d", candidate: "#2f6fde", confirm: "#8e44ad", merge: "#e67e22" };
  const table = { sort: "queued_ts", order: "desc", offset: 0, limit: 100 };
  const form = document.getElementById("runs-filter");

  function card(id, text) {
    document.getElementById(id).textContent = text;
  }

  // SVG markers cost ~0.1-0.3 ms each to draw (the basic bundle has no WebGL trace): past DRAWN markers the chart
  // first shows a sample that keeps what a reader looks for (each kind's lowest half, and an even spread of the
  // rest), and "draw every point" draws them all. Lines (main, best so far) always use every run.
  const DRAWN = 800;
  let everyPoint = false;

  function sample(idx, budget, val) {
    if (idx.length <= budget) return idx;
    const low = idx.slice().sort((a, b) => val[a] - val[b]).slice(0, Math.floor(budget / 2));
    const keep = new Set(low);
    const rest = idx.filter((i) => !keep.has(i));
    const stride = rest.length / (budget - low.length);
    for (let k = 0; k < budget - low.length; k++) keep.add(rest[Math.floor(k * stride)]);
    return idx.filter((i) => keep.has(i));
  }

  // The x axis: the clock, or the n-th result (ok runs in the order they finished: the chart of a run that
  // paused for a night is not mostly empty). Kept in the URL (?x=n).
  let byResult = new URLSearchParams(window.location.search).get("x") === "n";

  function drawProgress(o) {
    const traces = [];
    // a time on the chosen axis: the clock, or how many ok runs had finished by then
    const at = (t) => {
      if (!byResult) return new Date(t * 1000);
      let lo = 0;
      let hi = o.points.t.length;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (o.points.t[mid] <= t) lo = mid + 1;
        else hi = mid;
      }
      return lo;
    };
    document.getElementById("x-axis").value = byResult ? "n" : "t";
    const kinds = [...new Set(o.points.kind)];
    const type = "scatter"; // the vendored plotly.js-basic bundle has no WebGL traces (a quarter of the size)
    const total = o.points.t.length;
    const thin = !everyPoint && total > DRAWN;
    const button = document.getElementById("all-points");
    button.hidden = !thin;
    button.textContent = "draw every point (" + total.toLocaleString() + ")";
    document.getElementById("points-note").textContent = thin ? DRAWN.toLocaleString() + " of " + total.toLocaleString() + " runs drawn: each kind's best half and a spread of the rest" : "";
    for (const kind of kinds) {
      let idx = o.points.kind.map((k, i) => (k === kind ? i : -1)).filter((i) => i >= 0);
      if (thin) idx = sample(idx, Math.max(50, Math.round((DRAWN * idx.length) / total)), o.points.val_bpb);
      traces.push({
        type: type, mode: "markers", name: kind,
        x: idx.map((i) => (byResult ? i + 1 : new Date(o.points.t[i] * 1000))), y: idx.map((i) => o.points.val_bpb[i]),
        customdata: idx.map((i) => o.points.id[i]), hovertemplate: "%{customdata}: %{y:.4f}<extra>" + kind + "</extra>",
        marker: { size: 6, color: KIND_COLORS[kind] || "#555", opacity: 0.75 },
      });
    }
    traces.push({
      type: "scatter", mode: "lines", name: "best so far (one run)", line: { shape: "hv", color: "#2f6fde", dash: "dot" },
      x: o.best.t.map(at), y: o.best.val_bpb, hoverinfo: "skip",
    });
    const mt = o.main.t.map(at);
    const upper = o.main.mean.map((m, i) => (o.main.sd[i] === null ? m : m + o.main.sd[i]));
    const lower = o.main.mean.map((m, i) => (o.main.sd[i] === null ? m : m - o.main.sd[i]));
    traces.push({ type: "scatter", mode: "lines", x: mt, y: upper, line: { shape: "hv", width: 0 }, showlegend: false, hoverinfo: "skip" });
    traces.push({
      type: "scatter", mode: "lines", x: mt, y: lower, name: "main ± noise sd", fill: "tonexty",
      fillcolor: "rgba(39,174,96,0.18)", line: { shape: "hv", width: 0 }, hoverinfo: "skip",
    });
    traces.push({
      type: "scatter", mode: "lines", name: "main (mean of its runs)", x: mt, y: o.main.mean,
      line: { shape: "hv", color: "#27ae60", width: 3 }, hovertemplate: "main %{y:.4f}<extra></extra>",
    });
    if (o.promoted && o.promoted.t.length) {
      traces.push({
        type: "scatter", mode: "markers+text", name: "promotion (main moved)", x: o.promoted.t.map(at),
        y: o.promoted.val_bpb, text: o.promoted.id, customdata: o.promoted.id, textposition: "bottom center",
        textfont: { size: 10, color: "#1e8449" }, cliponaxis: false,
        marker: { symbol: "star", size: 13, color: "#27ae60", line: { color: "#145a32", width: 1 } },
        hovertemplate: "%{customdata}: main → %{y:.4f}<extra>promotion</extra>",
      });
    }
    const layout = {
      margin: { t: 30, r: 10, b: 10, l: 10 }, yaxis: { title: { text: "val_bpb" }, automargin: true },
      xaxis: { automargin: true, title: { text: byResult ? "results in the order they came (n-th ok run)" : "" } },
      legend: { orientation: "h", y: -0.12, yanchor: "top" }, uirevision: byResult ? "n" : "t",
    };
    const div = document.getElementById("chart-progress");
    Plotly.react(div, traces, layout, plotConfig());
    if (!div.dataset.bound) {
      div.dataset.bound = "1";
      div.on("plotly_click", (ev) => {
        const id = ev.points && ev.points[0] && ev.points[0].customdata;
        if (id) window.location.href = expUrl(id);
      });
    }
  }

  // The title is the figure's caption (HTML), not plotly's: plotly's sits under its own toolbar.
  function drawStatus(o) {
    const stopped = window.farm.run.state === "finished";
    const names = Object.keys(o.by_status);
    const label = (s) => (stopped && (s === "queued" || s === "running") ? s + " (never ran)" : s);
    const colors = names.map((s) => ({ ok: "#27ae60", running: "#f1c40f", queued: "#bdc3c7" })[s] || "#c0392b");
    Plotly.react("chart-status", [{ type: "bar", x: names.map(label), y: names.map((n) => o.by_status[n]), marker: { color: colors } }],
      { margin: { t: 30, r: 10, b: 10, l: 10 }, xaxis: { automargin: true }, yaxis: { automargin: true }, uirevision: "keep" },
      plotConfig());
  }

  async function loadOverview(version) {
    const o = await first("/api/overview", version);
    card("c-experiments", o.experiments);
    card("c-main", num(o.main_val_bpb));
    card("c-noise", o.noise_sd === null ? "noise not measured yet" : "noise sd " + num(o.noise_sd));
    card("c-best", num(o.best_val_bpb));
    card("c-promotions", o.promotions);
    card("c-duty", o.gpu.duty === null ? "–" : (100 * o.gpu.duty).toFixed(1) + " %");
    card("c-duty-s", Math.round(o.gpu.busy_seconds) + " busy s / " + Math.round(o.gpu.wall_seconds) + " s × " + o.gpu.slots + " slot(s)");
    card("c-spend", "$" + num(o.spend.cost_usd, 4));
    card("c-spend-s", o.spend.tokens_in + " tokens in, " + o.spend.tokens_out + " out");
    for (const name of ["status", "kind", "agent", "verdict"]) fillSelect(form.elements[name], o.filters[name]);
    keepSelected();
    drawProgress(o);
    drawStatus(o);
    const body = document.querySelector("#spend tbody");
    clear(body);
    for (const [agent, s] of Object.entries(o.spend.agents)) {
      const tr = el("tr");
      for (const v of [agent, s.proposals, s.tokens_in, s.tokens_out, "$" + num(s.cost_usd, 4)]) tr.appendChild(el("td", v));
      body.appendChild(tr);
    }
  }

  // Experiments picked for a compare (ticked in the id column; kept across pages and filters, up to 8).
  const picked = [];
  const MAX_PICKED = 8;

  function showPicked() {
    const a = document.getElementById("compare-picked");
    a.textContent = "compare picked (" + picked.length + ")" + (picked.length ? ": " + picked.join(", ") : "");
    a.href = window.farm.base + "/compare?ids=" + encodeURIComponent(picked.join(","));
    a.classList.toggle("disabled", picked.length < 2);
  }

  function pickAndLink(r) {
    const span = el("span");
    const box = el("input", null, "pick");
    box.type = "checkbox";
    box.title = "pick for a compare";
    box.checked = picked.includes(r.experiment_id);
    box.addEventListener("change", () => {
      const at = picked.indexOf(r.experiment_id);
      if (box.checked && at < 0 && picked.length < MAX_PICKED) picked.push(r.experiment_id);
      else if (!box.checked && at >= 0) picked.splice(at, 1);
      box.checked = picked.includes(r.experiment_id);
      showPicked();
    });
    span.appendChild(box);
    span.appendChild(link(expUrl(r.experiment_id), r.experiment_id));
    return span;
  }

  // The runs table's columns: a reader picks which (the choice, the filters and the sort live in the page's URL,
  // so a view can be shared); the CSV link exports every row the filters select, with every column.
  const signed = (v) => (v === null || v === undefined ? "" : (v > 0 ? "+" : "") + num(v));
  const COLUMNS = [
    { key: "experiment_id", label: "id", fixed: true, cell: pickAndLink },
    { key: "kind", label: "kind", cell: (r) => r.kind },
    { key: "status", label: "status", cell: (r) => r.status },
    { key: "val_bpb", label: "val_bpb", num: true, cell: (r) => num(r.val_bpb) },
    { key: "mean_val_bpb", label: "mean of runs (n)", num: true, extra: true,
      cell: (r) => (r.mean_val_bpb === null ? "" : num(r.mean_val_bpb) + " (" + r.n_runs + ")") },
    { key: "delta", label: "Δ vs main (judged)", num: true, extra: true, cell: (r) => signed(r.delta) },
    { key: "verdict", label: "verdict", cell: (r) => r.verdict },
    { key: "agent", label: "agent", cell: (r) => r.agent },
    { key: "description", label: "description", nosort: true, cls: "desc", cell: (r) => r.description },
    { key: "seed", label: "seed", num: true, extra: true, cell: (r) => r.seed },
    { key: "gpu_class", label: "GPU class", extra: true, cell: (r) => r.gpu_class },
    { key: "queued_ts", label: "queued", extra: true, cell: (r) => time(r.queued_ts) },
    { key: "finished_at", label: "finished", cell: (r) => time(r.finished_at) },
    { key: "cost_usd", label: "cost", num: true, cell: (r) => (r.cost_usd ? "$" + num(r.cost_usd, 4) : "") },
    // computed by the server only when shown (lazy), not on the first load
    { key: "sigmas", label: "sigmas vs main (judged)", num: true, extra: true, lazy: true, asc: true,
      cell: (r) => (r.sigmas === null || r.sigmas === undefined ? "" : (r.sigmas > 0 ? "+" : "") + num(r.sigmas, 1)) },
    { key: "seeds", label: "seeds of its file", extra: true, lazy: true, cell: (r) => r.seeds },
    { key: "gpu_seconds", label: "GPU-seconds", num: true, extra: true, lazy: true,
      cell: (r) => (r.gpu_seconds === null || r.gpu_seconds === undefined ? "" : num(r.gpu_seconds, 1)) },
  ];
  const DEFAULT_COLS = COLUMNS.filter((c) => !c.extra).map((c) => c.key);
  // One column per constant a change changed ("const:NAME"), hidden unless chosen: their names come from
  // /api/runs/columns, asked for when the chooser opens or the URL names one (the first load does not wait on it).
  const CONST = "const:";
  const CONST_KEY = /^const:[A-Z][A-Z0-9_]*$/;
  function constantColumn(key) {
    const name = key.slice(CONST.length);
    return { key: key, label: name, num: true, extra: true, lazy: true, constant: true,
      cell: (r) => {
        const v = r[key];
        if (v === null || v === undefined) return "";
        const b = el((r.const_changed || []).includes(name) ? "b" : "span", String(Number(v)));
        b.title = (r.const_changed || []).includes(name) ? name + ": set differently from its parent" : name;
        return b;
      } };
  }
  let constantsListed = false;
  async function listConstants() {
    if (constantsListed) return;
    constantsListed = true;
    const found = await get("/api/runs/columns");
    for (const c of found.constants) {
      const key = CONST + c.name;
      if (CONST_KEY.test(key) && !COLUMNS.some((k) => k.key === key)) COLUMNS.push(constantColumn(key));
    }
    drawHeader();
  }
  const FILTERS = ["status", "kind", "agent", "verdict", "q"];
  const state = (function () {
    const url = new URLSearchParams(window.location.search);
    const st = { sort: url.get("sort") || "queued_ts", order: url.get("order") === "asc" ? "asc" : "desc",
      offset: Math.max(0, parseInt(url.get("offset") || "0", 10) || 0) };
    for (const name of FILTERS) st[name] = url.get(name) || "";
    const named = (url.get("cols") || "").split(",");
    for (const k of named) if (CONST_KEY.test(k) && !COLUMNS.some((c) => c.key === k)) COLUMNS.push(constantColumn(k));
    const cols = named.filter((k) => COLUMNS.some((c) => c.key === k));
    st.cols = cols.length ? ["experiment_id", ...cols.filter((k) => k !== "experiment_id")] : DEFAULT_COLS.slice();
    return st;
  })();
  table.sort = state.sort;
  table.order = state.order;
  table.offset = state.offset;
  form.elements.q.value = state.q;

  function keepInUrl() {
    const url = new URLSearchParams();
    for (const name of FILTERS) if (state[name]) url.set(name, state[name]);
    if (table.sort !== "queued_ts") url.set("sort", table.sort);
    if (table.order !== "desc") url.set("order", table.order);
    if (table.offset) url.set("offset", table.offset);
    if (state.cols.join(",") !== DEFAULT_COLS.join(",")) url.set("cols", state.cols.filter((k) => k !== "experiment_id").join(","));
    if (byResult) url.set("x", "n");
    const search = url.toString();
    window.history.replaceState(null, "", window.location.pathname + (search ? "?" + search : ""));
  }

  // A filter value from the URL is kept even before the overview has listed the values it can take.
  function keepSelected() {
    for (const name of FILTERS.filter((n) => n !== "q")) {
      const select = form.elements[name];
      if (state[name] && select.value !== state[name]) {
        if (![...select.options].some((o) => o.value === state[name])) {
          const o = el("option", state[name]);
          o.value = state[name];
          select.appendChild(o);
        }
        select.value = state[name];
      }
    }
  }

  function drawHeader() {
    const row = document.querySelector("#runs thead tr");
    clear(row);
    for (const c of COLUMNS.filter((c) => state.cols.includes(c.key))) {
      const th = el("th", c.label);
      if (!c.nosort) {
        th.dataset.sort = c.key;
        th.addEventListener("click", () => {
          table.order = table.sort === c.key && table.order === "asc" ? "desc" :
            (table.sort === c.key ? "asc" : (["val_bpb", "mean_val_bpb", "delta"].includes(c.key) || c.asc ? "asc" : "desc"));
          table.sort = c.key;
          table.offset = 0;
          loadRuns();
        });
      }
      row.appendChild(th);
    }
    const chooser = document.getElementById("columns-list");
    clear(chooser);
    for (const c of COLUMNS.filter((c) => !c.fixed)) {
      const label = el("label");
      const box = el("input");
      box.type = "checkbox";
      box.value = c.key;
      box.checked = state.cols.includes(c.key);
      box.addEventListener("change", () => {
        state.cols = COLUMNS.filter((k) => k.fixed || (k.key === c.key ? box.checked : state.cols.includes(k.key))).map((k) => k.key);
        drawHeader();
        loadRuns();
      });
      label.appendChild(box);
      label.appendChild(document.createTextNode(" " + (c.constant ? "constant " : "") + c.label));
      chooser.appendChild(label);
    }
  }

  async function loadRuns(version) {
    const params = new URLSearchParams();
    for (const name of FILTERS) if (state[name]) params.set(name, state[name]);
    params.set("sort", table.sort);
    params.set("order", table.order);
    const csv = "/api/runs.csv?" + params.toString();
    params.set("offset", table.offset);
    params.set("limit", table.limit);
    const lazy = COLUMNS.filter((c) => c.lazy && state.cols.includes(c.key)).map((c) => c.key);
    if (lazy.length) params.set("cols", lazy.join(","));
    keepInUrl();
    document.getElementById("runs-csv").href = window.farm.base + csv;
    const page = await first("/api/runs?" + params.toString(), version);
    const shown = COLUMNS.filter((c) => state.cols.includes(c.key));
    const body = document.querySelector("#runs tbody");
    clear(body);
    for (const r of page.rows) {
      const tr = el("tr", null, "row-" + (r.status || "none"));
      tr.dataset.id = r.experiment_id;
      for (const c of shown) {
        const v = c.cell(r);
        const td = el("td", null, c.num ? "num" : c.cls);
        if (v instanceof Node) td.appendChild(v);
        else if (v !== undefined && v !== null) td.textContent = String(v);
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
    const last = Math.min(page.total, table.offset + page.rows.length);
    document.getElementById("runs-count").textContent =
      page.total ? (table.offset + 1) + "–" + last + " of " + page.total : "no experiment matches";
    document.getElementById("runs-prev").disabled = table.offset === 0;
    document.getElementById("runs-next").disabled = last >= page.total;
    for (const th of document.querySelectorAll("#runs th[data-sort]")) {
      th.classList.toggle("sorted", th.dataset.sort === table.sort);
      th.dataset.order = th.dataset.sort === table.sort ? table.order : "";
    }
  }

  document.getElementById("x-axis").addEventListener("change", async (ev) => {
    byResult = ev.target.value === "n";
    const url = new URLSearchParams(window.location.search);
    if (byResult) url.set("x", "n");
    else url.delete("x");
    const search = url.toString();
    window.history.replaceState(null, "", window.location.pathname + (search ? "?" + search : ""));
    drawProgress(await get("/api/overview"));
  });
  document.getElementById("all-points").addEventListener("click", async () => {
    everyPoint = true;
    drawProgress(await get("/api/overview"));
  });
  const readForm = () => { for (const name of FILTERS) state[name] = form.elements[name].value; };
  form.addEventListener("change", () => { readForm(); table.offset = 0; loadRuns(); });
  form.addEventListener("input", (ev) => { if (ev.target.name === "q") { readForm(); table.offset = 0; loadRuns(); } });
  form.addEventListener("submit", (ev) => ev.preventDefault());
  document.getElementById("runs-prev").addEventListener("click", () => { table.offset = Math.max(0, table.offset - table.limit); loadRuns(); });
  document.getElementById("runs-next").addEventListener("click", () => { table.offset += table.limit; loadRuns(); });
  drawHeader();
  document.getElementById("columns").addEventListener("toggle", (ev) => { if (ev.target.open) listConstants(); });
  if (state.cols.some((k) => k.startsWith(CONST))) listConstants();

  watch(async (version) => { await Promise.all([loadOverview(version), loadRuns(version)]); });
})();
