"""The training clock: how many seconds of the budget a run has used.

Upstream lets ``train.py`` count its own budget; here the harness counts it
from the moments training batches are drawn, so a candidate cannot slow its
own clock. Two ways to charge an interval between draws:

- ``wall``: as it is (GPU profiles; the budget stays the seed's wall clock).
- ``robust``: at most ``stall_factor`` x the median of recent intervals, or
  the median plus ``stall_floor`` seconds if that is more. On a
  shared 2-core machine a run can be descheduled for seconds; charging the
  stall would make the same config score very differently from run to run.
  A stall is not the candidate's doing, so it is not charged. A separate
  wall-time cap (checked by the runner) bounds what this could be gamed for.

The same class runs in the candidate process (so ``train.py`` can ask how
much budget is left) and in the trusted runner (which recomputes it from its
own receipt times and decides validity).
"""

from __future__ import annotations

import statistics
from collections import deque


class TrainingClock:
    """Charged training seconds, counted from train-batch draw times."""

    def __init__(
        self,
        clock: str,
        warmup_batches: int,
        stall_factor: float,
        stall_floor: float = 0.25,
        window: int = 63,
        compile_allowance: float = float("inf"),
        setup_allowance: float = float("inf"),
    ) -> None:
        if clock not in ("wall", "robust"):
            raise ValueError(f"clock must be 'wall' or 'robust', not {clock!r}")
        self.robust = clock == "robust"
        self.warmup_batches = warmup_batches
        self.stall_factor = stall_factor
        self.stall_floor = stall_floor
        self.compile_allowance = compile_allowance
        self.setup_allowance = setup_allowance
        self.hello_at: float | None = None  # train.py started running (the harness is ready)
        self.warmup_overrun = False  # charging began at the warm-up allowance's end, not at its last batch
        self.batches = 0
        self.started_at: float | None = None  # when charging began: the warm-up's end, or its allowance's
        self.charged = 0.0  # closed intervals only
        self.wall = 0.0  # uncapped seconds over the same intervals
        self.first_batch_at: float | None = None
        self._last: float | None = None  # time of the last draw, None while paused or before warm-up ends
        self._recent: deque[float] = deque(maxlen=window)
        self._cap = float("inf")

    def hello(self, now: float) -> None:
        """train.py starts running at ``now``: from here its own set-up is free only for ``setup_allowance``."""
        if self.hello_at is None and self.first_batch_at is None:
            self.hello_at = now

    def tick(self, now: float) -> None:
        """A training batch was drawn at ``now`` (monotonic seconds)."""
        self.batches += 1
        self._start_if_overran(now)
        if self.first_batch_at is None:
            self.first_batch_at = now
        if self._last is not None:
            self._close(now)
        if self.batches >= self.warmup_batches and self.started_at is None:
            self.started_at = self._last = now

    @property
    def setup_overrun(self) -> float:
        """Seconds charged before the first batch: train.py's set-up past its allowance (0 until the first batch)."""
        if self.first_batch_at is None or self.started_at is None:
            return 0.0
        return max(0.0, self.first_batch_at - self.started_at)

    def _start_if_overran(self, now: float) -> None:
        """Two windows are free of charge, each only for its allowance: train.py's set-up (from the harness's hello
        to its first batch) and the warm-up (compilation: from the first batch to the last warm-up batch). A
        script that trains in either past its allowance is charged from the allowance's end."""
        if self.started_at is not None:
            return
        if self.first_batch_at is None:
            if self.hello_at is not None and now > self.hello_at + self.setup_allowance:
                self.started_at = self._last = self.hello_at + self.setup_allowance
            return
        deadline = self.first_batch_at + self.compile_allowance
        if now > deadline:
            self.started_at = self._last = deadline
            self.warmup_overrun = True

    def pause(self, now: float) -> None:
        """Evaluation started: the interval up to now is training, what follows is not."""
        self._start_if_overran(now)
        if self._last is not None:
            self._close(now)
        self._last = None

    def seconds(self, now: float) -> float:
        """Charged seconds including the interval still open at ``now``."""
        self._start_if_overran(now)
        if self._last is None:
            return self.charged
        if self.first_batch_at is None:  # set-up past its allowance: all of it is charged, no stall is forgiven
            return self.charged + now - self._last
        return self.charged + min(now - self._last, self._cap)

    @property
    def median_interval(self) -> float:
        return statistics.median(self._recent) if self._recent else 0.0

    @property
    def step_allowance(self) -> float:
        """How far past the budget an honest run may be charged: one more interval."""
        if self.robust and self._cap != float("inf"):
            return self._cap
        return 3 * self.median_interval

    def _close(self, now: float) -> None:
        dt = max(0.0, now - self._last)
        self.wall += dt
        self.charged += min(dt, self._cap)
        self._recent.append(dt)
        if self.robust and len(self._recent) >= 5:
            median = statistics.median(self._recent)
            self._cap = max(self.stall_factor * median, median + self.stall_floor)
        self._last = now
