"""The ledger: Parquet parts that survive any crash, fold into per-experiment state, and feed results.tsv."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from cluster.records.ledger import SCHEMA, Ledger, LedgerRow, write_results_tsv
from trainer.result import ExperimentResult, HarnessFacts, Status, Summary

H100 = "NVIDIA H100 80GB HBM3"


def row(eid: str, event: str, **fields) -> LedgerRow:
    return LedgerRow(experiment_id=eid, event=event, ts=fields.pop("ts", time.time()), **fields)


def parts(path: Path) -> list[Path]:
    return sorted(path.glob("part-*.parquet"))


def ok_result(val: float = 2.712345, seed: int = 0) -> ExperimentResult:
    return ExperimentResult(
        status=Status.OK, val_bpb=val, profile="h100", seed=seed, time_budget=300.0, device=H100,
        facts=HarnessFacts(startup_seconds=12.5, training_seconds=300.0, total_seconds=331.0, eval_seconds=9.0,
                           peak_memory_mb=45060.2, val_bpb=val),
        summary=Summary(mfu_percent=39.8, num_steps=953, num_params_M=50.3, peak_vram_mb=45060.2),
        started_at=1000.0, finished_at=1331.0,
    )  # fmt: skip


def test_append_read_round_trip_in_order(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger")
    assert ledger.read() == [] and ledger.latest() == {} and not ledger.path.exists(), "reading creates nothing"
    written = [row("e1", "queued", status="queued", agent="mutate-0", description="lr x2", tokens_in=10, cost_usd=0.5),
               row("e2", "queued", status="queued", replicate_of="e1", seed=7)]  # fmt: skip
    ledger.append(written[:1])
    ledger.append(written[1:])
    more = [row("e1", "started", status="running", node="n1", attempt=1), row("e2", "started", status="running")]
    ledger.append(more)  # several rows, one part
    ledger.append([])  # nothing: no part
    expected = [r.model_dump() for r in written + more]
    assert [r.model_dump() for r in ledger.read()] == expected
    ledger.flush()
    assert len(parts(ledger.path)) == 3
    assert [r.model_dump() for r in Ledger(ledger.path).read()] == expected, "a fresh reader sees the same"
    assert ledger.table().schema == SCHEMA


def test_from_result_fills_the_measured_fields() -> None:
    r = LedgerRow.from_result("e9", ok_result(), ts=5.0, commit="c" * 40, node="n3", kind="candidate")
    assert (r.event, r.status, r.val_bpb, r.ts, r.commit, r.node) == ("finished", "ok", 2.712345, 5.0, "c" * 40, "n3")
    assert (r.training_seconds, r.total_seconds, r.startup_seconds, r.eval_seconds) == (300.0, 331.0, 12.5, 9.0)
    assert (r.peak_memory_mb, r.mfu_percent, r.num_steps, r.num_params_M) == (45060.2, 39.8, 953, 50.3)
    assert (r.gpu_class, r.profile, r.seed) == (H100, "h100", 0)
    crash = ExperimentResult(status=Status.OOM, reason="CUDA out of memory", profile="h100", time_budget=300.0)
    c = LedgerRow.from_result("e10", crash)
    assert (c.status, c.val_bpb, c.reason, c.gpu_class) == ("oom", None, "CUDA out of memory", "cpu")
    with pytest.raises(ValueError):
        LedgerRow.from_result("e11", crash, no_such_field=1)


def test_latest_merges_events_so_a_verdict_keeps_the_measurements(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger")
    ledger.append([row("e1", "queued", status="queued", agent="a", description="d", commit="c1", ts=1.0)])
    ledger.append([row("e2", "queued", status="queued", ts=1.5)])
    ledger.append([row("e1", "started", status="running", ts=2.0)])
    ledger.append([LedgerRow.from_result("e1", ok_result(), ts=3.0)])
    ledger.append([row("e1", "verdict", verdict="confirm", reason="beat main by 0.03", ts=4.0)])
    latest = ledger.latest()
    assert list(latest) == ["e1", "e2"]
    e1 = latest["e1"]
    assert (e1.event, e1.ts, e1.status, e1.val_bpb, e1.verdict) == ("verdict", 4.0, "ok", 2.712345, "confirm")
    assert (e1.agent, e1.description, e1.commit, e1.peak_memory_mb, e1.finished_at) == ("a", "d", "c1", 45060.2, 3.0)
    assert latest["e2"].status == "queued" and latest["e2"].val_bpb is None
    # A new attempt (the worker was lost after a farm error) clears the last attempt's outcome.
    ledger.append([row("e2", "started", status="running", ts=5.0)])
    ledger.append([row("e2", "finished", status="error", reason="lost: node died", ts=6.0)])
    ledger.append([row("e2", "started", status="running", attempt=2, ts=7.0)])
    e2 = ledger.latest()["e2"]
    assert (e2.status, e2.reason, e2.finished_at, e2.attempt) == ("running", None, None, 2)


def test_schema_is_fixed_across_parts_and_old_parts_read_with_nulls(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger")
    ledger.append([row("e1", "queued")])  # nearly all null
    ledger.append([LedgerRow.from_result("e1", ok_result())])  # floats and ints set
    ledger.flush()
    for part in parts(ledger.path):
        assert pq.read_schema(part).remove_metadata() == SCHEMA, part.name
    assert SCHEMA.names == list(LedgerRow.model_fields)
    # A part written before a column existed (an older farm) still reads, the new columns null.
    old = pa.table({"experiment_id": ["old"], "event": ["finished"], "ts": [1.0], "val_bpb": [3.1]})
    pq.write_table(old, ledger.path / "part-00000099-0123abcd.parquet")
    rows = Ledger(ledger.path).read()
    assert rows[-1].experiment_id == "old" and rows[-1].val_bpb == 3.1 and rows[-1].node is None


def test_external_readers_pyarrow_pandas_duckdb(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger")
    for i in range(5):
        ledger.append([row(f"e{i}", "queued", status="queued"), row(f"e{i}", "started", status="running")])
    ledger.flush()
    (ledger.path / ".part-00000006-ffffffff.parquet.tmp").write_bytes(b"PAR1 half a file")  # a crash's leftover
    table = ds.dataset(ledger.path, format="parquet").to_table()
    assert table.num_rows == 10 and set(table.column("experiment_id").to_pylist()) == {f"e{i}" for i in range(5)}
    assert pq.read_table(ledger.path).num_rows == 10
    assert len(ledger.read()) == 10
    try:
        import pandas as pd
    except ImportError:
        pd = None
    if pd is not None:
        assert len(pd.read_parquet(ledger.path)) == 10
    try:
        import duckdb
    except ImportError:
        duckdb = None
    if duckdb is not None:
        assert duckdb.sql(f"SELECT count(*) FROM '{ledger.path}/*.parquet'").fetchone()[0] == 10


def test_a_partial_tmp_file_from_a_crash_is_ignored(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger")
    ledger.append([row("e1", "queued")])
    ledger.flush()
    good = parts(ledger.path)[0].read_bytes()
    (ledger.path / ".part-00000002-abcdef01.parquet.tmp").write_bytes(good[: len(good) // 2])
    assert [r.experiment_id for r in Ledger(ledger.path).read()] == ["e1"]
    writer = Ledger(ledger.path)
    writer.append([row("e2", "queued")])
    assert [r.experiment_id for r in writer.read()] == ["e1", "e2"]


def test_a_pending_part_torn_by_a_power_cut_is_set_aside(tmp_path: Path) -> None:
    path = tmp_path / "ledger"
    ledger = Ledger(path)
    ledger.append([row("e1", "queued")])
    ledger.flush()
    good = parts(path)[0].read_bytes()
    (path / ".part-00000002-abcdef01.parquet.pending").write_bytes(good[:100])  # never made durable
    (path / ".part-00000003-abcdef02.parquet.pending").write_bytes(good)  # complete: a killed writer's
    assert [r.experiment_id for r in Ledger(path).read()] == ["e1", "e1"], "readers skip the torn one"
    writer = Ledger(path)
    with pytest.warns(UserWarning, match="torn"):
        writer.append([row("e4", "queued")])
    writer.close()
    assert [p.name.split("-")[1] for p in parts(path)] == ["00000001", "00000003", "00000004"]
    assert (path / ".part-00000002-abcdef01.parquet.torn").exists()
    assert not list(path.glob("*.pending"))


CHILD = textwrap.dedent(
    """
    import os, sys, time
    from cluster.records.ledger import Ledger, LedgerRow
    ledger = Ledger(sys.argv[1], sync=sys.argv[2] == "sync")
    crash_at, tag = int(sys.argv[3]), sys.argv[4]
    if crash_at:  # die between writing a part and renaming it, like a kill at the worst instant
        real, calls = os.replace, [0]
        def replace(src, dst):
            calls[0] += 1
            if calls[0] == crash_at:
                os._exit(3)
            real(src, dst)
        os.replace = replace
    batch = 0
    while True:
        n = batch % 4 + 1
        ledger.append([LedgerRow(experiment_id=f"{tag}-{batch}", event="queued", ts=time.time(), seed=n, attempt=i)
                       for i in range(n)])
        print(f"{tag}-{batch}", flush=True)
        batch += 1
    """
)


def run_child(path: Path, mode: str, tag: str, crash_at: int = 0, kill_after: float | None = None) -> list[str]:
    """Run an appending child until it dies; returns the batches whose append returned."""
    cwd = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path), mode, str(crash_at), tag], cwd=cwd,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    if kill_after is not None:
        time.sleep(kill_after)
        proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode in (-signal.SIGKILL, 3), proc.returncode
    return out.split()


def check_whole_batches(path: Path, returned: list[str]) -> None:
    """Every visible part reads; every batch is whole; every returned append is there; batches form a prefix."""
    for part in parts(path):
        pq.read_table(part)  # every visible part reads cleanly
    rows = Ledger(path).read()
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.experiment_id] = counts.get(r.experiment_id, 0) + 1
        assert r.seed is not None
    for eid, n in counts.items():
        assert n == rows[[r.experiment_id for r in rows].index(eid)].seed, f"batch {eid} is partial: {n} rows"
    for batch in returned:
        assert batch in counts, f"append of batch {batch} returned but its rows are gone"
    for tag in {e.split("-")[0] for e in counts}:
        seen = [int(e.split("-")[1]) for e in counts if e.startswith(f"{tag}-")]
        assert seen == list(range(len(seen))), "batches survive as a prefix, in append order"


@pytest.mark.parametrize("mode", ["pipelined", "sync"])
def test_sigkill_while_appending_leaves_only_whole_batches(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "ledger"
    returned: list[str] = []
    for run, kill_after in enumerate((0.8, 1.03, 1.41)):  # after ~0.6 s of imports the child appends nonstop
        returned += run_child(path, mode, f"r{run}", kill_after=kill_after)
        check_whole_batches(path, returned)
    assert len(returned) > 10, "the child appended before it was killed"
    Ledger(path).compact()
    check_whole_batches(path, returned)


def test_exit_at_each_rename_leaves_whole_parts_only(tmp_path: Path) -> None:
    """A synced append renames twice (temp -> pending, pending -> final): die at either."""
    path = tmp_path / "ledger"
    returned = run_child(path, "sync", "t", crash_at=7)  # in the 4th append, before its part is pending
    assert returned == ["t-0", "t-1", "t-2"] and len(list(path.glob(".part-*.tmp"))) == 1
    check_whole_batches(path, returned)
    assert [r.experiment_id for r in Ledger(path).read()][-1] == "t-2", "the temp file is not read"
    returned += run_child(path, "sync", "p", crash_at=8)  # in the 4th append, its part pending, not durable
    assert returned[3:] == ["p-0", "p-1", "p-2"] and len(list(path.glob(".part-*.pending"))) == 1
    check_whole_batches(path, returned)
    assert [r.experiment_id for r in Ledger(path).read()][-1] == "p-3", "whole, so readers see it"
    with Ledger(path) as writer:  # a new writer makes it durable
        writer.append([row("after", "queued")])
    assert not list(path.glob(".part-*.pending"))


def test_compaction_is_atomic_and_never_double_counts(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger")
    for i in range(6):
        ledger.append([row(f"e{i}", "queued", ts=float(i))])
    ledger.flush()
    before = [r.model_dump() for r in ledger.read()]
    old = parts(ledger.path)
    keep = [p.read_bytes() for p in old[:3]]
    assert ledger.compact() == 6
    assert [p.name for p in parts(ledger.path)] != [p.name for p in old] and len(parts(ledger.path)) == 1
    assert [r.model_dump() for r in Ledger(ledger.path).read()] == before
    # A crash between writing the merged part and deleting the old ones: the old ones come back.
    for p, data in zip(old[:3], keep, strict=True):
        p.write_bytes(data)
    assert [r.model_dump() for r in Ledger(ledger.path).read()] == before, "covered parts are skipped"
    ledger.append([row("e6", "queued", ts=6.0)])
    assert [r.experiment_id for r in ledger.read()][-2:] == ["e5", "e6"]
    assert ledger.compact() == 2, "the merged part and the new one; the covered leftovers are deleted"
    assert len(parts(ledger.path)) == 1 and len(Ledger(ledger.path).read()) == 7


def test_append_is_cheap(tmp_path: Path) -> None:
    """A loose sanity bound only; the real figures are measured in the ledger's report."""
    ledger = Ledger(tmp_path / "ledger")
    times = []
    for i in range(40):
        r = LedgerRow.from_result(f"e{i}", ok_result(), commit="c" * 40, description="x" * 80)
        start = time.perf_counter()
        ledger.append([r])
        times.append(time.perf_counter() - start)
    ledger.close()
    assert sorted(times)[len(times) // 2] < 0.1
    assert len(Ledger(ledger.path).read()) == 40


def test_results_tsv_upstream_format(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger")
    ledger.append([row("b0", "queued", kind="baseline", commit="aaaaaaa1111", description="baseline: main")])
    ledger.append([row("e1", "queued", kind="candidate", commit="bbbbbbb2222", description="lr\tx2\nand warmup")])
    ledger.append([row("e2", "queued", kind="candidate", commit="ccccccc3333", description="depth 12")])
    ledger.append([row("e3", "queued", kind="candidate", commit="ddddddd4444", description="wider")])
    ledger.append([row("e4", "queued", kind="confirm", commit="bbbbbbb2222", replicate_of="e1", description="c")])
    ledger.append([row("e5", "queued", commit="eeeeeee5555", description="still queued")])
    ledger.append([row("e6", "started", commit="fffffff6666", status="running")])
    ledger.append([LedgerRow.from_result("b0", ok_result(2.8), ts=10.0)])
    ledger.append([LedgerRow.from_result("e2", ok_result(2.75), ts=11.0)])  # finishes before e1
    ledger.append([LedgerRow.from_result("e1", ok_result(2.70), ts=12.0)])
    crash = ExperimentResult(status=Status.OOM, reason="OOM", profile="h100", time_budget=300.0, finished_at=13.0)
    ledger.append([LedgerRow.from_result("e3", crash, ts=13.0)])
    ledger.append([LedgerRow.from_result("e4", ok_result(2.705), ts=14.0)])
    for eid, verdict in (("e2", "discard"), ("e1", "promote"), ("e3", "discard")):
        ledger.append([row(eid, "verdict", verdict=verdict)])
    out = tmp_path / "results.tsv"
    assert write_results_tsv(ledger.latest(), out) == 5
    assert out.read_text() == (
        "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
        "aaaaaaa\t2.800000\t44.0\tkeep\tbaseline: main\n"
        "ccccccc\t2.750000\t44.0\tdiscard\tdepth 12\n"
        "bbbbbbb\t2.700000\t44.0\tkeep\tlr x2 and warmup\n"
        "ddddddd\t0.000000\t0.0\tcrash\twider\n"
        "bbbbbbb\t2.705000\t44.0\tkeep\tc\n"
    )
    assert not list(tmp_path.glob(".results.tsv*")), "written atomically: no temp file left"
    assert write_results_tsv({}, out) == 0 and out.read_text() == "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"


def test_a_normal_exit_without_close_leaves_every_part_durable(tmp_path: Path) -> None:
    code = "import sys, time; from cluster.records.ledger import Ledger, LedgerRow; l = Ledger(sys.argv[1]); " \
           "[l.append([LedgerRow(experiment_id=f'e{i}', event='queued', ts=time.time())]) for i in range(20)]"
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0 and not done.stderr, done.stderr
    assert len(parts(tmp_path)) == 20 and not list(tmp_path.glob(".*")), "the exit hook flushed"


def test_a_closed_ledger_refuses_appends(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger")
    ledger.append([row("e1", "queued")])
    ledger.close()
    assert not list(ledger.path.glob(".*")), "close() leaves every part durable under its final name"
    ledger.flush()  # harmless
    with pytest.raises(Exception, match="closed"):
        ledger.append([row("e2", "queued")])
    assert os.listdir(ledger.path) == [parts(ledger.path)[0].name]
