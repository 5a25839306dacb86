"""The farm's words, declared once: what an experiment is for, how it ended, what was decided, what happened.

Every other module imports these; the ledger validates against them, so a value outside them cannot be written.
How a run ended is the trainer's word (``trainer.result.Status``: the harness writes it, and trainer/ imports
nothing of cluster/); the ledger's row status adds the two states before that. Why an agent brought no proposal is
the agents' word (``agent.protocol.FailureKind``: agents raise it, and agent/ imports nothing of cluster/).
"""

from __future__ import annotations

from typing import Literal, get_args

from agent.protocol import FAILURE_KINDS as FAILURE_KINDS  # re-exported: why an agent brought no proposal
from agent.protocol import FailureKind as FailureKind
from trainer.result import Status

# What an experiment is for: main measured as it is, a proposal's first run, a replicate of a candidate on
# another seed, a candidate merged into a main that moved on.
WorkKind = Literal["baseline", "candidate", "confirm", "merge"]
WORK_KINDS: tuple[WorkKind, ...] = get_args(WorkKind)
# A new file: its first run is a screening (selected for being low, so not main's noise), and a lineage node.
CHANGE_KINDS: tuple[WorkKind, ...] = ("candidate", "merge")
REPLICATE_KINDS: tuple[WorkKind, ...] = ("baseline", "confirm")  # re-measure a known file: the tournament waits
# Queue order: work that re-measures a known file runs before new ideas (lower first; stable within a rank).
PRIORITY: dict[WorkKind, int] = {"baseline": 0, "confirm": 0, "merge": 1, "candidate": 2}

# How a finished experiment ended (trainer.result.Status's values), and the ledger's row status.
FINISHED_STATUSES: tuple[str, ...] = tuple(s.value for s in Status)
RowStatus = Literal["queued", "running", "ok", "crash", "oom", "nan", "timeout", "invalid", "error"]
assert set(get_args(RowStatus)) == {"queued", "running", *FINISHED_STATUSES}, "RowStatus must list Status's values"

# The tournament's judgement of a candidate (cluster/decisions/tournament.py) ...
# stack (policy stack): its first run beat the screen; it waits to be stacked into the next stage with others.
Decision = Literal["promote", "confirm", "discard", "simpler", "wait", "stack"]
# ... and what carrying out a promotion came to when main did not simply fast-forward.
PromotionOutcome = Literal[
    "noop",  # main already had the change: main did not move
    "merging",  # main had moved on: the three-way merge is measured as a new experiment
    "conflict",  # the merge conflicts with main: to redo from main
    "staged",  # (policy stack) merged with other winners into a stage, which is certified against main as one
]
VerdictValue = Literal["promote", "confirm", "discard", "simpler", "wait", "stack", "noop", "merging", "conflict",
                       "staged"]
assert set(get_args(VerdictValue)) == set(get_args(Decision)) | set(get_args(PromotionOutcome))
# Verdicts that put an experiment on main: results.tsv says ``keep`` (ledger.write_results_tsv).
KEEP_VERDICTS: frozenset[str] = frozenset({"promote", "simpler", "noop"})
# Decisions after which a candidate is no parent for new proposals: it is on main, or on its way there.
ON_MAIN_VERDICTS: frozenset[str] = frozenset({"promote", "simpler", "merging", "noop", "stack", "staged"})

# A ledger row is one event of one experiment (rejected: a proposal refused before running; proposal_failed: an
# agent returned none but spent tokens; both carry only the LLM spend and why).
LedgerEvent = Literal["queued", "started", "finished", "verdict", "rejected", "proposal_failed"]
SPEND_ONLY_EVENTS: tuple[LedgerEvent, ...] = ("rejected", "proposal_failed")  # not experiments: only spend and why
