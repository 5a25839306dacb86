"""The selection policy as the driver sees it: results in, actions out. A scheduler decides, the driver executes.

In the spirit of Ray Tune's TrialScheduler: the policy is shown the farm's state (read-only) when the farm starts,
when an experiment finishes and when main has moved, and yields actions; the driver carries each out exactly as
yielded (queue these runs, record this decision, promote this candidate) and decides nothing itself. Each action
is carried out before the policy computes the next, so a decision sees the state the ones before it made: when a
baseline of main settles several waiting candidates and the first is promoted, the next is judged against the
new main.

- ``Measure``: run one file once per seed in ``seeds`` (main's baselines, a candidate's confirmations);
- ``Decide``: record a decision on a candidate (the ledger's ``verdict`` event, with the reason);
- ``screen``: refuse a proposal before it runs (it does not compile, or repeats an earlier file or change);
- ``Promote``: put a candidate on main. How is mechanism (git: a fast-forward, or a three-way merge whose result
  is measured like any candidate); what happens once main moved is the policy's again (``after_promotion``).

Two policies: ``TournamentPolicy`` (noise-aware: replicates, a margin, confirmation on other seeds) and
``GreedyPolicy`` (autoresearch's own loop: each file once, keep if lower; the benchmark's baseline).
``make_policy`` picks one from the settings. The decision maths is cluster/tournament.py (pure, no state).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

from agent.protocol import Proposal
from cluster.ledger import LedgerRow
from cluster.repo import ResearchRepo
from cluster.selection import incumbent, judge_candidate, noise_for, pick_parent
from cluster.state import FarmState, Work, diff_signature, sha
from cluster.tournament import (
    MeasureRequest,
    TournamentSettings,
    Verdict,
    baseline_request,
    greedy_baseline_request,
    judge_greedy,
    next_seeds,
)
from cluster.vocabulary import Decision


class Measure(BaseModel):
    """Run the file at ``commit`` once per seed in ``seeds``: main's baselines or a candidate's confirmations."""

    action: Literal["measure"] = "measure"
    kind: Literal["baseline", "confirm"]  # of vocabulary.REPLICATE_KINDS
    commit: str
    parent_commit: str
    train_sha: str
    seeds: list[int]
    agent: str = "farm"
    description: str
    replicate_of: str | None = Field(None, description="confirmations: the candidate whose replicates these are")
    why: str = ""


class Decide(BaseModel):
    """Record ``decision`` on candidate ``experiment_id`` (the last decision on a candidate stands)."""

    action: Literal["decide"] = "decide"
    experiment_id: str
    decision: Decision
    reason: str


class Promote(BaseModel):
    """Put candidate ``experiment_id`` on main (``mean``: its measured mean, for the commit's trailers)."""

    action: Literal["promote"] = "promote"
    experiment_id: str
    reason: str
    mean: float


Action = Measure | Decide | Promote


class Screening(BaseModel):
    """A proposal's pre-flight: why it is refused before running (``reason``; empty: it runs), and its change
    against the parent (``diff_signature``; None when the file differs in whitespace only)."""

    reason: str = ""
    change: str | None = None


@dataclass(frozen=True)
class FarmView:
    """What a policy may read: the state and the research repo. It writes neither (the driver does)."""

    state: FarmState
    repo: ResearchRepo

    def main_class(self) -> str:
        """The GPU class main was measured on first (cpu before any measurement)."""
        classes = [c for (s, c) in self.state.measurements if s == self.state.main_sha]
        return classes[0] if classes else "cpu"

    def seeds_taken(self, train_sha: str, gpu_class: str | None = None) -> list[int]:
        """Seeds a file was measured on or is queued or running on: replicates must use others."""
        state = self.state
        pending = [w.seed for eid, w in state.work.items() if w.train_sha == train_sha and eid not in state.finished]
        measured = [m.seed for (s, c), ms in state.measurements.items() if s == train_sha and
                    gpu_class in (None, c) for m in ms]
        return pending + measured

    def mean(self, train_sha: str) -> float:
        values = [m.val_bpb for (s, _), ms in self.state.measurements.items() if s == train_sha for m in ms]
        return sum(values) / len(values) if values else float("nan")


class TournamentPolicy:
    """The farm's noise-aware tournament (cluster/tournament.py) over the farm's state."""

    def __init__(self, settings: TournamentSettings) -> None:
        self.settings = settings

    def start(self, farm: FarmView) -> Iterator[Action]:
        """Measure main before anything is judged: the noise floor comes first."""
        yield from self._measure_main(farm, farm.main_class())

    def after_promotion(self, farm: FarmView) -> Iterator[Action]:
        """Measure the new main afresh: the winner's own runs were selected for being low."""
        yield from self._measure_main(farm, farm.main_class())

    def on_result(self, farm: FarmView, work: Work, row: LedgerRow) -> Iterator[Action]:
        """A finished experiment: judge what it was for. A baseline of main may settle candidates that waited."""
        if work.kind == "baseline":
            for eid, decision in list(farm.state.verdicts.items()):
                if decision == "wait":
                    yield from self._judge(farm, farm.state.work[eid], farm.state.finished[eid].gpu_class or "cpu")
            return
        candidate = farm.state.work[work.replicate_of] if work.kind == "confirm" and work.replicate_of else work
        yield from self._judge(farm, candidate, row.gpu_class or "cpu")

    def parent(self, farm: FarmView, rng: random.Random) -> tuple[str, str]:
        """The commit the next proposal starts from, and why."""
        return pick_parent(farm.state, rng, self.settings)

    def screen(self, farm: FarmView, proposal: Proposal) -> Screening:
        """Refuse, before it takes a GPU, a file that cannot run, or that repeats an earlier file or change."""
        change = self.signature(farm.repo.train_py_at(proposal.parent_commit), proposal.train_py)
        train_sha = sha(proposal.train_py)
        reason = preflight(proposal.train_py)
        if not reason and any(w.train_sha == train_sha for w in farm.state.work.values()):
            reason = "duplicate of an earlier experiment's train.py"
        if not reason and change is None:
            reason = "changes nothing but whitespace"
        same = next((w for w in farm.state.work.values() if change and w.diff_sha == change), None)
        if not reason and same:
            reason = f"the same change as {same.experiment_id} ({same.description[:80]})"
        return Screening(reason=reason, change=change)

    def signature(self, parent: str, child: str) -> str | None:
        """What makes two proposals the same idea: the same edit, from whatever parent (diff_signature)."""
        return diff_signature(parent, child)

    # ---- helpers -------------------------------------------------------------------------------------------

    def _verdict(self, farm: FarmView, candidate: Work, gpu_class: str) -> Verdict:
        return judge_candidate(farm.state, candidate, gpu_class, farm.repo, self.settings)

    def _judge(self, farm: FarmView, candidate: Work, gpu_class: str) -> Iterator[Action]:
        verdict = self._verdict(farm, candidate, gpu_class)
        yield Decide(experiment_id=candidate.experiment_id, decision=verdict.decision, reason=verdict.reason)
        if verdict.decision == "confirm":
            taken = [candidate.seed, *farm.seeds_taken(candidate.train_sha, verdict.gpu_class)]
            need = verdict.replicates_needed - farm.state.pending_replicates(candidate.train_sha)
            if need > 0:
                yield Measure(
                    kind="confirm", commit=candidate.commit, parent_commit=candidate.parent_commit,
                    train_sha=candidate.train_sha, seeds=next_seeds(taken, need), agent=candidate.agent,
                    description=f"confirm {candidate.experiment_id}: {candidate.description}",
                    replicate_of=candidate.experiment_id, why=verdict.reason)
        elif verdict.decision == "wait":
            yield from self._measure_main(farm, verdict.gpu_class)
        elif verdict.decision in ("promote", "simpler"):
            yield Promote(experiment_id=candidate.experiment_id, reason=verdict.reason,
                          mean=farm.mean(candidate.train_sha))

    def _main_request(self, farm: FarmView, gpu_class: str) -> MeasureRequest | None:
        """Main's missing replicates: its baseline, then enough for the noise to be known."""
        state = farm.state
        return baseline_request(incumbent(state, farm.repo), gpu_class, self.settings, noise_for(state, gpu_class))

    def _measure_main(self, farm: FarmView, gpu_class: str) -> Iterator[Action]:
        state = farm.state
        request = self._main_request(farm, gpu_class)
        missing = (request.replicates if request else 0) - state.pending_replicates(state.main_sha)
        if missing > 0:
            seeds = next_seeds([m.seed for ms in state.measurements.values() for m in ms]
                               + farm.seeds_taken(state.main_sha), missing)
            yield Measure(kind="baseline", commit=state.main_commit, parent_commit=state.main_commit,
                          train_sha=state.main_sha, seeds=seeds, description="baseline: main",
                          why=request.why if request else "")


class GreedyPolicy(TournamentPolicy):
    """Autoresearch's loop: main measured once, each candidate once, keep if lower; no replicates, no margin.

    The noise-blind reference of the search benchmark; its judgement is cluster/tournament.py's greedy rule.
    """

    def __init__(self, settings: TournamentSettings) -> None:
        super().__init__(settings.model_copy(update={"policy": "greedy"}))

    def _verdict(self, farm: FarmView, candidate: Work, gpu_class: str) -> Verdict:
        return judge_greedy(farm.state.values(candidate.train_sha, gpu_class), incumbent(farm.state, farm.repo),
                            gpu_class)

    def _main_request(self, farm: FarmView, gpu_class: str) -> MeasureRequest | None:
        return greedy_baseline_request(incumbent(farm.state, farm.repo), gpu_class)


def preflight(train_py: str) -> str:
    """Why a proposal cannot even start (so it never takes a GPU), or ''."""
    try:
        compile(train_py, "train.py", "exec")
    except SyntaxError as exc:
        return f"does not compile: {exc.msg} (line {exc.lineno})"
    if "evaluate_bpb" not in train_py:
        return "never calls evaluate_bpb"
    return ""


def make_policy(settings: TournamentSettings) -> TournamentPolicy:
    """The policy the settings name (``policy``: tournament or greedy)."""
    return GreedyPolicy(settings) if settings.policy == "greedy" else TournamentPolicy(settings)
