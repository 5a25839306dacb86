"""Always-valid certification: a test that may be looked at after every run and still keeps its error rate.

Why: a stage (policy pipeline, cluster/decisions/policies/pipeline.py) is certified against main one paired run at a
time, and decided as soon as the evidence allows. A fixed-sample test looked at after every run promotes far more
useless changes than its level says (each look is another chance). The normal-mixture likelihood ratio (a mixture
sequential probability ratio test, Robbins 1970) is a nonnegative martingale under "no effect", so by Ville's
inequality it ever exceeds 1/alpha with probability at most alpha, however often and whenever it is looked at.

The estimate is the stage's mean minus main's, from paired runs (cluster/decisions/tournament.py ``compare``), with its
variance ``var``; the mixture puts a normal prior of sd ``rho`` on the effect. Pure functions, no state: the
policy recomputes the decision from every run so far at each look, which is what the martingale permits.
"""

from __future__ import annotations

import math
from typing import Literal

Certification = Literal["promote", "drop", "continue"]


def log_mixture_ratio(estimate: float, var: float, rho: float) -> float:
    """log of the normal-mixture likelihood ratio of "the effect is ``estimate``'s mean, drawn from N(0, rho^2)"
    against "the effect is 0", for an estimate with variance ``var``: large when the estimate is far from 0 in
    its own standard errors; grows only like log(n) under no effect."""
    if var <= 0 or rho <= 0:
        return math.inf if estimate else 0.0
    total = var + rho * rho
    return 0.5 * math.log(var / total) + estimate * estimate * rho * rho / (2 * var * total)


def confidence_sequence(estimate: float, var: float, rho: float, alpha: float) -> tuple[float, float]:
    """The (lo, hi) interval of effects not rejected at level ``alpha`` by the mixture test centred on each: it
    covers the true effect at every look at once with probability >= 1 - alpha (the effects mu for which
    log_mixture_ratio(estimate - mu, var, rho) < log(1 / alpha))."""
    if var <= 0:
        return estimate, estimate
    total = var + rho * rho
    half = math.sqrt(2 * var * total / (rho * rho) * (math.log(1 / alpha) + 0.5 * math.log(total / var)))
    return estimate - half, estimate + half


def certify(estimate: float, var: float, rho: float, alpha: float, worth: float = 0.0,
            drop_alpha: float | None = None) -> Certification:
    """A stage's decision from its paired difference to main (negative = better): ``promote`` when the confidence
    sequence at ``alpha`` lies below 0 (false promotions at most ``alpha`` over all looks); ``drop`` when the one
    at ``drop_alpha`` (default ``alpha``; a wrong drop only delays a gain, so it may be looser) lies above
    ``-worth`` (its gain, if any, is smaller than ``worth``: not worth more runs); else ``continue``."""
    if confidence_sequence(estimate, var, rho, alpha)[1] < 0:
        return "promote"
    if confidence_sequence(estimate, var, rho, alpha if drop_alpha is None else drop_alpha)[0] > -worth:
        return "drop"
    return "continue"
