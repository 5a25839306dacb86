"""The farm's control loop: keep every GPU busy with the most useful experiment.

Like a Kubernetes controller it compares what it wants (every GPU running an
experiment, a few proposals ready ahead, every promising result confirmed)
with what it sees (Ray tasks in flight, the ledger) and acts on the
difference. It is the only writer of the research repo and the ledger, and
everything it knows can be rebuilt from those two after a crash.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections.abc import Iterable
from pathlib import Path

from agent.llm import ApiKeyMissing, read_api_key
from agent.protocol import Context, Proposal, ProposalFailure
from agent.transcript import write_transcript
from cluster.config import FarmConfig, absolute
from cluster.decisions.policies import make_policy
from cluster.decisions.policy import Action, Decide, Measure, Promote, Revert, Stage, Strategies
from cluster.decisions.view import FarmView
from cluster.execution.executor import AgentSpec, Executor, ExperimentDone, ProposalDone
from cluster.execution.spec import ExperimentSpec, Limits, owner_of
from cluster.loop.context import ContextBuilder
from cluster.loop.health import HealthWatch
from cluster.loop.independence import IndependenceCheck
from cluster.loop.pool import AgentPool
from cluster.observers.live import FarmHeader, FarmStatus, LiveView, status_of
from cluster.observers.metrics import FarmMetrics
from cluster.records.ledger import LedgerRow, write_results_tsv
from cluster.records.state import Work
from cluster.records.store import FarmStore
from trainer.profiles import get_profile

PROPOSAL_DRAIN_SECONDS = 120  # on a stop: how long proposals already paid for may still arrive
REJECTED = "rejected: "  # what _accept returns for a proposal refused before running, then why


class Farm:
    """One farm run in one run directory."""

    def __init__(self, config: FarmConfig, run_dir: Path, executor: Executor, proposer_factory=None,
                 strategies: Strategies | None = None) -> None:
        """``executor`` runs the experiments and asks the agents (cluster/execution/executor.py: Ray's, or in-process);
        ``strategies``: the merge and the change signature (cluster/decisions/policy.py), passed in, never patched."""
        self.config, self.run_dir, self.executor = config, absolute(run_dir), executor
        strategies = strategies or Strategies()
        self.profile = get_profile(config.profile)
        self.store = FarmStore(self.run_dir, strategies.merge)  # repo + ledger + the state rebuilt: the only writer
        self.repo, self.ledger, self.state = self.store.repo, self.store.ledger, self.store.state  # for reading
        self.rng = random.Random(config.seed)
        # the policy decides; this driver carries out what it returns
        self.policy = make_policy(config.tournament, strategies)
        # what the policy reads; its noise (with the prior) is also what agents are shown
        self.view_of_state = FarmView(self.state, self.repo, config.tournament.noise_prior(self.profile))
        self.proposer_factory = proposer_factory
        self.inflight: set[str] = set()  # experiments submitted and not back
        self.agents: list[AgentSpec] = []
        self.pool = AgentPool(config.agents.count or 0)  # which agent is asked when (cluster/loop/pool.py)
        self.started = time.time()
        self.stopping = ""
        self.failure = ""  # why the farm could not do its job (set with stopping): the run exits non-zero
        self.health = HealthWatch(self.state, self.run_dir, config.max_consecutive_errors,
                                  config.tournament.baseline_replicates)
        # replicates on other seeds that are one run (a pinned seed): rebuilt from the ledger, so caught across a resume
        self.independence = IndependenceCheck(self.profile.replicate_min_distance, self.state.finished.values())
        self._stopped_at: float | None = None  # when the loop first saw self.stopping
        self._status_written = 0.0
        # what each agent is shown (its noise is the view's, the judge's own)
        self.contexts = ContextBuilder(self.store, self.view_of_state, self.policy, self.profile.name, self.run_dir,
                                       self.rng)
        self.header = FarmHeader(
            run_dir=str(self.run_dir), profile=self.profile.name, gpus=config.gpus_total(), sandbox=executor.sandbox,
            agents=[config.agent_name(i) for i in range(config.agents.count or 0)], agent_kind=config.agent_kind(),
            cost_cap_usd=config.cost_cap_usd, max_experiments=config.max_experiments)
        # what the observers read (live view, status.json, metrics' scrape): a typed snapshot swapped in whole
        self.snapshot = self._status()
        self.view = LiveView(self.header, lambda: self.snapshot)
        self.metrics = FarmMetrics.for_farm(self.header, lambda: self.snapshot)  # served by run_cli (metrics_port)

    # ---- set-up -------------------------------------------------------------

    def start_agents(self) -> None:
        kind = self.config.agent_kind()
        self.agents = [AgentSpec(kind, self.config.agent_name(i), self.config.agent_options(i))
                       for i in range(self.config.agents.count)]
        self.executor.start_agents(self.agents, self.proposer_factory)

    # ---- the loop ----------------------------------------------------------------

    def run(self) -> int:
        self.start_agents()
        self._carry_out(self.policy.start(self.view_of_state))
        previous = signal.signal(signal.SIGINT, self._interrupt)
        try:
            with self.view:
                while True:
                    self._check_stop()
                    if not self.stopping:
                        self._request_proposals()
                    self._dispatch()
                    if not self.inflight and (self._drained() if self.stopping else not self._can_make_progress()):
                        break
                    for event in self.executor.wait(timeout=0.5):
                        if isinstance(event, ExperimentDone):
                            self._on_experiment(event)
                        else:
                            self._on_proposal(event)
                    self.snapshot = self._status()
                    self.view.refresh()
                    if time.monotonic() - self._status_written > 5:  # `farm status` on a running farm
                        self._write_summaries()
        finally:
            signal.signal(signal.SIGINT, previous)
            self._write_summaries()
            self.ledger.close()  # everything on disk before we say we are done
        return 1 if self.failure else 0

    def _drained(self) -> bool:
        """On a stop, proposals already being written are awaited (a bounded while): their spend is booked."""
        if self._stopped_at is None:
            self._stopped_at = time.monotonic()
            if self.pool.asking:
                self.view.note(f"waiting up to {PROPOSAL_DRAIN_SECONDS} s for {len(self.pool.asking)} proposals "
                               "in flight, so that what they cost is booked")
        return not self.pool.asking or time.monotonic() - self._stopped_at > PROPOSAL_DRAIN_SECONDS

    def _can_make_progress(self) -> bool:
        if self.state.queue or self.pool.can_be_asked():
            return True
        if reason := self.pool.stuck():  # only parked agents: nothing runs that could give them anything new
            self.fail(reason)
        return False

    def fail(self, reason: str) -> None:
        """Stop because the farm cannot do its job (it finishes what is in flight); the run exits non-zero."""
        if not self.failure:
            self.failure = reason
            self.stopping = self.stopping or f"cannot go on: {reason}"
            self.view.note(f"STOPPING: {reason}")

    def _interrupt(self, *_: object) -> None:
        if self.stopping:
            raise KeyboardInterrupt
        self.stopping = "interrupted: finishing the experiments in flight (Ctrl-C again to abandon them)"

    def _check_stop(self) -> None:
        c = self.config
        finished = len(self.state.finished)
        if c.max_experiments and finished + len(self.inflight) >= c.max_experiments and not self.stopping:
            self.stopping = f"reached --max-experiments {c.max_experiments}"
        if c.hours and time.time() - self.started > c.hours * 3600 and not self.stopping:
            self.stopping = f"reached --hours {c.hours:g}"
        if c.cost_cap_usd is not None and self.state.cost_usd >= c.cost_cap_usd and not self.stopping:
            self.stopping = (f"cost cap reached: LLM spend ${self.state.cost_usd:.4f} >= cost_cap_usd "
                             f"${c.cost_cap_usd:.4f}; no new proposals, the experiments in flight finish")

    # ---- proposals ---------------------------------------------------------

    def _request_proposals(self) -> None:
        for index in self.pool.to_ask(self._proposals_wanted()):
            self.executor.ask(index, self._context(index))

    def _proposals_wanted(self) -> int:
        """How many proposal requests should be out now: ``queue_ahead`` ready candidates per GPU slot (an LLM's
        latency hidden behind the runs), or with ``queue_ahead: 0`` just the slots that would otherwise idle (each
        proposal built on the freshest main; what an instant proposer wants)."""
        slots = self.config.gpus_total()
        if self.config.queue_ahead:
            waiting = sum(1 for eid in self.state.queue if self.state.work[eid].kind == "candidate")
            return slots * self.config.queue_ahead - waiting
        return slots - len(self.inflight) - len(self.state.queue)

    def _context(self, index: int) -> Context:
        return self.contexts.build(self.config.agent_name(index), self.inflight,
                                   optimiser=self.config.agent_kind_of(index) == "optuna")

    def _on_proposal(self, event: ProposalDone) -> None:
        index, outcome = event.agent, event.outcome
        proposal = outcome.proposal
        if proposal is None:
            failure = outcome.failure or ProposalFailure(message="no reason given")
            error = failure.headline()
            self._after_proposal(index, outcome.agent, f"failed: {error[:200]}", fatal=failure.fatal)
            if failure.spend and failure.spend.is_paid():  # paid for: on the ledger
                self.store.failed_proposal(outcome.agent, error, failure.spend)
            self._save_transcript(outcome.agent, outcome.transcript, f"failed: {error}")
            self.metrics.proposal(index, outcome)
            stops = " (this agent stops; the others go on)" if failure.fatal else ""
            self.view.note(f"{outcome.agent}: no proposal ({error[:200]}){stops}")
            return
        self._append_notes(proposal.agent, proposal.notes)
        result = self._accept(proposal)
        self._save_transcript(proposal.agent, proposal.transcript, result)
        self.metrics.proposal(index, outcome, rejected=result.startswith(REJECTED))
        self._after_proposal(index, proposal.agent, result if result.startswith(REJECTED) else "")

    def _after_proposal(self, index: int, agent: str, nothing: str, fatal: bool = False) -> None:
        """Where the agent goes next (cluster/loop/pool.py); a population that keeps coming back empty-handed stops
        the farm instead of spending without end."""
        stuck = self.pool.returned(index, agent, nothing, fatal=fatal,
                                   more_coming=bool(self.inflight or self.state.queue))
        if stuck and not self.stopping:
            self.fail(stuck)

    def _append_notes(self, agent: str, notes: list[str]) -> None:
        """An agent's one-line insights onto the shared notes file every agent is shown (ContextBuilder.notes)."""
        lines = [f"- {agent}: {' '.join(n.split())[:300]}" for n in notes if n.strip()]
        if lines:
            with open(self.run_dir / "notes.md", "a") as f:
                f.write("\n".join(lines) + "\n")

    def _save_transcript(self, agent: str, transcript: dict | None, result: str) -> None:
        if transcript:  # redacted by the agent; again here with the key this process can see
            try:
                keys = [read_api_key()]
            except ApiKeyMissing:
                keys = []
            write_transcript(self.run_dir / "transcripts", agent, {**transcript, "result": result}, keys)

    def _accept(self, proposal: Proposal) -> str:
        """Screen a proposal (the policy's call: no GPU for what cannot run or was already run) and queue it.

        Returns its experiment id, or REJECTED + why. Either way its LLM spend goes on the ledger.
        """
        screening = self.policy.screen(self.view_of_state, proposal)
        if screening.reason:
            self.view.note(f"{proposal.agent}: rejected before running: {screening.reason}")
            self.store.reject(proposal, screening.reason, screening.change)
            return f"{REJECTED}{screening.reason}"
        return self.store.add_candidate(proposal, screening.change, screening.seed)

    # ---- experiments ----------------------------------------------------------

    def _dispatch(self) -> None:
        while self.state.queue and len(self.inflight) < self.config.gpus_total():
            if self.stopping and not self.config.finish_queue_on_stop:
                return
            work = self.state.work[self.state.queue[0]]
            spec = ExperimentSpec(
                experiment_id=work.experiment_id, train_py=self.store.train_py(work.commit),
                profile=self.profile.name, seed=work.seed, run_dir=self.run_dir / "experiments" / work.experiment_id,
                cache_dir=self.config.cache_dir, compile_cache_dir=self.config.cache_dir / "compile",
                # only main's own runs add to the shared compile cache; every other run compiles privately
                publish_compile_cache=work.kind == "baseline" and work.train_sha == self.state.main_sha,
                image=self.config.image, limits=self._limits(), owner=owner_of(self.run_dir),
                kubernetes=self.config.kubernetes if self.executor.sandbox == "kubernetes" else None,
            )
            self.store.started(work.experiment_id)
            self.executor.submit(spec)
            self.inflight.add(work.experiment_id)
            self.metrics.dispatched(work)

    def _on_experiment(self, event: ExperimentDone) -> None:
        eid, outcome = event.experiment_id, event.outcome
        self.inflight.discard(eid)
        work = self.state.work[eid]
        row = self.store.finished_row(work, outcome, event.lost)
        if outcome is None:  # the executor gave up on it (retries exhausted): the farm's fault, not the candidate's
            self.view.note(f"{eid}: lost after retries: {(event.lost.splitlines() or ['?'])[0][:200]}")
        else:
            self._flag_pinned_seed(row)
        if self.store.record(row):
            self.view.finished(work, row)
            self._watch_health(work, row)
            self._carry_out(self.policy.on_result(self.view_of_state, work, row))
        self.snapshot = self._status()  # the state took the result: main and the best are current for the metrics
        self.metrics.finished(work, row, outcome)
        self.pool.new_result()  # something new to propose from

    def _limits(self) -> Limits:
        """Each experiment's limits. A GPU profile pins no thread count, so without a setting its experiments get a
        fair share of the host's cores: a candidate cannot starve its neighbours (main's baselines among them) and
        skew the noise."""
        limits = self.config.limits
        if limits.cpus is None and not self.profile.torch_threads:
            limits = limits.model_copy(update={"cpus": max(1.0, (os.cpu_count() or 1) / self.config.gpus_total())})
        return limits

    def _flag_pinned_seed(self, row: LedgerRow) -> None:
        """A replicate on another seed that predicts what an earlier one did is not an independent measurement (the
        script pins its seed past the harness's offset): it is invalid, so lucky runs cannot be repeated as proof."""
        if reason := self.independence.same_run(row):
            row.status, row.val_bpb, row.reason = "invalid", None, reason

    def _watch_health(self, work: Work, row: LedgerRow) -> None:
        """Stop a farm that cannot work (cluster/loop/health.py): its own faults pile up, or main itself cannot run."""
        if reason := self.health.check(work, row):
            self.fail(reason)

    # ---- carrying out the policy's actions ------------------------------------------------

    def _carry_out(self, actions: Iterable[Action]) -> None:
        """Do exactly what the policy yields, each before the policy computes the next (cluster/decisions/policy.py)."""
        for action in actions:
            if isinstance(action, Measure):
                for seed in action.seeds:
                    self.store.queue(Work(self.state.new_id(), action.kind, action.commit, action.parent_commit,
                                          action.train_sha, agent=action.agent, description=action.description,
                                          seed=seed, replicate_of=action.replicate_of))
            elif isinstance(action, Decide):
                self.store.verdict(action.experiment_id, action.decision, action.reason)
            elif isinstance(action, Promote):
                self._promote(self.state.work[action.experiment_id], action.reason, action.mean)
            elif isinstance(action, Stage):
                stage_id = self.store.stage([self.state.work[p] for p in action.parts], action.train_py,
                                            action.seeds, action.description, action.why)
                self.view.note(f"{stage_id}: {action.description[:200]}")
            elif isinstance(action, Revert):
                outcome = self._accept(Proposal(parent_commit=self.state.main_commit, train_py=action.train_py,
                                                description=action.description, agent="farm"))
                self.view.note(f"{outcome}: {action.description[:150]} ({action.why[:100]})")

    def _promote(self, candidate: Work, reason: str, mean: float) -> None:
        if self.store.promote(candidate, reason, mean).kind == "fast-forward":  # main moved
            self.snapshot = self._status()
            self.metrics.promoted()
            self.view.note(f"main <- {candidate.experiment_id} ({candidate.description}): {mean:.4f}")
            self._carry_out(self.policy.after_promotion(self.view_of_state))
            self._write_summaries()

    def _status(self) -> FarmStatus:
        """The farm now, as every observer sees it (cluster/observers/live.py)."""
        return status_of(self.state, self.header, busy=len(self.inflight), asking=len(self.pool.asking),
                         started=self.started, stopping=self.stopping, failure=self.failure,
                         main_class=self.view_of_state.main_class())

    def _write_summaries(self) -> None:
        write_results_tsv(self.ledger.latest(), self.run_dir / "results.tsv")
        self._write_status()
        self.store.compact_if_needed()

    def _write_status(self) -> None:
        tmp = self.run_dir / "status.json.tmp"
        self.snapshot = self._status()
        tmp.write_text(json.dumps(self.snapshot.model_dump(), indent=2))
        os.replace(tmp, self.run_dir / "status.json")
        self._status_written = time.monotonic()
