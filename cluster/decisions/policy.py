"""The decision layer's interface: results in, actions out. A policy decides, the driver executes.

In the spirit of Ray Tune's TrialScheduler: a ``Policy`` is shown the farm (read-only, cluster/decisions/view.py) when
the farm starts, when an experiment finishes and when main has moved, and yields actions; the driver carries each out
exactly as yielded (queue these runs, record this decision, promote this candidate) and decides nothing itself. Each
action is carried out before the policy computes the next, so a decision sees the state the ones before it made: when a
baseline of main settles several waiting candidates and the first is promoted, the next is judged against the
new main.

- ``Measure``: run one file once per seed in ``seeds`` (main's baselines, a candidate's confirmations);
- ``Decide``: record a decision on a candidate (the ledger's ``verdict`` event, with the reason);
- ``screen``: refuse a proposal before it runs (it does not compile, or repeats an earlier file or change);
- ``Promote``: put a candidate on main. How is mechanism (git: a fast-forward, or a three-way merge whose result
  is measured like any candidate); what happens once main moved is the policy's again (``after_promotion``);
- ``Stage``: merge several candidates into one new file off main and measure it (policy stack);
- ``Revert``: propose main without one part of a promoted stage, as a candidate (policy stack's ablation).

The policies themselves sit side by side in cluster/decisions/policies/ (one file each, with its settings model), and
``cluster.decisions.policies.make_policy`` picks one from the settings. ``Strategies`` are what a run may swap without
patching anything: the three-way merge and what makes two proposals the same change.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

from pydantic import BaseModel, Field

from agent.protocol import Proposal
from cluster.decisions.view import FarmView
from cluster.records.ledger import LedgerRow
from cluster.records.repo import Merge, git_merge
from cluster.records.state import Work, diff_signature
from cluster.vocabulary import VerdictValue


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


class Signature(Protocol):
    """What makes two proposals the same idea: a key of the change from ``parent`` to ``child`` (None: the files
    differ in whitespace only). Screening refuses a proposal whose key an earlier experiment had."""

    def __call__(self, parent: str, child: str) -> str | None: ...


@dataclass(frozen=True)
class Strategies:
    """The parts of a run a benchmark may swap (bench/search.py's what-ifs), passed in rather than patched: the
    three-way merge of train.py (promotions and stages, one function for both) and the change signature."""

    merge: Merge = git_merge
    signature: Signature = diff_signature


class Policy(Protocol):
    """What the driver asks of a policy. Every method reads the farm through ``farm`` and writes nothing."""

    def start(self, farm: FarmView) -> Iterator[Action]:
        """The farm starts (or resumes): what to run before anything is judged."""
        ...

    def on_result(self, farm: FarmView, work: Work, row: LedgerRow) -> Iterator[Action]:
        """An experiment finished (``row``, already in the state): what it decides, and what to run next."""
        ...

    def after_promotion(self, farm: FarmView) -> Iterator[Action]:
        """Main moved to a candidate: what to run on the new main."""
        ...

    def parent(self, farm: FarmView, rng: random.Random) -> tuple[str, str]:
        """The commit the next proposal starts from, and why."""
        ...

    def screen(self, farm: FarmView, proposal: Proposal) -> Screening:
        """A proposal before it takes a GPU: refused (and why), or its change and the seed of its first run."""
        ...


def preflight(train_py: str) -> str:
    """Why a proposal cannot even start (so it never takes a GPU), or ''."""
    try:
        compile(train_py, "train.py", "exec")
    except SyntaxError as exc:
        return f"does not compile: {exc.msg} (line {exc.lineno})"
    if "evaluate_bpb" not in train_py:
        return "never calls evaluate_bpb"
    return ""
