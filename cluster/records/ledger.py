"""The experiment ledger: append-only Parquet parts, crash-safe, readable by pyarrow, pandas and DuckDB.

One row per experiment *state change* (queued, started, finished, verdict),
not one per finished experiment: the driver appends the instant something
happens, so a crash loses nothing already decided, ``--resume`` sees which
experiments were in flight, and the timeline (queue wait, dispatch gap) is
in the data. :meth:`Ledger.latest` folds the events into one row each.

Every :meth:`Ledger.append` becomes one new immutable file
``part-<seq:08d>-<uuid8>.parquet`` (temp file, fsync, ``os.replace``, fsync
of the directory), so a crash at any instant leaves the whole file or
nothing. The disk work runs behind the caller (see :class:`Ledger`): an
append costs the driver 1-3 ms. Files in flight are hidden (``.part-*``), so
pyarrow and DuckDB skip them. One writer (the driver) per ledger, any number
of readers::

    duckdb: SELECT * FROM 'RUN/ledger/*.parquet'
    pyarrow: pyarrow.dataset.dataset('RUN/ledger').to_table()
"""

from __future__ import annotations

import atexit
import os
import re
import threading
import time
import uuid
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from cluster.vocabulary import KEEP_VERDICTS, LedgerEvent, RowStatus, VerdictValue, WorkKind
from trainer.result import ExperimentResult, Status

STALE_TMP_SECONDS = 600.0
# What a run produced: cleared when a new attempt starts (see Ledger.latest).
RESULT_FIELDS = (
    "val_bpb", "training_seconds", "total_seconds", "startup_seconds", "eval_seconds", "peak_memory_mb",
    "mfu_percent", "num_steps", "num_params_M", "verdict", "reason", "finished_at",
)  # fmt: skip
_PENDING = ".pending"
_PART_RE = re.compile(r"^part-(\d{8,})(?:-(\d{8,}))?-([0-9a-f]{8})\.parquet$")


class LedgerError(RuntimeError):
    """The ledger cannot be read or written; the message names the file and the fix."""


class LedgerRow(BaseModel):
    """One event of one experiment. Everything but the id, the event and its time is optional."""

    model_config = ConfigDict(extra="forbid")

    experiment_id: str
    event: LedgerEvent
    ts: float
    kind: WorkKind | None = None  # what the run is for (cluster/vocabulary.py)
    parent_commit: str | None = None
    commit: str | None = None
    branch: str | None = None
    train_sha: str | None = None  # sha256 of train.py: replicates of the same code share it
    agent: str | None = None
    description: str | None = None
    status: RowStatus | None = None
    profile: str | None = None
    val_bpb: float | None = None
    training_seconds: float | None = None
    total_seconds: float | None = None
    startup_seconds: float | None = None
    eval_seconds: float | None = None
    peak_memory_mb: float | None = None
    mfu_percent: float | None = None
    num_steps: int | None = None
    num_params_M: float | None = None
    gpu_class: str | None = None
    node: str | None = None
    seed: int | None = None
    replicate_of: str | None = None
    attempt: int | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost_usd: float | None = None
    cache_read_tokens: int | None = None  # LLM input read from the prompt cache
    cache_write_tokens: int | None = None  # LLM input written to the prompt cache
    diff_sha: str | None = None  # a candidate's change vs its parent, whitespace-normalised: same change, same sha
    verdict: VerdictValue | None = None
    reason: str | None = None
    finished_at: float | None = None  # the driver's clock at the finish (one clock for all nodes): results.tsv order
    model: str | None = None  # the LLM behind a proposal (LLM agents): a mixed population told apart
    stage: str | None = None  # a candidate's ``staged`` verdict: the stage (experiment id) it was merged into
    weights_sha256: str | None = None  # the harness's digest of the trained weights: a pinned seed is caught on resume
    fingerprint: str | None = None  # the evaluator's log-probabilities of fixed targets: replicates that are one run

    @classmethod
    def from_result(cls, experiment_id: str, result: ExperimentResult, **extra: object) -> LedgerRow:
        """A ``finished`` row with the measured fields of ``result``; ``extra`` adds or overrides fields.

        Timings and memory come from the harness (trusted); MFU, steps and
        params only exist in train.py's printed summary and are informational.
        """
        facts, summary = result.facts, result.summary
        fields: dict[str, object] = dict(
            experiment_id=experiment_id, event="finished", ts=time.time(), status=result.status.value,
            profile=result.profile, val_bpb=result.val_bpb if result.status == Status.OK else None,
            training_seconds=facts.training_seconds, total_seconds=facts.total_seconds,
            startup_seconds=facts.startup_seconds, eval_seconds=facts.eval_seconds,
            peak_memory_mb=facts.peak_memory_mb if facts.peak_memory_mb is not None else summary.peak_vram_mb,
            mfu_percent=summary.mfu_percent, num_steps=summary.num_steps, num_params_M=summary.num_params_M,
            gpu_class=result.device, seed=result.seed, reason=result.reason or None,
            weights_sha256=facts.weights_sha256, fingerprint=facts.fingerprint,
        )  # fmt: skip
        fields.update(extra)
        return cls(**fields)


_STR, _F64, _I64 = pa.string(), pa.float64(), pa.int64()
# Fixed and explicit, so every part concatenates with every other, whatever its nulls.
SCHEMA = pa.schema(
    [
        ("experiment_id", _STR), ("event", _STR), ("ts", _F64), ("kind", _STR), ("parent_commit", _STR),
        ("commit", _STR), ("branch", _STR), ("train_sha", _STR), ("agent", _STR), ("description", _STR),
        ("status", _STR), ("profile", _STR), ("val_bpb", _F64), ("training_seconds", _F64), ("total_seconds", _F64),
        ("startup_seconds", _F64), ("eval_seconds", _F64), ("peak_memory_mb", _F64), ("mfu_percent", _F64),
        ("num_steps", _I64), ("num_params_M", _F64), ("gpu_class", _STR), ("node", _STR), ("seed", _I64),
        ("replicate_of", _STR), ("attempt", _I64), ("tokens_in", _I64), ("tokens_out", _I64), ("cost_usd", _F64),
        ("cache_read_tokens", _I64), ("cache_write_tokens", _I64), ("diff_sha", _STR), ("verdict", _STR),
        ("reason", _STR), ("finished_at", _F64), ("model", _STR), ("stage", _STR),
        ("weights_sha256", _STR), ("fingerprint", _STR),
    ]
)  # fmt: skip
assert SCHEMA.names == list(LedgerRow.model_fields), "the Parquet schema and LedgerRow must list the same fields"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def _write_durable(data: bytes, final: Path) -> None:
    """Whole file or nothing at ``final``, on disk: hidden temp file, fsync, rename, fsync of the directory."""
    tmp = final.with_name(f".{final.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def _serialize(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="none", use_dictionary=False, write_page_checksum=True)
    return sink.getvalue().to_pybytes()


def _read_part(source: Path) -> pa.Table:
    """A part in today's schema: columns added since it was written read as nulls."""
    table = pq.ParquetFile(source, pre_buffer=False, page_checksum_verification=True).read(use_threads=False)
    if table.schema.equals(SCHEMA):
        return table
    columns = []
    for field in SCHEMA:
        has = field.name in table.column_names
        columns.append(table.column(field.name).cast(field.type) if has else pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(columns, schema=SCHEMA)


class Ledger:
    """A directory of Parquet parts: :meth:`append` from the one writer (the driver), read from anywhere.

    Appends are pipelined so the driver never waits on the disk: ``append``
    writes the part complete under a hidden ``.pending`` name (temp file,
    then rename: safe against a crash of the process at any instant, in
    well under a millisecond) and returns; a background thread then makes it
    durable (fsync, rename to its final name, fsync of the directory: safe
    against power loss too). Readers include pending parts. A writer that
    starts after a crash finishes the parts the dead one left pending (a
    pending part torn by a power cut is set aside as ``.torn``: that append
    never returned durable). ``sync=True`` or :meth:`flush` waits for the disk.
    """

    def __init__(self, path: str | os.PathLike, sync: bool = False) -> None:
        self.path = Path(path)  # created by the first append: a reader never leaves a directory behind
        self.sync = sync
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._cache: dict[str, pa.Table] = {}  # parts are immutable: each is read once
        self._pending: list[str] = []  # written, not yet durable (final names, in order)
        self._flusher: threading.Thread | None = None
        self._error: OSError | None = None
        self._closed = False
        self._next_seq = max((last for _, last, _ in self._parts().values()), default=0) + 1

    def part_count(self) -> int:
        """Files the ledger is spread over now (a reader opens each once: compact when there are many)."""
        return len(self._parts())

    def _parts(self) -> dict[str, tuple[int, int, bool]]:
        """Final name -> (first seq, last seq, still pending); a compacted part covers first..last."""
        found: dict[str, tuple[int, int, bool]] = {}
        if not self.path.is_dir():
            return found
        for entry in os.scandir(self.path):
            name, pending = entry.name, entry.name.startswith(".") and entry.name.endswith(_PENDING)
            name = name[1 : -len(_PENDING)] if pending else name
            m = _PART_RE.match(name)
            if m and not (pending and name in found):
                found[name] = (int(m.group(1)), int(m.group(2) or m.group(1)), pending)
        return found

    def _file(self, name: str, pending: bool) -> Path:
        return self.path / (f".{name}{_PENDING}" if pending else name)

    def _live(self, parts: dict[str, tuple[int, int, bool]]) -> tuple[list[str], list[str]]:
        """(parts to read in order, parts a compaction covers but a crash kept it from deleting)."""
        live, superseded, covered = [], [], 0
        for name, (_, last, _) in sorted(parts.items(), key=lambda p: (p[1][0], -p[1][1], p[0])):
            (superseded if last <= covered else live).append(name)
            covered = max(covered, last)
        return live, superseded

    # -- writing ----------------------------------------------------------------------------

    def append(self, rows: Iterable[LedgerRow]) -> Path | None:
        """Write ``rows`` as one new part: all survive a crash of the driver, or none; returns the part's final path."""
        rows = list(rows)
        if not rows:
            return None
        table = pa.Table.from_pylist([r.model_dump() for r in rows], schema=SCHEMA)
        data = _serialize(table)
        with self._lock:
            self._check()
            if self._flusher is None:
                self._start()
            name = f"part-{self._next_seq:08d}-{uuid.uuid4().hex[:8]}.parquet"
            tmp = self.path / f".{name}.tmp"
            with open(tmp, "xb") as f:
                f.write(data)
            os.replace(tmp, self._file(name, pending=True))
            self._next_seq += 1
            self._cache[name] = table
            self._pending.append(name)
            self._changed.notify_all()
        if self.sync:
            self.flush()
        return self.path / name

    def flush(self) -> None:
        """Wait until every appended part is durable under its final name."""
        with self._lock:
            while self._pending and self._error is None and self._flusher is not None and self._flusher.is_alive():
                self._changed.wait()
            if self._error is not None:
                raise LedgerError(f"cannot write the ledger {self.path}: {self._error}; free space or fix permissions")

    def close(self) -> None:
        """Flush and stop the background writer."""
        self.flush()
        with self._lock:
            self._closed = True
            self._changed.notify_all()
        if self._flusher is not None:
            self._flusher.join()
            atexit.unregister(self.flush)

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self) -> None:
        if self._error is not None:
            self.flush()  # raises with the cause
        if self._closed:
            raise LedgerError(f"the ledger {self.path} was closed; open a new Ledger to write")

    def _start(self) -> None:
        """Adopt parts a crashed writer left pending (set torn ones aside), then start the background writer."""
        self.path.mkdir(parents=True, exist_ok=True)
        for name, (_, _, pending) in sorted(self._parts().items()):
            if pending:
                try:
                    self._cache[name] = _read_part(self._file(name, pending=True))
                    self._pending.append(name)
                except (OSError, pa.ArrowInvalid) as exc:
                    torn = self.path / f".{name}.torn"
                    os.replace(self._file(name, pending=True), torn)
                    warnings.warn(f"ledger: {torn.name} was torn by a crash before it was durable: {exc}", stacklevel=2)
        self._flusher = threading.Thread(target=self._flush_loop, name=f"ledger-{self.path.name}", daemon=True)
        self._flusher.start()
        atexit.register(self.flush)

    def _flush_loop(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._closed:
                    self._changed.wait()
                if not self._pending:
                    return
                batch = list(self._pending)
            try:
                for name in batch:
                    fd = os.open(self._file(name, pending=True), os.O_RDONLY)
                    os.fsync(fd)
                    os.close(fd)
                with self._lock:  # renames under the lock: this process never lists a part mid-rename
                    for name in batch:
                        os.replace(self._file(name, pending=True), self.path / name)
                _fsync_dir(self.path)
            except OSError as exc:
                with self._lock:
                    self._error = exc
                    self._changed.notify_all()
                return
            with self._lock:
                del self._pending[: len(batch)]
                self._changed.notify_all()

    # -- reading ----------------------------------------------------------------------------

    def table(self) -> pa.Table:
        """Every row, in append order, as one Arrow table in :data:`SCHEMA`."""
        with self._lock:
            for _ in range(5):  # a part can vanish under a reader while the writer renames or compacts
                parts = self._parts()
                live, _ = self._live(parts)
                try:
                    tables = [self._load(name, parts[name][2]) for name in live]
                except FileNotFoundError:
                    continue
                for name in set(self._cache) - set(live):
                    del self._cache[name]
                tables = [t for t in tables if t is not None]
                return pa.concat_tables(tables) if tables else SCHEMA.empty_table()
        raise LedgerError(f"parts of {self.path} keep disappearing while read: is a second writer compacting it?")

    def _load(self, name: str, pending: bool) -> pa.Table | None:
        if name not in self._cache:
            source = self._file(name, pending)
            try:
                self._cache[name] = _read_part(source)
            except FileNotFoundError:
                raise
            except (OSError, pa.ArrowInvalid) as exc:
                if pending:  # torn by a power cut: that append never became durable
                    return None
                raise LedgerError(f"{source} is not a readable ledger part ({exc}); move it out of the ledger") from exc
        return self._cache[name]

    def read(self) -> list[LedgerRow]:
        """Every row, in append order."""
        return [LedgerRow.model_construct(**row) for row in self.table().to_pylist()]

    def latest(self) -> dict[str, LedgerRow]:
        """Each experiment's state after its last event, in order of first appearance.

        Later events update only the fields they set, so a ``verdict`` row
        keeps the measurements of the ``finished`` row before it; a
        ``started`` row (a new attempt, e.g. after a lost worker) clears the
        outcome of the attempt before. ``finished_at`` falls back to the
        time of the ``finished`` event.
        """
        state: dict[str, dict] = {}
        for row in self.table().to_pylist():
            merged = state.setdefault(row["experiment_id"], {})
            if row["event"] == "started":  # a new attempt: the last one's outcome no longer holds
                for name in RESULT_FIELDS:
                    merged.pop(name, None)
            merged.update({k: v for k, v in row.items() if v is not None})
            if row["event"] == "finished" and row["finished_at"] is None:
                merged["finished_at"] = row["ts"]
        return {eid: LedgerRow.model_construct(**{**dict.fromkeys(SCHEMA.names), **m}) for eid, m in state.items()}

    def compact(self) -> int:
        """Merge every part into one, atomically; returns how many parts were merged. Call it from the writer.

        The merged part is named for the seq range it covers, so a crash
        between writing it and deleting the old parts never double counts:
        readers skip covered parts, and the next compaction deletes them.
        """
        self.flush()
        self.table()  # every part in the cache
        with self._lock:
            parts = self._parts()
            live, superseded = self._live(parts)
            for name in superseded:
                (self.path / name).unlink(missing_ok=True)
            for tmp in self.path.glob(".part-*.tmp"):
                if time.time() - tmp.stat().st_mtime > STALE_TMP_SECONDS:
                    tmp.unlink(missing_ok=True)
            if len(live) <= 1 or any(parts[n][2] for n in live):  # a crashed writer's parts: the next writer's job
                return 0
            seqs = [(int(m.group(1)), int(m.group(2) or m.group(1))) for m in map(_PART_RE.match, live)]
            name = f"part-{seqs[0][0]:08d}-{max(s[1] for s in seqs):08d}-{uuid.uuid4().hex[:8]}.parquet"
            merged = pa.concat_tables([self._cache[n] for n in live]).combine_chunks()
            _write_durable(_serialize(merged), self.path / name)
            for old in live:
                (self.path / old).unlink(missing_ok=True)
                self._cache.pop(old, None)
            _fsync_dir(self.path)
            self._cache[name] = merged
            return len(live)


def _tsv_field(text: str | None) -> str:
    return (text or "").replace("\t", " ").replace("\r", " ").replace("\n", " ").strip()


def write_results_tsv(
    rows: Mapping[str, LedgerRow] | Iterable[LedgerRow],
    path: str | os.PathLike,
    keep_verdicts: frozenset[str] = KEEP_VERDICTS,
) -> int:
    """Write the upstream ``results.tsv`` (atomically) from :meth:`Ledger.latest`; returns its line count.

    One line per finished experiment, in finish order. ``keep``: the code
    is on main (its verdict, or the verdict of the experiment it
    replicates, is in ``keep_verdicts``; or it is a baseline, main measured
    as is); ``discard``: ran ok, not kept; ``crash``: every other status
    (val_bpb 0.000000, memory 0.0).
    """
    rows = list(rows.values()) if isinstance(rows, Mapping) else list(rows)
    verdicts = {r.experiment_id: r.verdict for r in rows}
    kept = lambda r: r.kind == "baseline" or keep_verdicts.intersection({r.verdict, verdicts.get(r.replicate_of)})
    done = [r for r in rows if r.status not in (None, "queued", "running")]
    done.sort(key=lambda r: r.finished_at if r.finished_at is not None else r.ts)  # stable: ties keep ledger order
    lines = ["commit\tval_bpb\tmemory_gb\tstatus\tdescription"]
    for r in done:
        ok = r.status == "ok"
        val = f"{r.val_bpb:.6f}" if ok and r.val_bpb is not None else "0.000000"
        mem = f"{r.peak_memory_mb / 1024:.1f}" if ok and r.peak_memory_mb is not None else "0.0"
        status = ("keep" if kept(r) else "discard") if ok else "crash"
        lines.append(f"{(r.commit or '')[:7]}\t{val}\t{mem}\t{status}\t{_tsv_field(r.description)}")
    _write_durable(("\n".join(lines) + "\n").encode(), Path(path))
    return len(done)
