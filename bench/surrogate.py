"""A surrogate trainer for search benchmarks: val_bpb is a fixed smooth function of train.py's hyperparameters.

``SurrogateSandbox`` speaks the Sandbox protocol (``run(spec, gpu) -> ExperimentResult``), so the real driver,
tournament, research repo and ledger run unchanged, while an "experiment" takes well under a millisecond of
compute. Name it as the sandbox backend ``bench.surrogate:SurrogateSandbox``. make_sandbox passes no options, so
the knobs are environment variables, read when the sandbox is built:

- ``FARM_SURROGATE_SIGMA`` (default 0.037, cpu-tiny's measured run-to-run sd): sd of the Gaussian noise;
- ``FARM_SURROGATE_NOISE_SEED`` (default 0): seeds the noise, so a benchmark seed is one fixed noise draw.

The landscape (``true_bpb``) reads the numeric literals of train.py's constants block with ``ast`` (the mutate
proposer's parser) and sums quadratic bowls in log-space around hidden optima, roughly calibrated to what
docs/trainer.md measured on cpu-tiny: the seed scores ~2.77, the size of the model dominates (DEPTH 4 -> 3 and
ASPECT_RATIO 32 -> 16 gain 0.3-0.5, as the real 20 s budget rewards a smaller model), a smaller micro-batch
that forces gradient accumulation costs ~0.25, and the learning rates, betas and schedule matter little
(most single changes move val_bpb by less than the noise: the regime where "keep if lower" is fooled).
Interactions: the model width is DEPTH x ASPECT_RATIO rounded up to a multiple of HEAD_DIM (as train.py does),
the model's size counts depth, width^2 and the MLP ratio together, and the best MATRIX_LR grows with the square
root of the batch. Some settings crash like real runs (too big a model or micro-batch -> oom, learning rates far
too high or beta2 < beta1 -> nan, a total batch the micro-batch does not divide -> crash). ROPE_BASE has no
effect at all: changing it is a pure noise test.

val_bpb of a run = true_bpb + Normal(0, sigma), the noise a fixed function of (noise seed, train.py, run seed,
experiment id): every run is an independent draw, a rerun on the same seed too (as on cpu-tiny, whose fixed
wall-clock budget makes same-seed runs differ; on this landscape nothing of the noise is shared by a seed).
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import random
import time

from agent.mutate import parse_constants
from cluster.execution.spec import ExperimentSpec, GpuAssignment
from cluster.sandbox.base import stage
from trainer.result import RESULT_FILE, ExperimentResult, HarnessFacts, Status

SEQ_LEN = 128  # cpu-tiny's MAX_SEQ_LEN: rows of the micro-batch
BASE = 1.95  # val_bpb at the hidden optimum (about)

# name -> (coordinate, optimum, weight): cost = weight * (coord(value) - coord(optimum))^2
#   log2: rates, sizes, floats;  log2(1-b): betas and momenta;  lin: counts and fractions
BOWLS: dict[str, tuple[str, float, float]] = {
    "HEAD_DIM": ("log2", 32, 0.02),
    "DEVICE_BATCH_SIZE": ("log2", 16, 0.02),
    "EMBEDDING_LR": ("log2", 0.3, 0.012),
    "UNEMBEDDING_LR": ("log2", 0.008, 0.015),
    "SCALAR_LR": ("log2", 0.5, 0.002),
    "WEIGHT_DECAY": ("log2", 0.05, 0.006),
    "ADAM_BETA1": ("1-b", 0.9, 0.012),
    "ADAM_BETA2": ("1-b", 0.98, 0.01),
    "MUON_MOMENTUM": ("1-b", 0.95, 0.01),
    "NS_STEPS": ("lin", 4, 0.004),
    "WARMUP_RATIO": ("lin", 0.05, 1.0),
    "WARMDOWN_RATIO": ("lin", 0.75, 0.4),
    "FINAL_LR_FRAC": ("lin", 0.1, 0.5),
    "LOGIT_SOFTCAP": ("log2", 30.0, 0.004),
}
SIZE_WEIGHT, SIZE_BELOW_SEED = 0.04, 4.0  # bowl in log2(model size); its optimum lies this far below the seed's
DEPTH_OPT, DEPTH_WEIGHT = 3, 0.03
BATCH_OPT, BATCH_WEIGHT, ACCUM_COST = 1024, 0.03, 0.25  # tokens per step; cost per doubling of grad accumulation
MATRIX_LR_OPT, MATRIX_LR_WEIGHT = 0.06, 0.004  # at 2048 tokens per step; scales with sqrt(batch)
SEED_VALUES = {  # cpu-tiny's seed: what a missing constant defaults to
    "DEPTH": 4, "ASPECT_RATIO": 32, "HEAD_DIM": 32, "MLP_RATIO": 4, "ROPE_BASE": 10000.0, "LOGIT_SOFTCAP": 15.0,
    "TOTAL_BATCH_SIZE": 2048, "DEVICE_BATCH_SIZE": 16, "MATRIX_LR": 0.04, "EMBEDDING_LR": 0.6,
    "UNEMBEDDING_LR": 0.004, "SCALAR_LR": 0.5, "WEIGHT_DECAY": 0.2, "ADAM_BETA1": 0.8, "ADAM_BETA2": 0.95,
    "MUON_MOMENTUM": 0.95, "NS_STEPS": 5, "WARMUP_RATIO": 0.0, "WARMDOWN_RATIO": 0.5, "FINAL_LR_FRAC": 0.0,
}  # fmt: skip


def _coord(kind: str, value: float) -> float:
    if kind == "log2":
        return math.log2(value)
    if kind == "1-b":
        return math.log2(1 - value)
    return float(value)


def _size(v: dict[str, float]) -> float:
    """log2 of a model-size proxy: depth x width^2 x (1 + MLP_RATIO / 2), width rounded up to HEAD_DIM."""
    width = math.ceil(v["DEPTH"] * v["ASPECT_RATIO"] / v["HEAD_DIM"]) * v["HEAD_DIM"]
    return math.log2(v["DEPTH"]) + 2 * math.log2(width) + math.log2(1 + v["MLP_RATIO"] / 2)


SEED_SIZE = _size(SEED_VALUES)


def evaluate(values: dict[str, float]) -> tuple[Status, float | None, str]:
    """The noiseless outcome of a set of constants (missing ones take the seed's values)."""
    v = {**SEED_VALUES, **values}
    if any(not isinstance(x, (int, float)) or not math.isfinite(x) for x in v.values()):
        return Status.CRASH, None, "a constant is not a finite number"
    if min(v["DEPTH"], v["ASPECT_RATIO"], v["HEAD_DIM"], v["TOTAL_BATCH_SIZE"], v["DEVICE_BATCH_SIZE"]) < 1 \
            or v["MLP_RATIO"] <= 0 or v["NS_STEPS"] < 1:
        return Status.CRASH, None, "a size is below 1"
    micro = v["DEVICE_BATCH_SIZE"] * SEQ_LEN
    if v["TOTAL_BATCH_SIZE"] % micro:
        return Status.CRASH, None, "AssertionError: TOTAL_BATCH_SIZE % (DEVICE_BATCH_SIZE * MAX_SEQ_LEN) != 0"
    if v["WARMUP_RATIO"] + v["WARMDOWN_RATIO"] > 1:
        return Status.CRASH, None, "ValueError: warmup + warmdown exceed the budget"
    size = _size(v)
    if size > SEED_SIZE + 3 or v["DEVICE_BATCH_SIZE"] >= 128:
        return Status.OOM, None, "out of memory"
    if v["MATRIX_LR"] > 0.4 or v["EMBEDDING_LR"] > 6 or v["UNEMBEDDING_LR"] > 0.1 or v["SCALAR_LR"] > 5 \
            or v["ADAM_BETA2"] < v["ADAM_BETA1"] or not all(0 < v[b] < 1 for b in ("ADAM_BETA1", "ADAM_BETA2",
                                                                                     "MUON_MOMENTUM")):
        return Status.NAN, None, "FAIL: loss exploded"
    cost = SIZE_WEIGHT * (size - (SEED_SIZE - SIZE_BELOW_SEED)) ** 2
    cost += DEPTH_WEIGHT * (v["DEPTH"] - DEPTH_OPT) ** 2
    batch = math.log2(v["TOTAL_BATCH_SIZE"])
    cost += BATCH_WEIGHT * (batch - math.log2(BATCH_OPT)) ** 2
    cost += ACCUM_COST * math.log2(v["TOTAL_BATCH_SIZE"] / micro)
    lr_opt = math.log2(MATRIX_LR_OPT) + 0.5 * (batch - 11)
    cost += MATRIX_LR_WEIGHT * (math.log2(v["MATRIX_LR"]) - lr_opt) ** 2
    for name, (kind, opt, weight) in BOWLS.items():
        x = v[name]
        if kind != "lin" and x <= 0:
            return Status.CRASH, None, f"{name} must be positive"
        cost += weight * (_coord(kind, x) - _coord(kind, opt)) ** 2
    return Status.OK, BASE + cost, ""


def constants_of(train_py: str) -> dict[str, float]:
    """The constants block's numeric literals by name (ValueError when train.py has none or does not parse)."""
    return dict(_constants(train_py))


@functools.lru_cache(maxsize=8192)
def _constants(train_py: str) -> tuple[tuple[str, float], ...]:
    """Parsed once per file: the benchmark asks for every run and every main change (parsing was ~15 % of it)."""
    return tuple((name, c.value) for name, c in parse_constants(train_py).items())


def outcome(train_py: str) -> tuple[Status, float | None, str]:
    """The noiseless outcome of a train.py text."""
    try:
        return evaluate(constants_of(train_py))
    except ValueError as exc:
        return Status.CRASH, None, str(exc)


def true_bpb(train_py: str) -> float | None:
    """The noiseless val_bpb of a train.py (None when it does not run)."""
    return outcome(train_py)[1]


def noise(train_py: str, seed: int, sigma: float, noise_seed: int = 0, run: str = "") -> float:
    """The run's noise: a fixed function of (noise seed, train.py, run seed, ``run``: the experiment)."""
    key = hashlib.sha256(f"{noise_seed}:{seed}:{run}:".encode() + train_py.encode()).digest()
    return random.Random(key).gauss(0.0, sigma)


class SurrogateSandbox:
    """Reports ``true_bpb + noise`` (or the crash the landscape says) at once, through the real result type."""

    name = "surrogate"
    landscape_outcome = staticmethod(outcome)  # bench/realistic.py's landscape overrides these
    landscape_noise = staticmethod(noise)
    # what bench/search.py reads of a landscape (``--landscape module:Class``): the noiseless value of a train.py,
    # the share of the noise variance common to every file on one seed, and the best value it knows of
    true_bpb = staticmethod(true_bpb)
    noise_shared = 0.0
    optimum_bpb = BASE

    def __init__(self, sigma: float | None = None, noise_seed: int | None = None, write_files: bool = True) -> None:
        env = os.environ
        self.sigma = float(env.get("FARM_SURROGATE_SIGMA", "0.037")) if sigma is None else sigma
        self.noise_seed = int(env.get("FARM_SURROGATE_NOISE_SEED", "0")) if noise_seed is None else noise_seed
        self.write_files = write_files

    def run(self, spec: ExperimentSpec, gpu: GpuAssignment) -> ExperimentResult:
        started = time.time()
        if self.write_files:
            stage(spec)  # as every backend does: the candidate and a fresh out dir (`farm show` reads them)
        status, value, reason = self.landscape_outcome(spec.train_py)
        measured = None if value is None else value + self.landscape_noise(spec.train_py, spec.seed, self.sigma,
                                                                           self.noise_seed, spec.experiment_id)
        result = ExperimentResult(
            status=status, reason=reason, val_bpb=measured, profile=spec.profile, seed=spec.seed, time_budget=1.0,
            facts=HarnessFacts(training_seconds=1.0, eval_calls=int(value is not None), val_bpb=measured),
            train_py_sha256=hashlib.sha256(spec.train_py.encode()).hexdigest(), exit_code=0 if value else 1,
            started_at=started, finished_at=time.time(),
        )  # fmt: skip
        if self.write_files:
            out = spec.run_dir / "out" / RESULT_FILE
            out.write_text(result.model_dump_json())
        return result

    def cleanup_leftovers(self) -> int:
        return 0
