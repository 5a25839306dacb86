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
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict
from rich.console import Console
from rich.live import Live
from rich.table import Table

from cluster.records.state import spend_summary


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


class FarmHeader(BaseModel):
    """What stays fixed for a whole farm run, as its observers show it (the live view's first line, the metrics'
    info and labels)."""

    model_config = ConfigDict(frozen=True)

    run_dir: str
    profile: str
    gpus: int
    sandbox: str
    agents: list[str] = []
    agent_kind: str = ""
    cost_cap_usd: float | None = None
    max_experiments: int | None = None


def status_of(state, header: FarmHeader, *, busy: int, asking: int, started: float, stopping: str, failure: str,
              main_class: str) -> FarmStatus:
    """The status of a farm whose state is ``state`` (cluster/records/state.py) now; call it in the driver's thread."""
    best, _ = state.best()
    elapsed = time.time() - started
    finished = len(state.finished)
    eta = None
    if header.max_experiments and finished:
        eta = max(0.0, (header.max_experiments - finished) * elapsed / finished)
    main = state.main_mean(main_class)
    return FarmStatus(
        run_dir=header.run_dir, profile=header.profile, gpus=header.gpus,
        gpus_busy=busy, queue=len(state.queue), proposals_pending=asking, finished=finished,
        by_status=state.counts(), main_commit=state.main_commit, main_val_bpb=main, best_val_bpb=best,
        promotions=state.promotions, experiments_per_hour=finished / elapsed * 3600 if elapsed > 0 else 0.0,
        elapsed_seconds=elapsed, eta_seconds=eta, cost_usd=state.cost_usd, cost_cap_usd=header.cost_cap_usd,
        rejected_proposals=state.rejected, stopping=stopping, failure=failure,
        best_experiment=_best_experiment(state), main_unmeasured=_why_unmeasured(state) if main is None else "",
        llm=spend_summary(state.spend, header.cost_cap_usd),
    )  # fmt: skip


class LiveView:
    """The terminal's view of one farm run: its header once, then ``status()`` (the driver's latest snapshot)."""

    def __init__(self, header: FarmHeader, status: Callable[[], FarmStatus]) -> None:
        self.header, self.status_now = header, status
        self.console = Console(stderr=False)
        self.interactive = sys.stdout.isatty()
        self.events: deque[str] = deque(maxlen=8)
        self.live: Live | None = None
        self._last = 0.0

    def __enter__(self) -> LiveView:
        h = self.header
        cap = f"${h.cost_cap_usd:g}" if h.cost_cap_usd is not None else "none"
        self.line(f"farm: run dir {h.run_dir} | profile {h.profile} | {h.gpus} GPU slot(s) | sandbox {h.sandbox} | "
                  f"{len(h.agents)} {h.agent_kind} agent(s) | LLM cost cap {cap} (--cost-cap)")
        if self.interactive:
            self.live = Live(self._table(), console=self.console, refresh_per_second=2, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.live.update(self._table())
            self.live.__exit__(*exc)
        s = self.status()
        self.line(f"farm: done ({s['stopping'] or 'no more work'}): {s['finished']} experiments, "
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
        return self.status_now().model_dump()

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
