// Lineage: cytoscape.js with the server's preset layout (x: proposal order, y: val_bpb). Click opens a node.
"use strict";

(function () {
  const { get, el, expUrl, num, clear, fillSelect, watch } = window.farm;
  const form = document.getElementById("lineage-filter");
  const facts = document.getElementById("info-facts");
  let cy = null;
  let fitted = false;

  const X_STEP = 26; // the server's spacing of nodes along x (cluster/ui/lineage.py)
  const LABEL_ROOM = 44; // screen px between neighbours needed before every node is labelled (else only main's)

  // Sizes are in screen pixels (divided by the zoom), so a node and its label stay readable when thousands are
  // fitted; the other nodes' labels appear once the zoom leaves room for them (no overlapping ids).
  function style(zoom) {
    const px = (n) => n / zoom;
    const roomy = zoom * X_STEP >= LABEL_ROOM;
    return [
      { selector: "node", style: {
        "background-color": "#95a5a6", width: px(7), height: px(7), label: roomy ? "data(label)" : "", "font-size": px(11),
        color: "#333", "text-valign": "bottom", "text-margin-y": px(2) } },
      { selector: "node.candidate.ok", style: { "background-color": "#7f8fa6" } },
      { selector: "node.v-confirm, node.v-merging", style: { "background-color": "#f39c12", width: px(9), height: px(9) } },
      { selector: "node.failed", style: { "background-color": "#c0392b", shape: "diamond" } },
      { selector: "node.pending", style: { "background-color": "#bdc3c7", "border-width": px(1), "border-color": "#7f8c8d" } },
      { selector: "node.merge", style: { shape: "round-rectangle", "background-color": "#e67e22", width: px(9), height: px(9) } },
      { selector: "node.main-via", style: { "background-color": "#82e0aa", "border-width": px(1.5), "border-color": "#1e8449" } },
      { selector: "node.main", style: { "background-color": "#27ae60", width: px(13), height: px(13), "font-size": px(12),
        "font-weight": "bold", label: "data(label)", "border-width": px(2), "border-color": "#1e8449" } },
      { selector: "node.seed", style: { shape: "star", width: px(18), height: px(18) } },
      { selector: "node:selected", style: { "border-width": px(3), "border-color": "#2f6fde" } },
      { selector: "edge", style: { width: px(0.8), "line-color": "#c8ccd0", "curve-style": "haystack" } },
      { selector: "edge.merge", style: { "line-style": "dashed", "line-color": "#e67e22", width: px(1.5), "curve-style": "straight" } },
      { selector: "edge.mainline", style: { width: px(3.5), "line-color": "#27ae60", "z-index": 10, "curve-style": "straight" } },
      { selector: "node.axis", style: { width: px(1), height: px(1), "background-opacity": 0, label: "data(label)", "font-size": px(12),
        color: "#566573", "text-valign": "center", "text-halign": "left", "text-margin-x": px(-4), events: "no" } },
      { selector: "node.axis-band", style: { color: "#a6acaf", "font-style": "italic" } },
      { selector: "edge.grid", style: { width: px(1), "line-color": "#eaecee", "curve-style": "straight", "z-index": 0, events: "no" } },
    ];
  }

  let styledZoom = null;
  let yScale = 1; // the server's y positions stretched so the graph fills its box (its aspect is not the box's)
  let restyle = null;
  function followZoom() {
    clearTimeout(restyle);
    restyle = setTimeout(() => {
      const z = cy.zoom();
      if (styledZoom === null || Math.abs(Math.log(z / styledZoom)) > 0.15) {
        styledZoom = z;
        cy.style(style(z));
      }
    }, 120);
  }

  function show(data) {
    clear(facts);
    const rows = [["experiment", data.id], ["kind", data.kind], ["status", data.status], ["verdict", data.verdict],
      ["val_bpb", num(data.val)], ["mean of runs", data.runs > 1 ? num(data.mean) + " (" + data.runs + " runs)" : ""],
      ["agent", data.agent], ["description", data.desc]];
    for (const [k, v] of rows) {
      if (v === undefined || v === null || v === "") continue;
      facts.appendChild(el("dt", k));
      facts.appendChild(el("dd", v));
    }
  }

  function params() {
    const p = new URLSearchParams();
    p.set("last", form.elements.last.value || "0");
    if (form.elements.agent.value) p.set("agent", form.elements.agent.value);
    p.set("status", form.elements.status.value);
    if (form.elements.hide.checked) p.set("hide", "1");
    return p.toString();
  }

  async function load() {
    const g = await get("/api/lineage?" + params());
    const box = document.getElementById("graph");
    const width = Math.max(...g.nodes.map((n) => n.position.x)) - Math.min(...g.nodes.map((n) => n.position.x));
    const span = g.scale.height + 2 * g.scale.band;
    yScale = width > 0 && span > 0 ? Math.max(0.2, (width * box.clientHeight) / (box.clientWidth * span)) : 1;
    const elements = g.nodes.map((n) => ({ group: "nodes", data: n.data, classes: n.classes,
      position: { x: n.position.x, y: n.position.y * yScale } }))
      .concat(g.edges.map((e) => ({ group: "edges", data: e.data, classes: e.classes })));
    const big = g.nodes.length > 1500;
    if (!cy) {
      cy = cytoscape({
        container: document.getElementById("graph"), elements: elements, style: style(1),
        layout: { name: "preset" }, minZoom: 0.01, maxZoom: 6,
        textureOnViewport: big, hideEdgesOnViewport: big, pixelRatio: big ? 1 : "auto",
      });
      cy.on("mouseover", "node", (ev) => { if (!ev.target.hasClass("axis")) show(ev.target.data()); });
      cy.on("zoom", followZoom);
      window.farmLineage = cy; // for the browser tests and the console: the graph as drawn
      cy.on("tap", "node", (ev) => {
        const id = ev.target.id();
        if (!id.startsWith("@")) window.location.href = expUrl(id);
      });
    } else {
      cy.batch(() => {
        cy.elements().remove();
        cy.add(elements);
      });
    }
    if (!fitted) {
      cy.fit(undefined, 30);
      fitted = true;
      styledZoom = cy.zoom();
      cy.style(style(styledZoom));
    }
    document.getElementById("lineage-count").textContent = g.shown + " of " + g.matching + " matching (" +
      g.experiments + " candidates and merges), " + g.promotions.length + " promotion(s)";
    document.getElementById("graph").dataset.nodes = String(g.shown + 1);
    document.getElementById("graph").dataset.promotions = g.promotions.join(" ");
  }

  async function loadAgents() {
    const o = await get("/api/overview");
    fillSelect(form.elements.agent, o.filters.agent);
  }

  form.addEventListener("change", () => { fitted = false; load(); });
  form.addEventListener("submit", (ev) => { ev.preventDefault(); fitted = false; load(); });
  document.getElementById("fit").addEventListener("click", () => cy && cy.fit(undefined, 30));
  watch(async () => { await Promise.all([load(), loadAgents()]); });
})();
