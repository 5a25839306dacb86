"""The driver's Prometheus metrics (``farm_*``), on their own registry and port.

The driver calls one method per event (an experiment dispatched or finished,
a proposal back, a promotion); each is a few dict updates under a lock that
the scrape thread holds only while it copies the numbers, so the loop never
waits on bookkeeping. Gauges that mirror the loop's own state (queue depth,
experiments and proposals in flight) are read at scrape time; reading a
``len()`` is safe from another thread. Values that need a walk over the
state (main's and the best val_bpb) are computed by the driver's thread when
an experiment finishes or main moves, because walking dicts the loop is
changing from the scrape thread could fail.

Every label has a bounded set of values (statuses, kinds, phases, the
population's agent names, error kinds), and every known combination starts
at 0, so a dashboard query has data from the first scrape. Experiment ids are
never labels: they are in the ledger. Ray's own metrics are left to Ray.

Served by :func:`serve` (prometheus-client's WSGI server on a daemon thread)
at ``http://ADDRESS:PORT/metrics``.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from cluster.vocabulary import FAILURE_KINDS, FINISHED_STATUSES, WORK_KINDS

if TYPE_CHECKING:
    from cluster.execution.agents import ProposalOutcome
    from cluster.execution.task import TaskOutcome
    from cluster.observers.live import FarmHeader, FarmStatus
    from cluster.records.ledger import LedgerRow
    from cluster.records.state import Work

STATUSES = FINISHED_STATUSES  # a finished experiment's status
KINDS = WORK_KINDS  # what an experiment is for
# dispatch: the driver's dispatch to the Ray task starting; sandbox: task start to the runner inside the
# sandbox starting (container/namespace set-up, interpreter); startup: runner start to the first training
# batch (imports, data, compilation); train: first batch to evaluation (wall); eval: the evaluation.
PHASES = ("dispatch", "sandbox", "startup", "train", "eval")
# From sub-second dispatch gaps through 3 s cpu-smoke runs to 300 s h100 budgets (with room either side).
PHASE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 240, 300, 330, 450, 600, 900, 1800)
PROPOSAL_OUTCOMES = ("queued", "rejected", "failed")  # queued to run / refused before running / no proposal
TOKEN_TYPES = ("input", "output", "cache_read", "cache_write")
ERROR_KINDS = FAILURE_KINDS  # why a request brought no proposal, typed by the agent where it failed
DEFAULT_ADDRESS = "127.0.0.1"


class FarmMetrics(Collector):
    """The farm's metrics: event methods for the driver, ``collect`` for the scrape."""

    def __init__(self, status: Callable[[], FarmStatus] | None = None, *, gpus: int = 0, agents: Sequence[str] = (),
                 info: dict | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        """``status`` (optional) gives the farm's latest snapshot (cluster/observers/live.py), swapped in whole by the
        driver's thread: read at scrape time for the queue and proposals, and for main and the best after each event."""
        self.status = status
        self.clock = clock  # for GPU-seconds: monotonic, so a wall-clock step never makes them jump
        self.gpus = gpus
        self.agents = list(agents)
        self.info = {k: str(v) for k, v in (info or {}).items()}
        self._lock = threading.Lock()
        self.experiments = {(s, k): 0 for s in STATUSES for k in KINDS}
        self.phase_counts = {p: [0] * (len(PHASE_BUCKETS) + 1) for p in PHASES}  # last: +Inf only
        self.phase_sums = dict.fromkeys(PHASES, 0.0)
        self.proposals = dict.fromkeys(PROPOSAL_OUTCOMES, 0)
        self.tokens = {(a, t): 0 for a in self.agents for t in TOKEN_TYPES}
        self.cost = dict.fromkeys(self.agents, 0.0)
        self.errors = {(a, k): 0 for a in self.agents for k in ERROR_KINDS}
        self.promotions = 0
        self.main_val_bpb: float | None = None
        self.best_val_bpb: float | None = None
        self._dispatched: dict[str, float] = {}  # experiment id -> when the driver dispatched it
        self._busy = 0  # GPUs busy now (one per experiment in flight)
        self._busy_seconds = 0.0  # integral of _busy over time, up to _busy_since
        self._busy_since = clock()
        if status is not None:  # a resumed run knows main and the best already
            self.main_val_bpb, self.best_val_bpb = self._values()
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self)

    @classmethod
    def for_farm(cls, header: FarmHeader, status: Callable[[], FarmStatus]) -> FarmMetrics:
        """The metrics of one farm run, with its agents' names and the run's settings."""
        return cls(status, gpus=header.gpus, agents=header.agents,
                   info={"profile": header.profile, "sandbox": header.sandbox, "agent_kind": header.agent_kind})

    # ---- events (the driver's thread) ----------------------------------------------------

    def dispatched(self, work: Work) -> None:
        """An experiment left for a GPU."""
        now = self.clock()
        with self._lock:
            self._dispatched[work.experiment_id] = time.time()
            self._set_busy(self._busy + 1, now)

    def finished(self, work: Work, row: LedgerRow, outcome: TaskOutcome | None = None) -> None:
        """An experiment came back (``outcome`` None when Ray lost it); its GPU is free again."""
        now = self.clock()
        dispatched = self._dispatched.pop(work.experiment_id, None)
        phases = _phases(dispatched, outcome) if outcome is not None else {}
        main, best = self._values()
        with self._lock:
            self._set_busy(max(0, self._busy - 1), now)
            key = (row.status if row.status in STATUSES else "error", work.kind if work.kind in KINDS else "candidate")
            self.experiments[key] += 1
            for phase, seconds in phases.items():
                self.phase_counts[phase][bisect.bisect_left(PHASE_BUCKETS, seconds)] += 1
                self.phase_sums[phase] += seconds
            self.main_val_bpb, self.best_val_bpb = main, best

    def proposal(self, index: int, outcome: ProposalOutcome, rejected: bool = False) -> None:
        """A proposal request came back, after the driver queued or rejected (``rejected``) what it brought."""
        agent = self._agent(index)
        with self._lock:
            failure = outcome.failure
            if outcome.proposal is None:
                self.proposals["failed"] += 1
                self.errors[(agent, failure.kind if failure else "other")] += 1
            else:
                self.proposals["rejected" if rejected else "queued"] += 1
            spend = outcome.proposal or (failure.spend if failure else None)  # a failed proposal may have cost too
            if spend is not None:
                for kind, count in zip(TOKEN_TYPES, (spend.tokens_in, spend.tokens_out, spend.cache_read_tokens,
                                                     spend.cache_write_tokens), strict=True):
                    self.tokens[(agent, kind)] += max(0, int(count or 0))
                self.cost[agent] += max(0.0, float(spend.cost_usd or 0.0))

    def promoted(self) -> None:
        """Main moved to a confirmed winner."""
        main, best = self._values()
        with self._lock:
            self.promotions += 1
            self.main_val_bpb, self.best_val_bpb = main, best

    # ---- the scrape (the server's thread) ------------------------------------------------

    def collect(self) -> Iterable:
        now = self.clock()
        with self._lock:
            experiments, proposals = dict(self.experiments), dict(self.proposals)
            tokens, cost, errors = dict(self.tokens), dict(self.cost), dict(self.errors)
            counts = {p: list(c) for p, c in self.phase_counts.items()}
            sums = dict(self.phase_sums)
            busy, promotions, main, best = self._busy, self.promotions, self.main_val_bpb, self.best_val_bpb
            busy_seconds = self._busy_seconds + self._busy * (now - self._busy_since)
        status = self.status() if self.status is not None else None
        queue = status.queue if status is not None else 0
        asking = status.proposals_pending if status is not None else 0

        if self.info:
            yield _info("farm", "The farm run's settings", self.info)
        yield _gauge("farm_gpus", "GPU slots the farm schedules experiments on", self.gpus)
        yield _gauge("farm_gpus_busy", "GPU slots running an experiment now", busy)
        yield _counter("farm_gpu_busy_seconds", "GPU-seconds spent running experiments (dispatch to return)",
                       busy_seconds)
        yield _gauge("farm_experiments_queued", "Experiments waiting for a GPU", queue)
        yield _gauge("farm_experiments_in_flight", "Experiments dispatched and not yet back", busy)
        yield _gauge("farm_proposals_in_flight", "Proposal requests the agents are working on", asking)
        c = CounterMetricFamily("farm_experiments", "Experiments finished, by status and kind",
                                labels=["status", "kind"])
        for (status, kind), n in experiments.items():
            c.add_metric([status, kind], n)
        yield c
        yield _counter("farm_promotions", "Confirmed winners merged into main", promotions)
        if main is not None:
            yield _gauge("farm_main_val_bpb", "Mean val_bpb (bits per byte) of main's replicates", main)
        if best is not None:
            yield _gauge("farm_best_val_bpb", "Lowest mean val_bpb (bits per byte) of any file measured", best)
        h = HistogramMetricFamily("farm_experiment_phase_seconds", "Duration of each phase of an experiment",
                                  labels=["phase"])
        for phase in PHASES:
            cumulative, buckets = 0, []
            for bound, n in zip([*map(_bound, PHASE_BUCKETS), "+Inf"], counts[phase], strict=True):
                cumulative += n
                buckets.append((bound, cumulative))
            h.add_metric([phase], buckets, sums[phase])
        yield h
        c = CounterMetricFamily("farm_proposals", "Proposal requests answered, by outcome", labels=["outcome"])
        for outcome, n in proposals.items():
            c.add_metric([outcome], n)
        yield c
        c = CounterMetricFamily("farm_agent_tokens", "LLM tokens an agent used, by type", labels=["agent", "type"])
        for (agent, kind), n in tokens.items():
            c.add_metric([agent, kind], n)
        yield c
        c = CounterMetricFamily("farm_agent_cost_usd", "What an agent's LLM calls cost, in US dollars",
                                labels=["agent"])
        for agent, usd in cost.items():
            c.add_metric([agent], usd)
        yield c
        c = CounterMetricFamily("farm_agent_errors", "Proposal requests that failed, by agent and kind of error",
                                labels=["agent", "kind"])
        for (agent, kind), n in errors.items():
            c.add_metric([agent, kind], n)
        yield c

    # ---- helpers --------------------------------------------------------------------------

    def _set_busy(self, busy: int, now: float) -> None:
        self._busy_seconds += self._busy * (now - self._busy_since)
        self._busy, self._busy_since = busy, now

    def _agent(self, index: int) -> str:
        if 0 <= index < len(self.agents):
            return self.agents[index]
        name = f"agent-{index}"  # an index the population does not have: still one label per index
        with self._lock:
            self.agents.append(name)
            self.cost[name] = 0.0
            self.tokens.update({(name, t): 0 for t in TOKEN_TYPES})
            self.errors.update({(name, k): 0 for k in ERROR_KINDS})
        return name

    def _values(self) -> tuple[float | None, float | None]:
        """Main's and the best val_bpb from the farm's latest snapshot (in the driver's thread)."""
        if self.status is None:
            return self.main_val_bpb, self.best_val_bpb
        status = self.status()
        return _finite(status.main_val_bpb), _finite(status.best_val_bpb)

    def text(self) -> str:
        """The exposition text a scrape gets."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()


def _phases(dispatched: float | None, outcome: TaskOutcome) -> dict[str, float]:
    result, facts = outcome.result, outcome.result.facts
    out: dict[str, float | None] = {
        "dispatch": outcome.started_at - dispatched if dispatched is not None else None,
        "sandbox": result.started_at - outcome.started_at if result.started_at else None,
        "startup": facts.startup_seconds,
        "train": facts.training_wall_seconds if facts.train_batches else None,
        "eval": facts.eval_seconds,
    }
    # clocks of two machines (driver, worker) can differ a little: a negative gap is a zero gap
    return {p: max(0.0, s) for p, s in out.items() if s is not None and math.isfinite(s)}


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _bound(value: float) -> str:
    return f"{value:g}" if value != int(value) else f"{int(value)}.0"


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _info(name: str, doc: str, labels: dict[str, str]) -> InfoMetricFamily:
    return InfoMetricFamily(name, doc, value=labels)


class MetricsServer:
    """The /metrics endpoint on a daemon thread; ``close`` stops it."""

    def __init__(self, metrics: FarmMetrics, port: int, address: str = DEFAULT_ADDRESS) -> None:
        from prometheus_client import start_http_server

        self.server, self.thread = start_http_server(port, addr=address, registry=metrics.registry)
        self.address, self.port = address, self.server.server_port

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve(metrics: FarmMetrics, port: int | None, address: str = DEFAULT_ADDRESS) -> MetricsServer | None:
    """Serve ``metrics`` on ``address:port``; None when the port is None/0 (metrics off)."""
    if not port:
        return None
    return MetricsServer(metrics, port, address)
