"""What a person watching a running farm sees: a live table, or one line per event; and the snapshot behind it.

On a terminal a rich table redraws in place (GPUs busy, queue, experiments by
status, main and best val_bpb, ETA); anywhere else (CI, a log file) each
finished experiment and each decision is one plain line.

Every observer reads one ``FarmStatus`` snapshot: this view, status.json (`farm status`) and the metrics'
scrape thread. The driver builds it in its own thread and swaps it in whole, so no observer reads the state
while the driver changes it.
"""

from __future__ import annotations

import sys
import time
from collections import deque

from pydantic import BaseModel, ConfigDict
from rich.console import Console
from rich.live import Live
from rich.table import Table

from cluster.state import spend_summary


class FarmStatus(BaseModel):
    """The farm at one instant, as every observer sees it (status.json's fields)."""

    model_config = ConfigDict(frozen=True)

    run_dir: str
    profile: str
    gpus: int
    gpus_busy: int = 0
    queue: int = 0
    proposals_pending: int = 0
    finished: int = 0
    by_status: dict[str, int] = {}
    main_commit: str = ""
    main_val_bpb: float | None = None
    best_val_bpb: float | None = None
    promotions: int = 0
    experiments_per_hour: float = 0.0
    elapsed_seconds: float = 0.0
    eta_seconds: float | None = None
    cost_usd: float = 0.0
    cost_cap_usd: float | None = None
    rejected_proposals: int = 0
    stopping: str = ""
    failure: str = ""
    best_experiment: str = ""
    main_unmeasured: str = ""
    llm: dict = {}


def snapshot(farm) -> FarmStatus:
    """The status of ``farm`` (a cluster.driver.Farm) now; call it in the driver's thread."""
    st = farm.state
    best, _ = st.best()
    elapsed = time.time() - farm.started
    finished = len(st.finished)
    eta = None
    if farm.config.max_experiments and finished:
        eta = max(0.0, (farm.config.max_experiments - finished) * elapsed / finished)
    main = st.main_mean(farm.main_class())
    return FarmStatus(
        run_dir=str(farm.run_dir), profile=farm.profile.name, gpus=farm.config.gpus_total(),
        gpus_busy=len(farm.inflight), queue=len(st.queue), proposals_pending=len(farm.asking), finished=finished,
        by_status=st.counts(), main_commit=st.main_commit, main_val_bpb=main, best_val_bpb=best,
        promotions=st.promotions, experiments_per_hour=finished / elapsed * 3600 if elapsed > 0 else 0.0,
        elapsed_seconds=elapsed, eta_seconds=eta, cost_usd=st.cost_usd, cost_cap_usd=farm.config.cost_cap_usd,
        rejected_proposals=st.rejected, stopping=farm.stopping, failure=farm.failure,
        best_experiment=_best_experiment(st), main_unmeasured=_why_unmeasured(st) if main is None else "",
        llm=spend_summary(st.spend, farm.config.cost_cap_usd),
    )  # fmt: skip


class LiveView:
    def __init__(self, farm) -> None:
        self.farm = farm
        self.console = Console(stderr=False)
        self.interactive = sys.stdout.isatty()
        self.events: deque[str] = deque(maxlen=8)
        self.live: Live | None = None
        self._last = 0.0

    def __enter__(self) -> LiveView:
        f = self.farm
        cap = f"${f.config.cost_cap_usd:g}" if f.config.cost_cap_usd is not None else "none"
        self.line(f"farm: run dir {f.run_dir} | profile {f.profile.name} | {f.config.gpus_total()} GPU slot(s) | "
                  f"sandbox {f.executor.sandbox} | {f.config.agents.count} {f.config.agent_kind()} agent(s) | "
                  f"LLM cost cap {cap} (--cost-cap)")
        if self.interactive:
            self.live = Live(self._table(), console=self.console, refresh_per_second=2, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.live.update(self._table())
            self.live.__exit__(*exc)
        s = self.status()
        self.line(f"farm: done ({self.farm.stopping or 'no more work'}): {s['finished']} experiments, "
                  f"main {_fmt(s['main_val_bpb'])}, best {_fmt(s['best_val_bpb'])}, {s['promotions']} promotion(s)")

    def line(self, text: str) -> None:
        if self.live:
            self.live.console.print(text)
        else:
            print(text, flush=True)

    def note(self, text: str) -> None:
        self.events.append(text)
        self.line(f"  {time.strftime('%H:%M:%S')} {text}")

    def finished(self, work, row) -> None:
        bpb = _fmt(row.val_bpb)
        reason = f" ({row.reason[:80]})" if row.status != "ok" and row.reason else ""
        self.note(f"{work.experiment_id} {work.kind:<9} {row.status:<7} {bpb} {work.description[:60]}{reason}")

    def refresh(self) -> None:
        if self.live and time.monotonic() - self._last > 0.5:
            self._last = time.monotonic()
            self.live.update(self._table())

    def status(self) -> dict:
        return self.farm.snapshot.model_dump()

    def _table(self) -> Table:
        s = self.status()
        table = Table(title=f"autoresearch-farm  {s['run_dir']}", show_header=False, expand=False)
        table.add_column(style="bold")
        table.add_column()
        table.add_row("GPUs busy", f"{s['gpus_busy']}/{s['gpus']}   queue {s['queue']}   "
                      f"proposals in progress {s['proposals_pending']}")
        table.add_row("experiments", f"{s['finished']} finished "
                      + " ".join(f"{k}:{v}" for k, v in sorted(s["by_status"].items()))
                      + f"   {s['experiments_per_hour']:.0f}/h")
        table.add_row("main val_bpb", f"{_fmt(s['main_val_bpb'])}  ({s['main_commit'][:8]}, "
                      f"{s['promotions']} promotion(s))")
        table.add_row("best val_bpb", _fmt(s["best_val_bpb"]))
        eta = f"{s['eta_seconds'] / 60:.1f} min" if s["eta_seconds"] is not None else "-"
        table.add_row("elapsed / ETA", f"{s['elapsed_seconds'] / 60:.1f} min / {eta}")
        if s["cost_usd"]:
            table.add_row("LLM cost", f"${s['cost_usd']:.2f}")
        if s["cost_cap_usd"] is not None and s["cost_usd"]:
            table.add_row("LLM cap", f"${s['cost_cap_usd']:.2f}")
        if s["stopping"]:
            table.add_row("stopping", s["stopping"])
        for event in self.events:
            table.add_row("", event)
        return table


def _best_experiment(state) -> str:
    """The id of the first experiment that ran the best-measured train.py (its description after it)."""
    _, best_sha = state.best()
    eid = next((eid for eid, w in state.work.items() if w.train_sha == best_sha and eid in state.finished), None)
    return f"{eid}: {state.work[eid].description[:80]}" if eid else ""


def _why_unmeasured(state) -> str:
    """Why main has no measured val_bpb (yet): what its runs came to."""
    runs = [state.finished[eid] for eid, w in state.work.items()
            if w.train_sha == state.main_sha and eid in state.finished]
    failed = [r for r in runs if r.status != "ok"]
    if not failed:
        return "its baseline runs have not finished"
    first = failed[0]
    return f"its {len(failed)} run(s) failed; {first.experiment_id}: {first.status}: {(first.reason or '')[:200]}"


def _fmt(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "-"
