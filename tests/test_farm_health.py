"""A farm that cannot work stops and says why; a candidate's own failures never stop it.

The real driver (cluster.loop.driver.Farm: its loop, the tournament, git, the ledger) runs on the in-process
executor (cluster/execution/executor.py: no Ray, a virtual clock), with a sandbox whose outcome each test scripts: the
rules under test are the driver's, and they see exactly what a real backend would return.
"""

from __future__ import annotations

import base64
import json
import os
import random
from array import array
from pathlib import Path

import pytest

from agent.protocol import Context, Proposal
from bench.standin import measured_bpb
from cluster.config import FarmConfig
from cluster.execution.executor import InProcessExecutor
from cluster.execution.spec import ExperimentSpec, GpuAssignment
from cluster.loop.driver import Farm
from cluster.records.ledger import LedgerRow
from cluster.records.repo import ResearchRepo
from cluster.records.state import sha
from cluster.sandbox.base import no_result, stage
from trainer.profiles import get_profile
from trainer.result import ExperimentResult, HarnessFacts, Status
from trainer.seed import seed_source

SEED = seed_source(get_profile("cpu-tiny"))
SANDBOX = f"{__name__}:ScriptedSandbox"


class ScriptedSandbox:
    """Every run's status from a rule: ``main`` for the seed train.py, ``others`` for every other file, or the next
    of ``sequence`` when it is set. ok results score like bench/standin.py's (deterministic, small noise)."""

    name = "scripted"
    main: Status = Status.OK
    others: Status = Status.OK
    sequence: list[Status] = []
    runs: list[str] = []
    cpus: list[float | None] = []
    pinned_seed = False  # every run of a file trains the same model whatever its seed, its weights nudged by one ulp

    def run(self, spec: ExperimentSpec, gpu: GpuAssignment) -> ExperimentResult:
        stage(spec)
        cls = type(self)
        cls.runs.append(spec.experiment_id)
        cls.cpus.append(spec.limits.cpus)
        if cls.sequence:
            status = cls.sequence.pop(0)
        else:
            status = cls.main if sha(spec.train_py) == sha(SEED) else cls.others
        if status != Status.OK:
            return no_result(spec, 0.0, status, f"scripted {status.value} (the test's)")
        weights = sha(spec.train_py + str(spec.seed))  # a pinned script nudges one weight: another digest
        predictions = fingerprint_of(spec.train_py, 0 if cls.pinned_seed else spec.seed, nudge=1e-6 * spec.seed)
        return ExperimentResult(status=Status.OK, val_bpb=measured_bpb(spec.train_py, spec.seed, 0.01),
                                profile=spec.profile, seed=spec.seed, time_budget=20.0,
                                facts=HarnessFacts(training_seconds=20.0, eval_calls=1, weights_sha256=weights,
                                                   fingerprint=predictions),
                                exit_code=0)

    def cleanup_leftovers(self) -> int:
        return 0


def fingerprint_of(train_py: str, seed: int, nudge: float = 0.0) -> str:
    """What a model of ``train_py`` trained on ``seed`` predicts: log-probabilities about a nat apart per seed."""
    rng = random.Random(f"{train_py}/{seed}")
    values = array("f", [-2.0 + rng.gauss(0.0, 1.0) + nudge for _ in range(512)])
    return base64.b64encode(values.tobytes()).decode()


class SameEdit:
    """A proposer stuck repeating itself: the same small edit every time (an LLM in a loop)."""

    calls = 0

    def __init__(self, name: str) -> None:
        self.name = name

    def propose(self, context: Context) -> Proposal:
        type(self).calls += 1
        text = context.parent_train_py.replace("DEPTH = 4", "DEPTH = 3", 1)
        return Proposal(agent=self.name, parent_commit=context.parent_commit, train_py=text,
                        description="DEPTH 4 -> 3")


class Fresh:
    """A proposer that always has a new idea (a different WARMDOWN_RATIO each time)."""

    def __init__(self, name: str) -> None:
        self.name, self.n = name, 0

    def propose(self, context: Context) -> Proposal:
        self.n += 1
        text = context.parent_train_py + f"\n# idea {self.name} {self.n}\nUNUSED_{self.n} = {self.n}\n"
        return Proposal(agent=self.name, parent_commit=context.parent_commit, train_py=text,
                        description=f"idea {self.n}")


@pytest.fixture(autouse=True)
def scripted() -> None:
    ScriptedSandbox.main = ScriptedSandbox.others = Status.OK
    ScriptedSandbox.sequence, ScriptedSandbox.runs = [], []
    ScriptedSandbox.pinned_seed = False
    ScriptedSandbox.cpus = []
    SameEdit.calls = 0


def run_farm(tmp_path: Path, proposer=Fresh, **config) -> tuple[Farm, int]:
    run_dir = tmp_path / "run"
    settings = {"gpus": 1, "profile": "cpu-tiny", "sandbox": "process", "metrics_port": None, "run_dir": run_dir,
                "agents": {"count": 2, "kind": "mutate"}, "max_experiments": 12,
                "tournament": {"baseline_replicates": 2, "min_noise_df": 1}, **config}
    ResearchRepo.create(run_dir / "repo", SEED, "program")
    farm = Farm(FarmConfig(**settings), run_dir, InProcessExecutor(SANDBOX),
                proposer_factory=lambda kind, name, opts: proposer(name))
    code = farm.run()
    return farm, code


def test_consecutive_farm_errors_stop_the_farm_with_the_first_reason(tmp_path: Path) -> None:
    ScriptedSandbox.main = ScriptedSandbox.others = Status.ERROR
    farm, code = run_farm(tmp_path, max_consecutive_errors=3)
    assert code == 1
    assert len(ScriptedSandbox.runs) == 3  # one slot: nothing past the third error was started
    assert "3 experiments in a row failed through the farm's own fault" in farm.failure
    assert "e0001: scripted error" in farm.failure and "experiments/e0001/out" in farm.failure
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["failure"] == farm.failure and status["by_status"] == {"error": 3}


def test_an_ok_result_in_between_resets_the_count(tmp_path: Path) -> None:
    E, OK = Status.ERROR, Status.OK
    ScriptedSandbox.sequence = [E, E, OK, E, E, OK, OK, OK, OK, OK, OK, OK]
    farm, code = run_farm(tmp_path, max_consecutive_errors=3)
    assert code == 0 and not farm.failure
    assert len(farm.state.finished) == 12


def test_candidates_failures_never_stop_the_farm(tmp_path: Path) -> None:
    for status in (Status.CRASH, Status.OOM, Status.TIMEOUT, Status.INVALID, Status.NAN):
        ScriptedSandbox.others, ScriptedSandbox.runs = status, []
        farm, code = run_farm(tmp_path / status.value, max_consecutive_errors=2)
        assert code == 0 and not farm.failure, (status, farm.failure)
        assert len(farm.state.finished) == 12 and farm.stopping == "reached --max-experiments 12"
        assert farm.state.counts()[status.value] >= 8


def test_main_that_cannot_run_stops_the_farm_before_anything_is_judged_against_it(tmp_path: Path) -> None:
    ScriptedSandbox.main = Status.CRASH
    farm, code = run_farm(tmp_path)
    assert code == 1
    assert farm.failure.startswith("main cannot run: 2 of its 2 baseline run(s) failed")
    assert "crash: scripted crash" in farm.failure
    kinds = {farm.state.work[eid].kind for eid in farm.state.finished}
    assert kinds == {"baseline"}  # no candidate ran against a main that has no value
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["main_val_bpb"] is None and "scripted crash" in status["main_unmeasured"]


def test_replicates_that_predict_the_same_on_other_seeds_are_not_independent(tmp_path: Path) -> None:
    """A script that pins its seed past the harness's offset repeats one run, a one-ulp nudge giving each copy another
    weights digest: its replicates predict the same, so they count for nothing, live and after a resume."""
    ScriptedSandbox.pinned_seed = True
    farm, code = run_farm(tmp_path)
    assert code == 1 and farm.failure.startswith("main cannot run")
    rows = [r for r in farm.ledger.read() if r.event == "finished"]
    main = [r for r in rows if r.kind == "baseline"]
    assert main[0].status == "ok"  # the first run stands; its copies on other seeds do not
    # one digest per seed: identity alone would miss every copy
    assert len({r.weights_sha256 for r in main}) == len({r.seed for r in main}) > 1
    copies = [r for r in main if r.seed != main[0].seed]
    assert copies and all(r.status == "invalid" and f"predicts what {main[0].experiment_id}" in r.reason
                          and r.val_bpb is None for r in copies)
    assert "predicts what" in farm.failure and len(rows) < 12  # stopped: main can never be measured
    assert farm.state.promotions == 0
    # the fingerprints are on the ledger: a farm resumed on this run dir still knows them
    assert main[0].fingerprint == fingerprint_of(SEED, 0)
    resumed = Farm(farm.config, farm.run_dir, InProcessExecutor(SANDBOX))
    again = LedgerRow(experiment_id="e9999", event="finished", ts=0.0, status="ok", val_bpb=2.0, seed=41,
                      train_sha=main[0].train_sha, fingerprint=fingerprint_of(SEED, 0, nudge=1e-3))
    resumed._flag_pinned_seed(again)
    assert again.status == "invalid" and main[0].experiment_id in again.reason and again.val_bpb is None
    copy = LedgerRow(experiment_id="e9997", event="finished", ts=0.0, status="ok", val_bpb=2.0, seed=43,
                     train_sha=main[0].train_sha, weights_sha256=main[0].weights_sha256)
    resumed._flag_pinned_seed(copy)  # no fingerprint (a row from before them): a bit-identical copy is still caught
    assert copy.status == "invalid" and "bit-identical weights" in copy.reason
    fresh = LedgerRow(experiment_id="e9998", event="finished", ts=0.0, status="ok", val_bpb=2.0, seed=42,
                      train_sha=main[0].train_sha, fingerprint=fingerprint_of(SEED, 42))
    resumed._flag_pinned_seed(fresh)
    assert fresh.status == "ok"


def test_a_gpu_profiles_experiments_get_a_fair_share_of_the_cores(tmp_path: Path) -> None:
    """No thread count pinned (h100): each experiment may use the host's cores / GPU slots, never all of them."""
    run_farm(tmp_path, profile="h100", gpus=2, max_experiments=2)
    assert ScriptedSandbox.cpus and set(ScriptedSandbox.cpus) == {max(1.0, (os.cpu_count() or 1) / 2)}
    run_farm(tmp_path / "cpu", max_experiments=2)  # cpu-tiny pins 1 thread: its own quota rule (base.cpu_quota)
    assert ScriptedSandbox.cpus[-1] is None


def test_an_agent_stuck_repeating_itself_is_parked_and_the_farm_ends(tmp_path: Path) -> None:
    farm, code = run_farm(tmp_path, proposer=SameEdit, max_experiments=50)
    finished = len(farm.state.finished)
    assert code == 1 and "no agent proposed anything new" in farm.failure, farm.failure
    assert "the same change as" in farm.failure or "duplicate" in farm.failure
    assert finished < 50
    assert SameEdit.calls <= 25 + 3 * finished, (SameEdit.calls, finished)  # not thousands


def test_a_farm_with_fresh_ideas_runs_to_its_limit(tmp_path: Path) -> None:
    farm, code = run_farm(tmp_path)
    assert code == 0 and not farm.failure and len(farm.state.finished) == 12


def test_a_long_run_keeps_its_ledger_in_few_files_and_loses_no_row(tmp_path: Path) -> None:
    from cluster.records.ledger import Ledger
    from cluster.records.store import COMPACT_AFTER_PARTS

    farm, code = run_farm(tmp_path, max_experiments=120)
    ledger = Ledger(tmp_path / "run" / "ledger")
    rows = ledger.read()
    assert code == 0 and len(rows) > COMPACT_AFTER_PARTS  # one file per event would be more than the bound
    assert ledger.part_count() <= COMPACT_AFTER_PARTS
    assert len([r for r in rows if r.event == "finished"]) == 120
