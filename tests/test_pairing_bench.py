"""bench/pairing.py's statistics on synthetic numbers where the answer is known (no trainer runs)."""

from __future__ import annotations

import math
import random

from bench.pairing import Estimate, bootstrap_stats, parse_edit, plan, point_stats, samples, shared_share, verdict


def synthetic(k: int, same: int, sd_b: float, sd_e: float, effect: float = 0.05, seed: int = 0):
    """val_bpb = mu_f + b_s + e: MAIN and EDIT on seeds 1..k, and `same` replicates of each on one seed."""
    rng = random.Random(seed)
    b = [rng.gauss(0, sd_b) for _ in range(k)]
    main = [3.0 + bs + rng.gauss(0, sd_e) for bs in b]
    edit = [3.0 + effect + bs + rng.gauss(0, sd_e) for bs in b]
    b0 = rng.gauss(0, sd_b)
    main_same = [3.0 + b0 + rng.gauss(0, sd_e) for _ in range(same)]
    edit_same = [3.0 + effect + b0 + rng.gauss(0, sd_e) for _ in range(same)]
    return main, edit, main_same, edit_same


def test_large_shared_noise_makes_pairing_much_better():
    stats = bootstrap_stats(*synthetic(k=60, same=60, sd_b=0.1, sd_e=0.01), draws=300)
    # expected ratio sqrt(var_e / (var_b + var_e)) ~ 0.1, rho ~ 0.995
    assert stats["ratio"].value < 0.2 and stats["ratio"].hi < 0.8
    assert stats["rho"].value > 0.95
    assert abs(stats["effect"].value - 0.05) < 0.01
    assert stats["effect"].lo < 0.05 < stats["effect"].hi
    assert "meaningfully better" in verdict(stats["ratio"])


def test_no_shared_noise_gives_ratio_near_one():
    stats = bootstrap_stats(*synthetic(k=400, same=100, sd_b=0.0, sd_e=0.02), draws=300)
    assert 0.85 < stats["ratio"].value < 1.15
    assert stats["ratio"].lo < 1.0 < stats["ratio"].hi
    assert stats["rho"].value < 0.4
    assert abs(stats["sd_main_same"].value - 0.02) < 0.004
    assert "not established" in verdict(stats["ratio"])


def test_point_stats_exact_values():
    # differences all equal -> paired sd 0; MAIN = EDIT - 1 so both have the same variance
    s = point_stats([1.0, 2.0, 3.0], [2.0, 3.0, 4.0], [1.0, 1.0], [2.0, 2.0])
    assert s["sd_paired"] == 0.0 and s["ratio"] == 0.0 and s["effect"] == 1.0
    assert math.isclose(s["sd_unpaired"], math.sqrt(2.0))
    assert s["rho"] == 1.0  # no own noise at all
    assert math.isclose(shared_share(1.0, 1.0), 0.0) and shared_share(2.0, 1.0) == 0.0
    assert math.isclose(shared_share(0.36, 1.0), 0.8)


def test_bootstrap_is_deterministic_and_brackets_the_estimate():
    data = synthetic(k=6, same=6, sd_b=0.03, sd_e=0.02)
    a, b = bootstrap_stats(*data, draws=200), bootstrap_stats(*data, draws=200)
    assert a == b
    for e in a.values():
        assert e.lo <= e.hi


def test_verdict_threshold():
    assert "meaningfully better" in verdict(Estimate(0.5, 0.3, 0.79))
    assert "not established" in verdict(Estimate(0.5, 0.3, 0.81))


def test_plan_interleaves_and_samples_drop_failed_pairs():
    runs = plan(seeds=3, same=2)
    assert [r.file for r in runs] == ["MAIN", "EDIT"] * 5
    assert [(r.seed, r.replicate) for r in runs[::2]] == [(1, 0), (0, 0), (2, 0), (0, 1), (3, 0)]
    records = [{"file": r.file, "seed": r.seed, "replicate": r.replicate, "val_bpb": 1.0 + i}
               for i, r in enumerate(runs)]
    records[5]["val_bpb"] = None  # EDIT on seed 2 failed
    main, edit, main_same, edit_same, dropped = samples(records)
    assert main == [1.0, 9.0] and edit == [2.0, 10.0] and dropped == [2]
    assert main_same == [3.0, 7.0] and edit_same == [4.0, 8.0]


def test_parse_edit():
    assert parse_edit(None) == {"MATRIX_LR": 0.06}
    assert parse_edit(["DEPTH=2", "MATRIX_LR=0.05"]) == {"DEPTH": 2, "MATRIX_LR": 0.05}
