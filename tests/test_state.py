"""The driver's state rebuilt from the ledger after a crash: what finished is kept, the rest queued again."""

from __future__ import annotations

from cluster.ledger import LedgerRow
from cluster.state import FarmState, sha


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
