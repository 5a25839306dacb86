"""Hostile train.py files, one per class of attack on the verdict, through the runner and the real sandboxes.

Every file in tests/hostile/ is a whole train.py that tries to earn a score it did not train for. Its docstring
says what a sound harness makes of it (``Expect: STATUS | words of the reason``), and ``Needs: separation`` when
only a sandbox that runs the candidate as another user can stop it (the bare runner is not a sandbox). Whatever
the file expects, two things hold for all: no line of its output starts with LEAK (the file prints one for every
step of the attack that worked), and an ``ok`` is an honest score (a bigram trained for the cpu-smoke budget
scores 3.4-3.5 bits per byte; the attacks aimed at 0.0-2.2). A new attack is one more file.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from cluster.execution.spec import ExperimentSpec, GpuAssignment
from cluster.loop.independence import IndependenceCheck
from cluster.records.ledger import LedgerRow
from cluster.records.state import sha
from cluster.sandbox.untrusted import read_text
from tests.fake_kube import run_in_docker_pod
from tests.needs import sandbox_or_skip
from trainer.profiles import get_profile
from trainer.result import ExperimentResult, Status

HOSTILE = sorted((Path(__file__).parent / "hostile").glob("*.py"))
RUNS: dict[tuple[str, str], ExperimentResult] = {}  # (backend, file) -> its seed-0 run, for the tests after
HONEST_FLOOR = 3.0  # an honest cpu-smoke bigram scores 3.4-3.5; every attack aims far below this
IS_ROOT = os.geteuid() == 0


def expectation(path: Path) -> tuple[Status, str, bool]:
    doc = path.read_text()
    m = re.search(r"^Expect: (\w+)(?: \| (.+))?$", doc, re.M)
    assert m, f"{path.name}: no 'Expect: STATUS | reason' line in its docstring"
    return Status(m.group(1)), (m.group(2) or "").strip(), bool(re.search(r"^Needs: separation$", doc, re.M))


CASES = [
    pytest.param(backend, path, id=f"{backend}-{path.stem}")
    for path in HOSTILE
    for backend in ("runner", "process", "docker", "kubernetes")
    if not (backend == "runner" and expectation(path)[2])
]


def run_backend(
    backend: str, train_py: Path, tmp_path: Path, farm_cache: Path, seed: int = 0
) -> tuple[ExperimentResult, str]:
    if backend == "runner":
        out = tmp_path / "out"
        subprocess.run([sys.executable, "-m", "trainer.runner", str(train_py), "--out", str(out), "--profile",
                        "cpu-smoke", "--seed", str(seed)], capture_output=True, timeout=300)
        return ExperimentResult.model_validate_json((out / "result.json").read_text()), (out / "run.log").read_text()
    if backend in ("process", "kubernetes") and not IS_ROOT:
        pytest.skip(f"the {backend} sandbox's separation needs root here (CI runs as root)")
    # kubernetes: the fake kubelet runs the pod in docker, so the engine and the image are checked alike
    sandbox = sandbox_or_skip("docker" if backend == "kubernetes" else backend)
    run_dir = tmp_path / "run"
    if backend == "kubernetes":
        result = run_in_docker_pod(train_py.read_text(), tmp_path, farm_cache, seed=seed)  # run dir: tmp_path / "run"
        return result, read_text(run_dir / "out" / "run.log", 1 << 20) or ""
    spec = ExperimentSpec(experiment_id=f"h-{uuid.uuid4().hex[:10]}", train_py=train_py.read_text(),
                          profile="cpu-smoke", seed=seed, run_dir=run_dir, cache_dir=farm_cache)
    result = sandbox.run(spec, GpuAssignment())
    return result, read_text(run_dir / "out" / "run.log", 1 << 20)


@pytest.mark.parametrize(("backend", "path"), CASES)
def test_a_hostile_candidate_earns_no_score_it_did_not_train_for(backend, path, tmp_path, farm_cache) -> None:
    status, reason, _ = expectation(path)
    result, log = run_backend(backend, path, tmp_path, farm_cache)
    RUNS[(backend, path.name)] = result
    leaks = [line for line in log.splitlines() if line.startswith("LEAK")]
    assert not leaks, f"{path.name} got through: {leaks}"
    assert result.status == status, f"{result.status}: {result.reason}\n{result.log_tail}"
    assert reason in result.reason
    if result.status == Status.OK:
        assert result.val_bpb >= HONEST_FLOOR, f"{path.name} scored {result.val_bpb}"
        assert result.summary.val_bpb == pytest.approx(result.val_bpb, abs=1e-6)  # what it printed is what it got
    else:
        assert result.val_bpb is None
    assert result.device == "cpu"  # the trusted evaluator's device, never the candidate's claim
    if backend == "kubernetes":  # the pod's candidate has a uid of its own per attempt
        assert result.facts.candidate_uid is not None and result.facts.candidate_uid >= 200_000
    elif backend != "runner":
        assert result.facts.candidate_uid == 65534  # the verdict came from a runner the candidate could not touch


@pytest.mark.parametrize("backend", ["runner", "process", "docker", "kubernetes"])
def test_replicates_of_a_pinned_seed_are_one_run_not_independent_measurements(backend, tmp_path, farm_cache) -> None:
    """pinned_replicates.py on two seeds: two ok runs with different weights digests (a one-ulp nudge), which the
    farm's independence check (the driver's, live and on resume) finds to be one run by what they predict."""
    path = Path(__file__).parent / "hostile" / "pinned_replicates.py"
    first = RUNS.get((backend, path.name)) or run_backend(backend, path, tmp_path / "seed0", farm_cache)[0]
    second, _ = run_backend(backend, path, tmp_path / "seed1", farm_cache, seed=1)
    assert first.status == second.status == Status.OK, second.reason
    assert (first.seed, second.seed) == (0, 1)
    assert first.facts.weights_sha256 != second.facts.weights_sha256  # a digest alone would take them for two runs
    train_sha = sha(path.read_text())
    rows = [LedgerRow.from_result(eid, r, train_sha=train_sha) for eid, r in (("e0001", first), ("e0002", second))]
    check = IndependenceCheck(get_profile("cpu-smoke").replicate_min_distance)
    assert check.same_run(rows[0]) is None
    reason = check.same_run(rows[1])
    assert reason and "predicts what e0001 (seed 0)" in reason
