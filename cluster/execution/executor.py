"""Where the farm's work runs: experiments on GPUs, proposals from agents. The driver decides, an Executor executes.

The driver (cluster/loop/driver.py) talks to one small interface: start the agents, ``submit`` an experiment, ``ask``
an agent for a proposal, ``wait`` for whatever comes back. Two implementations:

- ``RayExecutor``: the farm itself. Each experiment is a one-GPU Ray task (cluster/execution/task.py), each agent a Ray
  actor (cluster/execution/agents.py); a task or actor that Ray loses comes back as an event with the error, never as an
  exception the loop must know Ray's types for.
- ``InProcessExecutor``: no Ray, no second process, a *virtual clock*. An experiment runs in this process at
  submit time and its result is handed back when the clock reaches its finish (one unit per ok run by default:
  time counts in experiment durations); a proposal comes back at once. The search benchmark (bench/search.py)
  and the driver's fast tests run the real driver on it, deterministically and without root.

Why a seam and not a patched ``ray`` module: the benchmark and the tests then run the very loop a farm runs, and
nothing they do can leak into another test through module globals.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from agent.protocol import Context, ProposalFailure, Proposer
from cluster.execution.agents import ProposalOutcome, make_proposer, propose_once
from cluster.execution.spec import ExperimentSpec, GpuAssignment
from cluster.execution.task import TaskOutcome
from trainer.result import ExperimentResult, Status

ProposerFactory = Callable[[str, str, dict], Proposer]


@dataclass(frozen=True)
class AgentSpec:
    """One agent of the population as the executor builds it: its kind, name and options (FarmConfig's)."""

    kind: str
    name: str
    options: dict


@dataclass(frozen=True)
class ExperimentDone:
    """An experiment came back: its outcome, or ``lost`` (why there is none: the executor gave up on it)."""

    experiment_id: str
    outcome: TaskOutcome | None
    lost: str = ""


@dataclass(frozen=True)
class ProposalDone:
    """An agent answered (a proposal, or why there is none: ``outcome.failure``)."""

    agent: int
    outcome: ProposalOutcome


Event = ExperimentDone | ProposalDone


class Executor(Protocol):
    """Runs what the driver submits and reports what finished. Never decides anything itself."""

    sandbox: str  # the sandbox backend the experiments run in (for the status and the metrics)

    def start_agents(self, agents: list[AgentSpec], factory: ProposerFactory | None = None) -> None:
        """Build the population (index i is ``agents[i]``); ``factory`` builds a proposer (default make_proposer)."""
        ...

    def submit(self, spec: ExperimentSpec) -> None:
        """Start one experiment; its ExperimentDone arrives from ``wait``, exactly once."""
        ...

    def ask(self, agent: int, context: Context) -> None:
        """Ask agent ``agent`` for a proposal; its ProposalDone arrives from ``wait``, exactly once."""
        ...

    def wait(self, timeout: float) -> list[Event]:
        """What finished (at least one event if anything is pending and it finishes within ``timeout``)."""
        ...

    def now(self) -> float:
        """The executor's clock in seconds (wall time, or virtual experiment durations)."""
        ...


class RayExecutor:
    """Experiments as one-GPU Ray tasks in the sandbox ``sandbox``, agents as Ray actors (Ray already started)."""

    def __init__(self, sandbox: str) -> None:
        self.sandbox = sandbox
        self._agents: list = []
        self._names: list[str] = []
        self._experiments: dict = {}  # ObjectRef -> experiment id
        self._asks: dict = {}  # ObjectRef -> agent index

    def start_agents(self, agents: list[AgentSpec], factory: ProposerFactory | None = None) -> None:
        from cluster.execution.agents import AgentActor

        for agent in agents:
            self._agents.append(AgentActor.remote(agent.kind, agent.name, agent.options, factory))
            self._names.append(agent.name)

    def submit(self, spec: ExperimentSpec) -> None:
        from cluster.execution.task import run_experiment

        self._experiments[run_experiment.remote(spec.model_dump_json(), self.sandbox)] = spec.experiment_id

    def ask(self, agent: int, context: Context) -> None:
        self._asks[self._agents[agent].propose.remote(context)] = agent

    def wait(self, timeout: float) -> list[Event]:
        import ray

        refs = [*self._experiments, *self._asks]
        if not refs:
            time.sleep(min(timeout, 0.05))
            return []
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        events: list[Event] = []
        for ref in ready:
            if ref in self._experiments:
                eid = self._experiments.pop(ref)
                try:
                    events.append(ExperimentDone(eid, TaskOutcome.model_validate_json(ray.get(ref))))
                except ray.exceptions.RayError as exc:  # retries exhausted: the farm's fault, not the candidate's
                    events.append(ExperimentDone(eid, None, lost=str(exc)))
            else:
                index = self._asks.pop(ref)
                try:
                    outcome = ray.get(ref)
                except ray.exceptions.RayError as exc:  # the actor died; Ray restarts it
                    failure = ProposalFailure(kind="actor_died", message=f"{type(exc).__name__}: {exc}")
                    outcome = ProposalOutcome(agent=self._names[index], failure=failure)
                events.append(ProposalDone(index, outcome))
        return events

    def now(self) -> float:
        return time.time()


def unit_duration(seed: int, jitter: float = 0.1, not_ok: float = 0.25) -> Callable[[ExperimentSpec,
                                                                                      ExperimentResult], float]:
    """Durations in experiment units: an ok run takes 1 x U(1-jitter, 1+jitter) (so slots do not march in
    lock-step), a run that is not ok ``not_ok`` (crashes are found early). Deterministic per (seed, experiment)."""

    def duration(spec: ExperimentSpec, result: ExperimentResult) -> float:
        if result.status != Status.OK:
            return not_ok
        return random.Random(f"{seed}:{spec.experiment_id}").uniform(1 - jitter, 1 + jitter)

    return duration


class InProcessExecutor:
    """The executor without Ray, on a virtual clock: deterministic, and as fast as the sandbox.

    ``sandbox``: a cluster.sandbox backend name (``module:Class`` for stand-ins); ``duration(spec, result)``: how
    long the run took on the virtual clock (default ``unit_duration(0)``); ``gpu_class``: what every run is
    measured on. ``started`` records each experiment's virtual start (benchmarks plot from it).
    """

    def __init__(self, sandbox: str, duration: Callable[[ExperimentSpec, ExperimentResult], float] | None = None,
                 gpu_class: str = "cpu") -> None:
        self.sandbox, self._backend = sandbox, None  # built at the first submit
        self.duration = duration or unit_duration(0)
        self.gpu_class = gpu_class
        self.clock = 0.0
        self.started: dict[str, float] = {}
        self._proposers: list[Proposer] = []
        self._names: list[str] = []
        self._pending: list[tuple[float, int, Event]] = []  # (ready at, sequence, event)
        self._seq = 0

    def start_agents(self, agents: list[AgentSpec], factory: ProposerFactory | None = None) -> None:
        for agent in agents:
            self._proposers.append((factory or make_proposer)(agent.kind, agent.name, agent.options))
            self._names.append(agent.name)

    def submit(self, spec: ExperimentSpec) -> None:
        if self._backend is None:
            from cluster.sandbox import make_sandbox

            self._backend = make_sandbox(self.sandbox)
        result = self._backend.run(spec, GpuAssignment())
        took = self.duration(spec, result)
        self.started[spec.experiment_id] = self.clock
        outcome = TaskOutcome(experiment_id=spec.experiment_id, result=result, node="in-process",
                              gpu_class=self.gpu_class, started_at=self.clock, finished_at=self.clock + took,
                              attempt_pid=0)
        self._later(took, ExperimentDone(spec.experiment_id, outcome))

    def ask(self, agent: int, context: Context) -> None:
        self._later(0.0, ProposalDone(agent, propose_once(self._proposers[agent], self._names[agent], context)))

    def wait(self, timeout: float) -> list[Event]:
        """The earliest event: the clock jumps to it (``timeout`` is real time, and nothing here waits)."""
        if not self._pending:
            return []
        self._pending.sort(key=lambda item: item[:2])
        ready, _, event = self._pending.pop(0)
        self.clock = max(self.clock, ready)
        return [event]

    def now(self) -> float:
        return self.clock

    def _later(self, delay: float, event: Event) -> None:
        self._seq += 1
        self._pending.append((self.clock + delay, self._seq, event))
