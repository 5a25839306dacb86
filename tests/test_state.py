"""The driver's state rebuilt from the ledger after a crash: what finished is kept, the rest queued again."""

from __future__ import annotations

from cluster.records.ledger import LedgerRow
from cluster.records.state import FarmState, sha


def test_rebuild_keeps_finished_and_requeues_unfinished_by_priority() -> None:
    def queued(eid: str, kind: str) -> LedgerRow:
        return LedgerRow(experiment_id=eid, event="queued", ts=0.0, kind=kind, commit="c", train_sha=eid)

    rows = [
        queued("e0001", "baseline"),
        queued("e0002", "candidate"),
        queued("e0003", "candidate"),
        queued("e0004", "confirm"),
        LedgerRow(experiment_id="e0001", event="finished", ts=1.0, status="ok", val_bpb=2.5, gpu_class="cpu"),
        LedgerRow(experiment_id="e0002", event="started", ts=1.0, status="running"),
    ]
    state = FarmState.rebuild(rows, "main", "train.py text")
    assert set(state.finished) == {"e0001"}
    assert list(state.queue) == ["e0004", "e0002", "e0003"]  # confirmations before new ideas
    assert state.next_id == 5 and state.new_id() == "e0005"
    assert state.main_sha == sha("train.py text")
    assert state.values("e0001", "cpu") == [2.5]


def test_rebuild_counts_promotions_by_each_candidates_last_verdict() -> None:
    def verdict(eid: str, decision: str) -> LedgerRow:
        return LedgerRow(experiment_id=eid, event="verdict", ts=0.0, verdict=decision)

    rows = [
        verdict("e0002", "confirm"), verdict("e0002", "promote"),  # landed on main
        verdict("e0003", "promote"), verdict("e0003", "merging"),  # main had moved: its merge is measured
        verdict("e0004", "promote"), verdict("e0004", "noop"),  # main already had it: main did not move
        verdict("e0005", "simpler"), verdict("e0005", "promote"),  # the simplicity rule, then landed
    ]
    state = FarmState.rebuild(rows, "main", "train.py text")
    assert state.promotions == 2  # a ledger from before promotions named main's new commit
    assert state.verdicts["e0004"] == "noop"


def test_a_promotion_moves_main_when_applied_and_counts_once() -> None:
    """The tournament's "promote" decision, then the promotion itself (main's new commit and file): only the
    second moves main, live and rebuilt alike."""
    rows = [
        LedgerRow(experiment_id="e0002", event="verdict", ts=0.0, verdict="promote"),  # the decision
        LedgerRow(experiment_id="e0002", event="verdict", ts=0.0, verdict="promote", commit="c2", train_sha="s2"),
        LedgerRow(experiment_id="e0003", event="verdict", ts=0.0, verdict="promote"),
        LedgerRow(experiment_id="e0003", event="verdict", ts=0.0, verdict="noop"),
    ]
    live = FarmState(main_commit="c1", main_sha="s1")
    for row in rows:
        live.apply(row)
    assert (live.main_commit, live.main_sha, live.promotions) == ("c2", "s2", 1)
    rebuilt = FarmState.rebuild(rows, "c2", "text of c2")
    assert rebuilt.promotions == 1 and rebuilt.main_commit == "c2" and rebuilt.verdicts == live.verdicts
