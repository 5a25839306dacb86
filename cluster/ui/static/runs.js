// Several runs side by side: their set-up and outcome in one table, main's val_bpb of each over the hours since
// its start. Each run's own pages are under /r/<name>/. Everything shown from the runs is set as text.
"use strict";

(function () {
  const { first, el, link, num, clear, watch, plotConfig, colors: COLORS } = window.farm;

  function row(r) {
    const tr = el("tr", null, "row-run-" + r.state);
    tr.dataset.name = r.name;
    const home = "/r/" + encodeURIComponent(r.name) + "/";
    const name = el("td");
    name.appendChild(link(home, r.name));
    name.title = r.path;
    tr.appendChild(name);
    tr.appendChild(el("td", r.state + (r.reason ? " · " + r.reason : "")));
    for (const v of [r.profile, r.policy, r.agents, r.gpus]) tr.appendChild(el("td", v === null ? "" : v));
    tr.appendChild(el("td", r.experiments, "num"));
    tr.appendChild(el("td", r.main_val_bpb === null ? "" : num(r.main_val_bpb) + (r.noise_sd === null ? "" : " ± " + num(r.noise_sd)), "num main"));
    tr.appendChild(el("td", num(r.best_val_bpb), "num"));
    const promotions = el("td", null, "num");
    promotions.textContent = String(r.promotions);
    promotions.title = r.promoted.join(" ");
    tr.appendChild(promotions);
    tr.appendChild(el("td", "$" + num(r.spend_usd, 2) + " (" + r.tokens_in + " in / " + r.tokens_out + " out)", "num"));
    tr.appendChild(el("td", r.gpu_duty === null ? "" : (100 * r.gpu_duty).toFixed(1) + " %", "num"));
    tr.appendChild(el("td", num(r.wall_hours, 2), "num"));
    const pages = el("td");
    for (const [path, label] of [["", "overview"], ["lineage", "lineage"], ["constants", "constants"]]) {
      pages.appendChild(link(home + path, label));
      pages.appendChild(document.createTextNode(" "));
    }
    tr.appendChild(pages);
    return tr;
  }

  async function load(version) {
    const d = await first("/api/runs-index", version);
    const body = document.querySelector("#runs-index tbody");
    clear(body);
    for (const r of d.runs) body.appendChild(row(r));
    const traces = d.runs.filter((r) => r.main_hours.length).map((r, i) => ({
      type: "scatter", mode: "lines", name: r.name, x: r.main_hours, y: r.main_mean,
      line: { shape: "hv", width: 2.5, color: COLORS[i % COLORS.length] },
      hovertemplate: r.name.replace(/[%{}<>]/g, "_") + ": %{y:.4f} at %{x:.2f} h<extra></extra>",
    }));
    Plotly.react("chart-runs", traces, {
      margin: { t: 10, r: 10, b: 10, l: 10 }, xaxis: { title: { text: "hours since the run's start" }, automargin: true },
      yaxis: { title: { text: "main val_bpb" }, automargin: true }, legend: { orientation: "h", y: -0.15, yanchor: "top" },
      uirevision: "keep",
    }, plotConfig());
  }

  watch(load);
})();
