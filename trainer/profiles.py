"""Profiles: the fixed numbers of one kind of experiment.

A profile is the part of the harness a candidate may not change: context
length, time budget, evaluation size, data set and tokenizer, and how the
training clock is counted. ``FARM_PROFILE`` selects one inside a sandbox so
the same ``train.py`` runs on an H100 and on a laptop CPU.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

CLIMBMIX_URL = "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main"


class Profile(BaseModel):
    """Everything about an experiment that is fixed for a whole farm run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str
    # The upstream prepare.py constants.
    max_seq_len: int = Field(gt=0)
    time_budget: float = Field(gt=0, description="seconds of training")
    eval_tokens: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    # Data and tokenizer.
    dataset: Literal["climbmix", "pydoc"]
    tokenizer: Literal["bpe", "byte"]
    val_shard: int = Field(ge=0, description="index of the pinned validation shard")
    base_url: str | None = None
    # The training clock (see trainer/clock.py).
    clock: Literal["wall", "robust"]
    warmup_batches: int = Field(ge=0, description="first train batches not charged (compilation)")
    compile_allowance: float = Field(
        gt=0, description="seconds after the first batch at most that the warm-up batches are free of charge"
    )
    setup_allowance: float = Field(
        gt=0, description="seconds from the harness's hello (train.py starts) to the first batch that are free; "
        "beyond them train.py's start-up is charged as training (measured for the seed: docs/bench/windows.md)"
    )
    handover_allowance: float = Field(
        gt=0, description="seconds evaluate_bpb may take to export the model before the time counts as training"
    )
    stall_factor: float = Field(gt=1.0, description="robust clock: an interval counts at most this x the median")
    stall_floor: float = Field(0.25, ge=0, description="robust clock: ... or the median plus this many seconds")
    budget_tolerance: float = Field(ge=0, description="fraction of the budget a run may overshoot")
    max_wall_factor: float = Field(gt=1.0, description="training wall time may not exceed this x budget")
    # Process setup inside the sandbox.
    torch_threads: int | None = Field(default=None, description="pin intra-op threads (CPU profiles)")
    startup_allowance: float = Field(gt=0, description="seconds from process start to first batch")
    eval_allowance: float = Field(gt=0, description="seconds for the final evaluation")
    noise_sd: float | None = Field(None, gt=0, description="documented run-to-run sd of val_bpb (docs/bench/): the "
                                   "prior a farm's judge may start from before it measured its own")
    noise_shared: float | None = Field(None, ge=0, lt=1, description="documented share of that variance common to "
                                       "every file run on one seed (bench/pairing.py): the prior of paired judging")
    replicate_min_distance: float = Field(
        gt=0, description="replicates of one file on other seeds whose log-probabilities of the evaluator's fixed "
        "targets are closer than this (RMS nats) are one run, not independent (cluster/loop/independence.py); honest "
        "replicates differ by far more (docs/bench/replicate-distance.md)")
    # The evaluator (trainer/evaluate.py) beside the candidate on one device.
    eval_rows: int | None = Field(None, gt=0, description="at most this many rows per evaluator pass: the harness "
                                  "exports the model for min(train.py's batch, this, what the free memory holds)")
    causal_check: Literal["scored", "rerun", "fp32"] = Field(
        "scored", description="what the causality check compares a perturbed row with: the scoring pass's "
        "log-probabilities (scored), a second pass of the unperturbed rows in the check's own batch (rerun: the "
        "same shapes, so only the perturbation differs), or both passes in float32 without autocast (fp32)")
    causal_tolerance: float | None = Field(None, gt=0, description="largest change of a log-probability at or before "
                                           "the cut that counts as float noise (None: 1e-3 on a CPU, 2e-2 under "
                                           "bf16 on a GPU; fp32 checks use the CPU's)")
    # How the seed train.py's constants block is set for this profile.
    seed_constants: dict[str, int | float | str] = Field(default_factory=dict)

    @property
    def on_gpu(self) -> bool:
        """Whether experiments of this profile run on a GPU (the CPU profiles pin their threads)."""
        return self.torch_threads is None

    @property
    def wall_limit(self) -> float:
        """Seconds after which the sandbox kills the experiment."""
        return (
            self.startup_allowance + self.time_budget * self.max_wall_factor + self.handover_allowance
            + self.eval_allowance
        )

    def data_dir(self, cache: Path | None = None) -> Path:
        return (cache or cache_dir()) / self.dataset / "data"

    def tokenizer_dir(self, cache: Path | None = None) -> Path:
        return (cache or cache_dir()) / self.dataset / f"tokenizer-{self.tokenizer}-{self.vocab_size}"

    @property
    def val_filename(self) -> str:
        return shard_filename(self.val_shard)


def shard_filename(index: int) -> str:
    return f"shard_{index:05d}.parquet"


_CPU_SEED = {
    # Deliberately a little oversized for 20 s on one core: headroom to find.
    "DEPTH": 4,
    "ASPECT_RATIO": 32,
    "HEAD_DIM": 32,
    "TOTAL_BATCH_SIZE": 2048,
    "DEVICE_BATCH_SIZE": 16,
}

def _variant(base: Profile, **changes: object) -> Profile:
    """A validated copy of a profile with some fields changed."""
    return Profile.model_validate({**base.model_dump(), **changes})


_H100 = Profile(
    name="h100",
    description="upstream autoresearch on one H100: seq 2048, 300 s, climbmix, BPE 8192",
    max_seq_len=2048,
    time_budget=300,
    eval_tokens=40 * 524288,
    vocab_size=8192,
    dataset="climbmix",
    tokenizer="bpe",
    val_shard=6542,
    base_url=CLIMBMIX_URL,
    clock="wall",
    warmup_batches=20,
    compile_allowance=60,  # a cold torch.compile of the seed on an H100: 38 s (docs/gpu.md)
    setup_allowance=30,  # not measured on a GPU since the trusted evaluator: FA3 from disk, the model on the device
    handover_allowance=60,
    stall_factor=3.0,
    budget_tolerance=0.03,
    max_wall_factor=1.5,
    startup_allowance=120,
    eval_allowance=30,
    replicate_min_distance=0.05,
    # docs/gpu.md: 4 runs of the seed at 60 s on one H100, sd 0.0043. The prior for every GPU profile until its
    # own acceptance runs (bench/gpu_accept.sh) measure it: with it a one-GPU farm judges from its first runs.
    noise_sd=0.0043,
)

_CPU_TINY = Profile(
    name="cpu-tiny",
    description="a laptop CPU: byte-level GPT on CPython's pydoc topics, 20 s on one core",
    max_seq_len=128,
    time_budget=20,
    eval_tokens=32768,
    vocab_size=260,
    dataset="pydoc",
    tokenizer="byte",
    val_shard=1,
    clock="robust",
    warmup_batches=2,
    compile_allowance=2,  # two batches of the CPU seed take ~0.1 s; the rest of the allowance is for a loaded machine
    setup_allowance=1,  # the seed: 0.04 s (0.02-0.05) under load (docs/bench/harness-windows-cpu-tiny.md)
    handover_allowance=4,  # exporting the CPU seed: ~1 s
    stall_factor=3.0,
    budget_tolerance=0.05,
    max_wall_factor=2.0,
    torch_threads=1,
    startup_allowance=30,
    eval_allowance=30,
    noise_sd=0.05,  # docs/trainer.md: same seed 0.037, other seeds 0.04-0.07; the prior errs wide
    noise_shared=0.0,  # docs/bench/pairing-cpu-tiny.md: no part shared by a seed measured (at most ~0.2)
    replicate_min_distance=0.05,
    seed_constants=_CPU_SEED,
)

# Cards other than an H100 (trainer/cards.py picks by memory, bf16 and compute capability): the same seed, the same
# 524288 tokens per optimizer step by gradient accumulation, a device batch and evaluator rows sized from the H100's
# 46 GB peak at 128 rows (about 0.35 GB a row). Not yet run on such a card (docs/gpu.md).
_GPU_48 = _variant(
    _H100,
    name="gpu-48gb",
    description="upstream's seed on one 40-48 GB card (A100 40GB, A6000, L40S): 64 rows x 2 accumulated",
    eval_rows=32,
    seed_constants={"DEVICE_BATCH_SIZE": 64},
)
_GPU_24 = _variant(
    _H100,
    name="gpu-24gb",
    description="upstream's seed on one 24-32 GB card (RTX 3090/4090/5090, A10): 16 rows x 16 accumulated",
    eval_rows=16,
    seed_constants={"DEVICE_BATCH_SIZE": 16},
)


def _sixty(base: Profile) -> Profile:
    """A GPU profile with a 60 s budget: the benchmarks of start-up, throughput, MFU and noise (bench/gpu_*.py)."""
    return _variant(base, name=f"{base.name}-60s", time_budget=60, budget_tolerance=0.05, eval_allowance=60,
                    description=f"{base.name} with a 60 s budget: GPU benchmarks of start-up, throughput and MFU")


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in [
        _H100,
        _sixty(_H100),
        _GPU_48,
        _sixty(_GPU_48),
        _GPU_24,
        _sixty(_GPU_24),
        _variant(
            _H100,
            name="gpu-smoke",
            description="any GPU, a 10 s budget and a short evaluation: the acceptance script's hostile and kernel "
            "runs (small models; not for research)",
            time_budget=10,
            eval_tokens=2 * 524288,
            budget_tolerance=0.1,
            max_wall_factor=3.0,
            eval_allowance=60,
        ),
        _CPU_TINY,
        _variant(
            _CPU_TINY,
            name="cpu-smoke",
            description="cpu-tiny with a 3 s budget: for tests and plumbing checks, not for research",
            time_budget=3,
            eval_tokens=8192,
            compile_allowance=1,
            budget_tolerance=0.1,
            max_wall_factor=3.0,  # a 3 s budget is all start-up noise on a loaded machine
            eval_allowance=20,
            noise_sd=None,  # 0.15-0.4 under load (docs/trainer.md): too unsteady to start from
            noise_shared=None,
        ),
    ]
}


def get_profile(name: str) -> Profile:
    """The named profile, or a ValueError that lists the valid names."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}: choose one of {', '.join(PROFILES)}") from None


def active_profile() -> Profile:
    """The profile a sandboxed process runs under (``FARM_PROFILE``, default h100 like upstream)."""
    return get_profile(os.environ.get("FARM_PROFILE", "h100"))


def cache_dir() -> Path:
    """Where prepared data and tokenizers live (``FARM_CACHE``); mounted read-only into sandboxes."""
    env = os.environ.get("FARM_CACHE")
    if env:  # absolute: a relative FARM_CACHE=./cache must mean the same directory in a sandbox's cwd
        return Path(os.path.abspath(Path(env).expanduser()))
    return Path(os.path.abspath(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")))) / "autoresearch-farm"
