"""cluster/decisions/anytime.py by simulation: the mixture test's false-promotion rate stays at its level however
often it is looked at, and it finds gains of 0.5-3 sd (issue 27). Seeded, vectorised: well under a second."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cluster.decisions.anytime import certify, confidence_sequence, log_mixture_ratio

ALPHA, LOOKS, SIMS = 0.05, 60, 4000


def _paths(effect: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Running means of paired differences (sd 1) after each look, and their variances (1 / n)."""
    rng = np.random.default_rng(seed)
    draws = rng.normal(effect, 1.0, size=(SIMS, LOOKS))
    n = np.arange(1, LOOKS + 1)
    return draws.cumsum(axis=1) / n, 1.0 / n


def _half_widths(var: np.ndarray, rho: float = 1.0) -> np.ndarray:
    """The confidence sequence's half width at each look (it depends on the variance only)."""
    return np.array([confidence_sequence(0.0, v, rho, ALPHA)[1] for v in var])


def _promoted(means: np.ndarray, var: np.ndarray) -> np.ndarray:
    """Per path: promoted at any look (the confidence sequence below 0), looked at after every run."""
    return (means + _half_widths(var) < 0).any(axis=1)


def test_the_boundary_is_the_pure_functions() -> None:
    for estimate, var in ((-1.2, 0.5), (-0.3, 0.1), (0.4, 0.2)):
        lo, hi = confidence_sequence(estimate, var, 1.0, ALPHA)
        at_edge = log_mixture_ratio(estimate - hi, var, 1.0)  # the sequence's edge: the ratio is 1 / alpha there
        assert at_edge == pytest.approx(math.log(1 / ALPHA))
        expected = "promote" if hi < 0 else "drop" if lo > 0 else "continue"
        assert certify(estimate, var, 1.0, ALPHA) == expected
    assert certify(-5.0, 0.5, 1.0, ALPHA) == "promote" and certify(5.0, 0.5, 1.0, ALPHA) == "drop"
    assert certify(0.0, 4.0, 1.0, ALPHA) == "continue"
    assert certify(-0.1, 0.001, 1.0, ALPHA, worth=0.5) == "drop"  # its gain is surely below 0.5: not worth runs
    assert certify(2.0, 0.5, 1.0, ALPHA) == "continue" and certify(2.0, 0.5, 1.0, ALPHA, drop_alpha=0.3) == "drop"


def test_false_promotions_stay_below_the_level_under_continuous_looks() -> None:
    means, var = _paths(0.0, seed=1)
    assert _promoted(means, var).mean() <= ALPHA / 2 + 0.01  # one-sided: about half of the two-sided alpha
    naive = (means / np.sqrt(var) < -1.645).any(axis=1).mean()  # a fixed 5 % one-sided test, looked at each time
    assert naive > 4 * ALPHA  # what the always-valid test prevents
    worse, var = _paths(0.5, seed=2)  # a harmful stage is promoted even less often
    assert _promoted(worse, var).mean() <= 0.002


@pytest.mark.parametrize(("gain", "power"), [(0.5, 0.6), (1.0, 0.99), (2.0, 1.0), (3.0, 1.0)])
def test_power_against_real_gains_within_sixty_looks(gain: float, power: float) -> None:
    means, var = _paths(-gain, seed=3)
    assert _promoted(means, var).mean() >= power
    if gain >= 2.0:  # big gains are decided in a few looks
        first = np.argmax(means + _half_widths(var) < 0, axis=1)
        assert np.median(first + 1) <= 4
