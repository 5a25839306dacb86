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

  function drawProgress(o) {
    const traces = [];
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
        x: idx.map((i) => new Date(o.points.t[i] * 1000)), y: idx.map((i) => o.points.val_bpb[i]),
        customdata: idx.map((i) => o.points.id[i]), hovertemplate: "%{customdata}: %{y:.4f}<extra>" + kind + "</extra>",
        marker: { size: 6, color: KIND_COLORS[kind] || "#555", opacity: 0.75 },
      });
    }
    traces.push({
      type: "scatter", mode: "lines", name: "best so far (one run)", line: { shape: "hv", color: "#2f6fde", dash: "dot" },
      x: o.best.t.map((t) => new Date(t * 1000)), y: o.best.val_bpb, hoverinfo: "skip",
    });
    const mt = o.main.t.map((t) => new Date(t * 1000));
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
    const layout = {
      margin: { t: 30, r: 10, b: 10, l: 10 }, yaxis: { title: { text: "val_bpb" }, automargin: true },
      xaxis: { automargin: true }, legend: { orientation: "h", y: -0.12, yanchor: "top" }, uirevision: "keep",
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

  async function loadRuns(version) {
    const params = new URLSearchParams();
    for (const name of ["status", "kind", "agent", "verdict", "q"]) {
      const v = form.elements[name].value;
      if (v) params.set(name, v);
    }
    params.set("sort", table.sort);
    params.set("order", table.order);
    params.set("offset", table.offset);
    params.set("limit", table.limit);
    const page = await first("/api/runs?" + params.toString(), version);
    const body = document.querySelector("#runs tbody");
    clear(body);
    for (const r of page.rows) {
      const tr = el("tr", null, "row-" + (r.status || "none"));
      tr.dataset.id = r.experiment_id;
      const id = el("td");
      id.appendChild(link(expUrl(r.experiment_id), r.experiment_id));
      tr.appendChild(id);
      tr.appendChild(el("td", r.kind));
      tr.appendChild(el("td", r.status));
      tr.appendChild(el("td", num(r.val_bpb), "num"));
      tr.appendChild(el("td", r.verdict));
      tr.appendChild(el("td", r.agent));
      tr.appendChild(el("td", r.description, "desc"));
      tr.appendChild(el("td", time(r.finished_at)));
      tr.appendChild(el("td", r.cost_usd ? "$" + num(r.cost_usd, 4) : "", "num"));
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

  document.getElementById("all-points").addEventListener("click", async () => {
    everyPoint = true;
    drawProgress(await get("/api/overview"));
  });
  form.addEventListener("change", () => { table.offset = 0; loadRuns(); });
  form.addEventListener("input", (ev) => { if (ev.target.name === "q") { table.offset = 0; loadRuns(); } });
  form.addEventListener("submit", (ev) => ev.preventDefault());
  for (const th of document.querySelectorAll("#runs th[data-sort]")) {
    th.addEventListener("click", () => {
      const key = th.dataset.sort;
      table.order = table.sort === key && table.order === "asc" ? "desc" : (table.sort === key ? "asc" : (key === "val_bpb" ? "asc" : "desc"));
      table.sort = key;
      table.offset = 0;
      loadRuns();
    });
  }
  document.getElementById("runs-prev").addEventListener("click", () => { table.offset = Math.max(0, table.offset - table.limit); loadRuns(); });
  document.getElementById("runs-next").addEventListener("click", () => { table.offset += table.limit; loadRuns(); });

  watch(async (version) => { await Promise.all([loadOverview(version), loadRuns(version)]); });
})();
