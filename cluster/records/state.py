"""The farm's state, kept in memory and rebuilt from the ledger after a crash.

Measurements are keyed by the sha256 of train.py, not by commit: a promoted
commit on main carries the very file its experiment measured, so what was
measured for the candidate counts for main, and replicates of the same file
pool together, whatever branch they ran on.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections import defaultdict, deque
from dataclasses import dataclass, field

from agent.protocol import Spend
from cluster.decisions.tournament import Measurement
from cluster.records.ledger import LedgerRow
from cluster.vocabulary import CHANGE_KINDS, PRIORITY, REPLICATE_KINDS, SPEND_ONLY_EVENTS, WorkKind


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def diff_signature(parent: str, child: str) -> str | None:
    """A sha of the change from ``parent`` to ``child`` that ignores whitespace and where the change lies.

    Two proposals that make the same edit (the same lines removed and added, however indented or spaced) get
    the same signature, even from different parents, so an idea already run is not run again. None: the
    files differ in whitespace only (nothing to run).
    """
    norm = lambda text: [" ".join(line.split()) for line in text.splitlines() if line.strip()]
    old, new = norm(parent), norm(child)
    hunks = [(tag, old[i1:i2], new[j1:j2]) for tag, i1, i2, j1, j2 in
             difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes() if tag != "equal"]
    return sha(json.dumps(hunks)) if hunks else None


class AgentSpend(Spend):
    """One agent's LLM spend over the run (proposals refused or failed included: they were paid for)."""

    proposals: int = 0  # proposals that reached the driver (queued or rejected)
    failed: int = 0  # requests that came back without a proposal, having spent tokens


def spend_summary(spend: dict[str, AgentSpend], cost_cap_usd: float | None) -> dict:
    """The LLM spend as status.json and `farm status` show it: the run's totals, then each agent's."""
    totals = {name: sum(getattr(a, name) for a in spend.values()) for name in AgentSpend.model_fields}
    return {"cost_cap_usd": cost_cap_usd, **totals,
            "agents": {name: a.model_dump() for name, a in sorted(spend.items())}}


@dataclass(frozen=True)
class Work:
    """One experiment to run: what, from where, and why. Frozen: a booked experiment never changes (the ledger
    has it), and the policies read these records through the view (cluster/decisions/view.py)."""

    experiment_id: str
    kind: WorkKind
    commit: str
    parent_commit: str
    train_sha: str
    agent: str = ""
    description: str = ""
    seed: int = 0
    replicate_of: str | None = None
    spend: Spend = field(default_factory=Spend)  # what proposing it cost (candidates of LLM agents)
    diff_sha: str | None = None  # candidates: diff_signature vs the parent
    model: str | None = None  # the LLM that proposed it (candidates of LLM agents)

    @classmethod
    def from_row(cls, row: LedgerRow) -> Work:
        """The work a ``queued`` ledger row books (``queued_row`` inverted)."""
        values = {name: getattr(row, name) for name in WORK_FIELDS}
        return cls(**{k: v for k, v in values.items() if v is not None}, kind=row.kind or "candidate",
                   commit=row.commit or "", parent_commit=row.parent_commit or "", train_sha=row.train_sha or "",
                   spend=Spend.of(row))

    def queued_row(self, ts: float) -> LedgerRow:
        """The ledger's ``queued`` event for this work: everything ``from_row`` needs to book it again."""
        return LedgerRow(event="queued", ts=ts, branch=f"exp/{self.experiment_id}", status="queued",
                         **{name: getattr(self, name) for name in WORK_FIELDS}, kind=self.kind, commit=self.commit,
                         parent_commit=self.parent_commit, train_sha=self.train_sha, **self.spend.model_dump())


# Work's fields that a queued ledger row carries under the same name (kind and the commits: always set)
WORK_FIELDS = ("experiment_id", "agent", "description", "seed", "replicate_of", "diff_sha", "model")


@dataclass
class FarmState:
    next_id: int = 1
    main_commit: str = ""
    main_sha: str = ""
    work: dict[str, Work] = field(default_factory=dict)  # every experiment ever queued
    finished: dict[str, LedgerRow] = field(default_factory=dict)
    verdicts: dict[str, str] = field(default_factory=dict)  # candidate id -> last decision
    # (train.py sha, GPU class) -> ok measurements; a candidate's first run is marked as screening
    measurements: dict[tuple[str, str], list[Measurement]] = field(default_factory=lambda: defaultdict(list))
    queue: deque[str] = field(default_factory=deque)
    promotions: int = 0
    rejected: int = 0  # proposals refused before running (do not compile, duplicates)
    cost_usd: float = 0.0  # LLM spend of the whole run
    spend: dict[str, AgentSpend] = field(default_factory=dict)  # by agent
    rejections: list[tuple[str, str]] = field(default_factory=list)  # (agent, "description: why"), oldest first
    stages: dict[str, list[str]] = field(default_factory=dict)  # (policy stack) stage id -> candidates merged in it

    def charge(self, agent: str, spend: Spend, failed: bool = False) -> None:
        """Count a proposal's LLM spend (``failed``: a request that brought no proposal but was paid for)."""
        if not failed and not spend.is_paid() and agent not in self.spend:
            return  # a proposer without an LLM: nothing to count
        mine = self.spend.setdefault(agent or "?", AgentSpend())
        if failed:
            mine.failed += 1
        else:
            mine.proposals += 1
        for name in Spend.model_fields:  # token counts and cost_usd
            setattr(mine, name, getattr(mine, name) + getattr(spend, name))
        self.cost_usd += spend.cost_usd

    def new_id(self) -> str:
        eid = f"e{self.next_id:04d}"
        self.next_id += 1
        return eid

    def enqueue(self, work: Work) -> None:
        self.work[work.experiment_id] = work
        # stable priority: insert before the first item of a lower priority
        rank = PRIORITY[work.kind]
        for i, other in enumerate(self.queue):
            if PRIORITY[self.work[other].kind] > rank:
                self.queue.insert(i, work.experiment_id)
                return
        self.queue.append(work.experiment_id)

    def record_finished(self, row: LedgerRow) -> bool:
        """Count a finished experiment once; False if it was already counted."""
        if row.experiment_id in self.finished:
            return False
        self.finished[row.experiment_id] = row
        work = self.work.get(row.experiment_id)
        if work and row.status == "ok" and row.val_bpb is not None:
            gpu = row.gpu_class or "cpu"
            self.measurements[(work.train_sha, gpu)].append(Measurement(
                commit=work.train_sha, gpu_class=gpu, val_bpb=row.val_bpb, seed=work.seed,
                screening=work.kind in CHANGE_KINDS,
            ))
        return True

    def values(self, train_sha: str, gpu_class: str, screening: bool = True) -> list[float]:
        """ok val_bpb of a file on a GPU class (without first runs of candidates if screening=False)."""
        return [m.val_bpb for m in self.measurements.get((train_sha, gpu_class), []) if screening or not m.screening]

    def pending_replicates(self, train_sha: str) -> int:
        """Replicates of a file that are queued or running."""
        return sum(
            1
            for eid, w in self.work.items()
            if w.train_sha == train_sha and eid not in self.finished and w.kind in REPLICATE_KINDS
        )

    def best(self) -> tuple[float | None, str | None]:
        """The lowest mean val_bpb of any measured file (any GPU class), and its sha."""
        means = {}
        for key, ms in self.measurements.items():
            values = [m.val_bpb for m in ms if not m.screening] or [m.val_bpb for m in ms]  # replicates if any
            if values:
                means[key] = sum(values) / len(values)
        if not means:
            return None, None
        key = min(means, key=means.get)
        return means[key], key[0]

    def main_mean(self, gpu_class: str) -> float | None:
        values = self.values(self.main_sha, gpu_class, screening=False)
        return sum(values) / len(values) if values else None

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for row in self.finished.values():
            out[row.status or "?"] += 1
        return dict(out)

    def apply(self, row: LedgerRow) -> bool:
        """Apply one ledger event to the state: the ONLY way the farm's state changes.

        The live driver appends each event to the ledger and applies it here; ``rebuild`` applies the same rows
        after a crash. One function for both, so the state a resumed farm has cannot drift from the one it had.
        Returns False for an event that changes nothing (a second ``finished`` of one experiment: a retried task).
        """
        eid = row.experiment_id
        if eid[1:].isdigit():
            self.next_id = max(self.next_id, int(eid[1:]) + 1)
        if row.event == "queued":
            self.enqueue(Work.from_row(row))
            if row.kind == "candidate":
                self.charge(row.agent or "", Spend.of(row))
        elif row.event == "started":
            if eid in self.queue:
                self.queue.remove(eid)
        elif row.event == "finished":
            if eid in self.queue:  # a ledger from a driver that booked no start
                self.queue.remove(eid)
            return self.record_finished(row)
        elif row.event == "verdict" and row.verdict:
            self.verdicts[eid] = row.verdict  # the last one stands: merging, then promote, say
            if row.verdict == "promote" and row.commit and row.train_sha:  # main moved to this commit
                self.main_commit, self.main_sha = row.commit, row.train_sha
                self.promotions += 1
            if row.verdict == "staged" and row.stage and eid not in self.stages.setdefault(row.stage, []):
                self.stages[row.stage].append(eid)
        elif row.event in SPEND_ONLY_EVENTS:
            self.charge(row.agent or "", Spend.of(row), failed=row.event == "proposal_failed")
            if row.event == "rejected":
                self.rejected += 1
                self.rejections.append((row.agent or "", f"{row.description or ''}: {row.reason or ''}"))
        return True

    @classmethod
    def rebuild(cls, rows: list[LedgerRow], main_commit: str, main_train_py: str) -> FarmState:
        """The state a crashed driver had: every event applied again (``apply``), then what was in flight queued.

        Main is the research repo's head, whatever the ledger says: git is written before the ledger's verdict,
        so after a crash between the two the repo is right.
        """
        state = cls(main_commit=main_commit, main_sha=sha(main_train_py))
        for row in rows:
            state.apply(row)
        state.main_commit, state.main_sha = main_commit, sha(main_train_py)
        if not any(r.event == "verdict" and r.verdict == "promote" and r.commit for r in rows):
            # a ledger written before promotions carried main's new commit: count each candidate's last verdict
            state.promotions = sum(1 for v in state.verdicts.values() if v == "promote")
        state.queue.clear()  # what was queued or in flight when the driver stopped, queued again in booking order
        for eid, work in list(state.work.items()):
            if eid not in state.finished:
                state.enqueue_existing(work)
        return state

    def enqueue_existing(self, work: Work) -> None:
        if work.experiment_id not in self.queue:
            del self.work[work.experiment_id]
            self.enqueue(work)
