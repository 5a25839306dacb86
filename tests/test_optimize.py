"""The optimiser proposer (agent/optimize.py): valid proposals, learning from every result, a new study when the
code changes shape, and a hybrid population in the real driver (in-process executor, surrogate trainer)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from agent.mutate import parse_constants
from agent.optimize import OptimizeProposer
from agent.protocol import Context, Measured
from bench import surrogate
from trainer.profiles import get_profile
from trainer.seed import seed_source

SEED = seed_source(get_profile("cpu-tiny"))
SEQ = get_profile("cpu-tiny").max_seq_len


def context(parent: str = SEED, measured: list[Measured] | None = None, seed: int = 0) -> Context:
    return Context(program="", profile="cpu-tiny", parent_commit="p", parent_train_py=parent, seed=seed,
                   measured=measured or [])


def constants(source: str) -> dict[str, float]:
    return {n: float(c.value) for n, c in parse_constants(source).items()}


def test_proposals_change_only_constants_and_keep_the_rules() -> None:
    proposer = OptimizeProposer("optuna-0")
    seen = set()
    for seed in range(12):
        proposal = proposer.propose(context(seed=seed))
        compile(proposal.train_py, "train.py", "exec")
        new, old = constants(proposal.train_py), constants(SEED)
        assert set(new) == set(old) and new != old
        # every line outside the constants block is unchanged
        changed = [a for a, b in zip(SEED.splitlines(), proposal.train_py.splitlines(), strict=True) if a != b]
        assert all(line.split("=")[0].strip().isupper() for line in changed)
        assert new["TOTAL_BATCH_SIZE"] % (new["DEVICE_BATCH_SIZE"] * SEQ) == 0
        assert new.get("WARMUP_RATIO", 0) + new.get("WARMDOWN_RATIO", 0) <= 1
        assert new["SEED"] == old["SEED"]  # the replicate seed is never tuned
        assert proposal.description.startswith("tpe: ")
        seen.add(proposal.train_py)
    assert len(seen) == 12
    again = OptimizeProposer("optuna-0").propose(context(seed=0))
    assert again.train_py == OptimizeProposer("optuna-0").propose(context(seed=0)).train_py  # deterministic


def run_study(proposer, steps: int, seed: int) -> list[float]:
    """Propose, score on the surrogate (noise-free), tell it back as a measured experiment; the true values."""
    measured: list[Measured] = [Measured(experiment_id="e0", constants=constants(SEED),
                                         val_bpb=surrogate.true_bpb(SEED))]
    rng, values = random.Random(seed), []
    for i in range(steps):
        proposal = proposer.propose(context(measured=measured, seed=rng.randrange(2**31)))
        status, value, _ = surrogate.outcome(proposal.train_py)
        values.append(value if value is not None else float("nan"))
        measured.append(Measured(experiment_id=f"e{i + 1}", constants=constants(proposal.train_py), val_bpb=value))
    return values


@pytest.mark.parametrize("sampler", ["tpe", "cmaes"])
def test_the_optimiser_learns_from_results(sampler: str) -> None:
    """On the surrogate landscape the study moves toward the optimum: the later proposals are better than the first
    (random) ones, and it finds a file better than the seed."""
    values = run_study(OptimizeProposer("optuna-0", sampler=sampler, startup_trials=8), 48, seed=1)
    ok = lambda vs: [v for v in vs if v == v]  # noqa: E731  (nan: a crash)
    first, last = ok(values[:12]), ok(values[-12:])
    assert last and min(ok(values)) < surrogate.true_bpb(SEED)
    assert sum(last) / len(last) < sum(first) / max(1, len(first)) if first else True


def test_results_of_other_proposers_are_told_and_a_new_shape_restarts_the_study() -> None:
    proposer = OptimizeProposer("optuna-0")
    other = SEED.replace("DEPTH = 4", "DEPTH = 3")
    measured = [Measured(experiment_id="e1", constants=constants(SEED), val_bpb=2.8),
                Measured(experiment_id="e2", constants=constants(other), val_bpb=2.5),
                Measured(experiment_id="e3", constants=constants(other), val_bpb=None),  # a crash: a failed trial
                Measured(experiment_id="e4", constants={}, val_bpb=2.4)]  # no constants block: not told
    proposer.propose(context(measured=measured))
    from optuna.trial import TrialState

    finished = [t for t in proposer.study.trials if t.state == TrialState.COMPLETE]
    assert sorted(t.value for t in finished) == [2.5, 2.8] and proposer.told == {"e1", "e2", "e3"}
    assert proposer.restarts == 1
    reshaped = SEED.replace("DEPTH = 4", "DEPTH = 4\nEXTRA_RATIO = 0.5")
    assert "EXTRA_RATIO" in constants(reshaped)
    proposer.propose(context(parent=reshaped, measured=measured))
    assert proposer.restarts == 2 and "EXTRA_RATIO" in proposer.space


def test_a_hybrid_population_runs_in_the_real_driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A mutator and an optimiser share one farm: the optimiser is shown every finished experiment."""
    from cluster.config import FarmConfig
    from cluster.execution.executor import InProcessExecutor
    from cluster.loop.driver import Farm
    from cluster.records.repo import ResearchRepo

    monkeypatch.setenv("FARM_SURROGATE_SIGMA", "0.01")
    run_dir = tmp_path / "run"
    ResearchRepo.create(run_dir / "repo", SEED, "program")
    config = FarmConfig(gpus=2, profile="cpu-tiny", sandbox="process", metrics_port=None, run_dir=run_dir,
                        max_experiments=24, agents={"count": 2, "kind": "mutate",
                                                    "options": [{}, {"kind": "optuna", "startup_trials": 4}]},
                        tournament={"baseline_replicates": 2, "min_noise_df": 2})
    farm = Farm(config, run_dir, InProcessExecutor("bench.surrogate:SurrogateSandbox"))
    assert farm.run() == 0
    agents = {w.agent for w in farm.state.work.values() if w.kind == "candidate"}
    assert agents == {"mutate-0", "optuna-1"}
    assert len(farm.contexts.measured()) == len(farm.state.finished) == 24
