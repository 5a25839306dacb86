"""A farm that cannot work stops and says why: the loop's health watch.

Two rules, each from what the ledger shows, so a resumed farm applies them the same way:

- the farm's own faults pile up (status ``error``: no result, a lost task, a sandbox that cannot start, data
  missing) with no ``ok`` between: the machine, not the candidates, is broken;
- main itself cannot run (its baselines fail), so nothing can ever be judged against it.

Only ``error`` counts toward the first rule, so no candidate can stop the farm by failing.
"""

from __future__ import annotations

from pathlib import Path

from cluster.records.ledger import LedgerRow
from cluster.records.state import FarmState, Work


class HealthWatch:
    """Says why the farm must stop, from each finished run as it is booked; "" while it can go on."""

    def __init__(self, state: FarmState, run_dir: Path, max_consecutive_errors: int, baseline_replicates: int) -> None:
        self.state, self.run_dir = state, run_dir
        self.max_errors, self.baseline_replicates = max_consecutive_errors, baseline_replicates
        self._errors_in_row: list[tuple[str, str]] = []  # farm faults (status error) since the last ok result

    def check(self, work: Work, row: LedgerRow) -> str:
        """Why the farm cannot go on after ``row`` (the finished run of ``work``), or ""."""
        return self._faults(work, row) or self._main_cannot_run(work, row)

    def _faults(self, work: Work, row: LedgerRow) -> str:
        if row.status == "ok":
            self._errors_in_row = []
        elif row.status == "error":
            self._errors_in_row.append((work.experiment_id, row.reason or "no reason given"))
            if self.max_errors and len(self._errors_in_row) >= self.max_errors:
                eid, reason = self._errors_in_row[0]
                return (f"{len(self._errors_in_row)} experiments in a row failed through the farm's own fault "
                        f"(status error), none ok in between; the first, {eid}: {reason[:300]} (full log: "
                        f"{self.run_dir / 'experiments' / eid / 'out'}/)")
        return ""

    def _main_cannot_run(self, work: Work, row: LedgerRow) -> str:
        state = self.state
        if work.kind != "baseline" or work.train_sha != state.main_sha or row.status == "ok":
            return ""
        runs = [state.finished[eid] for eid, w in state.work.items()
                if w.train_sha == state.main_sha and eid in state.finished]
        own = [r for r in runs if r.status != "error"]  # the farm's own faults: the rule above
        failed = [r for r in own if r.status != "ok"]
        pending = state.pending_replicates(state.main_sha)
        # None ok, or so many failed (replicates on other seeds refused, say) that main can never be measured.
        hopeless = len(failed) >= 2 * max(1, self.baseline_replicates)
        if not failed or not (hopeless or (not any(r.status == "ok" for r in runs) and not pending)):
            return ""
        first = failed[0]
        return (f"main cannot run: {len(failed)} of its {len(runs)} baseline run(s) failed, so nothing "
                f"can be judged against it; {first.experiment_id}: {first.status}: {(first.reason or '')[:300]} "
                f"(log: {self.run_dir / 'experiments' / first.experiment_id / 'out' / 'run.log'})")
