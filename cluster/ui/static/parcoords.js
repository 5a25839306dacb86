// A parallel-coordinates view (as in Optuna Dashboard), drawn as plain SVG: the vendored plotly bundle is the
// small "basic" one (no parcoords trace, which would also need WebGL). One vertical axis per constant and one for
// val_bpb; one line per change through its values. Drag along an axis to keep only the lines inside that range
// (several axes combine); a click on an axis without a drag clears its range. Text goes in with textContent only.
"use strict";

window.farmParcoords = (function () {
  const NS = "http://www.w3.org/2000/svg";
  const MARGIN = { top: 34, bottom: 24, left: 40, right: 60 };
  // The drag in progress (one at a time): the page, not the chart, hears its moves and its end, so a drag that
  // leaves the chart still ends.
  let drag = null;
  document.addEventListener("mousemove", (ev) => drag && drag.move(ev));
  document.addEventListener("mouseup", (ev) => {
    const done = drag;
    drag = null;
    if (done) done.end(ev);
  });

  function svg(tag, attrs, text) {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function short(v) {
    return Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(2) : String(Number(v.toPrecision(4)));
  }

  // A scale from values to [0, 1]: logarithmic when every value is positive and they span 50x or more (learning
  // rates, batch sizes), else linear.
  function scaleOf(values) {
    const lo = Math.min(...values);
    const hi = Math.max(...values);
    const log = lo > 0 && hi / lo >= 50;
    const f = log ? Math.log : (v) => v;
    const a = f(lo);
    const span = f(hi) - a || 1;
    return { lo, hi, log, at: (v) => (f(v) - a) / span, back: (u) => (log ? Math.exp(a + u * span) : a + u * span) };
  }

  // axes: [{name, label}]; rows: [{id, values: {name: number}, colour, strong}] (values may lack a name: a gap).
  // onOpen(id): a click on a line. Returns the ids of the lines drawn, in order.
  function draw(box, axes, rows, onOpen) {
    while (box.firstChild) box.removeChild(box.firstChild);
    const width = Math.max(400, box.clientWidth || 800);
    const height = Math.max(240, box.clientHeight || 360);
    const root = svg("svg", { width, height, viewBox: "0 0 " + width + " " + height, id: "parcoords-svg", role: "img" });
    root.appendChild(svg("title", {}, "parallel coordinates: " + axes.map((a) => a.label).join(", ")));
    const plotH = height - MARGIN.top - MARGIN.bottom;
    const step = axes.length > 1 ? (width - MARGIN.left - MARGIN.right) / (axes.length - 1) : 0;
    const xOf = (i) => MARGIN.left + i * step;
    const scales = axes.map((a) => {
      const vs = rows.map((r) => r.values[a.name]).filter((v) => v !== undefined && v !== null && Number.isFinite(v));
      return vs.length ? scaleOf(vs) : null;
    });
    const yOf = (i, v) => MARGIN.top + (1 - scales[i].at(v)) * plotH;
    const ranges = axes.map(() => null); // [lo, hi] in values, per axis, or null
    const lines = svg("g", { class: "pc-lines" });
    const paths = rows.map((r) => {
      let d = "";
      let pen = false;
      axes.forEach((a, i) => {
        const v = r.values[a.name];
        if (v === undefined || v === null || !scales[i]) { pen = false; return; }
        d += (pen ? "L" : "M") + xOf(i).toFixed(1) + " " + yOf(i, v).toFixed(1);
        pen = true;
      });
      const path = svg("path", { d, fill: "none", stroke: r.colour, "stroke-width": r.strong ? 2.5 : 1.2,
        "stroke-opacity": r.strong ? 0.95 : 0.55, class: "pc-line" + (r.strong ? " pc-strong" : ""), "data-id": r.id });
      path.appendChild(svg("title", {}, r.title || r.id));
      path.addEventListener("click", () => onOpen(r.id));
      return path;
    });
    // the strong lines (promoted changes) last: on top
    for (const p of paths.filter((p) => !p.classList.contains("pc-strong"))) lines.appendChild(p);
    for (const p of paths.filter((p) => p.classList.contains("pc-strong"))) lines.appendChild(p);
    root.appendChild(lines);

    function restyle() {
      rows.forEach((r, k) => {
        const inside = axes.every((a, i) => {
          const range = ranges[i];
          const v = r.values[a.name];
          return !range || (v !== undefined && v !== null && v >= range[0] && v <= range[1]);
        });
        paths[k].classList.toggle("pc-dim", !inside);
      });
      box.dataset.kept = String(paths.filter((p) => !p.classList.contains("pc-dim")).length);
    }

    axes.forEach((a, i) => {
      const g = svg("g", { class: "pc-axis", "data-axis": a.name });
      const x = xOf(i);
      g.appendChild(svg("line", { x1: x, x2: x, y1: MARGIN.top, y2: MARGIN.top + plotH, stroke: "#34495e", "stroke-width": 1 }));
      g.appendChild(svg("text", { x, y: MARGIN.top - 18, "text-anchor": "middle", class: "pc-name" }, a.label));
      const s = scales[i];
      if (s) {
        const ticks = s.lo === s.hi ? [0.5] : [0, 0.25, 0.5, 0.75, 1];
        for (const u of ticks) {
          const y = MARGIN.top + (1 - u) * plotH;
          g.appendChild(svg("line", { x1: x - 3, x2: x + 3, y1: y, y2: y, stroke: "#34495e" }));
          g.appendChild(svg("text", { x: x + 5, y: y + 3, class: "pc-tick" }, short(s.lo === s.hi ? s.lo : s.back(u))));
        }
        if (s.log) g.appendChild(svg("text", { x, y: MARGIN.top - 6, "text-anchor": "middle", class: "pc-tick" }, "log scale"));
      }
      const band = svg("rect", { x: x - 7, width: 14, y: MARGIN.top, height: 0, class: "pc-brush" });
      g.appendChild(band);
      // a wide transparent handle to drag on
      const handle = svg("rect", { x: x - 12, width: 24, y: MARGIN.top, height: plotH, fill: "transparent", class: "pc-handle" });
      g.appendChild(handle);
      const yIn = (ev) => Math.min(MARGIN.top + plotH, Math.max(MARGIN.top, ev.clientY - root.getBoundingClientRect().top));
      handle.addEventListener("mousedown", (ev) => {
        ev.preventDefault();
        const from = yIn(ev);
        drag = { move: (e) => {
          const to = yIn(e);
          band.setAttribute("y", Math.min(from, to));
          band.setAttribute("height", Math.abs(to - from));
        }, end: (e) => brushed(from, yIn(e)) };
      });
      const brushed = (from, to) => {
        const top = Math.min(from, to);
        const bottom = Math.max(from, to);
        if (!s || bottom - top < 3) { // a click: clear this axis's range
          ranges[i] = null;
          band.setAttribute("height", 0);
        } else {
          const v1 = s.back(1 - (top - MARGIN.top) / plotH);
          const v2 = s.back(1 - (bottom - MARGIN.top) / plotH);
          ranges[i] = [Math.min(v1, v2), Math.max(v1, v2)];
          band.setAttribute("y", top);
          band.setAttribute("height", bottom - top);
        }
        restyle();
      };
      root.appendChild(g);
    });
    box.appendChild(root);
    restyle();
    return rows.map((r) => r.id);
  }

  return { draw };
})();
