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
  is measured like any candidate); what happens once main moved is the policy's again (``after_promotion``);
- ``Stage``: merge several candidates into one new file off main and measure it (policy stack);
- ``Revert``: propose main without one part of a promoted stage, as a candidate (policy stack's ablation).

Three policies: ``TournamentPolicy`` (noise-aware: replicates, a margin, confirmation on other seeds; ``paired`` is
its settings), ``StackPolicy`` (the tournament's judge, but a round's winners are stacked and certified as one) and
``GreedyPolicy`` (autoresearch's own loop: each file once, keep if lower; the benchmark's baseline).
``make_policy`` picks one from the settings. The decision maths is cluster/tournament.py (pure, no state).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

from agent.protocol import Proposal
from cluster.ledger import LedgerRow
from cluster.repo import ResearchRepo
from cluster.selection import former_main, incumbent, judge_candidate, noise_for, pick_parent, reference_of
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
from cluster.vocabulary import REPLICATE_KINDS, VerdictValue
from trainer.profiles import Profile


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
    decision: VerdictValue  # a Decision, or what merging it into a stage came to (policy stack)
    reason: str


class Promote(BaseModel):
    """Put candidate ``experiment_id`` on main (``mean``: its measured mean, for the commit's trailers)."""

    action: Literal["promote"] = "promote"
    experiment_id: str
    reason: str
    mean: float


class Stage(BaseModel):
    """Policy stack: merge the candidates ``parts`` (already merged here, in that order, into main's train.py as
    ``train_py``) into one new file off main, a stage, and run it once per seed in ``seeds``; each part's verdict
    becomes ``staged``. The stage is then judged against main like any candidate and, if certified, promoted."""

    action: Literal["stage"] = "stage"
    parts: list[str]
    train_py: str
    seeds: list[int]
    description: str
    why: str = ""


class Revert(BaseModel):
    """Policy stack's ablation: propose ``train_py`` (main without the change of ``part``, a part of the stage just
    promoted) as a candidate off main, screened and judged like any agent's proposal."""

    action: Literal["revert"] = "revert"
    part: str
    train_py: str
    description: str
    why: str = ""


Action = Measure | Decide | Promote | Stage | Revert


class Screening(BaseModel):
    """A proposal's pre-flight: why it is refused before running (``reason``; empty: it runs), and its change
    against the parent (``diff_signature``; None when the file differs in whitespace only)."""

    reason: str = ""
    change: str | None = None
    seed: int = 0  # the seed of its first run (pairing: one its reference was or will be measured on)


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

    def reference_seeds(self, train_sha: str) -> list[int]:
        """Seeds a file's replicates ran or will run on (its first runs as a candidate left out: they were
        selected for being low), in order: what a candidate compared with it is paired on."""
        state = self.state
        pending = [w.seed for eid, w in state.work.items() if w.train_sha == train_sha and eid not in state.finished
                   and w.kind in REPLICATE_KINDS]
        measured = [m.seed for (s, _), ms in state.measurements.items() if s == train_sha for m in ms
                    if not m.screening]
        return sorted(set(pending + measured))

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
        """Refuse, before it takes a GPU, a file that cannot run, or that repeats an earlier file or change.

        With ``second_chances``, a repeat of an edit whose every earlier try was discarded after a single run
        runs again (on another seed), up to that many times: one unlucky run must not lose a real gain for good.
        """
        parent_py = farm.repo.train_py_at(proposal.parent_commit)
        change = self.signature(parent_py, proposal.train_py)
        train_sha = sha(proposal.train_py)
        reason = preflight(proposal.train_py)
        same_file = [w for w in farm.state.work.values() if w.train_sha == train_sha]
        same_change = [w for w in farm.state.work.values() if change and w.diff_sha == change]
        retry = self._second_chance(farm, same_file + same_change)
        if not reason and same_file and not retry:
            reason = "duplicate of an earlier experiment's train.py"
        if not reason and change is None:
            reason = "changes nothing but whitespace"
        if not reason and same_change and not retry:
            same = same_change[0]
            reason = f"the same change as {same.experiment_id} ({same.description[:80]})"
        return Screening(reason=reason, change=change, seed=self._first_seed(farm, parent_py, train_sha))

    def _second_chance(self, farm: FarmView, earlier: list[Work]) -> bool:
        """May an edit tried before as ``earlier`` run again? Only candidates discarded on one run each."""
        state, tries = farm.state, {w.experiment_id: w for w in earlier}
        if not tries or len(tries) > self.settings.second_chances:
            return False
        for eid, work in tries.items():
            runs = [e for e, w in state.work.items() if w.train_sha == work.train_sha and e in state.finished]
            if work.kind != "candidate" or state.verdicts.get(eid) != "discard" or len(runs) != 1:
                return False
        return True

    def _first_seed(self, farm: FarmView, parent_py: str, train_sha: str) -> int:
        """The seed of a candidate's first run: 0, or with pairing the first seed its reference (a former-main
        parent it will be judged against, else main) ran or will run on that this file has not."""
        if self.settings.pairing != "auto":
            return 0
        taken = farm.seeds_taken(train_sha)
        parent_sha = sha(parent_py)
        own = farm.reference_seeds(parent_sha)
        reference = own if self.settings.judge_against == "parent" and parent_sha != farm.state.main_sha and \
            len(own) >= self.settings.baseline_replicates else farm.reference_seeds(farm.state.main_sha)
        free = [s for s in reference if s not in taken]
        return free[0] if free else next_seeds(taken, 1)[0]

    def signature(self, parent: str, child: str) -> str | None:
        """What makes two proposals the same idea: the same edit, from whatever parent (diff_signature)."""
        return diff_signature(parent, child)

    # ---- helpers -------------------------------------------------------------------------------------------

    def _verdict(self, farm: FarmView, candidate: Work, gpu_class: str) -> Verdict:
        return judge_candidate(farm.state, candidate, gpu_class, farm.repo, self.settings)

    def _judge(self, farm: FarmView, candidate: Work, gpu_class: str) -> Iterator[Action]:
        # the file it is compared with, once per judgement (a former-main parent costs a three-way merge to find)
        reference = self._reference(farm, candidate) if self.settings.pairing == "auto" else farm.state.main_sha
        if pair := self._awaited_pair(farm, candidate, gpu_class, reference):
            yield Decide(experiment_id=candidate.experiment_id, decision="wait", reason=pair)
            return
        verdict = self._verdict(farm, candidate, gpu_class)
        yield Decide(experiment_id=candidate.experiment_id, decision=verdict.decision, reason=verdict.reason)
        if verdict.decision == "confirm":
            taken = [candidate.seed, *farm.seeds_taken(candidate.train_sha, verdict.gpu_class)]
            need = verdict.replicates_needed - farm.state.pending_replicates(candidate.train_sha)
            if need > 0:
                seeds = self._confirm_seeds(farm, reference, taken, need)
                yield Measure(
                    kind="confirm", commit=candidate.commit, parent_commit=candidate.parent_commit,
                    train_sha=candidate.train_sha, seeds=seeds, agent=candidate.agent,
                    description=f"confirm {candidate.experiment_id}: {candidate.description}",
                    replicate_of=candidate.experiment_id, why=verdict.reason)
                yield from self._pair_main(farm, candidate.experiment_id, reference, seeds)
        elif verdict.decision == "wait":
            yield from self._measure_main(farm, verdict.gpu_class)
        elif verdict.decision in ("promote", "simpler"):
            yield Promote(experiment_id=candidate.experiment_id, reason=verdict.reason,
                          mean=farm.mean(candidate.train_sha))

    def _awaited_pair(self, farm: FarmView, candidate: Work, gpu_class: str, reference: str) -> str:
        """Pairing: why a candidate waits for its reference's run on one of its seeds that is queued or running
        (judged now, it would be compared unpaired and lose a small real gain); '' when nothing is awaited. A
        finished baseline judges every waiting candidate again."""
        if self.settings.pairing != "auto":
            return ""
        state = farm.state
        mine = {m.seed for m in state.measurements.get((candidate.train_sha, gpu_class), [])}
        done = {m.seed for m in state.measurements.get((reference, gpu_class), []) if not m.screening}
        pending = {w.seed for eid, w in state.work.items() if w.train_sha == reference and eid not in state.finished
                   and w.kind in REPLICATE_KINDS}
        awaited = sorted((mine - done) & pending)
        return f"pairing: waits for its reference's run on seed {awaited[0]}" if awaited else ""

    def _confirm_seeds(self, farm: FarmView, reference: str, taken: list[int], need: int) -> list[int]:
        """Seeds for a candidate's confirmations: new ones, or with pairing first those its reference ran on."""
        if self.settings.pairing != "auto":
            return next_seeds(taken, need)
        shared = [s for s in farm.reference_seeds(reference) if s not in taken][:need]
        return shared + next_seeds(taken + shared, need - len(shared))

    def _reference(self, farm: FarmView, candidate: Work) -> str:
        return reference_of(farm.state, candidate, farm.repo, self.settings)

    def _pair_main(self, farm: FarmView, name: str, reference: str, seeds: list[int]) -> Iterator[Action]:
        """Pairing: main also runs on a confirmation's seeds it lacks, so every run of the candidate has its pair
        (only when main is the candidate's reference, and never beyond max_replicates + baseline runs of main)."""
        state = farm.state
        if self.settings.pairing != "auto" or reference != state.main_sha:
            return
        have = farm.reference_seeds(state.main_sha)
        room = max(self.settings.max_replicates, 1 + self.settings.confirm_replicates,
                   self.settings.baseline_replicates) + self.settings.baseline_replicates - len(have)
        missing = [s for s in seeds if s not in have][:max(room, 0)]
        if missing:
            yield Measure(kind="baseline", commit=state.main_commit, parent_commit=state.main_commit,
                          train_sha=state.main_sha, seeds=missing, description="baseline: main",
                          why=f"pairing: {name} is confirmed on seeds {missing}")

    def _main_request(self, farm: FarmView, gpu_class: str) -> MeasureRequest | None:
        """Main's missing replicates: its baseline, then enough for the noise to be known."""
        state = farm.state
        return baseline_request(incumbent(state, farm.repo), gpu_class, self.settings,
                                noise_for(state, gpu_class, self.settings))

    def _measure_main(self, farm: FarmView, gpu_class: str) -> Iterator[Action]:
        state = farm.state
        request = self._main_request(farm, gpu_class)
        missing = (request.replicates if request else 0) - state.pending_replicates(state.main_sha)
        if missing > 0:
            if self.settings.pairing == "auto":  # main's own first seeds (which candidates share), a promoted
                used = farm.reference_seeds(state.main_sha)  # candidate's first run measured again, afresh
            else:  # seeds no file was measured on yet
                used = farm.seeds_taken(state.main_sha) + [m.seed for ms in state.measurements.values() for m in ms]
            seeds = next_seeds(used, missing)
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
        parent = former_main(farm.state, candidate, gpu_class, farm.repo, self.settings) \
            if self.settings.judge_against == "parent" else None
        return judge_greedy(farm.state.values(candidate.train_sha, gpu_class),
                            parent or incumbent(farm.state, farm.repo), gpu_class)

    def _main_request(self, farm: FarmView, gpu_class: str) -> MeasureRequest | None:
        return greedy_baseline_request(incumbent(farm.state, farm.repo), gpu_class)


class StackPolicy(TournamentPolicy):
    """Stack, then certify (issue 15): exploration judges each candidate on one run, certification judges a stage.

    One promotion at a time, each paying a screen, confirmations and main's pair runs in series, is why the
    tournament promotes every ~4-5 experiment durations at N = 8 and discards most small real gains. Here:

    - a candidate's first run is judged against its reference (main, the former main or the stage it was proposed
      from) by the paired judge; one that beats the screen (``promising_sigmas``) is ``stack``: it waits for the
      next stage, it is never confirmed on its own;
    - whenever no stage is under certification and winners wait, they are merged, strongest first, into main's
      train.py (three-way, each from its own parent: in-flight work from an older main is rebased, not lost; a part
      that conflicts with a stronger one is left out, one that only main's own lines block takes its side) and the
      result, the stage, runs ``stage_runs`` times at once on main's seeds (paired);
    - while a stage is certified, proposals that would start from main start from it; their first run waits for
      the stage's own runs and is judged against them;
    - the stage is judged against main like any candidate, on all its runs at once: beyond the margin it is
      promoted, and every part lands with it (several gains, one promotion); still promising, it is folded into a
      bigger stage when winners wait, else runs once more at a time up to ``max_replicates``; not certified but
      better than main, its parts wait again (at most ``stack_retries`` times); else every part is discarded (a
      second chance may bring one back).

    A stage's runs are fresh, not selected, and its effect is the sum of its parts', so one certification at the
    strict margin costs a few runs for several gains, where the tournament paid them for each. Main's runs after
    a promotion are the stage's own replicates (its first run left out, as for any candidate).
    """

    def on_result(self, farm: FarmView, work: Work, row: LedgerRow) -> Iterator[Action]:
        yield from super().on_result(farm, work, row)
        yield from self._next_stage(farm)

    def after_promotion(self, farm: FarmView) -> Iterator[Action]:
        """Every part of the stage now on main lands with it; then main's missing runs and the next stage."""
        state = farm.state
        for stage_id, parts in state.stages.items():
            if state.verdicts.get(stage_id) == "promote" and state.work[stage_id].train_sha == state.main_sha:
                landed = [p for p in parts if state.verdicts.get(p) == "staged"]
                for part in landed:
                    yield Decide(experiment_id=part, decision="promote", reason=f"on main with stage {stage_id}")
                if self.settings.ablate and len(landed) > 1:
                    yield from self._ablate(farm, stage_id, [state.work[p] for p in landed])
        yield from super().after_promotion(farm)
        yield from self._next_stage(farm)

    def _ablate(self, farm: FarmView, stage_id: str, parts: list[Work]) -> Iterator[Action]:
        """The stage was certified as a whole, so a rider whose own run was lucky may hurt: propose main without
        each part but the strongest (whose gain the certificate mostly is), one candidate per part. A revert that
        beats main joins a later stage like any winner; one that conflicts with main's later lines is not tried."""
        main_py, merge = farm.repo.train_py_at(farm.state.main_commit), farm.repo._merge_train_py
        for part in sorted(parts, key=lambda w: self._gain(farm, w))[1:]:
            # the part's own change, undone on main: base = the part's file, theirs = its parent's
            reverted, conflict = merge(farm.repo.train_py_at(part.commit), main_py,
                                       farm.repo.train_py_at(part.parent_commit))
            if conflict or reverted == main_py:
                continue
            yield Revert(part=part.experiment_id, train_py=reverted,
                         description=f"revert {part.experiment_id} (stage {stage_id}): {part.description}"[:300],
                         why=f"ablation of stage {stage_id}: does main do better without {part.experiment_id}?")

    def parent(self, farm: FarmView, rng: random.Random) -> tuple[str, str]:
        """Where main would be the parent, the newest stage under certification is: exploration goes on from the
        stacked gains without waiting for their certificate (its children are judged against its own runs)."""
        commit, why = super().parent(farm, rng)
        live = self._live(farm)
        if commit == farm.state.main_commit and live:
            stage = farm.state.work[live[-1]]
            return stage.commit, f"stage {stage.experiment_id} under certification ({why})"
        return commit, why

    @staticmethod
    def _live(farm: FarmView) -> list[str]:
        """Stages not yet decided, oldest first."""
        return [s for s in farm.state.stages if farm.state.verdicts.get(s) in (None, "confirm", "wait")]

    def _unmeasured_stage(self, farm: FarmView, commit: str) -> str:
        """The stage at ``commit`` if some of its first ``stage_runs`` are still out ('' otherwise): a child of it
        waits, so that it is judged against the stage's own runs, not main's."""
        state = farm.state
        for stage_id in state.stages:
            stage = state.work[stage_id]
            if stage.commit == commit:
                runs = [e for e, w in state.work.items() if w.train_sha == stage.train_sha and e in state.finished]
                return stage_id if len(runs) < self.settings.stage_runs and \
                    (state.pending_replicates(stage.train_sha) or stage_id not in state.finished) else ""
        return ""

    def _judge(self, farm: FarmView, candidate: Work, gpu_class: str) -> Iterator[Action]:
        state = farm.state
        if candidate.experiment_id in state.stages:
            yield from self._certify(farm, candidate, gpu_class)
            yield from self._judge_children(farm, candidate, gpu_class)
            return
        if candidate.kind == "candidate" and (stage_id := self._unmeasured_stage(farm, candidate.parent_commit)):
            yield Decide(experiment_id=candidate.experiment_id, decision="wait",
                         reason=f"waits for the runs of its parent, stage {stage_id}")
            return
        for action in super()._judge(farm, candidate, gpu_class):
            if isinstance(action, Decide) and action.decision in ("confirm", "promote", "simpler"):
                yield Decide(experiment_id=action.experiment_id, decision="stack",
                             reason=f"waits for the next stage: {action.reason}")
            elif isinstance(action, Decide) or (isinstance(action, Measure) and action.kind == "baseline" and
                                                state.verdicts.get(candidate.experiment_id) == "wait"):
                yield action  # a wait for main's runs; never a confirmation or promotion of one candidate

    def _judge_children(self, farm: FarmView, stage: Work, gpu_class: str) -> Iterator[Action]:
        """Candidates proposed from ``stage`` that waited for its runs, once they are in."""
        state = farm.state
        if self._unmeasured_stage(farm, stage.commit):
            return
        for eid, decision in list(state.verdicts.items()):
            work = state.work.get(eid)
            if decision == "wait" and work is not None and work.parent_commit == stage.commit:
                yield from self._judge(farm, work, state.finished[eid].gpu_class or gpu_class)

    def _certify(self, farm: FarmView, stage: Work, gpu_class: str) -> Iterator[Action]:
        """Judge a stage once none of its runs is still out; a discarded stage discards its parts."""
        state = farm.state
        if stage.experiment_id not in state.finished or state.pending_replicates(stage.train_sha):
            return
        waiting, folded = any(v == "stack" for v in state.verdicts.values()), False
        for action in super()._judge(farm, stage, gpu_class):
            if isinstance(action, Decide) and action.decision == "confirm" and waiting:
                # still promising, and winners wait: fold its parts into a bigger stage rather than run it again
                folded = True
                action = Decide(experiment_id=stage.experiment_id, decision="discard",
                                reason=f"folded into the next stage with the winners that wait: {action.reason}")
            elif isinstance(action, Measure) and folded:
                continue  # the folded stage's next run and main's pair for it (a wait's runs of main still go)
            yield action
            if isinstance(action, Decide) and action.decision == "discard":
                better = (self._verdict(farm, stage, gpu_class).delta or 0.0) < 0
                for part in state.stages[stage.experiment_id]:
                    if state.verdicts.get(part) != "staged":
                        continue
                    tries = sum(part in parts for parts in state.stages.values())
                    if better and tries <= self.settings.stack_retries:
                        yield Decide(experiment_id=part, decision="stack", reason=f"its stage {stage.experiment_id} "
                                     f"beat main, not yet by the margin ({action.reason}): it waits for the next "
                                     f"stage, with more winners ({tries} of {1 + self.settings.stack_retries})")
                    else:
                        yield Decide(experiment_id=part, decision="discard",
                                     reason=f"its stage {stage.experiment_id} was not certified: {action.reason}")

    def _next_stage(self, farm: FarmView) -> Iterator[Action]:
        """Merge the waiting winners into a stage off main, unless one is being certified."""
        state = farm.state
        winners = [state.work[e] for e, v in state.verdicts.items() if v == "stack"]
        if self._live(farm) or not winners:
            return
        main_py, merge = farm.repo.train_py_at(state.main_commit), farm.repo._merge_train_py
        merged, parts = main_py, []
        for part in sorted(winners, key=lambda w: self._gain(farm, w)):
            ours, base, theirs = merged, farm.repo.train_py_at(part.parent_commit), farm.repo.train_py_at(part.commit)
            merged, conflict = merge(base, ours, theirs)
            if conflict and merge(base, main_py, theirs)[1]:
                # main's own lines stand in its way (a rider of an earlier stage changed the same constant): its
                # side wins, since the stage is certified against main as a whole
                merged, conflict = merge(base, ours, theirs, prefer_theirs=True)[0], None
            if conflict:
                merged = ours
                yield Decide(experiment_id=part.experiment_id, decision="conflict",
                             reason=f"conflicts with a stronger winner of its stage: {conflict}")
            elif merged == ours:
                yield Decide(experiment_id=part.experiment_id, decision="noop",
                             reason="main or a stronger winner of its stage already has the change")
            else:
                parts.append(part)
        if not parts:
            return
        taken = farm.seeds_taken(sha(merged))
        seeds = self._confirm_seeds(farm, state.main_sha, taken, self.settings.stage_runs)
        names = " + ".join(p.experiment_id for p in parts)
        yield Stage(parts=[p.experiment_id for p in parts], train_py=merged, seeds=seeds,
                    description=f"stage: {names}: " + "; ".join(p.description for p in parts)[:300],
                    why=f"{len(parts)} winner(s) stacked, certified against main on seeds {seeds}")
        yield from self._pair_main(farm, f"the stage of {names}", state.main_sha, seeds)

    @staticmethod
    def _gain(farm: FarmView, part: Work) -> float:
        """How much a winner's run beat its parent's mean (most negative first: it wins a conflict)."""
        parent = farm.mean(sha(farm.repo.train_py_at(part.parent_commit)))
        gain = farm.mean(part.train_sha) - parent
        return 0.0 if math.isnan(gain) else gain


def preflight(train_py: str) -> str:
    """Why a proposal cannot even start (so it never takes a GPU), or ''."""
    try:
        compile(train_py, "train.py", "exec")
    except SyntaxError as exc:
        return f"does not compile: {exc.msg} (line {exc.lineno})"
    if "evaluate_bpb" not in train_py:
        return "never calls evaluate_bpb"
    return ""


def make_policy(settings: TournamentSettings, profile: Profile | None = None) -> TournamentPolicy:
    """The policy the settings name (``policy``: tournament or greedy). ``profile``: its documented noise (sd and
    the share shared per seed) is the prior wherever the settings name none (noise_prior_sd, noise_prior_shared)."""
    if profile is not None and settings.noise_prior_sd is None and profile.noise_sd:
        settings = settings.model_copy(update={"noise_prior_sd": profile.noise_sd})
    if profile is not None and settings.noise_prior_shared is None and profile.noise_shared is not None:
        settings = settings.model_copy(update={"noise_prior_shared": profile.noise_shared})
    if settings.policy == "stack":
        return StackPolicy(settings)
    return GreedyPolicy(settings) if settings.policy == "greedy" else TournamentPolicy(settings)
