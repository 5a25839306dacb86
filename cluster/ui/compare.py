"""Comparing experiments (two or more, picked from the runs table): the table, the judged differences, the diffs.

Each experiment's val_bpb is its replicate mean (its own run and its confirmations: the number its verdict
weighs), and a difference of two means is put in the judge's standard errors: the noise sd pooled over every file
run more than once on that GPU class (``RunState.noise``, as ``noise_models`` pools it), se = sd sqrt(1/n_a +
1/n_b). Experiments measured on different GPU classes are not put in standard errors.
"""

from __future__ import annotations

import math

import pyarrow.compute as pc
from pydantic import BaseModel

from cluster.ui.model import MAIN_RE, RunState, show_value

MAX_COMPARED = 8  # experiments on one compare page: columns stay readable, the pairwise table stays small
# (field, label, decimals: None for text) of the compare table, in reading order
COMPARE_FIELDS: tuple[tuple[str, str, int | None], ...] = (
    ("kind", "kind", None), ("status", "status", None), ("verdict", "verdict", None), ("agent", "agent", None),
    ("description", "description", None), ("training_seconds", "training time (s)", 1),
    ("total_seconds", "total time (s)", 1), ("peak_memory_mb", "peak memory (MB)", 0), ("num_steps", "steps", 0),
    ("num_params_M", "parameters (M)", 2), ("mfu_percent", "MFU (%)", 1), ("gpu_class", "GPU class", None),
    ("seed", "seed", None), ("cost_usd", "LLM cost (USD)", 4), ("commit", "commit", None),
    ("parent_commit", "parent commit", None), ("reason", "reason", None),
)


class Measured(BaseModel):
    """One experiment's ok runs (its own and its confirmations) and where they ran; or, where the runs are not at
    hand, the mean and count a verdict's reason states (``stated``: main's, as the judge weighed it)."""

    experiment_id: str
    values: list[float] = []
    gpu_class: str
    stated: tuple[float, int] | None = None

    @property
    def n(self) -> int:
        return self.stated[1] if self.stated else len(self.values)

    @property
    def mean(self) -> float | None:
        if self.stated:
            return self.stated[0]
        return sum(self.values) / len(self.values) if self.values else None


class Judged(BaseModel):
    """The difference b - a of two replicate means, in the judge's standard errors where it can be."""

    a: str
    b: str
    delta: float | None = None
    se: float | None = None
    z: float | None = None
    note: str = ""  # the standard error's make-up, or why there is none


def measured(state: RunState, eid: str) -> Measured:
    row = state.row(eid) or {}
    values = [r["val_bpb"] for r in state.replicates_of(eid) if r and r["status"] == "ok" and r["val_bpb"] is not None]
    return Measured(experiment_id=eid, values=values, gpu_class=row.get("gpu_class") or "cpu")


def judged(state: RunState, a: Measured, b: Measured) -> Judged:
    """b - a, and in standard errors: se = sd sqrt(1/n_a + 1/n_b), sd the judge's pooled noise on their GPU class."""
    out = Judged(a=a.experiment_id, b=b.experiment_id)
    if a.mean is None or b.mean is None or not a.n or not b.n:
        out.note = "no ok run on one side"
        return out
    out.delta = b.mean - a.mean
    if a.gpu_class != b.gpu_class:
        out.note = f"not compared: measured on {a.gpu_class} and {b.gpu_class}"
        return out
    noise = state.noise.get(a.gpu_class)
    if not noise:
        out.note = f"no noise measured on {a.gpu_class} yet (no file run twice)"
        return out
    sd, df = noise
    se = sd * math.sqrt(1 / a.n + 1 / b.n)
    if se > 0:
        out.se, out.z = se, out.delta / se
        out.note = f"se {se:.4f}: noise sd {sd:.4f}, df {df}, pooled on {a.gpu_class}"
    return out


def sigmas(state: RunState) -> list[float | None]:
    """The runs table's "sigmas" column: for each experiment with a verdict that names the main it was judged
    against (``vs main M (n=N) on GPU``, its last such verdict: a later "merging" names none), its replicate mean's
    difference from that main in the judge's standard errors (:func:`judged`, as compare puts it); None where no
    verdict names a main or no noise is measured on its GPU class."""
    c, table, ev = state.cols, state.table, state.snapshot.events
    named = pc.and_(pc.equal(ev.column("event"), "verdict"), pc.match_substring(ev.column("reason"), "vs main "))
    judged_by = {r["experiment_id"]: r["reason"]
                 for r in ev.filter(pc.fill_null(named, False)).select(["experiment_id", "reason"]).to_pylist()}
    means, counts = table.column("mean_val_bpb").to_pylist(), table.column("n_runs").to_pylist()
    out: list[float | None] = []
    for eid, gpu, mean, n in zip(c["experiment_id"], c["gpu_class"], means, counts, strict=True):
        m = MAIN_RE.search(judged_by.get(eid) or "") if mean is not None else None
        if not m:
            out.append(None)
            continue
        gpu = m.group(3) or gpu or "cpu"
        main = Measured(experiment_id="main", gpu_class=gpu, stated=(float(m.group(1)), int(m.group(2))))
        out.append(judged(state, main, Measured(experiment_id=eid, gpu_class=gpu, stated=(mean, n))).z)
    return out


def compare_rows(state: RunState, rows: list[dict]) -> list[dict]:
    """The compare table, as a reader wants it: labels, rounded numbers, each experiment's replicate mean (the
    number its verdict weighs, not its screening run) and, for two, the difference b - a where both are numbers.
    Each row: ``label``, ``values`` (one text per experiment), ``delta`` (two only), ``key``, ``differs``."""
    two = len(rows) == 2
    runs = [measured(state, r["experiment_id"]) for r in rows]

    def numbers(values: list, digits: int, key: str, label: str) -> dict:
        delta = _signed(values[0], values[1], digits) if two else ""
        return {"label": label, "values": [_fixed(v, digits) for v in values], "delta": delta, "key": key}

    out = [numbers([m.mean for m in runs], 4, "mean", "val_bpb, mean of its runs"),
           {"label": "runs (ok)", "values": [str(m.n) for m in runs], "delta": "", "key": "runs"}]
    if two:
        j = judged(state, runs[0], runs[1])
        text = f"{j.z:+.1f} se ({j.note})" if j.z is not None else (j.note if j.note.startswith("not") else "")
        out.append({"label": "difference in standard errors", "values": ["", ""], "delta": text, "key": "z"})
    out.append(numbers([r.get("val_bpb") for r in rows], 4, "val_bpb", "val_bpb, its first run"))
    for key, label, digits in COMPARE_FIELDS:
        values = [r.get(key) for r in rows]
        if digits is None:
            out.append({"label": label, "values": [show_value(v) for v in values], "delta": "", "key": key})
        else:
            out.append(numbers(values, digits, key, label))
    out = [r for r in out if any(r["values"]) or r["delta"]]  # a field no experiment has says nothing
    for r in out:
        r["differs"] = len(set(r["values"])) > 1
    return out


def pairwise(state: RunState, ids: list[str]) -> list[list[Judged | None]]:
    """Every pair's judged difference: cell [i][j] is column j's mean minus row i's (None on the diagonal)."""
    runs = [measured(state, eid) for eid in ids]
    return [[judged(state, a, b) if a is not b else None for b in runs] for a in runs]


def _fixed(value: float | None, digits: int) -> str:
    return "" if value is None or value != value else f"{value:,.{digits}f}"


def _signed(a: float | None, b: float | None, digits: int) -> str:
    """b - a with its sign, or nothing when either is missing."""
    if a is None or b is None or a != a or b != b:
        return ""
    return f"{b - a:+,.{digits}f}"
