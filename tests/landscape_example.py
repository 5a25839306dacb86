"""A search landscape written outside bench/, to show that one plugs into bench/search.py unchanged (issue 27):

    .venv/bin/python bench/search.py --landscape tests.landscape_example:RidgeSandbox

A few constants matter, each with a gain that saturates (a ridge, not a bowl), one pair helps only together, and
half of the noise variance is shared by every file run on the same seed. It uses nothing of bench/: a Sandbox
(``run(spec, gpu) -> ExperimentResult``) that reads its noise sd and seed from the environment, as the benchmark
sets them, and says ``true_bpb`` (the noiseless value) and ``noise_shared``.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import re
import time

from cluster.execution.spec import ExperimentSpec, GpuAssignment
from trainer.result import ExperimentResult, HarnessFacts, Status

START = 2.5
# constant -> (the direction that helps: +1 up, -1 down, in log2 steps; the gain at saturation)
RIDGES = {"DEPTH": (-1, 0.10), "MATRIX_LR": (1, 0.06), "WARMDOWN_RATIO": (1, 0.05), "WEIGHT_DECAY": (-1, 0.03),
          "ADAM_BETA2": (1, 0.02), "HEAD_DIM": (1, 0.04)}
TOGETHER = ("EMBEDDING_LR", "UNEMBEDDING_LR", 0.05)  # both raised: this much more
SHARED = 0.5  # share of the noise variance common to a seed
_NUMBER = re.compile(r"^([A-Z][A-Z0-9_]*)\s*=\s*([-+0-9.eE_]+)\s*(#.*)?$", re.M)
_SEED = {}


def constants(train_py: str) -> dict[str, float]:
    """Top-level NAME = number lines (the constants block), by name."""
    return {name: float(value.replace("_", "")) for name, value, _ in _NUMBER.findall(train_py)}


def _seed_values() -> dict[str, float]:
    if not _SEED:
        from trainer.profiles import get_profile
        from trainer.seed import seed_source

        _SEED.update(constants(seed_source(get_profile("cpu-tiny"))))
    return _SEED


def true_bpb(train_py: str) -> float | None:
    """The noiseless value: the start minus each ridge's saturating gain; None when a constant is out of range."""
    values, seed = constants(train_py), _seed_values()
    total = START
    for name, (direction, gain) in RIDGES.items():
        if name not in values or name not in seed:
            continue
        if values[name] <= 0 or seed[name] <= 0:
            return None
        steps = direction * math.log2(values[name] / seed[name])
        total -= gain * math.tanh(steps) if steps > 0 else -gain * steps  # the wrong way costs linearly
    a, b, extra = TOGETHER
    if values.get(a, 0) > seed.get(a, 0) and values.get(b, 0) > seed.get(b, 0):
        total -= extra
    return total


class RidgeSandbox:
    """The ridge landscape as a sandbox: true value + noise (a shared part per seed, a part per run)."""

    true_bpb = staticmethod(true_bpb)
    noise_shared = SHARED
    optimum_bpb = START - sum(g for _, g in RIDGES.values()) - TOGETHER[2]

    def __init__(self) -> None:
        self.sigma = float(os.environ.get("FARM_SURROGATE_SIGMA", "0.037"))
        self.noise_seed = int(os.environ.get("FARM_SURROGATE_NOISE_SEED", "0"))

    def run(self, spec: ExperimentSpec, gpu: GpuAssignment) -> ExperimentResult:
        value = true_bpb(spec.train_py)
        if value is not None:
            shared = random.Random(f"{self.noise_seed}:{spec.seed}").gauss(0, self.sigma * math.sqrt(SHARED))
            own = random.Random(f"{self.noise_seed}:{spec.experiment_id}").gauss(0, self.sigma * math.sqrt(1 - SHARED))
            value += shared + own
        now = time.time()
        return ExperimentResult(
            status=Status.OK if value is not None else Status.CRASH, reason="" if value else "out of range",
            val_bpb=value, profile=spec.profile, seed=spec.seed, time_budget=1.0,
            facts=HarnessFacts(training_seconds=1.0, eval_calls=int(value is not None), val_bpb=value),
            train_py_sha256=hashlib.sha256(spec.train_py.encode()).hexdigest(), exit_code=0 if value else 1,
            started_at=now, finished_at=now)

    def cleanup_leftovers(self) -> int:
        return 0
