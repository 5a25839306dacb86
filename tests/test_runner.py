"""The runner classifies every kind of candidate correctly, with a useful reason.

Each case is a real train.py run through ``python -m trainer.runner`` under the
cpu-smoke profile (3 s budget), so the harness, the event pipe and the
classification are exercised for real.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import candidates
from trainer.clock import TrainingClock
from trainer.result import ExperimentResult, Status
from trainer.runner import parse_summary

CASES = [
    ("good", Status.OK, ""),
    ("own_wall_clock", Status.OK, ""),
    ("syntax_error", Status.CRASH, "SyntaxError"),
    ("import_error", Status.CRASH, "No module named 'a_module_that_does_not_exist'"),
    ("crash_mid_training", Status.CRASH, "RuntimeError: boom at step 5"),
    ("nan_loss", Status.NAN, "NaN"),
    ("fake_printed_bpb", Status.INVALID, "printed val_bpb 0.1 but the evaluator measured"),
    ("over_budget_3x", Status.INVALID, "trained past the budget"),
    ("never_evaluates", Status.INVALID, "never handed its model to evaluate_bpb"),
    # What the in-process evaluation trusted no longer reaches the verdict: the evaluator is another process.
    ("evaluates_on_train_split", Status.OK, ""),
    ("monkeypatches_evaluate", Status.INVALID, "never handed its model to evaluate_bpb"),
    ("reads_targets", Status.OK, ""),  # the evaluator never passes targets; it computes the loss from logits
    ("upstream_style", Status.OK, ""),
]


def run_runner(train_py: Path, out: Path, *extra: str) -> tuple[int, ExperimentResult]:
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.runner", str(train_py), "--out", str(out), "--profile", "cpu-smoke", *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )
    result = ExperimentResult.model_validate_json((out / "result.json").read_text())
    assert result.status.value in proc.stdout  # the one-line verdict names the status
    return proc.returncode, result


@pytest.mark.parametrize(("name", "status", "reason"), CASES, ids=[c[0] for c in CASES])
def test_candidate_is_classified(tmp_path: Path, name: str, status: Status, reason: str) -> None:
    rc, result = run_runner(candidates.write(tmp_path, name), tmp_path / "out")
    assert result.status == status, result.reason + "\n" + result.log_tail
    assert reason in result.reason
    assert rc == (0 if status == Status.OK else 1)
    if status == Status.OK:
        f = result.facts
        assert result.val_bpb == pytest.approx(f.val_bpb) and 2.0 < result.val_bpb < 8.0
        assert result.summary.val_bpb == pytest.approx(result.val_bpb, abs=1e-6)
        assert f.eval_split_files == ["shard_00001.parquet"] and f.eval_tokens == 8192
        # the harness clock (+ one capped step), not the script's; a script timing itself with time.time()
        # stops after 3 s of wall time, which the robust clock charges less of when the machine stalls
        low = 2.0 if name in ("own_wall_clock", "upstream_style") else 2.9
        assert low <= f.training_seconds <= 3.0 * 1.1 + 0.5
        rows = 16 if name == "upstream_style" else 8
        assert f.train_batches > 10 and f.train_tokens == f.train_batches * rows * 128
        assert f.causal_max_change is not None and f.causal_max_change <= 1e-3
        assert f.handover_bytes > 0 and f.weights_sha256 and result.device == "cpu"
        assert f.startup_seconds is not None and f.startup_seconds < 20
    else:
        assert result.val_bpb is None  # a result that cannot be trusted carries no score


def test_relative_paths_work(tmp_path: Path) -> None:
    """`trainer.runner` given paths relative to its working directory: the candidate and the evaluator run
    elsewhere, and a relative out dir once made every run crash on the model handover it could not find."""
    candidates.write(tmp_path, "good")
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.runner", "good.py", "--out", "out", "--profile", "cpu-smoke"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    result = ExperimentResult.model_validate_json((tmp_path / "out" / "result.json").read_text())
    assert result.status == Status.OK and proc.returncode == 0, result.reason + "\n" + result.log_tail


def test_over_budget_run_is_stopped_early(tmp_path: Path) -> None:
    """A run that ignores the budget is killed when it passes it, not at the wall limit."""
    _, result = run_runner(candidates.write(tmp_path, "over_budget_3x"), tmp_path / "out")
    assert result.facts.total_seconds < 3 * 3.0  # never got to train for 3x the budget


def test_a_hang_in_the_handover_is_charged_and_stopped_and_leaves_no_process(tmp_path: Path) -> None:
    """Time in evaluate_bpb past the handover allowance is training time: a script cannot hide work there."""
    _, result = run_runner(candidates.write(tmp_path, "hangs_in_handover"), tmp_path / "out", "--wall-limit", "60")
    assert result.status == Status.INVALID, result.reason
    assert "trained past the budget" in result.reason
    assert result.facts.total_seconds < 30
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout
    assert leftover.strip() == ""


def test_huge_output_is_bounded(tmp_path: Path) -> None:
    """200 MB of stdout: the run still completes and the log on disk stays small."""
    flood = "for _ in range(200):\n    sys.stdout.write('x' * 1_000_000 + '\\n')"
    src = candidates.source("good").replace("torch.manual_seed(0)", "torch.manual_seed(0)\n" + flood)
    train_py = tmp_path / "train.py"
    train_py.write_text(src)
    _, result = run_runner(train_py, tmp_path / "out", "--wall-limit", "60")
    assert result.log_bytes > 200_000_000
    assert (tmp_path / "out" / "run.log").stat().st_size < 1_100_000
    assert result.status == Status.OK, result.reason  # the summary after the flood is still found


def test_missing_data_is_the_farms_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FARM_CACHE", str(tmp_path / "empty-cache"))
    rc, result = run_runner(candidates.write(tmp_path, "good"), tmp_path / "out")
    assert result.status == Status.ERROR and "farm prepare --profile cpu-smoke" in result.reason


def test_unknown_profile_is_a_usage_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.runner", "x.py", "--out", str(tmp_path), "--profile", "tpu"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "unknown profile 'tpu'" in proc.stderr and "cpu-tiny" in proc.stderr


def test_result_file_is_json_of_the_model(tmp_path: Path) -> None:
    run_runner(candidates.write(tmp_path, "syntax_error"), tmp_path / "out")
    data = json.loads((tmp_path / "out" / "result.json").read_text())
    assert data["status"] == "crash" and data["profile"] == "cpu-smoke" and len(data["train_py_sha256"]) == 64


def test_summary_parser_reads_the_last_block() -> None:
    log = "---\nval_bpb: 9.0\nnoise\n---\nval_bpb:          0.997900\nnum_steps:        953\ndepth:            8\n"
    s = parse_summary(log)
    assert s.val_bpb == 0.9979 and s.num_steps == 953 and s.depth == 8


def test_robust_clock_ignores_a_stall_but_wall_clock_counts_it() -> None:
    steps = [0.1] * 20 + [5.0] + [0.1] * 20  # one 5 s stall
    for kind, expected in (("robust", 4.0 + 0.35), ("wall", 9.0)):
        clock, now = TrainingClock(kind, warmup_batches=1, stall_factor=3.0, stall_floor=0.25), 0.0
        clock.tick(now)
        for dt in steps:
            now += dt
            clock.tick(now)
        assert clock.seconds(now) == pytest.approx(expected, abs=0.01), kind


def test_clock_stops_at_the_handover_and_skips_warmup() -> None:
    clock = TrainingClock("wall", warmup_batches=3, stall_factor=3.0)
    for t in (0.0, 10.0, 20.0, 21.0, 22.0):  # the first two intervals are compile warm-up
        clock.tick(t)
    assert clock.seconds(22.0) == pytest.approx(2.0)
    clock.pause(22.5)
    assert clock.seconds(100.0) == pytest.approx(2.5)


def test_warmup_is_free_only_within_the_compile_allowance() -> None:
    """One batch drawn, then training on data of its own: charged from the allowance's end, not from never."""
    clock = TrainingClock("wall", warmup_batches=20, stall_factor=3.0, compile_allowance=5.0)
    clock.tick(0.0)
    assert clock.seconds(4.0) == 0.0
    assert clock.seconds(65.0) == pytest.approx(60.0)
    clock.pause(65.0)
    assert clock.charged == pytest.approx(60.0) and clock.started_at == 5.0


@pytest.mark.parametrize("kind", ["wall", "robust"])
def test_setup_is_free_only_within_the_setup_allowance(kind: str) -> None:
    """train.py's start-up (hello to first batch) is free for setup_allowance; beyond it every second is charged,
    stalls included, and the warm-up that follows is no longer free."""
    clock = TrainingClock(kind, warmup_batches=2, stall_factor=3.0, compile_allowance=5.0, setup_allowance=2.0)
    clock.hello(10.0)
    assert clock.seconds(11.5) == 0.0
    assert clock.seconds(22.0) == pytest.approx(10.0)  # charged from 12.0, while no batch is drawn
    clock.tick(22.0)
    assert clock.setup_overrun == pytest.approx(10.0) and clock.first_batch_at == 22.0
    clock.tick(23.0)  # would have been warm-up: it is charged, the run already overran
    assert clock.seconds(23.0) == pytest.approx(11.0)
    honest = TrainingClock(kind, warmup_batches=2, stall_factor=3.0, compile_allowance=5.0, setup_allowance=2.0)
    honest.hello(10.0)
    for t in (11.0, 11.5, 12.0, 13.0):  # set-up and warm-up within their allowances
        honest.tick(t)
    assert honest.setup_overrun == 0.0 and honest.seconds(13.0) == pytest.approx(1.5)  # from the 2nd batch
