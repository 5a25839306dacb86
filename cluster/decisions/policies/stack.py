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

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import ClassVar, Literal

from pydantic import Field

from agent.protocol import Proposal
from cluster.decisions.policies.core import CoreSettings
from cluster.decisions.policies.judging import Judging, most_runs
from cluster.decisions.policies.tournament import PAIRED_DEFAULTS, TournamentSettings
from cluster.decisions.policy import Action, Decide, Revert, Screening, Stage, Strategies
from cluster.decisions.tournament import Verdict
from cluster.decisions.view import FarmView
from cluster.records.ledger import LedgerRow
from cluster.records.state import Work, sha

# The stack policy (issue 15; docs/bench/stack.md): the paired policy's judge, but one run of a candidate decides
# whether it joins the next stage, and the stage (the sum of a round's winners, so a larger effect than any of them)
# carries the margin. max_replicates bounds a promising stage's runs.
STACK_DEFAULTS: dict[str, object] = {"promising_sigmas": 0.5, "max_replicates": 6}


class StackSettings(TournamentSettings):
    """The tournament's knobs (with PAIRED_DEFAULTS and STACK_DEFAULTS for every field not set) and the stages'."""

    named_defaults: ClassVar[dict[str, dict[str, object]]] = {"stack": {**PAIRED_DEFAULTS, **STACK_DEFAULTS}}

    policy: Literal["stack"] = Field("stack", description="stack: paired, but a candidate whose first run beats the "
                                     "screen is stacked with the round's other winners into one stage")
    stage_runs: int = Field(4, ge=2, description="policy stack: runs of a stage queued at once, on main's seeds "
                            "(then one more at a time while it stays promising, up to max_replicates)")
    stack_retries: int = Field(2, ge=0, description="policy stack: a stage that beat main but not by the margin "
                               "sends its parts back to wait for the next stage, with the winners found meanwhile "
                               "(a bigger effect, easier to certify), at most this many times per part")
    ablate: bool = Field(False, description="policy stack: after a stage of several parts is promoted, each part but "
                         "the strongest is reverted from main as a candidate of its own (agent farm), judged like any "
                         "candidate: a rider that hurts is taken out again by a later stage (issue 15's ablation)")


class StackPolicy:
    """Stack a round's winners into one stage off main, certify the stage, land its parts with it."""

    settings_model: ClassVar[type[CoreSettings]] = StackSettings

    def __init__(self, settings: StackSettings, strategies: Strategies) -> None:
        self.settings, self.merge = settings, strategies.merge
        self.judging = Judging(settings, strategies)

    def start(self, farm: FarmView) -> Iterator[Action]:
        """Measure main before anything is judged: the noise floor comes first."""
        yield from self.judging.main_runs(farm, farm.main_class(), self.settings)

    def on_result(self, farm: FarmView, work: Work, row: LedgerRow) -> Iterator[Action]:
        """Judge what the experiment was for (a baseline may settle waiting candidates); then the next stage."""
        for candidate, gpu_class in self.judging.judged_by(farm, work, row):
            yield from self._judge(farm, candidate, gpu_class)
        yield from self._next_stage(farm)

    def after_promotion(self, farm: FarmView) -> Iterator[Action]:
        """Every part of the stage now on main lands with it; then main's missing runs and the next stage."""
        for stage_id, parts in farm.stages.items():
            if farm.verdicts.get(stage_id) == "promote" and farm.work[stage_id].train_sha == farm.main_sha:
                landed = [p for p in parts if farm.verdicts.get(p) == "staged"]
                for part in landed:
                    yield Decide(experiment_id=part, decision="promote", reason=f"on main with stage {stage_id}")
                if self.settings.ablate and len(landed) > 1:
                    yield from self._ablate(farm, stage_id, [farm.work[p] for p in landed])
        yield from self.judging.main_runs(farm, farm.main_class(), self.settings)
        yield from self._next_stage(farm)

    def parent(self, farm: FarmView, rng: random.Random) -> tuple[str, str]:
        """Where main would be the parent, the newest stage under certification is: exploration goes on from the
        stacked gains without waiting for their certificate (its children are judged against its own runs)."""
        commit, why = self.judging.parent(farm, rng)
        live = self._live(farm)
        if commit == farm.main_commit and live:
            stage = farm.work[live[-1]]
            return stage.commit, f"stage {stage.experiment_id} under certification ({why})"
        return commit, why

    def screen(self, farm: FarmView, proposal: Proposal) -> Screening:
        """Refuse what cannot run or repeats an earlier file or change (judging.py; second chances)."""
        return self.judging.screen(farm, proposal)

    # ---- judging ----------------------------------------------------------------------------------------------

    def _judge(self, farm: FarmView, candidate: Work, gpu_class: str) -> Iterator[Action]:
        """A stage is certified; a candidate's first run decides whether it waits for the next stage."""
        if candidate.experiment_id in farm.stages:
            yield from self._certify(farm, candidate, gpu_class)
            yield from self._judge_children(farm, candidate, gpu_class)
            return
        if candidate.kind == "candidate" and (stage_id := self._unmeasured_stage(farm, candidate.parent_commit)):
            yield Decide(experiment_id=candidate.experiment_id, decision="wait",
                         reason=f"waits for the runs of its parent, stage {stage_id}")
            return
        reference = self.judging.reference(farm, candidate)
        if pair := self.judging.awaited_pair(farm, candidate, gpu_class, reference):
            yield Decide(experiment_id=candidate.experiment_id, decision="wait", reason=pair)
            return
        verdict = self.judging.verdict(farm, candidate, gpu_class, self.settings)
        if verdict.decision in ("confirm", "promote", "simpler"):  # never confirmed or promoted on its own
            yield Decide(experiment_id=candidate.experiment_id, decision="stack",
                         reason=f"waits for the next stage: {verdict.reason}")
            return
        yield Decide(experiment_id=candidate.experiment_id, decision=verdict.decision, reason=verdict.reason)
        if verdict.decision == "wait":
            yield from self.judging.main_runs(farm, verdict.gpu_class, self.settings)

    def _judge_children(self, farm: FarmView, stage: Work, gpu_class: str) -> Iterator[Action]:
        """Candidates proposed from ``stage`` that waited for its runs, once they are in."""
        if self._unmeasured_stage(farm, stage.commit):
            return
        for eid, decision in list(farm.verdicts.items()):
            work = farm.work.get(eid)
            if decision == "wait" and work is not None and work.parent_commit == stage.commit:
                yield from self._judge(farm, work, farm.finished_class(eid, gpu_class))

    def _certify(self, farm: FarmView, stage: Work, gpu_class: str) -> Iterator[Action]:
        """Judge a stage once none of its runs is still out; a discarded stage discards its parts."""
        if stage.experiment_id not in farm.finished or farm.pending_replicates(stage.train_sha):
            return
        waiting = any(v == "stack" for v in farm.verdicts.values())
        reference = self.judging.reference(farm, stage)
        if pair := self.judging.awaited_pair(farm, stage, gpu_class, reference):
            yield Decide(experiment_id=stage.experiment_id, decision="wait", reason=pair)
            return
        verdict = self.judging.verdict(farm, stage, gpu_class, self.settings)
        if verdict.decision == "confirm" and waiting:
            # still promising, and winners wait: fold its parts into a bigger stage rather than run it again
            reason = f"folded into the next stage with the winners that wait: {verdict.reason}"
            yield Decide(experiment_id=stage.experiment_id, decision="discard", reason=reason)
            yield from self._parts_back(farm, stage, verdict, reason)
            return
        yield Decide(experiment_id=stage.experiment_id, decision=verdict.decision, reason=verdict.reason)
        yield from self.judging.follow_up(farm, stage, verdict, reference, self.settings)
        if verdict.decision == "discard":
            yield from self._parts_back(farm, stage, verdict, verdict.reason)

    def _parts_back(self, farm: FarmView, stage: Work, verdict: Verdict, reason: str) -> Iterator[Action]:
        """A stage not certified: each part waits for the next stage again if the stage beat main (at most
        ``stack_retries`` times), else is discarded."""
        better = (verdict.delta or 0.0) < 0
        for part in farm.stages[stage.experiment_id]:
            if farm.verdicts.get(part) != "staged":
                continue
            tries = sum(part in parts for parts in farm.stages.values())
            if better and tries <= self.settings.stack_retries:
                yield Decide(experiment_id=part, decision="stack", reason=f"its stage {stage.experiment_id} "
                             f"beat main, not yet by the margin ({reason}): it waits for the next "
                             f"stage, with more winners ({tries} of {1 + self.settings.stack_retries})")
            else:
                yield Decide(experiment_id=part, decision="discard",
                             reason=f"its stage {stage.experiment_id} was not certified: {reason}")

    # ---- stages -----------------------------------------------------------------------------------------------

    @staticmethod
    def _live(farm: FarmView) -> list[str]:
        """Stages not yet decided, oldest first."""
        return [s for s in farm.stages if farm.verdicts.get(s) in (None, "confirm", "wait")]

    def _unmeasured_stage(self, farm: FarmView, commit: str) -> str:
        """The stage at ``commit`` if some of its first ``stage_runs`` are still out ('' otherwise): a child of it
        waits, so that it is judged against the stage's own runs, not main's."""
        for stage_id in farm.stages:
            stage = farm.work[stage_id]
            if stage.commit == commit:
                runs = farm.runs_of(stage.train_sha)
                return stage_id if len(runs) < self.settings.stage_runs and \
                    (farm.pending_replicates(stage.train_sha) or stage_id not in farm.finished) else ""
        return ""

    def _next_stage(self, farm: FarmView) -> Iterator[Action]:
        """Merge the waiting winners into a stage off main, unless one is being certified."""
        winners = [farm.work[e] for e, v in farm.verdicts.items() if v == "stack"]
        if self._live(farm) or not winners:
            return
        main_py, merge = farm.train_py(farm.main_commit), self.merge
        merged, parts = main_py, []
        for part in sorted(winners, key=farm.gain):
            ours, base, theirs = merged, farm.train_py(part.parent_commit), farm.train_py(part.commit)
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
        seeds = self.judging.confirm_seeds(farm, farm.main_sha, taken, self.settings.stage_runs)
        names = " + ".join(p.experiment_id for p in parts)
        yield Stage(parts=[p.experiment_id for p in parts], train_py=merged, seeds=seeds,
                    description=f"stage: {names}: " + "; ".join(p.description for p in parts)[:300],
                    why=f"{len(parts)} winner(s) stacked, certified against main on seeds {seeds}")
        yield from self.judging.pair_main(farm, f"the stage of {names}", farm.main_sha, seeds, most_runs(self.settings))

    def _ablate(self, farm: FarmView, stage_id: str, parts: list[Work]) -> Iterator[Action]:
        """The stage was certified as a whole, so a rider whose own run was lucky may hurt: propose main without
        each part but the strongest (whose gain the certificate mostly is), one candidate per part. A revert that
        beats main joins a later stage like any winner; one that conflicts with main's later lines is not tried."""
        main_py = farm.train_py(farm.main_commit)
        for part in sorted(parts, key=farm.gain)[1:]:
            # the part's own change, undone on main: base = the part's file, theirs = its parent's
            reverted, conflict = self.merge(farm.train_py(part.commit), main_py, farm.train_py(part.parent_commit))
            if conflict or reverted == main_py:
                continue
            yield Revert(part=part.experiment_id, train_py=reverted,
                         description=f"revert {part.experiment_id} (stage {stage_id}): {part.description}"[:300],
                         why=f"ablation of stage {stage_id}: does main do better without {part.experiment_id}?")


POLICIES = {"stack": StackPolicy}
