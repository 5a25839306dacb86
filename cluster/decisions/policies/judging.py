"""Judging shared by the policies: a component each policy calls, never a class it inherits.

A candidate's reference (main, or with ``judge_against: parent`` the former main it was proposed from), the
verdict of the noise-aware judge (cluster/decisions/tournament.py) on the facts the view gives, the pairing waits and
seeds, the runs of main a decision asks for, screening and parent selection. Each policy turns these into its own
actions (cluster/decisions/policies/tournament.py, stack.py, greedy.py), so none rewrites another's output.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from agent.protocol import Proposal
from cluster.decisions.policies.core import CoreSettings
from cluster.decisions.policy import Action, Measure, Promote, Screening, Strategies, preflight
from cluster.decisions.tournament import (
    Comparison,
    Incumbent,
    JudgeKnobs,
    MeasureRequest,
    NoiseModel,
    Verdict,
    baseline_request,
    compare,
    judge,
    next_seeds,
    select_parent,
)
from cluster.decisions.view import FarmView
from cluster.records.ledger import LedgerRow
from cluster.records.repo import count_code_lines
from cluster.records.state import Work, sha


def most_runs(knobs: JudgeKnobs) -> int:
    """The most runs a candidate may get: main's pairs for its confirmations stop there."""
    return max(knobs.max_replicates, 1 + knobs.confirm_replicates, knobs.baseline_replicates)


class Judging:
    """The judging machinery over the view, configured by the core settings and the run's strategies.

    ``keep_if_lower``: a former-main parent counts every run of its file, the one that got it kept included, and one
    run is enough (the greedy policy's rule); otherwise only its replicates, at least ``baseline_replicates``.
    """

    def __init__(self, settings: CoreSettings, strategies: Strategies, keep_if_lower: bool = False) -> None:
        self.settings, self.strategies, self.keep_if_lower = settings, strategies, keep_if_lower

    def judged_by(self, farm: FarmView, work: Work, row: LedgerRow) -> list[tuple[Work, str]]:
        """What a finished experiment decides, as (candidate, GPU class): a baseline of main every candidate that
        waited for it; a confirmation its candidate; a candidate or a merge itself."""
        if work.kind == "baseline":
            return [(farm.work[eid], farm.finished_class(eid)) for eid, v in list(farm.verdicts.items()) if v == "wait"]
        candidate = farm.work[work.replicate_of] if work.kind == "confirm" and work.replicate_of else work
        return [(candidate, row.gpu_class or "cpu")]

    # ---- before a run -----------------------------------------------------------------------------------------

    def parent(self, farm: FarmView, rng: random.Random) -> tuple[str, str]:
        """Mostly main; sometimes a promising near-miss, so good ideas can be combined."""
        return select_parent(farm.main_commit, farm.near_misses(), rng, self.settings)

    def screen(self, farm: FarmView, proposal: Proposal) -> Screening:
        """Refuse, before it takes a GPU, a file that cannot run, or that repeats an earlier file or change.

        With ``second_chances``, a repeat of an edit whose every earlier try was discarded after a single run
        runs again (on another seed), up to that many times: one unlucky run must not lose a real gain for good.
        """
        parent_py = farm.train_py(proposal.parent_commit)
        change = self.strategies.signature(parent_py, proposal.train_py)
        train_sha = sha(proposal.train_py)
        reason = preflight(proposal.train_py)
        same_file = [w for w in farm.work.values() if w.train_sha == train_sha]
        same_change = [w for w in farm.work.values() if change and w.diff_sha == change]
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
        tries = {w.experiment_id: w for w in earlier}
        if not tries or len(tries) > self.settings.second_chances:
            return False
        for eid, work in tries.items():
            if work.kind != "candidate" or farm.verdicts.get(eid) != "discard":
                return False
            if len(farm.runs_of(work.train_sha)) != 1:
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
        reference = own if self.settings.judge_against == "parent" and parent_sha != farm.main_sha and \
            len(own) >= self.settings.baseline_replicates else farm.reference_seeds(farm.main_sha)
        free = [s for s in reference if s not in taken]
        return free[0] if free else next_seeds(taken, 1)[0]

    # ---- what a candidate is judged against -------------------------------------------------------------------

    def former_main(self, farm: FarmView, candidate: Work, gpu_class: str) -> Incumbent | None:
        """A candidate's parent when main has moved on from it and it was measured as main: what its change is
        judged against with ``judge_against: parent``; None otherwise (or without that setting)."""
        if self.settings.judge_against != "parent":
            return None
        if candidate.kind != "candidate" or candidate.parent_commit == farm.main_commit:
            return None
        parent_py = farm.train_py(candidate.parent_commit)
        parent_sha = sha(parent_py)
        values = farm.values(parent_sha, gpu_class, screening=self.keep_if_lower)
        least = 1 if self.keep_if_lower else self.settings.baseline_replicates
        if parent_sha == farm.main_sha or len(values) < least:
            return None
        candidate_py = farm.train_py(candidate.commit)
        merged, conflict = self.strategies.merge(parent_py, farm.train_py(farm.main_commit), candidate_py)
        if not conflict and merged == candidate_py:
            return None  # it already has what main gained since (promote would fast-forward it): judge it against main
        runs = {"screening": {gpu_class: values}} if self.keep_if_lower else {"measurements": {gpu_class: values}}
        return Incumbent(commit=candidate.parent_commit, line_count=count_code_lines(parent_py), **runs)

    def reference(self, farm: FarmView, candidate: Work) -> str:
        """The file a candidate is compared with, once per judgement: with pairing its former-main parent
        (judge_against: parent; a three-way merge to find) or main; without pairing, main."""
        if self.settings.pairing != "auto":
            return farm.main_sha
        for gpu in farm.main_classes():
            if parent := self.former_main(farm, candidate, gpu):
                return farm.file_sha(parent.commit)
        return farm.main_sha

    def verdict(self, farm: FarmView, candidate: Work, gpu_class: str, knobs: JudgeKnobs) -> Verdict:
        """The noise-aware judge (cluster/decisions/tournament.py) on the candidate's runs: the noise computed once."""
        parent = self.former_main(farm, candidate, gpu_class)
        reference = farm.file_sha(parent.commit) if parent else farm.main_sha
        noise = farm.noise(gpu_class)
        return judge(farm.values(candidate.train_sha, gpu_class), count_code_lines(farm.train_py(candidate.commit)),
                     parent or farm.incumbent(), noise, knobs, gpu_class, commit=candidate.commit,
                     comparison=self._paired(farm, candidate, reference, gpu_class, noise))

    def _paired(self, farm: FarmView, candidate: Work, reference_sha: str, gpu_class: str,
                noise: NoiseModel) -> Comparison | None:
        """The candidate against a reference file on their common seeds, weighted by how much of the noise the
        farm has seen shared per seed (tournament.compare); None without pairing."""
        if self.settings.pairing != "auto" or not noise.known:
            return None
        return compare(farm.seeded(candidate.train_sha, gpu_class),
                       farm.seeded(reference_sha, gpu_class, screening=False), farm.seed_noise(noise), noise.df)

    # ---- pairing ----------------------------------------------------------------------------------------------

    def awaited_pair(self, farm: FarmView, candidate: Work, gpu_class: str, reference: str) -> str:
        """Pairing: why a candidate waits for its reference's run on one of its seeds that is queued or running
        (judged now, it would be compared unpaired and lose a small real gain); '' when nothing is awaited. A
        finished baseline judges every waiting candidate again."""
        if self.settings.pairing != "auto":
            return ""
        mine = farm.seeds_measured(candidate.train_sha, gpu_class)
        done = farm.replicate_seeds_measured(reference, gpu_class)
        awaited = sorted((mine - done) & farm.pending_replicate_seeds(reference))
        return f"pairing: waits for its reference's run on seed {awaited[0]}" if awaited else ""

    def confirm_seeds(self, farm: FarmView, reference: str, taken: list[int], need: int) -> list[int]:
        """Seeds for a candidate's confirmations: new ones, or with pairing first those its reference ran on."""
        if self.settings.pairing != "auto":
            return next_seeds(taken, need)
        shared = [s for s in farm.reference_seeds(reference) if s not in taken][:need]
        return shared + next_seeds(taken + shared, need - len(shared))

    def pair_main(self, farm: FarmView, name: str, reference: str, seeds: list[int], most: int) -> Iterator[Action]:
        """Pairing: main also runs on a confirmation's seeds it lacks, so every run of the candidate has its pair
        (only when main is the candidate's reference, and never beyond ``most`` + baseline runs of main)."""
        if self.settings.pairing != "auto" or reference != farm.main_sha:
            return
        have = farm.reference_seeds(farm.main_sha)
        room = most + self.settings.baseline_replicates - len(have)
        missing = [s for s in seeds if s not in have][:max(room, 0)]
        if missing:
            yield Measure(kind="baseline", commit=farm.main_commit, parent_commit=farm.main_commit,
                          train_sha=farm.main_sha, seeds=missing, description="baseline: main",
                          why=f"pairing: {name} is confirmed on seeds {missing}")

    # ---- what a decision asks for -----------------------------------------------------------------------------

    def confirm(self, farm: FarmView, candidate: Work, verdict: Verdict, reference: str,
                most: int) -> Iterator[Action]:
        """A promising candidate's confirmations on other seeds (with pairing, main's pairs of them)."""
        taken = [candidate.seed, *farm.seeds_taken(candidate.train_sha, verdict.gpu_class)]
        need = verdict.replicates_needed - farm.pending_replicates(candidate.train_sha)
        if need > 0:
            seeds = self.confirm_seeds(farm, reference, taken, need)
            yield Measure(
                kind="confirm", commit=candidate.commit, parent_commit=candidate.parent_commit,
                train_sha=candidate.train_sha, seeds=seeds, agent=candidate.agent,
                description=f"confirm {candidate.experiment_id}: {candidate.description}",
                replicate_of=candidate.experiment_id, why=verdict.reason)
            yield from self.pair_main(farm, candidate.experiment_id, reference, seeds, most)

    def follow_up(self, farm: FarmView, candidate: Work, verdict: Verdict, reference: str,
                  knobs: JudgeKnobs) -> Iterator[Action]:
        """What a noise-aware decision asks for: confirmations (and main's pairs), main's runs, a promotion."""
        if verdict.decision == "confirm":
            yield from self.confirm(farm, candidate, verdict, reference, most_runs(knobs))
        elif verdict.decision == "wait":
            yield from self.main_runs(farm, verdict.gpu_class, knobs)
        elif verdict.decision in ("promote", "simpler"):
            yield from self.promote(farm, candidate, verdict)

    def main_runs(self, farm: FarmView, gpu_class: str, knobs: JudgeKnobs) -> Iterator[Action]:
        """Main's missing replicates for noise-aware judging: its baseline, then enough for the noise to be known."""
        yield from self.measure_main(farm, baseline_request(farm.incumbent(), gpu_class, knobs, farm.noise(gpu_class)))

    def promote(self, farm: FarmView, candidate: Work, verdict: Verdict) -> Iterator[Action]:
        yield Promote(experiment_id=candidate.experiment_id, reason=verdict.reason, mean=farm.mean(candidate.train_sha))

    def measure_main(self, farm: FarmView, request: MeasureRequest | None) -> Iterator[Action]:
        """Main's runs that ``request`` asks for and are not already queued or running."""
        missing = (request.replicates if request else 0) - farm.pending_replicates(farm.main_sha)
        if missing > 0:
            if self.settings.pairing == "auto":  # main's own first seeds (which candidates share), a promoted
                used = farm.reference_seeds(farm.main_sha)  # candidate's first run measured again, afresh
            else:  # seeds no file was measured on yet
                used = farm.seeds_taken(farm.main_sha) + farm.every_seed_measured()
            seeds = next_seeds(used, missing)
            yield Measure(kind="baseline", commit=farm.main_commit, parent_commit=farm.main_commit,
                          train_sha=farm.main_sha, seeds=seeds, description="baseline: main",
                          why=request.why if request else "")
