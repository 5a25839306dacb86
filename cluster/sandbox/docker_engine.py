"""The docker sandbox: one locked-down container per experiment, through the Docker Engine API.

The container runs ``python -m trainer.runner`` from the trainer image (see
images/) with: no network, a read-only root with a size-limited tmpfs /tmp, no-new-privileges,
the runner as root with six capabilities and the candidate as nobody with none, pids/memory(+swap)/CPU
limits, a large private /dev/shm, the candidate and the data cache mounted
read-only, a per-run writable out dir, the compile cache (if any) shared
read-write, the GPU (if any) by device request for its UUID, and an
environment that is the allow-list of base.sandbox_env and nothing else.
It is killed at the wall limit plus a grace period and removed in every
outcome; ``cleanup_leftovers`` removes what a crashed farm left (by label).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

from cluster.execution.spec import TRAINER_IMAGE, ExperimentSpec, GpuAssignment
from cluster.sandbox.base import (
    CACHE_MOUNT,
    CANDIDATE_MOUNT,
    CANDIDATE_UID,
    COMPILE_CACHE_MOUNT,
    OUT_MOUNT,
    OUTER_KILL_GRACE,
    SandboxError,
    collect,
    cpu_quota,
    merge_published_cache,
    runner_args,
    sandbox_env,
    shared_dir,
    stage,
)
from cluster.sandbox.untrusted import write_bytes
from trainer.result import RESULT_FILE, ExperimentResult, Status

ROLE_LABEL = "autoresearch-farm.role"
EXPERIMENT_LABEL = "autoresearch-farm.experiment"
OWNER_LABEL = "autoresearch-farm.owner"  # the farm run (or `farm try`) that started it: cleanup stays in its lane
RUN_LABEL = "autoresearch-farm.run"  # unique per attempt: finds a container whose handle was lost
ROLE = "experiment"
# The runner is root in the container with only what it needs to run the candidate as CANDIDATE_UID (nobody) and
# clean up after it: set the user, own and reach its out dir and the sealed validation shard whoever owns them on the
# host, kill the candidate's processes. The candidate, as nobody, has no capabilities and cannot gain any.
RUNNER_USER = "0:0"
RUNNER_CAPS = ["SETUID", "SETGID", "CHOWN", "FOWNER", "DAC_OVERRIDE", "KILL"]
CONTAINER_LOG_BYTES = 64 * 1024  # what is kept of the container's own stdout/stderr (the runner logs to /out)
ENGINE_HINT = "start it (`dockerd > /tmp/dockerd.log 2>&1 &`, see README 'Docker sandbox') or use --sandbox process"


class DockerSandbox:
    """``Sandbox`` on a Docker Engine: ``run(spec, gpu)`` in a fresh container, always removed."""

    name = "docker"

    def __init__(
        self,
        client: Any = None,
        image: str | None = None,
        *,
        base_url: str | None = None,
        tmpfs_mb: int | None = None,
        owner: str | None = None,
    ) -> None:
        """Connect to the engine and check the image; a SandboxError says how to fix either.

        ``image``: the trainer image for every run (default: each spec's ``image``).
        ``tmpfs_mb``: size of /tmp (HOME, scratch); default each spec's ``limits.disk_mb``.
        ``owner``: labels the containers (a spec's own ``owner`` wins) so that ``cleanup_leftovers``
        removes only that owner's; None removes every experiment container.
        """
        self.image = image
        self.owner = owner
        self.tmpfs_mb = tmpfs_mb
        self.user = RUNNER_USER
        if client is None:
            try:
                import docker
            except ImportError as exc:  # pragma: no cover - a dependency of the project
                raise SandboxError("the `docker` Python package is missing: pip install docker") from exc
            address = base_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
            try:
                client = docker.DockerClient(base_url=address) if base_url else docker.from_env()
            except Exception as exc:  # DockerException, connection errors: the engine is not there
                raise SandboxError(
                    f"cannot reach the Docker Engine at {address}: {_short(exc)}; {ENGINE_HINT}"
                ) from exc
        self.client = client
        try:
            client.ping()
        except Exception as exc:
            raise SandboxError(
                f"cannot reach the Docker Engine at {_address(client)}: {_short(exc)}; {ENGINE_HINT}"
            ) from exc
        self._images_ok: set[str] = set()
        self._require_image(image or TRAINER_IMAGE)

    # -- the container ---------------------------------------------------------------------

    def container_config(self, spec: ExperimentSpec, gpu: GpuAssignment) -> dict[str, Any]:
        """The keyword arguments of ``containers.create`` for this experiment: every restriction is here."""
        from docker.types import DeviceRequest, LogConfig, Mount, Ulimit

        limits = spec.limits
        run_dir = spec.run_dir.resolve()
        mounts = [
            Mount(CANDIDATE_MOUNT, str(run_dir / "candidate"), type="bind", read_only=True),
            Mount(CACHE_MOUNT, str(spec.cache_dir.resolve()), type="bind", read_only=True),
            Mount(OUT_MOUNT, str(run_dir / "out"), type="bind", read_only=False),
        ]
        if spec.compile_cache_dir:  # read-only: the runner gives the candidate a private copy
            mounts.append(
                Mount(COMPILE_CACHE_MOUNT, str(spec.compile_cache_dir.resolve()), type="bind", read_only=True)
            )
        device_requests = []
        if gpu.visible is not None:
            uuid_ = gpu_uuid(gpu)
            device_requests.append(DeviceRequest(device_ids=[uuid_], capabilities=[["gpu"]]))
            # inside, the one GPU is the only device: name it by UUID, never by the host's index
            gpu = GpuAssignment(index=gpu.index, uuid=uuid_)
        env = sandbox_env(
            spec,
            gpu,
            cache=CACHE_MOUNT,
            compile_cache=None,  # the runner points the candidate at its private copy
            home="/tmp",
        )
        env.pop("PATH", None)  # the host's PATH means nothing in the image: keep the image's (/opt/venv/bin first)
        # CUDA base images say NVIDIA_VISIBLE_DEVICES=all; where dockerd's default runtime is nvidia, that
        # alone would show every GPU to a CPU-only experiment. Name the one GPU, or none ("void").
        env["NVIDIA_VISIBLE_DEVICES"] = gpu.uuid or "void"
        cpus = cpu_quota(spec)
        memory = f"{limits.memory_mb}m"
        file_bytes = limits.file_mb * 1024**2
        config: dict[str, Any] = dict(
            image=self.image or spec.image,
            entrypoint=["python"],
            command=runner_args(spec, f"{CANDIDATE_MOUNT}/train.py", OUT_MOUNT, candidate_uid=CANDIDATE_UID,
                                scratch="/tmp", compile_cache=COMPILE_CACHE_MOUNT if spec.compile_cache_dir else None),
            environment=env,
            user=self.user,
            working_dir="/tmp",
            hostname="experiment",
            labels={
                ROLE_LABEL: ROLE,
                EXPERIMENT_LABEL: spec.experiment_id,
                **({OWNER_LABEL: spec.owner or self.owner} if spec.owner or self.owner else {}),
            },
            network_mode="none",
            read_only=True,
            tmpfs={"/tmp": f"rw,nosuid,nodev,size={self.tmpfs_mb or limits.disk_mb}m,mode=1777"},
            cap_drop=["ALL"],
            cap_add=RUNNER_CAPS,
            security_opt=["no-new-privileges"],
            pids_limit=limits.pids,
            mem_limit=memory,
            memswap_limit=memory,  # no swap on top of the memory limit
            oom_score_adj=500,  # under host memory pressure an experiment dies before the farm
            shm_size=limits.shm_mb * 1024**2,
            ipc_mode="private",
            ulimits=[Ulimit(name="fsize", soft=file_bytes, hard=file_bytes), Ulimit(name="core", soft=0, hard=0)],
            init=True,  # a real PID 1 reaps orphans; when the runner exits every process goes with it
            mounts=mounts,
            device_requests=device_requests,
            log_config=LogConfig(type="json-file", config={"max-size": "1m", "max-file": "1"}),
            stdin_open=False,
            tty=False,
            detach=True,
        )
        if cpus:
            config["nano_cpus"] = int(cpus * 1e9)
        return config

    def run(self, spec: ExperimentSpec, gpu: GpuAssignment) -> ExperimentResult:
        """Run one experiment in a fresh container; it is removed whatever happens, interrupts included."""
        self._require_image(self.image or spec.image)
        if not spec.cache_dir.is_dir():
            raise SandboxError(
                f"the data cache {spec.cache_dir} does not exist: run `farm prepare --profile {spec.profile}`"
            )
        config = self.container_config(spec, gpu)  # before staging: a GPU that is not visible fails here
        attempt = uuid.uuid4().hex[:12]
        config["labels"][RUN_LABEL] = attempt
        config["name"] = f"farm-{spec.experiment_id}-{attempt[:6]}"
        self._remove_earlier_attempts(config["labels"])  # a retried task: its lost attempt may still run
        _, out = stage(spec)
        if spec.compile_cache_dir:
            shared_dir(spec.compile_cache_dir)
        started = time.time()
        container = None
        killed, exit_code, note, oom = False, None, "", False
        try:
            container = self._create(config)
            container.start()
            exit_code, killed, note = self._wait(container, spec.wall_limit() + OUTER_KILL_GRACE)
            if killed or not (out / RESULT_FILE).exists():
                oom, logs = self._post_mortem(container, out)
                note = " ".join(filter(None, [note, logs]))
        finally:
            self._remove(container, attempt)
        result = collect(spec, out, started, killed=killed, exit_code=exit_code, note=note)
        merge_published_cache(spec, out, result)
        if oom and result.status == Status.ERROR:  # the runner itself was OOM-killed: the candidate's doing
            result.status = Status.OOM
            result.reason = f"out of memory: the container hit its {spec.limits.memory_mb} MB limit"
        return result

    def cleanup_leftovers(self) -> int:
        """Remove the experiment containers an earlier farm (or `farm try`, by owner) left; returns how many."""
        removed = 0
        labels = [f"{ROLE_LABEL}={ROLE}"] + ([f"{OWNER_LABEL}={self.owner}"] if self.owner else [])
        for container in self.client.containers.list(all=True, filters={"label": labels}):
            try:
                container.remove(force=True)
                removed += 1
            except Exception as exc:  # already gone (NotFound) or being removed (409): not ours to count
                if getattr(getattr(exc, "response", None), "status_code", None) not in (404, 409):
                    raise
        return removed

    # -- helpers ---------------------------------------------------------------------------

    def _remove_earlier_attempts(self, labels: dict[str, str]) -> None:
        """This owner's containers of this experiment (another farm's e0001 is not ours to remove)."""
        mine = [f"{k}={labels[k]}" for k in (ROLE_LABEL, EXPERIMENT_LABEL, OWNER_LABEL) if k in labels]
        for container in self.client.containers.list(all=True, filters={"label": mine}):
            self._remove(container, "")

    def _require_image(self, image: str) -> None:
        if image in self._images_ok:
            return
        import docker.errors

        try:
            self.client.images.get(image)
        except docker.errors.ImageNotFound:
            raise SandboxError(
                f"the image {image} is not on the Docker Engine: run `make images` (builds the trainer image "
                "offline; see README 'Docker sandbox')"
            ) from None
        except docker.errors.APIError as exc:
            raise SandboxError(f"cannot inspect the image {image}: {_short(exc)}") from exc
        self._images_ok.add(image)

    def _create(self, config: dict[str, Any]):
        import docker.errors

        try:
            return self.client.containers.create(**config)
        except docker.errors.ImageNotFound:
            self._images_ok.discard(config["image"])
            raise SandboxError(
                f"the image {config['image']} is gone from the Docker Engine: run `make images`"
            ) from None
        except docker.errors.APIError as exc:
            text = _short(exc)
            if config.get("device_requests") and ("device driver" in text or "nvidia" in text.lower()):
                raise SandboxError(
                    f"the Docker Engine cannot give the container a GPU ({text}): install the NVIDIA Container "
                    "Toolkit and restart dockerd, or use --sandbox process"
                ) from exc
            raise SandboxError(f"the Docker Engine refused the experiment container: {text}") from exc

    def _wait(self, container, limit: float) -> tuple[int | None, bool, str]:
        """(exit code, killed, note): waits at most ``limit`` seconds, then kills."""
        import requests

        deadline = time.monotonic() + limit
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                try:
                    container.kill()
                except Exception:
                    pass  # it ended on its own meanwhile; it is removed (force) either way
                return None, True, ""
            asked = min(remaining, 300.0)
            t0 = time.monotonic()
            try:
                status = container.wait(timeout=asked)
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                if time.monotonic() - t0 < asked * 0.9:
                    time.sleep(1.0)  # the engine hiccupped (not our timeout): ask again until the deadline
                continue
            error = (status.get("Error") or {}).get("Message") or ""
            return status.get("StatusCode"), False, error

    def _post_mortem(self, container, out: Path) -> tuple[bool, str]:
        """(OOM-killed, note) when there is no result: the container's own last output, also kept in out/."""
        oom, notes = False, []
        try:
            container.reload()
            oom = bool(container.attrs.get("State", {}).get("OOMKilled"))
            if oom:
                notes.append("the container ran out of memory;")
            logs = container.logs(stdout=True, stderr=True, tail=200)[-CONTAINER_LOG_BYTES:]
            if logs:
                write_bytes(out / "container.log", logs)  # out/ is the candidate's: never through its links
                notes.append(logs.decode("utf-8", "replace")[-2000:])
        except Exception as exc:  # the post-mortem must never hide the result
            notes.append(f"(no container state: {_short(exc)})")
        return oom, " ".join(notes)

    def _remove(self, container, attempt: str) -> None:
        """Remove the container (killing it if it still runs); also when create's handle was lost."""
        targets = [container] if container is not None else []
        if not targets:
            try:
                targets = self.client.containers.list(all=True, filters={"label": f"{RUN_LABEL}={attempt}"})
            except Exception:
                return  # the engine is gone; cleanup_leftovers finds it next time
        for c in targets:
            for attempt_no in range(3):
                try:
                    c.remove(force=True)
                    break
                except Exception as exc:
                    code = getattr(getattr(exc, "response", None), "status_code", None)
                    if code == 404:
                        break
                    if attempt_no == 2:
                        warnings.warn(
                            f"could not remove container {c.name}: {_short(exc)}; the farm's next start removes it",
                            stacklevel=2,
                        )
                    time.sleep(0.5)  # 409: removal already in progress; retry


def gpu_uuid(gpu: GpuAssignment) -> str:
    """The UUID of the assigned GPU (NVML via pynvml, else nvidia-smi); a SandboxError if it is not visible."""
    gpus = _host_gpus()
    if gpu.uuid:
        if gpus and gpu.uuid not in gpus.values():
            raise SandboxError(f"GPU {gpu.uuid} is not visible on this host (it has {_list(gpus)})")
        return gpu.uuid
    if not gpus:
        raise SandboxError(
            f"GPU {gpu.index} is not visible: no NVIDIA driver answers on this host (no NVML, no nvidia-smi)"
        )
    if gpu.index not in gpus:
        raise SandboxError(f"GPU {gpu.index} is not visible on this host (it has {_list(gpus)})")
    return gpus[gpu.index]


def _host_gpus() -> dict[int, str]:
    """{index: UUID} of the host's GPUs in NVML order (nvidia-smi's indices); {} without a driver."""
    try:
        import pynvml
    except ImportError:
        pynvml = None
    if pynvml is not None:
        try:
            pynvml.nvmlInit()
            try:
                found = {}
                for i in range(pynvml.nvmlDeviceGetCount()):
                    uid = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i))
                    found[i] = uid.decode() if isinstance(uid, bytes) else uid
                return found
            finally:
                pynvml.nvmlShutdown()
        except Exception:
            pass  # no driver behind NVML: try nvidia-smi
    smi = shutil.which("nvidia-smi")
    if not smi:
        return {}
    try:
        out = subprocess.run(
            [smi, "--query-gpu=index,uuid", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    found = {}
    for line in out.stdout.splitlines() if out.returncode == 0 else []:
        index, _, uid = line.partition(",")
        if index.strip().isdigit() and uid.strip():
            found[int(index)] = uid.strip()
    return found


def _list(gpus: dict[int, str]) -> str:
    return ", ".join(f"{i}={u}" for i, u in sorted(gpus.items())) or "no GPUs"


def _address(client: Any) -> str:
    api = getattr(client, "api", None)
    socket = getattr(getattr(api, "_custom_adapter", None), "socket_path", None)
    if socket:
        return f"unix://{socket}"
    return str(getattr(api, "base_url", None) or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else exc.__class__.__name__)[:300]
