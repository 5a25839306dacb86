"""bench/search.py at a tiny size, so the search-efficiency benchmark cannot rot; and the surrogate's landscape."""

from __future__ import annotations

import json
import math

import pytest

from bench import search, surrogate
from cluster.execution.spec import ExperimentSpec, GpuAssignment
from trainer.profiles import get_profile
from trainer.seed import seed_source

SEED = seed_source(get_profile("cpu-tiny"))


def spec(tmp_path, train_py: str, seed: int = 0) -> ExperimentSpec:
    return ExperimentSpec(experiment_id="e0001", train_py=train_py, profile="cpu-tiny", seed=seed,
                          run_dir=tmp_path / "e0001", cache_dir=tmp_path, compile_cache_dir=tmp_path)


def test_surrogate_value_is_the_landscape_function_plus_seeded_noise(tmp_path) -> None:
    values = surrogate.constants_of(SEED)
    assert values["DEPTH"] == 4 and values["ASPECT_RATIO"] == 32
    status, true, _ = surrogate.evaluate(values)
    assert status == "ok" and true == surrogate.true_bpb(SEED) == pytest.approx(2.7723, abs=1e-3)
    exact = surrogate.SurrogateSandbox(sigma=0.0).run(spec(tmp_path, SEED), GpuAssignment())
    assert exact.status == "ok" and exact.val_bpb == true
    assert (tmp_path / "e0001" / "out" / "result.json").exists()
    noisy = surrogate.SurrogateSandbox(sigma=0.037, noise_seed=3)
    a, b = (noisy.run(spec(tmp_path, SEED, seed=s), GpuAssignment()).val_bpb for s in (0, 1))
    assert a != b and a == noisy.run(spec(tmp_path, SEED, seed=0), GpuAssignment()).val_bpb  # the same run again
    assert a - true == pytest.approx(surrogate.noise(SEED, 0, 0.037, 3, "e0001"), abs=1e-12)
    again = spec(tmp_path, SEED, seed=0).model_copy(update={"experiment_id": "e0002"})
    assert noisy.run(again, GpuAssignment()).val_bpb != a  # another run on the same seed: a fresh draw
    # the landscape as docs/trainer.md measured cpu-tiny: smaller models win, grad accumulation hurts, ROPE is inert
    assert surrogate.evaluate({"DEPTH": 3})[1] < true - 0.3
    assert surrogate.evaluate({"DEVICE_BATCH_SIZE": 8})[1] > true + 0.2
    assert surrogate.evaluate({"ROPE_BASE": 5000.0})[1] == true
    assert surrogate.evaluate({"MATRIX_LR": 0.5})[0] == "nan"
    assert surrogate.evaluate({"DEPTH": 10})[0] == "oom"
    assert surrogate.outcome("x = 1\n")[0] == "crash"


def test_tiny_benchmark_writes_its_table_plots_and_records(tmp_path, monkeypatch) -> None:
    from bench import search_stats

    monkeypatch.setattr(search_stats, "BOOTSTRAP", 50)
    argv = ["--seeds", "2", "--n", "2", "--budget", "8", "--no-oracle", "--variants", "pipeline", "--jobs", "1"]
    argv += ["--out", str(tmp_path)]
    assert search.main(argv) == 0
    doc = (tmp_path / "search.md").read_text()
    assert "| sequential | 1 | 2 | 8 |" in doc and "| naive | 2 |" in doc and "| pipeline | 2 |" in doc
    assert "**At equal GPU-hours**" in doc and "| best of 2 loops |" in doc and "**Wall-clock**" in doc
    assert search.MARKER in doc and "search-curves.png" in doc
    assert (tmp_path / "search-curves.png").stat().st_size > 0 and (tmp_path / "search-scaling.png").exists()
    data = json.loads((tmp_path / "search.json").read_text())
    rows = {(r["strategy"], r["n"]): r for r in search.summarise(data["records"])["rows"]}
    assert set(rows) == {("sequential", 1), ("naive", 2), ("pipeline", 2)}
    seq = rows[("sequential", 1)]
    assert seq["runs"] == 16 and seq["efficiency"] == pytest.approx(1.0) and rows[("naive", 2)]["runs"] == 16
    by = {}
    for record in data["records"]:
        by.setdefault((record["strategy"], record["n"]), set()).add(record["seed"])
        mains = record["mains"]
        assert mains[0]["t"] == 0 and mains[0]["true"] == surrogate.true_bpb(SEED)
        assert all(math.isfinite(m["true"]) and math.isfinite(m["reported"]) for m in mains)
        assert record["finished"] == record["budget"]
        assert record["end"] > 0 and sum(record["kinds"].values()) == record["budget"] and "runs" not in record
        assert record["settings"]["parent_main_prob"] == 1.0  # one parent rule for every row
    assert set(map(frozenset, by.values())) == {frozenset({0, 1})}  # every strategy on the same seeds


def test_sequential_runs_everything_on_one_pinned_seed_as_upstream(tmp_path) -> None:
    """Autoresearch pins its seed: sequential's main and every candidate run on seed 0."""
    strategy = search.strategies([], [])[0]
    record = search.run_one(strategy, 3, 6, tmp_path, 0.037)
    assert strategy.name == "sequential" and {run["seed"] for run in record["runs"]} == {0}


def test_best_of_n_is_the_expected_true_value_of_the_best_reported_loop() -> None:
    import itertools

    import numpy as np

    from bench.search_stats import best_of

    rng = np.random.default_rng(0)
    true = rng.normal(size=(7, 1))
    reported = true + rng.normal(size=(7, 1))
    subsets = list(itertools.combinations(range(7), 3))
    brute = np.mean([true[min(c, key=lambda i: reported[i, 0]), 0] for c in subsets])
    assert best_of(true, reported, 3)[0] == pytest.approx(brute)
    assert best_of(true, reported, 1)[0] == pytest.approx(true.mean())


def test_a_landscape_from_outside_plugs_in_unchanged(tmp_path, monkeypatch) -> None:
    """tests/landscape_example.py knows nothing of bench/: --landscape module:Class runs the farm on it and counts
    its own noiseless values."""
    from bench import search_stats
    from tests import landscape_example

    monkeypatch.setattr(search_stats, "BOOTSTRAP", 50)
    name = "tests.landscape_example:RidgeSandbox"
    assert search.landscape(name) is landscape_example.RidgeSandbox
    argv = ["--seeds", "1", "--n", "2", "--budget", "6", "--no-oracle", "--variants", "pipeline", "--jobs", "1",
            "--landscape", name, "--out", str(tmp_path)]
    assert search.main(argv) == 0
    data = json.loads((tmp_path / "search.json").read_text())
    assert data["meta"]["sandbox"] == name
    for record in data["records"]:
        assert record["mains"][0]["true"] == landscape_example.true_bpb(SEED) == landscape_example.START
    with pytest.raises(ValueError, match="true_bpb"):
        search.landscape("cluster.execution.spec:Limits")


def _row(strategy: str, n: int, **figures) -> dict:
    row = {"strategy": strategy, "n": n, "seeds": 16, "final_true": 2.2, "efficiency_to": {search.PARTIAL: 0.5},
           "efficiency": 0.5, "efficiency_bound": None, "false_promotions": 0, "between_promotions": 3.0,
           "first_within_goal": 4, "first_promotion": 9.0}
    return {**row, **figures}


def test_goals_report_each_of_issue_15s_goals_met_or_not_for_each_farm_policy() -> None:
    summary = {"target": 2.14, "rows": [
        _row("sequential", 1), _row("oracle", 8, efficiency=0.96), _row("stack-oracle", 8, efficiency=1.1),
        _row("paired", 8, final_true=2.1385, efficiency_to={search.PARTIAL: 0.61}, false_promotions=1),
        _row("stack", 8, final_true=2.15, between_promotions=1.4), _row("paired", 1, first_within_goal=9),
        _row("stack", 1, first_within_goal=8)]}
    goals = search.goals(summary, "calibrated")
    cell = {(goal.split(":")[1].split()[0], policy): met for goal, cells in goals.items()
            for policy, (met, _) in cells.items()}
    assert set(p for _, p in cell) == {"paired", "stack"}  # farm policies only, never naive or an oracle row
    assert cell[("mean", "paired")] and not cell[("mean", "stack")]  # <= the target, not merely near it
    assert cell[("efficiency", "paired")] and not cell[("efficiency", "stack")]  # to 90 % of the gain, >= 0.6
    assert not cell[("zero", "paired")] and cell[("zero", "stack")]  # one false promotion is one too many
    assert cell[("median", "stack")] and not cell[("median", "paired")]
    assert cell[("the", "stack")] and not cell[("the", "paired")]  # its own oracle first, else naive's
    assert cell[("first", "paired")] and not cell[("first", "stack")]  # most seeds: 9 of 16, not 8
    oracle = next(cells for goal, cells in goals.items() if "oracle" in goal)
    assert "stack-oracle" in oracle["stack"][1] and "(oracle)" in oracle["paired"][1]
    realistic_goals = search.goals(summary, "realistic")
    assert not any("90%" in goal or "sequential's final (" in goal for goal in realistic_goals)
    assert any("sequential's final value >= 0.8" in goal for goal in realistic_goals)
    table = search.goals_table(summary, "calibrated")
    assert table.splitlines()[0] == "| goal | paired | stack |" and "**met** (2.1385)" in table


def test_benchmark_settings_of_the_tournament() -> None:
    from cluster.decisions.policies.greedy import greedy_baseline_request, judge_greedy
    from cluster.decisions.policies.tournament import TournamentSettings
    from cluster.decisions.tournament import Incumbent, NoiseModel, judge

    fresh = Incumbent(commit="m", line_count=300)
    assert greedy_baseline_request(fresh, "g").replicates == 1  # autoresearch measures main once
    kept = Incumbent(commit="m", line_count=300, screening={"g": [2.70]})  # main = a kept candidate's one run
    assert greedy_baseline_request(kept, "g") is None
    assert judge_greedy([2.6999], kept, "g").decision == "promote"  # lower by noise is enough
    assert judge_greedy([2.7001], kept, "g").decision == "discard"
    assert judge_greedy([2.6], fresh, "g").decision == "wait"
    # max_replicates: a candidate still promising after its confirmation gets one more run at a time
    main = Incumbent(commit="m", line_count=300, measurements={"g": [1.0, 1.01, 0.99, 1.0]})
    noise = NoiseModel(gpu_class="g", ss=0.04**2 * 50, df=50)
    more = TournamentSettings(max_replicates=4)
    assert judge([0.93, 0.95], 300, main, noise, TournamentSettings(), "g").decision == "discard"
    v = judge([0.93, 0.95], 300, main, noise, more, "g", commit="c")
    assert v.decision == "confirm" and v.replicates_needed == 1 and "3 of at most 4" in v.reason
    assert judge([0.93, 0.95, 0.91, 0.92], 300, main, noise, more, "g").decision == "promote"
    assert judge([0.93, 0.95, 1.0, 1.01], 300, main, noise, more, "g").decision == "discard"


def test_the_realistic_landscape_has_many_small_gains_and_noise_shared_by_seed(tmp_path) -> None:
    """bench/realistic.py: every constant's gain is 0.3-3 sd, harmful pairs cost, and the noise on one run seed is
    largely common to every file, so a paired difference is much less noisy than an unpaired one."""
    import statistics

    from bench import realistic

    sd = realistic.SIGMA
    assert realistic.true_bpb(SEED) == pytest.approx(realistic.SEED_TRUE)
    assert len(realistic.GAINS) >= 15 and all(0.3 * sd <= g <= 3 * sd for _, _, g in realistic.GAINS.values())
    one = {"DEPTH": 5}  # DEPTH's optimum, one step up
    assert realistic.evaluate(one)[1] == pytest.approx(realistic.SEED_TRUE - realistic.GAINS["DEPTH"][2])
    assert realistic.evaluate({"DEPTH": 7})[1] > realistic.SEED_TRUE  # past the optimum: worse than the seed
    other = SEED.replace("DEPTH = 4", "DEPTH = 5")
    paired = [realistic.noise(SEED, s, sd) - realistic.noise(other, s, sd) for s in range(400)]
    unpaired = [realistic.noise(SEED, s, sd) - realistic.noise(other, s + 1000, sd) for s in range(400)]
    assert statistics.pstdev(paired) < 0.65 * statistics.pstdev(unpaired)
    assert statistics.pstdev(unpaired) == pytest.approx(sd * 2**0.5, rel=0.2)
    result = realistic.RealisticSandbox(sigma=0.0).run(spec(tmp_path, other), GpuAssignment())
    assert result.status == "ok" and result.val_bpb == pytest.approx(realistic.true_bpb(other))


def test_the_proposers_benchmark_runs_on_both_landscapes(tmp_path) -> None:
    from bench import proposers

    for landscape in ("calibrated", "realistic"):
        argv = ["--seeds", "1", "--budget", "6", "--n", "2", "--landscape", landscape, "--out", str(tmp_path)]
        assert proposers.main(argv) == 0
    assert "| sequential@1 | optuna | 1 | 6 |" in (tmp_path / "proposers-realistic.md").read_text()
    assert json.loads((tmp_path / "proposers.json").read_text())["meta"]["landscape"] == "calibrated"
