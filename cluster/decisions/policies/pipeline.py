"""Pipelined stages with always-valid certification (issue 27): exploration never waits for a certificate.

Why: the tournament and the stack spend most runs waiting (baselines, confirmations, merges judged again) and
lose real gains whose parent went stale. Here:

- every candidate is judged once, against its own parent (main, a stage, a near-miss), paired on the parent's
  seed: one whose paired difference beats ``join_sigmas`` standard errors is a winner (``stack``);
- winners are merged, strongest first, into the head (the newest live stage, else main) as the next stage; a
  winner from a stale parent is rebased by the three-way merge (base = its parent), not refused, and a clean
  textual merge is part of the stage, not a run of its own. Stage k+1 builds on stage k without waiting for it;
- proposals start from the head, and their first run waits only for the head's first run (their pair);
- one stage at a time (the target: the newest measured one, which holds every older live stage) is certified
  against main one paired run at a time with the mixture test of cluster/decisions/anytime.py, valid at every
  look: promoted as soon as its confidence sequence lies below 0 (at most ``cert_alpha`` false promotions per
  stage), dropped when the one at ``drop_alpha`` lies above ``-cert_worth_sds`` sd or after ``cert_max_runs``
  runs. A promotion lands every older stage with it; a drop dissolves the live chain and sends each part back to
  wait for a new stage off main (at most ``stage_retries`` more times), since any of them may be the one that
  hurts; a stage whose run failed is dropped with the newer stages that hold it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import ClassVar, Literal

from pydantic import Field

from agent.protocol import Proposal
from cluster.decisions.anytime import certify, confidence_sequence
from cluster.decisions.policies.core import CoreSettings
from cluster.decisions.policies.judging import Judging
from cluster.decisions.policy import Action, Decide, Measure, Promote, Screening, Stage, Strategies
from cluster.decisions.tournament import Comparison, compare, next_seeds
from cluster.decisions.view import FarmView
from cluster.records.ledger import LedgerRow
from cluster.records.state import Work, sha

LIVE = (None, "confirm", "wait")  # a stage's verdicts while it is neither landed nor dropped


class PipelineSettings(CoreSettings):
    """The core settings (pairing and a noise prior by default) and the pipeline's own knobs."""

    named_defaults: ClassVar[dict[str, dict[str, object]]] = {
        "pipeline": {"pairing": "auto", "noise_prior_df": 4, "baseline_replicates": 2, "second_chances": 1}}

    policy: Literal["pipeline"] = Field("pipeline", description="pipeline: each candidate judged once against its "
                                        "own parent, winners stacked into a chain of stages, one stage at a time "
                                        "certified against main with an always-valid test")
    join_sigmas: float = Field(0.5, ge=0, description="policy pipeline: a candidate whose paired difference to its "
                               "parent beats this many standard errors joins the next stage")
    cert_alpha: float = Field(0.01, gt=0, lt=1, description="policy pipeline: the most a stage with no gain may be "
                              "promoted, over every look at it (cluster/decisions/anytime.py)")
    cert_prior_sds: float = Field(1.0, gt=0, description="policy pipeline: the mixture's sd of a stage's effect, in "
                                  "noise sds: the gain size the test is quickest for")
    cert_worth_sds: float = Field(0.25, ge=0, description="policy pipeline: a stage whose confidence sequence at "
                                  "drop_alpha excludes a gain this large (in noise sds) is dropped")
    drop_alpha: float = Field(0.2, gt=0, lt=1, description="policy pipeline: the level of the test that drops a "
                              "stage (looser than cert_alpha: a wrong drop only sends its parts back once)")
    cert_max_runs: int = Field(10, ge=1, description="policy pipeline: a stage undecided after this many runs is "
                               "dropped")
    stage_retries: int = Field(1, ge=0, description="policy pipeline: a part of a dropped chain waits for a new "
                               "stage at most this many more times")


class PipelinePolicy:
    """Judge each candidate against its parent, stack the winners into a chain, certify one stage at a time."""

    settings_model: ClassVar[type[CoreSettings]] = PipelineSettings

    def __init__(self, settings: PipelineSettings, strategies: Strategies) -> None:
        self.settings, self.merge = settings, strategies.merge
        self.judging = Judging(settings, strategies)

    # ---- the protocol -----------------------------------------------------------------------------------------

    def start(self, farm: FarmView) -> Iterator[Action]:
        """Main's baseline runs: the reference of the first candidates and of the first certificate."""
        have = farm.reference_seeds(farm.main_sha)
        missing = self.settings.baseline_replicates - len(have)
        if missing > 0:
            yield Measure(kind="baseline", commit=farm.main_commit, parent_commit=farm.main_commit,
                          train_sha=farm.main_sha, seeds=next_seeds(have, missing), description="baseline: main",
                          why="pipeline: main's runs, the first pairs")

    def on_result(self, farm: FarmView, work: Work, row: LedgerRow) -> Iterator[Action]:
        """Judge a candidate; judge the candidates that waited for this file's run; certify; build a stage."""
        gpu = row.gpu_class or farm.main_class()
        if work.kind == "candidate":
            yield from self._judge(farm, work, gpu)
        for eid, decision in list(farm.verdicts.items()):
            child = farm.work.get(eid)
            if decision == "wait" and child is not None and farm.file_sha(child.parent_commit) == work.train_sha:
                yield from self._judge(farm, child, farm.finished_class(eid, gpu))
        yield from self._conflicted(farm)
        yield from self._certify(farm, gpu)
        yield from self._next_stage(farm)

    def after_promotion(self, farm: FarmView) -> Iterator[Action]:
        """The stage now on main lands, and every live stage older than it (it holds them), with their parts."""
        order = list(farm.stages)
        promoted = [s for s in order if farm.verdicts.get(s) == "promote" and farm.work[s].train_sha == farm.main_sha]
        if promoted:
            newest = order.index(promoted[-1])
            for stage_id in order[:newest + 1]:
                if stage_id != promoted[-1] and farm.verdicts.get(stage_id) not in LIVE:
                    continue
                if stage_id != promoted[-1]:
                    yield Decide(experiment_id=stage_id, decision="noop", reason=f"on main with {promoted[-1]}")
                for part in farm.stages[stage_id]:
                    if farm.verdicts.get(part) == "staged":
                        yield Decide(experiment_id=part, decision="promote", reason=f"on main with {promoted[-1]}")
        yield from self._certify(farm, farm.main_class())
        yield from self._next_stage(farm)

    def parent(self, farm: FarmView, rng: random.Random) -> tuple[str, str]:
        """Where main would be the parent, the head is: exploration builds on the stacked gains at once."""
        commit, why = self.judging.parent(farm, rng)
        chain = self._live(farm)
        if commit == farm.main_commit and chain:
            return farm.work[chain[-1]].commit, f"the head, stage {chain[-1]} ({why})"
        return commit, why

    def screen(self, farm: FarmView, proposal: Proposal) -> Screening:
        """Refuse what cannot run or repeats an earlier file or change; the first run goes on the parent's seed."""
        screening = self.judging.screen(farm, proposal)
        parent_seeds = sorted(set(farm.seeds_taken(sha(farm.train_py(proposal.parent_commit)))))
        own = set(farm.seeds_taken(sha(proposal.train_py)))
        free = [s for s in parent_seeds if s not in own]
        return screening.model_copy(update={"seed": free[0] if free else next_seeds(own, 1)[0]})

    # ---- candidates -------------------------------------------------------------------------------------------

    def _judge(self, farm: FarmView, candidate: Work, gpu: str) -> Iterator[Action]:
        """One run against the parent's run on the same seed: a winner waits for the next stage."""
        eid, parent_sha = candidate.experiment_id, farm.file_sha(candidate.parent_commit)
        if farm.verdicts.get(eid) not in (None, "wait"):
            return
        if eid in farm.finished and not farm.values(candidate.train_sha, gpu):
            yield Decide(experiment_id=eid, decision="discard", reason="no ok run")
            return
        if self._pending_on(farm, parent_sha, candidate.seed) and candidate.seed not in farm.seeds_measured(
                parent_sha, gpu):
            yield Decide(experiment_id=eid, decision="wait", reason=f"waits for its parent's run on seed "
                         f"{candidate.seed}, its pair")
            return
        comparison = self._compare(farm, candidate.train_sha, parent_sha, gpu)
        if comparison is None:
            yield Decide(experiment_id=eid, decision="discard", reason="its parent has no ok run to compare with")
            return
        numbers = f"{comparison.delta:+.4f} vs its parent (se {comparison.se:.4f}, paired {comparison.paired:.2f})"
        if comparison.delta < -self.settings.join_sigmas * comparison.se:
            yield Decide(experiment_id=eid, decision="stack", reason=f"{numbers}: joins the next stage")
        else:
            yield Decide(experiment_id=eid, decision="discard",
                         reason=f"{numbers} does not beat {self.settings.join_sigmas} se")

    def _compare(self, farm: FarmView, train_sha: str, reference_sha: str, gpu: str) -> Comparison | None:
        """A file against a reference on every run of both (stages' runs are fresh, so none is left out)."""
        noise = farm.noise(gpu)
        if not noise.known:
            return None
        return compare(farm.seeded(train_sha, gpu), farm.seeded(reference_sha, gpu), farm.seed_noise(noise), noise.df)

    @staticmethod
    def _pending_on(farm: FarmView, train_sha: str, seed: int) -> bool:
        """A run of a file on ``seed`` is queued or running."""
        return any(w.train_sha == train_sha and w.seed == seed and eid not in farm.finished
                   for eid, w in farm.work.items())

    def rebase(self, base: str, ours: str, theirs: str) -> tuple[str, str | None]:
        """A winner's change (``base`` -> ``theirs``) onto ``ours``: the run's three-way merge, and where it reports
        a conflict, the change line by line when no line was added or removed and no line was changed on both
        sides (git calls edits of two adjacent constants a conflict; here they are two changes)."""
        merged, conflict = self.merge(base, ours, theirs)
        if conflict and (lines := linewise(base, ours, theirs)) is not None:
            return lines, None
        return merged, conflict

    # ---- stages -----------------------------------------------------------------------------------------------

    @staticmethod
    def _live(farm: FarmView) -> list[str]:
        """The live chain, oldest first: stages neither landed nor dropped (each builds on the one before)."""
        return [s for s in farm.stages if farm.verdicts.get(s) in LIVE]

    def _next_stage(self, farm: FarmView) -> Iterator[Action]:
        """Merge the waiting winners into the head as the next stage, once the head's first run is in."""
        winners = [farm.work[e] for e, v in farm.verdicts.items() if v == "stack"]
        chain = self._live(farm)
        if not winners or (chain and chain[-1] not in farm.finished):
            return
        head_sha = farm.work[chain[-1]].train_sha if chain else farm.main_sha
        head_py = farm.train_py(farm.work[chain[-1]].commit if chain else farm.main_commit)
        merged, parts = head_py, []
        for part in sorted(winners, key=farm.gain):
            ours = merged
            merged, conflict = self.rebase(farm.train_py(part.parent_commit), ours, farm.train_py(part.commit))
            if conflict:
                merged = ours
                yield Decide(experiment_id=part.experiment_id, decision="conflict",
                             reason=f"conflicts with the head or a stronger winner: {conflict}")
            elif merged == ours:
                yield Decide(experiment_id=part.experiment_id, decision="noop",
                             reason="the head or a stronger winner already has the change")
            else:
                parts.append(part)
        if not parts:
            return
        taken = sorted(set(farm.seeds_taken(head_sha)))
        seeds = taken[:1] or [0]
        names = " + ".join(p.experiment_id for p in parts)
        yield Stage(parts=[p.experiment_id for p in parts], train_py=merged, seeds=seeds,
                    description=f"stage: {names}: " + "; ".join(p.description for p in parts)[:300],
                    why=f"{len(parts)} winner(s) on the head ({chain[-1] if chain else 'main'}), seed {seeds[0]}")

    def _target(self, farm: FarmView) -> str:
        """The stage under certification: the newest measured one (it holds every older live stage, so its effect
        is the largest; an older target's runs are given up, which stopping a sequence allows), preferring one
        committed off the current main (its promotion is a fast-forward, with no merge that might conflict)."""
        measured = [s for s in self._live(farm) if s in farm.finished]
        fresh = [s for s in measured if farm.work[s].parent_commit == farm.main_commit]
        return (fresh or measured or [""])[-1]

    def _certify(self, farm: FarmView, gpu: str) -> Iterator[Action]:
        """One look at the target: promote, drop, or one more paired run (only when none is out)."""
        stage_id = self._target(farm)
        if not stage_id:
            return
        stage = farm.work[stage_id]
        if farm.pending_replicates(stage.train_sha) or farm.pending_replicates(farm.main_sha):
            return
        if not farm.values(stage.train_sha, gpu):
            yield from self._drop(farm, stage_id, "its run failed", whole=False)
            return
        comparison = self._compare(farm, stage.train_sha, farm.main_sha, gpu)
        noise = farm.noise(gpu)
        if comparison is None or noise.sd is None:
            return
        s = self.settings
        var, rho = comparison.se**2, s.cert_prior_sds * noise.sd
        decision = certify(comparison.delta, var, rho, s.cert_alpha, s.cert_worth_sds * noise.sd, s.drop_alpha)
        lo, hi = confidence_sequence(comparison.delta, var, rho, s.cert_alpha)
        runs = len(farm.values(stage.train_sha, gpu))
        numbers = (f"{comparison.delta:+.4f} vs main over {runs} run(s), always-valid {1 - s.cert_alpha:.0%} "
                   f"interval {lo:+.4f} to {hi:+.4f}")
        if decision == "promote":
            yield Promote(experiment_id=stage_id, reason=f"certified: {numbers}", mean=farm.mean(stage.train_sha))
        elif decision == "drop" or runs >= s.cert_max_runs:
            yield from self._drop(farm, stage_id, numbers)
        else:
            yield Decide(experiment_id=stage_id, decision="confirm", reason=f"one more paired run: {numbers}")
            yield from self._look(farm, stage)

    def _look(self, farm: FarmView, stage: Work) -> Iterator[Action]:
        """One more paired run of the stage: on a seed main ran on, else a new seed for both."""
        mine = set(farm.seeds_taken(stage.train_sha))
        free = [s for s in farm.reference_seeds(farm.main_sha) if s not in mine]
        seed = free[0] if free else next_seeds(mine | set(farm.seeds_taken(farm.main_sha)), 1)[0]
        yield Measure(kind="confirm", commit=stage.commit, parent_commit=stage.parent_commit,
                      train_sha=stage.train_sha, seeds=[seed], description=f"certify {stage.experiment_id}",
                      replicate_of=stage.experiment_id, why="pipeline: one paired look")
        if not free:
            yield Measure(kind="baseline", commit=farm.main_commit, parent_commit=farm.main_commit,
                          train_sha=farm.main_sha, seeds=[seed], description="baseline: main",
                          why=f"pipeline: the pair of {stage.experiment_id}'s run on seed {seed}")

    def _drop(self, farm: FarmView, stage_id: str, why: str, whole: bool = True) -> Iterator[Action]:
        """Dissolve the live chain (``whole``: any part may be the one that hurts; else from ``stage_id`` on, the
        stages that hold it); each part waits for a new stage again while it has tries."""
        chain = self._live(farm)
        for live in chain if whole else chain[chain.index(stage_id):]:
            yield Decide(experiment_id=live, decision="discard", reason=f"chain dropped at {stage_id}: {why}")
            yield from self._parts_back(farm, live, f"stage {stage_id} dropped ({why})")

    def _parts_back(self, farm: FarmView, stage_id: str, why: str) -> Iterator[Action]:
        """The parts of a stage that did not land wait for a new stage, each at most ``stage_retries`` more times."""
        for part in farm.stages[stage_id]:
            if farm.verdicts.get(part) != "staged":
                continue
            tries = sum(part in parts for parts in farm.stages.values())
            if tries <= self.settings.stage_retries:
                yield Decide(experiment_id=part, decision="stack",
                             reason=f"{why}: waits for a new stage ({tries} of {1 + self.settings.stage_retries})")
            else:
                yield Decide(experiment_id=part, decision="discard", reason=why)

    def _conflicted(self, farm: FarmView) -> Iterator[Action]:
        """A stage whose promotion conflicted with main (git's merge of a stage committed off an older main): its
        parts are rebased onto the head again."""
        for stage_id in farm.stages:
            if farm.verdicts.get(stage_id) == "conflict":
                yield from self._parts_back(farm, stage_id, f"stage {stage_id} conflicted with main")


def linewise(base: str, ours: str, theirs: str) -> str | None:
    """The three-way merge line by line, for files of the same line count: each line from the side that changed
    it; None when a line was changed differently on both sides or the line counts differ."""
    b, o, t = base.split("\n"), ours.split("\n"), theirs.split("\n")
    if not len(b) == len(o) == len(t):
        return None
    out = []
    for x, y, z in zip(b, o, t, strict=True):
        if y != z and y != x and z != x:
            return None
        out.append(z if y == x else y)
    return "\n".join(out)


POLICIES = {"pipeline": PipelinePolicy}
