"""The greedy policy: autoresearch's own loop. Main measured once, each candidate once, keep if lower; no replicates,
no margin, no confirmation. The noise-blind reference of the search benchmark (bench/search.py).

It is also the example of a policy in one file: its settings model (the core's, nothing of its own) and its class,
registered by ``POLICIES`` below; cluster/decisions/policies/__init__.py finds it, and ``policy: greedy`` picks it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import ClassVar, Literal

from pydantic import Field

from agent.protocol import Proposal
from cluster.decisions.policies.core import CoreSettings
from cluster.decisions.policies.judging import Judging
from cluster.decisions.policy import Action, Decide, Screening, Strategies
from cluster.decisions.tournament import Incumbent, MeasureRequest, Verdict, ok_values
from cluster.decisions.view import FarmView
from cluster.records.ledger import LedgerRow
from cluster.records.state import Work


def kept_values(incumbent: Incumbent, gpu_class: str) -> list[float]:
    """What "keep if lower" compares with: every ok run of main's train.py, the one that got it kept included."""
    return ok_values(incumbent.screening.get(gpu_class, [])) + incumbent.values(gpu_class)


def greedy_baseline_request(incumbent: Incumbent, gpu_class: str) -> MeasureRequest | None:
    """Autoresearch's loop measures main once, then never again (a kept candidate's run stands for it)."""
    if kept_values(incumbent, gpu_class):
        return None
    return MeasureRequest(commit=incumbent.commit, gpu_class=gpu_class, replicates=1, why="greedy: main once")


def judge_greedy(candidate: Sequence[float], incumbent: Incumbent, gpu_class: str) -> Verdict:
    """Autoresearch's loop: the candidate's one run against main's run, keep if lower (the benchmark's noise-blind
    reference; no replicates, no margin, no confirmation)."""
    cand = ok_values(candidate)
    base = {"gpu_class": gpu_class, "n_candidate": len(cand), "n_incumbent": len(incumbent.values(gpu_class))}
    if not cand:
        return Verdict(decision="discard", reason="no ok measurement", **base)
    value, ref = cand[0], kept_values(incumbent, gpu_class)
    if not ref:
        request = greedy_baseline_request(incumbent, gpu_class)
        return Verdict(decision="wait", reason=f"greedy: main not measured on {gpu_class}", measure=request, **base)
    main = sum(ref) / len(ref)
    delta = value - main
    base |= {"candidate_mean": value, "incumbent_mean": main, "delta": delta, "margin": 0.0, "near_miss": True}
    numbers = f"{value:.4f} vs main {main:.4f} on {gpu_class}: {delta:+.4f}"
    if delta < 0:
        return Verdict(decision="promote", reason=f"greedy: {numbers} is lower", **base)
    return Verdict(decision="discard", reason=f"greedy: {numbers} is not lower", **base)


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
