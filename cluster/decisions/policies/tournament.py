"""The tournament policy: noise-aware judging with replicates, a margin and confirmation on other seeds.

``policy: paired`` is this policy with PAIRED_DEFAULTS (pairing, a noise prior, judged against a former-main parent,
replicates while promising at a wider margin, a second chance; docs/bench/search-paired.md). The statistics are
cluster/decisions/tournament.py; the facts come from the view (cluster/decisions/view.py); the shared steps from
judging.py.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from agent.protocol import Proposal
from cluster.decisions.policies.core import CoreSettings
from cluster.decisions.policies.judging import Judging
from cluster.decisions.policy import Action, Decide, Screening, Strategies
from cluster.decisions.view import FarmView
from cluster.records.ledger import LedgerRow
from cluster.records.state import Work

# The paired policy (issue 15; docs/bench/search-paired.md). Every choice is measured there or in
# tests/test_pairing.py: pairing and the prior start judging at once; several looks at a promising candidate (up to
# max_replicates runs) would promote ~1.8 % of useless changes at the tournament's 2.3 sigma, so the margin is 2.6,
# which brings it back to the tournament's ~0.7-0.9 % (tests/test_tournament.py's simulation).
PAIRED_DEFAULTS: dict[str, object] = {
    "pairing": "auto", "noise_prior_df": 4, "baseline_replicates": 2, "min_noise_df": 4, "judge_against": "parent",
    "max_replicates": 4, "second_chances": 1, "promising_sigmas": 1.0, "margin_sigmas": 2.6,
}


class TournamentSettings(CoreSettings):
    """The tournament's knobs of promotion; defaults are sized by tests/test_tournament.py's simulation."""

    named_defaults: ClassVar[dict[str, dict[str, object]]] = {"paired": PAIRED_DEFAULTS}

    policy: Literal["tournament", "paired"] = Field("tournament", description="paired: the tournament with "
                                                    "PAIRED_DEFAULTS for every field not set")
    margin_sigmas: float = Field(2.3, gt=0, description="a (fully measured) candidate must beat main's mean by "
                                 "this many standard errors of the difference of the two means")
    promising_sigmas: float = Field(1.5, ge=0, description="a first measurement that beats main by this many "
                                    "standard errors is promising and earns confirmation replicates; lower than "
                                    "margin_sigmas so real gains are rarely lost before they are confirmed")
    min_margin: float = Field(0.0, ge=0, description="absolute floor of the margin, in val_bpb")
    confirm_replicates: int = Field(1, ge=0, description="replicates on other seeds before a promotion "
                                    "(0 promotes on one measurement: only for ablations)")
    small_sample_correction: bool = Field(True, description="use Student's t quantile for the noise's degrees of "
                                          "freedom: an sd estimated from 2 replicates is itself very uncertain")
    simplicity_tolerance: float = Field(0.5, ge=0, le=1, description="a candidate with fewer lines whose mean is "
                                        "within this fraction of the margin of main's counts as equal and wins")
    near_miss_margins: float = Field(1.0, ge=0, description="a discarded result at most this many margins worse "
                                     "than main is a near-miss: a candidate parent")
    max_replicates: int = Field(0, ge=0, description="a candidate still promising after its confirmations (its "
                                "mean beats the screen for its count of runs, not yet the margin) gets one more "
                                "replicate at a time up to this many runs in all; 0: off (decide after the first "
                                "confirmation)")
    fast_track_sigmas: float = Field(0.0, ge=0, description="a candidate whose first run beats main by this many "
                                     "standard errors of the difference is promoted at once, without confirmation "
                                     "(issue 15's fast track for big gains; it must exceed margin_sigmas); 0: off")
    min_noise_df: int = Field(7, ge=1, description="main is measured beyond baseline_replicates until the noise on "
                              "a class has this many degrees of freedom: with 3 df the t margin is ~2x wider and "
                              "a 3-sd gain is promoted 39 % of the time instead of 75 %")

    @model_validator(mode="after")
    def _screen_below_margin(self) -> TournamentSettings:
        if self.promising_sigmas > self.margin_sigmas:
            raise ValueError(f"promising_sigmas ({self.promising_sigmas}) must not exceed margin_sigmas "
                             f"({self.margin_sigmas}): the screen for confirmation cannot be stricter than promotion")
        if self.fast_track_sigmas and self.fast_track_sigmas <= self.margin_sigmas:
            raise ValueError(f"fast_track_sigmas ({self.fast_track_sigmas}) must exceed margin_sigmas "
                             f"({self.margin_sigmas}): a single run promoted at once needs a stricter bar; 0 turns "
                             "the fast track off")
        return self


class TournamentPolicy:
    """The farm's noise-aware tournament (cluster/decisions/tournament.py) over the farm's state."""

    settings_model: ClassVar[type[CoreSettings]] = TournamentSettings

    def __init__(self, settings: TournamentSettings, strategies: Strategies) -> None:
        self.settings = settings
        self.judging = Judging(settings, strategies)

    def start(self, farm: FarmView) -> Iterator[Action]:
        """Measure main before anything is judged: the noise floor comes first."""
        yield from self.judging.main_runs(farm, farm.main_class(), self.settings)

    def after_promotion(self, farm: FarmView) -> Iterator[Action]:
        """Measure the new main afresh: the winner's own runs were selected for being low."""
        yield from self.judging.main_runs(farm, farm.main_class(), self.settings)

    def on_result(self, farm: FarmView, work: Work, row: LedgerRow) -> Iterator[Action]:
        """A finished experiment: judge what it was for. A baseline of main may settle candidates that waited."""
        for candidate, gpu_class in self.judging.judged_by(farm, work, row):
            yield from self.judge(farm, candidate, gpu_class)

    def parent(self, farm: FarmView, rng: random.Random) -> tuple[str, str]:
        """The commit the next proposal starts from, and why."""
        return self.judging.parent(farm, rng)

    def screen(self, farm: FarmView, proposal: Proposal) -> Screening:
        """Refuse what cannot run or repeats an earlier file or change (judging.py; second chances)."""
        return self.judging.screen(farm, proposal)

    def judge(self, farm: FarmView, candidate: Work, gpu_class: str) -> Iterator[Action]:
        """Decide on a candidate, then run what the decision asks for: confirmations, main's runs, a promotion."""
        reference = self.judging.reference(farm, candidate)
        if pair := self.judging.awaited_pair(farm, candidate, gpu_class, reference):
            yield Decide(experiment_id=candidate.experiment_id, decision="wait", reason=pair)
            return
        verdict = self.judging.verdict(farm, candidate, gpu_class, self.settings)
        yield Decide(experiment_id=candidate.experiment_id, decision=verdict.decision, reason=verdict.reason)
        yield from self.judging.follow_up(farm, candidate, verdict, reference, self.settings)


POLICIES = {"tournament": TournamentPolicy, "paired": TournamentPolicy}
