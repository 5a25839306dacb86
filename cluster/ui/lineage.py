"""The lineage graph: experiments as nodes, parent -> child edges, merges, and main's promotions as one line.

Laid out here, not in the browser: a force or tree layout of thousands of
nodes takes the browser seconds, and would move every node each time the
live run adds one. x is the order in which experiments were proposed, y is
val_bpb (lower is better, and lower on the page,
like the overview chart; a labelled axis is drawn in), runs that are not ok or
not finished sit in a band above. Replicates (confirm runs) and main's
baselines re-measure code that is already a node, so they are folded into
it, not drawn. What is shown is bounded by the filters (the most recent N,
an agent, ok only, discarded leaves hidden); main's line and the ancestors
of every shown node are always kept, so each node is connected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cluster.ui.model import RunState, to_json
from cluster.vocabulary import CHANGE_KINDS

NODE_KINDS = CHANGE_KINDS  # the experiments that made a new file
MAIN_NODE = "@main"  # not a possible experiment id (they start with a letter or digit)
X_STEP, MIN_HEIGHT, ASPECT = 26.0, 700.0, 2.2  # the graph's height follows its width: fit() shows both
DEFAULT_LAST = 1500
MAX_LAST = 20000


@dataclass(frozen=True)
class LineageQuery:
    last: int = DEFAULT_LAST  # the most recent experiments shown (0: all, capped at MAX_LAST)
    agent: str = ""
    status: str = "all"  # all | ok | failed
    hide_discarded: bool = False  # discarded leaves (nothing grew from them) are folded away

    def key(self) -> tuple:
        return (self.last, self.agent, self.status, self.hide_discarded)


def main_commits(state: RunState) -> dict[str, str]:
    """main commit sha -> the node that put main there (MAIN_NODE for the seed)."""
    steps = state.repo.main_steps()
    out: dict[str, str] = {}
    for i, step in enumerate(steps):
        eid = step.experiment_id if step.experiment_id in state.index else None
        out[step.sha] = eid or (MAIN_NODE if i == 0 else out.get(steps[i - 1].sha, MAIN_NODE))
    if out:
        return out
    # no repo: main's commits are those its baselines ran on; each maps to the last promotion before it
    c, promotions = state.cols, state.main_line.promotions
    for commit, kind, t in zip(c["commit"], c["kind"], c["queued_ts"], strict=True):
        if kind == "baseline" and commit and commit not in out:
            before = [eid for when, eid in promotions if when <= (t or 0)]
            out[commit] = before[-1] if before else MAIN_NODE
    return out


def build(state: RunState, query: LineageQuery) -> bytes:
    """Cytoscape elements (preset positions) for ``query``, plus what was left out."""
    c = state.cols
    ids, kinds = c["experiment_id"], c["kind"]
    order = [i for i, k in enumerate(kinds) if k in NODE_KINDS]
    by_commit = {c["commit"][i]: ids[i] for i in order if c["commit"][i]}
    mains = main_commits(state)
    promoted = [e for e in state.promoted if e in state.index]
    on_main = set(promoted)

    def parent_of(i: int) -> str | None:
        p = c["parent_commit"][i]
        if not p:
            return None
        return by_commit.get(p) or mains.get(p)

    children: dict[str, int] = {}
    for i in order:
        p = parent_of(i)
        if p:
            children[p] = children.get(p, 0) + 1
    runs: dict[str, list[float]] = {}
    for i, r in enumerate(c["replicate_of"]):
        if r and c["status"][i] == "ok" and c["val_bpb"][i] is not None:
            runs.setdefault(r, []).append(c["val_bpb"][i])

    chosen = [i for i in order if _passes(c, i, query)]
    if query.hide_discarded:
        chosen = [i for i in chosen if ids[i] in on_main or children.get(ids[i]) or
                  c["verdict"][i] not in ("discard", "conflict", None) or c["status"][i] in ("queued", "running")]
    total = len(chosen)
    last = MAX_LAST if query.last <= 0 else min(query.last, MAX_LAST)
    chosen = chosen[-last:]
    shown = {ids[i] for i in chosen} | on_main
    position = {eid: i for i, eid in enumerate(ids)}
    for i in list(chosen):  # ancestors, so every node hangs off main
        p = parent_of(i)
        while p and p != MAIN_NODE and p not in shown:
            shown.add(p)
            p = parent_of(position[p])
    nodes_i = sorted(position[e] for e in shown)

    values = np.array([c["val_bpb"][i] for i in nodes_i if c["val_bpb"][i] is not None and c["status"][i] == "ok"])
    level = state.main_line.level
    if level:
        values = np.append(values, [level[0]["mean"]])
    lo, hi = (float(np.min(values)), float(np.percentile(values, 98))) if values.size else (0.0, 1.0)
    hi = hi if hi > lo else lo + 1e-3

    height = max(MIN_HEIGHT, len(nodes_i) * X_STEP / ASPECT)
    band = height / 8

    def y_of(v: float | None, status: str | None) -> float:
        if status in ("queued", "running"):
            return -2 * band
        if v is None or status != "ok":
            return -band
        return (hi - min(v, hi)) / (hi - lo) * height

    nodes = _axis(lo, hi, height, band, len(nodes_i) * X_STEP)
    nodes += [{"data": {"id": MAIN_NODE, "label": "main (seed)", "kind": "seed", "status": "ok",
                       "val": level[0]["mean"] if level else None, "desc": "the seed train.py"},
              "position": {"x": 0.0, "y": y_of(level[0]["mean"] if level else None, "ok")},
              "classes": "main seed"}]
    for rank, i in enumerate(nodes_i, 1):
        eid, status, verdict = ids[i], c["status"][i], c["verdict"][i]
        own = c["val_bpb"][i] if status == "ok" else None
        reps = [v for v in ([own] if own is not None else []) + runs.get(eid, [])]
        classes = [kinds[i], _status_class(status), f"v-{verdict}" if verdict else "v-none"]
        if eid in on_main:
            classes.append("main")
        elif verdict in ("merging", "staged") and state.fate(eid).get("on_main"):
            classes.append("main-via")  # its change reached main through the merge (or stage) that carried it
        nodes.append({"data": {"id": eid, "label": eid, "kind": kinds[i], "status": status, "verdict": verdict,
                               "val": own, "mean": sum(reps) / len(reps) if reps else None, "runs": len(reps),
                               "agent": c["agent"][i], "desc": (c["description"][i] or "")[:200]},
                      "position": {"x": rank * X_STEP, "y": y_of(own, status)}, "classes": " ".join(classes)})
    node_ids = {n["data"]["id"] for n in nodes if "axis" not in n["classes"]}
    edges = []
    for i in nodes_i:
        p = parent_of(i)
        if p in node_ids:
            edges.append({"data": {"id": f"p:{ids[i]}", "source": p, "target": ids[i]}, "classes": "child"})
        merged = state.merged_from({"kind": kinds[i], "description": c["description"][i]})
        if merged in node_ids:
            edges.append({"data": {"id": f"m:{ids[i]}", "source": merged, "target": ids[i]}, "classes": "merge"})
    line = [MAIN_NODE, *promoted]
    for a, b in zip(line, line[1:], strict=False):
        edges.append({"data": {"id": f"main:{b}", "source": a, "target": b}, "classes": "mainline"})
    edges += [{"data": {"id": f"grid:{n['data']['id']}", "source": n["data"]["id"], "target": n["data"]["pair"]},
               "classes": "grid"} for n in nodes if "axis-left" in n["classes"]]
    return to_json({"version": state.version, "nodes": nodes, "edges": edges,
                    "shown": sum(1 for n in nodes if "axis" not in n["classes"]) - 1,
                    "matching": total, "experiments": len(order), "promotions": promoted,
                    "scale": {"lo": lo, "hi": hi, "height": height, "band": band}})


def _axis(lo: float, hi: float, height: float, band: float, width: float) -> list[dict]:
    """The y axis drawn into the graph (cytoscape has none): a labelled grid line at round val_bpb values, and the
    two bands above for runs that have no value. Ids start with ``@axis``: no experiment id can."""
    step = _nice_step((hi - lo) / 5)
    ticks = _ticks(lo, hi, step)
    while len(ticks) < 4 and step > 1e-6:  # a round step can leave two ticks in the range: take the next finer one
        power = 10 ** math.floor(math.log10(step) + 1e-9)
        step = {1: 0.5, 2: 1.0, 5: 2.0}.get(round(step / power), 0.5) * power
        ticks = _ticks(lo, hi, step)
    digits = max(0, -math.floor(math.log10(step))) if step > 0 else 3
    left, right = -3 * X_STEP, width + X_STEP
    out = []
    for k, value in enumerate(ticks):
        y = (hi - value) / (hi - lo) * height
        label = f"{value:.{digits}f}"
        out.append({"data": {"id": f"@axis{k}", "label": label, "pair": f"@axis{k}r"}, "position": {"x": left, "y": y},
                    "classes": "axis axis-left"})
        out.append({"data": {"id": f"@axis{k}r", "label": ""}, "position": {"x": right, "y": y},
                    "classes": "axis axis-right"})
    for k, (label, y) in enumerate((("not ok", -band), ("queued / running", -2 * band))):
        out.append({"data": {"id": f"@band{k}", "label": label}, "position": {"x": left, "y": y},
                    "classes": "axis axis-band"})
    return out


def _ticks(lo: float, hi: float, step: float) -> list[float]:
    first = math.ceil(lo / step - 1e-9) * step
    return [first + k * step for k in range(int((hi - first) / step + 1e-9) + 1)]


def _nice_step(raw: float) -> float:
    """1, 2 or 5 times a power of ten, at least ``raw``: round tick values."""
    if raw <= 0 or not math.isfinite(raw):
        return 0.1
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def _passes(c: dict, i: int, query: LineageQuery) -> bool:
    if query.agent and c["agent"][i] != query.agent:
        return False
    status = c["status"][i]
    if query.status == "ok":
        return status == "ok"
    if query.status == "failed":
        return status not in ("ok", "queued", "running")
    return True


def _status_class(status: str | None) -> str:
    if status == "ok":
        return "ok"
    if status in ("queued", "running"):
        return "pending"
    return "failed"
