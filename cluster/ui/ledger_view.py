"""The ledger as the run browser needs it: read incrementally, folded into one row per experiment with Arrow.

Why not :meth:`cluster.records.ledger.Ledger.latest`: a live run's ledger is one
Parquet part per event (the driver compacts only on resume), so 10,000
experiments are ~40,000 files. ``Ledger.table()`` concatenates every part on
each call and ``latest()`` folds the rows in Python: seconds per poll on a
2-core machine. Here a part is read once (parts are immutable), a poll that
finds the directory unchanged (its mtime: a part is only ever created,
renamed or deleted) costs one ``stat``, and the fold is vectorised. The
listing rules (which parts are live, pending parts, compaction) are the
ledger's own, through its private helpers: one source of truth.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cluster.records.ledger import RESULT_FIELDS, SCHEMA, Ledger, _read_part
from cluster.vocabulary import SPEND_ONLY_EVENTS


@dataclass(frozen=True)
class Snapshot:
    """One consistent reading of the ledger: every event, and each experiment's state after its last event."""

    version: int  # grows with every change seen; the page polls it
    events: pa.Table  # every row in append order, SCHEMA plus ``seq`` (the row's position)
    latest: pa.Table  # one row per experiment (first-appearance order): SCHEMA fields plus the derived times

    @property
    def experiments(self) -> int:
        return self.latest.num_rows


def fold_latest(events: pa.Table) -> pa.Table:
    """Each experiment's state after its last event, as :meth:`Ledger.latest` defines it, vectorised.

    Later events set only the fields they carry; a ``started`` row (a new
    attempt) clears what the attempt before it produced (RESULT_FIELDS).
    Adds ``queued_ts`` (first event), ``started_ts`` (last start),
    ``finished_ts`` (last finish) and ``events`` (count). Rows of
    :data:`SPEND_ONLY_EVENTS` are not experiments and are left out.
    """
    rows = events.filter(pc.invert(pc.is_in(events.column("event"), pa.array(SPEND_ONLY_EVENTS))))
    n = rows.num_rows
    codes = pc.dictionary_encode(rows.column("experiment_id")).combine_chunks().indices.to_numpy(zero_copy_only=False)
    groups = int(codes.max()) + 1 if n else 0
    position = np.arange(n)
    is_start = pc.equal(rows.column("event"), "started").to_numpy(zero_copy_only=False)
    last_start = np.full(groups, -1)
    np.maximum.at(last_start, codes[is_start], position[is_start])
    stale = pa.array(position < last_start[codes]) if n else pa.array([], pa.bool_())
    columns = {}
    for name in SCHEMA.names:
        column = rows.column(name)
        if name in RESULT_FIELDS:  # an earlier attempt's outcome no longer holds
            column = pc.if_else(stale, pa.nulls(n, column.type), column)
        columns[name] = column
    event = rows.column("event")
    ts = rows.column("ts")
    columns["started_ts"] = pc.if_else(pc.equal(event, "started"), ts, pa.nulls(n, pa.float64()))
    finished = pc.and_(pc.equal(event, "finished"), pc.invert(stale))  # an earlier attempt's finish no longer holds
    columns["finished_ts"] = pc.if_else(finished, ts, pa.nulls(n, pa.float64()))
    columns["queued_ts"] = ts
    table = pa.table(columns)
    aggregations = [(name, "last") for name in SCHEMA.names if name != "experiment_id"]
    aggregations += [("queued_ts", "min"), ("started_ts", "last"), ("finished_ts", "last"), ("ts", "count")]
    folded = table.group_by("experiment_id", use_threads=False).aggregate(aggregations)
    renamed = {f"{name}_{how}": name for name, how in aggregations if how == "last"}
    renamed |= {"queued_ts_min": "queued_ts", "ts_count": "events"}
    folded = folded.rename_columns([renamed.get(c, c) for c in folded.column_names])
    # finished_at falls back to the time of the finished event (Ledger.latest does the same)
    finished_at = pc.coalesce(folded.column("finished_at"), folded.column("finished_ts"))
    return folded.set_column(folded.schema.get_field_index("finished_at"), "finished_at", finished_at)


class LedgerView:
    """Reads ``RUN/ledger`` for the browser: :meth:`snapshot` is cheap when nothing changed, incremental when
    parts were added, and a full re-read only when the ledger was compacted (its parts replaced)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._ledger = Ledger(self.path)  # never written through: only its listing rules are used
        self._lock = threading.Lock()
        self._key: tuple[int, int] | None = None
        self._names: list[str] = []
        self._events = SCHEMA.empty_table()
        self._snapshot = Snapshot(0, self._with_seq(self._events), fold_latest(self._with_seq(self._events)))

    def _dir_key(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_ino

    def snapshot(self) -> Snapshot:
        """The ledger as it is now (thread-safe; concurrent callers share one re-read)."""
        with self._lock:
            key = self._dir_key()
            # A change within the file system's timestamp granularity of the last look could hide behind the
            # same mtime ("racy git"): a directory changed in the last 2 s is always listed again.
            settled = key is not None and time.time_ns() - key[0] > 2_000_000_000
            if key is not None and key == self._key and settled:
                return self._snapshot
            for _ in range(5):  # a pending part can be renamed under the listing: list again
                try:
                    changed = self._refresh()
                    break
                except FileNotFoundError:
                    continue
            else:
                return self._snapshot
            self._key = key
            if changed:
                events = self._with_seq(self._events)
                self._snapshot = Snapshot(self._snapshot.version + 1, events, fold_latest(events))
            return self._snapshot

    def _refresh(self) -> bool:
        parts = self._ledger._parts()
        live, _ = self._ledger._live(parts)
        if live == self._names:
            return False
        if live[: len(self._names)] == self._names:  # appended parts only: read just those
            new = [self._read(name, parts[name][2]) for name in live[len(self._names):]]
            self._events = pa.concat_tables([self._events, *new]).combine_chunks()
        else:  # compacted or rewritten: read it all again
            tables = [self._read(name, parts[name][2]) for name in live]
            self._events = pa.concat_tables(tables).combine_chunks() if tables else SCHEMA.empty_table()
        self._names = live
        return True

    def _read(self, name: str, pending: bool) -> pa.Table:
        try:
            return _read_part(self._ledger._file(name, pending))
        except FileNotFoundError:
            raise
        except (OSError, pa.ArrowInvalid):
            if pending:  # torn by a power cut: that append never became durable (the ledger skips it too)
                return SCHEMA.empty_table()
            raise

    @staticmethod
    def _with_seq(events: pa.Table) -> pa.Table:
        return events.append_column("seq", pa.array(np.arange(events.num_rows), pa.int64()))
