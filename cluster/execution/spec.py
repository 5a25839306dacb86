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


class KubernetesSettings(BaseModel):
    """Where and how experiment pods run (`kubernetes:` in farm.yaml, the Helm chart's included; FARM_KUBERNETES__*).

    They travel with each experiment (``ExperimentSpec.kubernetes``) to the Ray task that launches its pod: no
    environment variable carries them across."""

    model_config = ConfigDict(extra="forbid")

    namespace: str | None = Field(
        None,
        description="namespace of the experiment pods; default: the farm pod's own "
        "(the chart: <release>-experiments, which holds no secret)",
    )
    service_account: str | None = Field(
        None,
        description="ServiceAccount of experiment pods (the chart's has no "
        "RoleBinding; its token is never mounted); default: the namespace's default",
    )
    pids: int | None = Field(
        None,
        gt=0,
        description="processes and threads of an experiment pod (RLIMIT_NPROC of "
        "its own uid); default: the spec's limits.pids. The node's cap is the kubelet's "
        "podPidsLimit",
    )
    api_server: str | None = Field(None, description="API server URL; default: in-cluster (KUBERNETES_SERVICE_HOST)")
    token_file: Path | None = Field(None, description="bearer token file; default: the pod's service-account token")
    ca_file: Path | None = Field(None, description="CA bundle of the API server; default: the service account's")
    instance: str = Field("farm", description="value of the instance label: leftover cleanup removes only these")
    cache_pvc: str = Field("autoresearch-farm-cache", min_length=1, description="PVC with the prepared data cache")
    cache_sub_path: str = Field("", description="sub-path of the cache inside the PVC")
    gpu: bool | None = Field(None, description="request a GPU; default: yes unless the profile is a CPU profile")
    gpu_resource: str = Field("nvidia.com/gpu", min_length=1, description="extended resource name of a GPU")
    gpu_claim_template: str = Field(
        "",
        description="ResourceClaimTemplate (Dynamic Resource Allocation) of an experiment's GPU: the runner's and "
        "the candidate's containers share it, so GPU verdicts are forgery-proof too; empty: the device plugin's "
        "gpu_resource, in one container where the candidate runs as the runner's user",
    )
    node_selector: dict[str, str] = Field(default_factory=dict, description="nodeSelector of experiment pods")
    tolerations: list[dict] = Field(default_factory=list, description="tolerations of experiment pods")
    runtime_class: str | None = Field(None, description="RuntimeClass of experiment pods, e.g. gvisor")
    image_pull_policy: str = Field("IfNotPresent", pattern="^(Always|IfNotPresent|Never)$")
    image_pull_secrets: list[str] = Field(default_factory=list, description="secrets to pull the trainer image")
    priority_class: str | None = Field(None, description="PriorityClass of experiment pods")
    tmp_mb: int = Field(1024, gt=0, description="size limit of the pod's /tmp emptyDir")
    start_timeout_s: float = Field(600.0, gt=0, description="scheduling + image pull allowed before the run starts")
    poll_max_s: float = Field(2.0, gt=0, description="longest pause between two looks at a pod")

    def wants_gpu(self, profile_name: str) -> bool:
        if self.gpu is not None:
            return self.gpu
        profile = get_profile(profile_name)
        return not (profile.name.startswith("cpu") or profile.torch_threads)


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
    kubernetes: KubernetesSettings | None = Field(
        None, description="the kubernetes backend's settings (farm.yaml's kubernetes:), as data to the task that "
        "launches the pod")

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
