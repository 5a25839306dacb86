"""The farm's store: the research repo (git), the ledger (Parquet) and the state rebuilt from them, written as one.

Every change the farm makes goes through here, as a ledger event applied to the state by ``FarmState.apply`` (the
same function ``--resume`` uses), with the git write that belongs to it done first: a crash between the two leaves
a commit no event names (harmless) rather than an event naming no commit. The driver decides what to book; it
never touches git (it reads files and diffs through here too) or builds a ledger row itself.
"""

from __future__ import annotations

import time
from pathlib import Path

from agent.protocol import Proposal, Spend
from cluster.execution.task import TaskOutcome
from cluster.records.ledger import Ledger, LedgerRow
from cluster.records.repo import Merge, PromoteOutcome, ResearchRepo
from cluster.records.state import FarmState, Work, sha
from cluster.vocabulary import VerdictValue

COMPACT_AFTER_PARTS = 256  # ledger files before they are merged (atomically; readers never miss a row)


class FarmStore:
    """One run dir's repo, ledger and state. One writer: the driver that holds it."""

    def __init__(self, run_dir: Path, merge: Merge | None = None) -> None:
        """``merge``: the run's three-way merge of train.py (None: git's; cluster/records/repo.py)."""
        self.repo = ResearchRepo.open(run_dir / "repo", merge)
        self.ledger = Ledger(run_dir / "ledger")
        self.ledger.compact()  # one file to read instead of one per event, after a resume
        main = self.repo.main_head()
        self.state = FarmState.rebuild(self.ledger.read(), main, self.repo.train_py_at(main))

    def record(self, *rows: LedgerRow) -> bool:
        """Each event onto the ledger, then applied to the state. False: an event that changed nothing."""
        self.ledger.append(list(rows))
        return all([self.state.apply(row) for row in rows])

    # ---- reading the repo (what the driver shows agents and sends to sandboxes; it makes no git call itself) ---

    def train_py(self, commit: str) -> str:
        """train.py at ``commit``: a parent shown to an agent, an experiment's file sent to its sandbox."""
        return self.repo.train_py_at(commit)

    def program_md(self, commit: str) -> str:
        """program.md at ``commit`` (main's: the research program every agent is shown)."""
        return self.repo.program_md_at(commit)

    def diff(self, commit: str) -> str:
        """train.py's unified diff from ``commit``'s parent to it: what a candidate or merge changed."""
        return self.repo.diff(commit)

    # ---- proposals --------------------------------------------------------------------------------------------

    def reject(self, proposal: Proposal, reason: str, change: str | None) -> None:
        """A proposal refused before running: only its spend and why are booked."""
        self.record(LedgerRow(experiment_id=self.state.new_id(), event="rejected", ts=time.time(),
                              agent=proposal.agent, parent_commit=proposal.parent_commit,
                              train_sha=sha(proposal.train_py), diff_sha=change, description=proposal.description,
                              reason=reason, model=proposal.model or None, **Spend.of(proposal).model_dump()))

    def failed_proposal(self, agent: str, error: str, spend: Spend) -> None:
        """A request that brought no proposal but was paid for."""
        self.record(LedgerRow(experiment_id=self.state.new_id(), event="proposal_failed", ts=time.time(),
                              agent=agent, reason=error[:500], **spend.model_dump()))

    def add_candidate(self, proposal: Proposal, change: str | None, seed: int = 0) -> str:
        """Commit the proposal on its own branch and queue its first run (on ``seed``); returns its experiment id."""
        eid = self.state.new_id()
        commit = self.repo.commit_experiment(eid, proposal.parent_commit, proposal.train_py, proposal.description,
                                             {"Farm-Experiment": eid, "Farm-Agent": proposal.agent})
        self.queue(Work(eid, "candidate", commit, proposal.parent_commit, sha(proposal.train_py),
                        agent=proposal.agent, description=proposal.description, diff_sha=change,
                        model=proposal.model or None, spend=Spend.of(proposal), seed=seed))
        return eid

    # ---- experiments ------------------------------------------------------------------------------------------

    def queue(self, work: Work) -> None:
        self.record(work.queued_row(time.time()))

    def started(self, eid: str) -> None:
        self.record(LedgerRow(experiment_id=eid, event="started", ts=time.time(), status="running"))

    @staticmethod
    def finished_row(work: Work, outcome: TaskOutcome | None, lost: str = "") -> LedgerRow:
        """The ``finished`` event of ``work``: from its outcome, or ``lost`` (the executor gave up: an error)."""
        if outcome is None:
            return LedgerRow(experiment_id=work.experiment_id, event="finished", ts=time.time(), status="error",
                             reason=f"lost: {lost[:500]}", kind=work.kind, train_sha=work.train_sha)
        return LedgerRow.from_result(work.experiment_id, outcome.result, event="finished", ts=time.time(),
                                     kind=work.kind, train_sha=work.train_sha, gpu_class=outcome.gpu_class,
                                     node=outcome.node, commit=work.commit, parent_commit=work.parent_commit,
                                     agent=work.agent, description=work.description, seed=work.seed,
                                     replicate_of=work.replicate_of)

    # ---- decisions and main -------------------------------------------------------------------------------

    def verdict(self, eid: str, decision: VerdictValue, reason: str, **moved_main: str) -> None:
        """Record a decision; ``moved_main`` (commit, train_sha) on the promotion that moves main to them."""
        self.record(LedgerRow(experiment_id=eid, event="verdict", ts=time.time(), verdict=decision, reason=reason,
                              **moved_main))

    def promote(self, candidate: Work, reason: str, mean: float) -> PromoteOutcome:
        """Put ``candidate`` on main: a fast-forward moves main (booked as the ``promote`` verdict); when main moved
        on, its three-way merge is committed and queued to be measured (``merging``); else ``noop``/``conflict``."""
        trailers = {"Farm-Experiment": candidate.experiment_id, "Farm-Val-Bpb": f"{mean:.6f}",
                    "Farm-Verdict": reason[:200]}
        outcome = self.repo.promote(candidate.commit, f"{candidate.description}\n\n{reason}", trailers)
        eid = candidate.experiment_id
        if outcome.kind == "noop":  # main already has the change (and perhaps more): main does not move
            self.verdict(eid, "noop", outcome.reason)
        elif outcome.kind == "fast-forward":
            self.verdict(eid, "promote", f"main <- {outcome.new_main[:7]}: {reason}", commit=outcome.new_main,
                         train_sha=candidate.train_sha)
        elif outcome.kind == "merge":
            merge_id, main = self.state.new_id(), self.state.main_commit
            commit = self.repo.commit_experiment(merge_id, main, outcome.merged_train_py,
                                                 f"merge {eid} into main", {"Farm-Experiment": merge_id,
                                                                            "Farm-Merges": eid})
            self.queue(Work(merge_id, "merge", commit, main, sha(outcome.merged_train_py), agent=candidate.agent,
                            description=f"merge of {eid}: {candidate.description}"))
            self.verdict(eid, "merging", f"main moved; measuring the merge as {merge_id}")
        else:
            self.verdict(eid, "conflict", f"conflicts with main, to redo: {outcome.conflict}")
        return outcome

    def stage(self, parts: list[Work], train_py: str, seeds: list[int], description: str, why: str) -> str:
        """Policy stack: commit ``train_py`` (main with ``parts`` merged in) off main as a new experiment, queue its
        runs (the first on ``seeds[0]``, replicates on the rest), and book each part ``staged`` in it."""
        stage_id, main = self.state.new_id(), self.state.main_commit
        names = " ".join(p.experiment_id for p in parts)
        commit = self.repo.commit_experiment(stage_id, main, train_py, description,
                                             {"Farm-Experiment": stage_id, "Farm-Merges": names})
        train_sha = sha(train_py)
        self.queue(Work(stage_id, "merge", commit, main, train_sha, agent="farm", description=description,
                        seed=seeds[0]))
        for seed in seeds[1:]:
            self.queue(Work(self.state.new_id(), "confirm", commit, main, train_sha, agent="farm",
                            description=f"confirm {stage_id}: {description}", seed=seed, replicate_of=stage_id))
        for part in parts:
            self.record(LedgerRow(experiment_id=part.experiment_id, event="verdict", ts=time.time(),
                                  verdict="staged", stage=stage_id, reason=f"in stage {stage_id}: {why}"))
        return stage_id

    # ---- upkeep -----------------------------------------------------------------------------------------------

    def compact_if_needed(self) -> None:
        """Merge the ledger's files once there are many: a reader of a long live run opened tens of thousands."""
        if self.ledger.part_count() > COMPACT_AFTER_PARTS:
            self.ledger.compact()
