// Compare: the tables and diffs are rendered by the server (escaped); this draws the experiments' training curves
// (the candidates' claim, not a verdict) and keeps the live badge current.
"use strict";

(function () {
  const { drawCurves, watch } = window.farm;
  const ids = (document.getElementById("page").dataset.ids || "").split(",").filter(Boolean);
  const loss = document.getElementById("chart-loss");
  watch(async () => {
    if (ids.length >= 2 && loss) await drawCurves(ids, loss, document.getElementById("chart-speed"), document.getElementById("curves-note"));
  });
})();
