// Constants as data (as in Optuna Dashboard): each change's numeric train.py constants, a per-constant slice
// (value against the mean of its runs, with the sd of its runs) and a table with a column per constant.
// The chosen constant lives in the URL (?name=DEPTH). Everything shown from the run is set as text.
"use strict";

(function () {
  const { get, el, link, expUrl, num, clear, watch, plotConfig } = window.farm;
  const form = document.getElementById("constants-filter");
  const url = new URLSearchParams(window.location.search);
  let data = null;

  function value(v) {
    return Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(3) : String(Number(v.toPrecision(6)));
  }

  function colour(r) {
    if (data.promoted.includes(r.id)) return "#27ae60";
    if (r.verdict === "discard" || r.verdict === "conflict") return "#95a5a6";
    return "#2f6fde";
  }

  function drawSlice() {
    const name = form.elements.name.value;
    const onlyChanged = form.elements.changed.checked;
    const rows = data.rows.filter((r) => r.mean !== null && name in r.values && (!onlyChanged || r.changed.includes(name)));
    document.getElementById("constants-count").textContent = rows.length + " change(s) with a value of " + name +
      " and an ok run; " + (data.changed[name] || 0) + " changed it";
    const sd = rows.map((r) => (r.se !== null ? r.se : r.sd !== null ? r.sd : data.noise_sd || 0));
    // main now, with its noise band (± the sd of repeated runs): a point inside it is not told apart from main
    const band = data.main_mean === null ? [] : [
      { type: "rect", xref: "paper", x0: 0, x1: 1, y0: data.main_mean - (data.noise_sd || 0), y1: data.main_mean + (data.noise_sd || 0),
        fillcolor: "rgba(39,174,96,0.15)", line: { width: 0 }, layer: "below" },
      { type: "line", xref: "paper", x0: 0, x1: 1, y0: data.main_mean, y1: data.main_mean, line: { color: "#27ae60", width: 1.5 } },
    ];
    Plotly.react("chart-slice", [{
      type: "scatter", mode: "markers", x: rows.map((r) => r.values[name]), y: rows.map((r) => r.mean),
      customdata: rows.map((r) => r.id), text: rows.map((r) => r.id + " · " + name + " = " + value(r.values[name]) + " · mean " + num(r.mean) + " (n=" + r.n + ")" + (r.se !== null ? " ± se " + num(r.se) : "") + (r.sd !== null ? " · sd of its runs " + num(r.sd) : "")),
      hovertemplate: "%{text}<extra></extra>", error_y: { type: "data", array: sd, visible: true, thickness: 1, color: "#aab7b8" },
      marker: { size: 9, color: rows.map(colour), opacity: 0.85 },
    }], {
      margin: { t: 10, r: 10, b: 10, l: 10 }, xaxis: { title: { text: name }, automargin: true },
      yaxis: { title: { text: "val_bpb, mean of its runs" }, automargin: true }, showlegend: false, hovermode: "closest",
      shapes: band, annotations: band.length ? [{ xref: "paper", x: 1, xanchor: "right", y: data.main_mean, yanchor: "bottom",
        text: "main " + num(data.main_mean) + " ± noise sd " + num(data.noise_sd), showarrow: false, font: { size: 11, color: "#1e8449" } }] : [],
    }, plotConfig());
    const div = document.getElementById("chart-slice");
    if (!div.dataset.bound) {
      div.dataset.bound = "1";
      div.on("plotly_click", (ev) => {
        const id = ev.points && ev.points[0] && ev.points[0].customdata;
        if (id) window.location.href = expUrl(id);
      });
    }
    const search = new URLSearchParams({ name: name });
    if (onlyChanged) search.set("changed", "1");
    window.history.replaceState(null, "", window.location.pathname + "?" + search.toString());
  }

  // Parallel coordinates: the constants changed most (up to PC_AXES) and val_bpb; the best PC_LINES changes by
  // mean (an SVG line each: thousands stay fast enough, tens of thousands would not). Colour: rank by mean.
  const PC_AXES = 8;
  const PC_LINES = 1500;

  function drawParcoords() {
    const names = data.names.slice(0, PC_AXES);
    const ranked = data.rows.filter((r) => r.mean !== null).sort((a, b) => a.mean - b.mean);
    const rows = ranked.slice(0, PC_LINES);
    const shade = (k) => {
      const u = rows.length > 1 ? k / (rows.length - 1) : 0; // 0 best .. 1 worst
      return "rgb(" + Math.round(31 + u * 200) + "," + Math.round(95 + u * 80) + "," + Math.round(191 - u * 120) + ")";
    };
    const lines = rows.map((r, k) => ({
      id: r.id, values: Object.assign({ __val_bpb: r.mean }, r.values), strong: data.promoted.includes(r.id),
      colour: data.promoted.includes(r.id) ? "#27ae60" : shade(k),
      title: r.id + " · mean " + num(r.mean) + " (n=" + r.n + ") · " + names.filter((n) => n in r.values).map((n) => n + " = " + value(r.values[n])).join(", "),
    }));
    const axes = names.map((n) => ({ name: n, label: n })).concat([{ name: "__val_bpb", label: "val_bpb (mean)" }]);
    window.farmParcoords.draw(document.getElementById("parcoords"), axes, lines, (id) => { window.location.href = expUrl(id); });
    document.getElementById("parcoords-note").textContent = (ranked.length > rows.length ? rows.length + " best of " + ranked.length : rows.length) +
      " changes with an ok run; the " + names.length + " constants changed most; promoted changes green; drag along an axis to keep a range, click it to clear";
  }

  function drawTable() {
    const head = document.querySelector("#constants thead tr");
    clear(head);
    for (const h of ["id", "verdict", "mean (n)", ...data.names]) head.appendChild(el("th", h));
    const body = document.querySelector("#constants tbody");
    clear(body);
    const rows = data.rows.filter((r) => r.mean !== null).sort((a, b) => a.mean - b.mean).slice(0, 300);
    for (const r of rows) {
      const tr = el("tr");
      tr.dataset.id = r.id;
      const id = el("td");
      id.appendChild(link(expUrl(r.id), r.id));
      tr.appendChild(id);
      tr.appendChild(el("td", r.verdict));
      tr.appendChild(el("td", num(r.mean) + " (" + r.n + ")", "num"));
      for (const n of data.names) tr.appendChild(el("td", n in r.values ? value(r.values[n]) : "", r.changed.includes(n) ? "num changed" : "num"));
      body.appendChild(tr);
    }
  }

  async function load() {
    data = await get("/api/constants");
    const select = form.elements.name;
    const keep = select.value || url.get("name");
    clear(select);
    for (const n of data.names) {
      const o = el("option", n + " (changed " + (data.changed[n] || 0) + "x)");
      o.value = n;
      select.appendChild(o);
    }
    if (keep && data.names.includes(keep)) select.value = keep;
    if (url.get("changed") === "1") form.elements.changed.checked = true;
    if (!data.names.length) {
      document.getElementById("constants-count").textContent = data.repo ? "no numeric constant differs between the changes (yet)" : "no research repo: constants are read from it";
      return;
    }
    drawSlice();
    drawParcoords();
    drawTable();
  }

  form.addEventListener("change", () => data && data.names.length && drawSlice());
  watch(load);
})();
