"""The greedy policy: autoresearch's own loop. Main measured once, each candidate once, keep if lower; no replicates,
no margin, no confirmation. The noise-blind reference of the search benchmark (bench/search.py).

It is also the example of a policy in one file: its settings model (the core's, nothing of its own) and its class,
registered by ``POLICIES`` below; cluster/policies/__init__.py finds it, and ``policy: greedy`` picks it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import ClassVar, Literal

from pydantic import Field

from agent.protocol import Proposal
from cluster.ledger import LedgerRow
from cluster.policies.core import CoreSettings
from cluster.policies.judging import Judging
from cluster.policy import Action, Decide, Screening, Strategies
from cluster.state import Work
from cluster.tournament import greedy_baseline_request, judge_greedy
from cluster.view import FarmView


class GreedySettings(CoreSettings):
    """Greedy reads only the core settings (parent selection, pairing, judge_against, second chances)."""

    policy: Literal["greedy"] = Field("greedy", description="greedy: autoresearch's own loop, for benchmarks "
                                      "(bench/search.py): main and each candidate run once, keep if lower; no "
                                      "replicates, margin or confirmation")


class GreedyPolicy:
    """Keep if lower: each candidate's one run against main's run (or its former-main parent's)."""

    settings_model: ClassVar[type[CoreSettings]] = GreedySettings

    def __init__(self, settings: GreedySettings, strategies: Strategies) -> None:
        self.settings = settings
        self.judging = Judging(settings, strategies, keep_if_lower=True)

    def start(self, farm: FarmView) -> Iterator[Action]:
        """Measure main once before anything is judged."""
        yield from self._measure_main(farm, farm.main_class())

    def after_promotion(self, farm: FarmView) -> Iterator[Action]:
        """Main's run only if it has none: the kept candidate's run stands for it."""
        yield from self._measure_main(farm, farm.main_class())

    def on_result(self, farm: FarmView, work: Work, row: LedgerRow) -> Iterator[Action]:
        """A candidate's run is judged; main's run settles the candidates that waited for it."""
        for candidate, gpu_class in self.judging.judged_by(farm, work, row):
            yield from self._judge(farm, candidate, gpu_class)

    def parent(self, farm: FarmView, rng: random.Random) -> tuple[str, str]:
        return self.judging.parent(farm, rng)

    def screen(self, farm: FarmView, proposal: Proposal) -> Screening:
        return self.judging.screen(farm, proposal)

    def _judge(self, farm: FarmView, candidate: Work, gpu_class: str) -> Iterator[Action]:
        reference = self.judging.reference(farm, candidate)
        if pair := self.judging.awaited_pair(farm, candidate, gpu_class, reference):
            yield Decide(experiment_id=candidate.experiment_id, decision="wait", reason=pair)
            return
        parent = self.judging.former_main(farm, candidate, gpu_class)
        verdict = judge_greedy(farm.values(candidate.train_sha, gpu_class), parent or farm.incumbent(), gpu_class)
        yield Decide(experiment_id=candidate.experiment_id, decision=verdict.decision, reason=verdict.reason)
        if verdict.decision == "wait":
            yield from self._measure_main(farm, verdict.gpu_class)
        elif verdict.decision == "promote":
            yield from self.judging.promote(farm, candidate, verdict)

    def _measure_main(self, farm: FarmView, gpu_class: str) -> Iterator[Action]:
        yield from self.judging.measure_main(farm, greedy_baseline_request(farm.incumbent(), gpu_class))


POLICIES = {"greedy": GreedyPolicy}
