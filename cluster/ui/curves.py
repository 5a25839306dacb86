"""Training curves: the per-step loss and tokens/s a candidate's train.py printed, read back from its run.log.

These are the candidate's claim, not a verdict: train.py is untrusted code and prints what it likes (the trusted
evaluator's val_bpb is the only score). They are read host-side from the runner's bounded log
(``RUN/experiments/<id>/out/run.log``, at most ~1 MB: its first and last 512 KB) through the one safe reader,
:func:`cluster.sandbox.untrusted.read_beneath` (no link followed, only a regular file, bounded), so the trainer needs no
change. Two line formats are understood:

- upstream autoresearch: ``step 00042 (12.3%) | loss: 3.456789 | lrm: 1.00 | dt: 123ms | tok/sec: 1,234,567 |
  mfu: 39.8% | epoch: 1 | remaining: 250s`` (printed with ``\\r`` and no newline, so lines are split on both);
- this repo's seed trainer/train.py: ``step 00042 | loss 3.4568 | lrm 1.00 | dt 123ms | tok/s 1,234,567 |
  epoch 1 | 12.3%``.

Every number is checked (finite, in a plausible range) and the points are thinned to at most ``MAX_POINTS`` per
experiment, so a page of overlaid curves stays small at any run length.
"""

from __future__ import annotations

import math
import re
import threading
from pathlib import Path

from pydantic import BaseModel

from cluster.sandbox.untrusted import UnsafeFile, read_beneath

CLAIM = "the candidate's claim (printed by its own train.py), not a verdict"
LOG_READ_BYTES = 2 * 1024 * 1024  # the runner keeps at most 512 KB + 512 KB of run.log (trainer/runner.py)
MAX_POINTS = 400  # per experiment: enough for the shape of a curve, small enough for 16 of them on one page
MAX_STEP = 10**9
MAX_LOSS = 1e4
MAX_TOKENS_PER_SECOND = 1e12
_STEP_RE = re.compile(r"^\s*step[ :]+(\d{1,10})\b")
# A field: its name, then a number (maybe with thousands commas, and a unit). Written so that no two parts can
# match the same characters (no backtracking blow-up on a long run of digits or spaces the candidate prints).
_FIELD_RE = re.compile(r"^\s*([A-Za-z/_]+):?\s+"
                       r"([-+]?[0-9][0-9,]*(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?|nan|inf|-inf)\s*(?:(?:ms|s|%)\s*)?$")
MAX_FIELD = 80  # characters: a longer field is not a number the step line format prints
_KEYS = {"loss": "loss", "tok/sec": "tok_per_s", "tok/s": "tok_per_s"}


class Curve(BaseModel):
    """One experiment's printed training curve (thinned), or why there is none."""

    experiment_id: str
    step: list[int] = []
    loss: list[float | None] = []
    tok_per_s: list[float | None] = []
    lines: int = 0  # step lines found in the log (before thinning)
    note: str = ""  # why the curve is empty or partial


def _number(text: str, high: float) -> float | None:
    """A printed number if it is finite and within [0, high]: anything else the candidate printed is dropped."""
    try:
        value = float(text.replace(",", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) and 0.0 <= value <= high else None


def parse_steps(text: str) -> dict[int, tuple[float | None, float | None]]:
    """step -> (loss, tokens/s) of every step line in ``text`` (either format; the last line of a step wins)."""
    out: dict[int, tuple[float | None, float | None]] = {}
    for line in re.split(r"[\r\n]+", text):
        head = _STEP_RE.match(line)
        if head is None or "|" not in line:
            continue
        step = int(head.group(1))
        if step > MAX_STEP:
            continue
        found: dict[str, float | None] = {}
        for field in line.split("|")[1:]:
            m = _FIELD_RE.match(field) if len(field) <= MAX_FIELD else None
            key = _KEYS.get(m.group(1).lower()) if m else None
            if key is not None and key not in found:
                found[key] = _number(m.group(2), MAX_LOSS if key == "loss" else MAX_TOKENS_PER_SECOND)
        if found.get("loss") is not None or found.get("tok_per_s") is not None:
            out[step] = (found.get("loss"), found.get("tok_per_s"))
    return out


def thin(steps: list[int], budget: int = MAX_POINTS) -> list[int]:
    """At most ``budget`` of ``steps`` (sorted), evenly spread, the first and the last always kept."""
    if len(steps) <= budget:
        return steps
    stride = (len(steps) - 1) / (budget - 1)
    return [steps[round(k * stride)] for k in range(budget)]


def curve_of(run_dir: Path, eid: str) -> Curve:
    """The experiment's curve from its run.log (read safely, bounded), or an empty one that says why."""
    try:
        text, cut = read_beneath(run_dir, ["experiments", eid, "out", "run.log"], LOG_READ_BYTES)
    except UnsafeFile as exc:
        return Curve(experiment_id=eid, note=f"no log: {exc}")
    points = parse_steps(text)
    if not points:
        return Curve(experiment_id=eid, note="no step lines in its log")
    kept = thin(sorted(points))
    note = "the log was cut: its first steps are missing" if cut else ""
    return Curve(experiment_id=eid, step=kept, loss=[points[s][0] for s in kept],
                 tok_per_s=[points[s][1] for s in kept], lines=len(points), note=note)


class CurveCache:
    """Curves of finished experiments, kept: their logs no longer change (a new attempt changes the key)."""

    def __init__(self, run_dir: Path, size: int = 2048) -> None:
        self.run_dir, self._size = run_dir, size
        self._items: dict[tuple, Curve] = {}
        self._lock = threading.Lock()

    def get(self, eid: str, key: tuple, final: bool) -> Curve:
        """The curve of ``eid``; ``key`` names its attempt (start and finish times), ``final``: its log is done."""
        with self._lock:
            hit = self._items.get((eid, key))
        if hit is not None:
            return hit
        curve = curve_of(self.run_dir, eid)
        if final:
            with self._lock:
                if len(self._items) >= self._size:
                    self._items.pop(next(iter(self._items)))
                self._items[(eid, key)] = curve
        return curve
