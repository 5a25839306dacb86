"""What the farm asks a sandbox to run: the experiment spec and its limits."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from trainer.profiles import get_profile

TRAINER_IMAGE = "autoresearch-farm/trainer:latest"


class Limits(BaseModel):
    """Resource limits of one experiment; the wall limit defaults to the profile's."""

    model_config = ConfigDict(extra="forbid")

    wall_seconds: float | None = Field(None, gt=0, description="kill after this; default: the profile's wall limit")
    memory_mb: int = Field(8192, gt=0, description="host memory (RAM) of the whole experiment")
    pids: int = Field(512, gt=0, description="processes and threads")
    cpus: float | None = Field(None, gt=0, description="CPU cores; default: the profile's thread count (CPU "
                               "profiles), else the host's cores / the farm's GPU slots")
    shm_mb: int = Field(2048, gt=0, description="/dev/shm size (docker)")
    disk_mb: int = Field(1024, gt=0, description="scratch space (HOME, TMPDIR, /tmp): a memory-backed filesystem of "
                         "this size, so a candidate that fills it fails itself (ENOSPC), not the host's disk")
    file_mb: int = Field(2048, gt=0, description="largest file the experiment may write")


class GpuAssignment(BaseModel):
    """The one GPU an experiment may see; all None means CPU only."""

    index: int | None = None  # the host's CUDA index (Ray's GPU id)
    uuid: str | None = None  # GPU-xxxx, preferred where NVML tells it
    name: str | None = None  # the model, as the host's driver names it: the class results are judged in

    @property
    def visible(self) -> str | None:
        return self.uuid or (str(self.index) if self.index is not None else None)


class ExperimentSpec(BaseModel):
    """One candidate train.py to run under a profile, with where its files go."""

    model_config = ConfigDict(extra="forbid")

    experiment_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    train_py: str = Field(description="the candidate's source text")
    profile: str = "cpu-tiny"
    seed: int = 0
    run_dir: Path = Field(description="per-experiment directory on the host: candidate/ and out/ go here")
    cache_dir: Path = Field(description="prepared data and tokenizers (mounted read-only)")
    compile_cache_dir: Path | None = Field(
        None, description="torch inductor/triton cache shared across runs: read-only to experiments, each of which "
        "compiles into a private copy; only runs that publish it add to it"
    )
    publish_compile_cache: bool = Field(
        False, description="merge what this run compiled into the shared cache when it ends ok (main's baselines)"
    )
    image: str = TRAINER_IMAGE
    limits: Limits = Field(default_factory=Limits)
    owner: str = Field("", pattern=r"^[A-Za-z0-9_-]{0,48}$",
                       description="the farm (or `farm try`) that runs it: a backend cleans up only its owner's")

    @field_validator("run_dir", "cache_dir", "compile_cache_dir")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        """A backend runs things from other working directories (the out dir, a container): relative paths
        would resolve a second time there. The CLI and config make paths absolute where they enter."""
        if value is not None and not value.is_absolute():
            raise ValueError(f"{value} is a relative path; sandboxes take absolute paths only")
        return value

    def wall_limit(self) -> float:
        return self.limits.wall_seconds or get_profile(self.profile).wall_limit


def owner_of(run_dir: Path) -> str:
    """The owner name of a farm run's experiments: a backend cleans up its own run's leftovers, never another's."""
    return "run-" + hashlib.sha256(str(run_dir).encode()).hexdigest()[:12]
