"""The kubernetes sandbox: one locked-down Pod per experiment, through the Kubernetes API.

The Ray task that calls ``run`` holds a logical GPU slot (the chart gives the
Ray head as many as the GPU quota allows); the Pod holds the real GPU
(``nvidia.com/gpu: 1``), so a GPU is never booked twice. Restrictions are in
kube_pod.pod_manifest: two containers, the trusted runner's (the farm's uid)
and the candidate's (a uid of its own; see kube_pod), no privilege escalation,
no capabilities, seccomp RuntimeDefault (the pod passes Pod Security
"restricted"), read-only root, a ServiceAccount without rights and no token
mounted, no service links, RLIMIT_NPROC on its uid, the data cache from a PVC
read-only, an optional RuntimeClass (gVisor). The chart puts the pods in a
namespace of their own (no Secret in it, PSA ``restricted`` enforced), where
its NetworkPolicy denies all traffic to and from pods with the role label.

Lifecycle: ConfigMap (the candidate) and Pod created; the pod polled with
backoff; killed at the wall limit + grace after it starts running (the
kubelet's activeDeadlineSeconds is the backstop); its log read (bounded) and
the result block in it written to the run's out dir as the docker backend's
bind mount would have; Pod and ConfigMap deleted in every outcome, interrupts
included. ``cleanup_leftovers`` deletes by label what a crashed farm left.
"""

from __future__ import annotations

import time
import uuid
import warnings

from cluster.execution.spec import ExperimentSpec, GpuAssignment
from cluster.sandbox.base import OUTER_KILL_GRACE, SandboxError, collect, no_result, stage
from cluster.sandbox.kube_api import KubeApiError, KubeClient
from cluster.sandbox.kube_pod import (
    CONFIGMAP_MAX_BYTES,
    EXPERIMENT_LABEL,
    INSTANCE_LABEL,
    ROLE,
    ROLE_LABEL,
    KubernetesSettings,
    configmap_manifest,
    dns_name,
    label_value,
    parse_log,
    pod_manifest,
    separated,
)
from trainer.result import LOG_FILE, RESULT_FILE, ExperimentResult, Status

# Waiting reasons that never resolve by themselves: the run is an error at once.
FATAL_WAITING = {"InvalidImageName", "CreateContainerConfigError", "CreateContainerError", "ErrImageNeverPull"}
LOG_TAIL_LINES = 6000  # the encoded blocks are at most ~2.4k lines; the rest is the runner's own last words
LOG_LIMIT_BYTES = 2 * 1024**2


class KubernetesSandbox:
    """``Sandbox`` on Kubernetes: ``run(spec, gpu)`` in a fresh Pod, always deleted."""

    name = "kubernetes"

    def __init__(
        self,
        settings: KubernetesSettings | None = None,
        client: KubeClient | None = None,
        *,
        env: dict[str, str] | None = None,
        **fields: object,
    ) -> None:
        """``settings`` (the farm's config, or the experiment spec's), else the defaults; checks the API answers.

        ``env`` is only where the in-cluster API address is looked up (KUBERNETES_SERVICE_HOST)."""
        if settings is None:
            settings = KubernetesSettings()
        if fields:
            settings = settings.model_copy(update=KubernetesSettings.model_validate(fields).model_dump(
                exclude_unset=True))  # fmt: skip
        self.settings = settings
        self._warned = False
        self.client = client or KubeClient.from_settings(settings, env)
        self.client.list("pods", self._selector())  # 401/403/unreachable: a SandboxError now, not mid-run

    def _selector(self, experiment_id: str | None = None) -> str:
        selector = f"{ROLE_LABEL}={ROLE},{INSTANCE_LABEL}={label_value(self.settings.instance) or 'farm'}"
        return selector + (f",{EXPERIMENT_LABEL}={label_value(experiment_id)}" if experiment_id else "")

    def pod_manifest(self, spec: ExperimentSpec, gpu: GpuAssignment, attempt: str = "0" * 12) -> dict:
        name = self._name(spec, attempt)
        return pod_manifest(spec, gpu, self.settings, name, name + "-src", attempt)

    @staticmethod
    def _name(spec: ExperimentSpec, attempt: str) -> str:
        return f"farm-{dns_name(spec.experiment_id, 45)}-{attempt[:8]}"

    # -- one experiment --------------------------------------------------------------------

    def run(self, spec: ExperimentSpec, gpu: GpuAssignment) -> ExperimentResult:
        """Run one experiment in a fresh Pod; Pod and ConfigMap are deleted whatever happens."""
        started = time.time()
        attempt = uuid.uuid4().hex[:12]
        name = self._name(spec, attempt)
        pod = pod_manifest(spec, gpu, self.settings, name, name + "-src", attempt)
        source = configmap_manifest(spec, self.settings, name + "-src", attempt)
        if not separated(spec, self.settings) and not self._warned:
            self._warned = True
            warnings.warn(
                f"kubernetes sandbox: {spec.profile} needs a GPU and no gpu_claim_template is set, so the candidate "
                "runs in the runner's container as the runner's user: its verdicts are not forgery-proof. Set "
                "kubernetes.gpu_claim_template to a ResourceClaimTemplate (Dynamic Resource Allocation) so that the "
                "runner's and the candidate's containers share the GPU; see docs/trainer.md",
                stacklevel=2,
            )
        size = len(spec.train_py.encode())
        if size > CONFIGMAP_MAX_BYTES:
            return no_result(spec, started, Status.INVALID, f"train.py is {size} bytes, more than the "
                           f"{CONFIGMAP_MAX_BYTES} the kubernetes sandbox carries")  # fmt: skip
        self._remove(self._selector(spec.experiment_id))  # a retried task: its lost attempt may still run
        _, out = stage(spec)
        exit_code, killed, note, oom = None, False, "", False
        try:
            self.client.create("configmaps", source)
            self.client.create("pods", pod)
            result_container = pod["spec"]["containers"][0]["name"]
            exit_code, killed, note, oom = self._wait(name, spec, result_container)
            self._read_back(name, out, killed, result_container)
        finally:
            self._delete(name)
        result = collect(spec, out, started, killed=killed, exit_code=exit_code, note=note)
        if oom and result.status == Status.ERROR:  # the runner itself was OOM-killed: the candidate's doing
            result.status = Status.OOM
            result.reason = f"out of memory: the pod hit its {spec.limits.memory_mb} Mi limit"
        elif result.status == Status.ERROR and _evicted_for_disk(note):  # it filled its own scratch: its doing
            result.status = Status.CRASH
            result.reason = f"evicted by the kubelet for the disk it used (limit {self.settings.tmp_mb} Mi): {note}"
        return result

    def _wait(self, name: str, spec: ExperimentSpec, container: str) -> tuple[int | None, bool, str, bool]:
        """(exit code, killed, note, OOM-killed) of ``container``, the one whose log carries the result; polls with
        backoff, kills past the wall limit. Done when it has ended: the candidate's container, if any, is killed
        with the pod."""
        limit = spec.wall_limit() + OUTER_KILL_GRACE
        created = time.monotonic()
        running_since: float | None = None
        pause = 0.1
        while True:
            try:
                pod = self.client.get("pods", name)
            except KubeApiError as exc:
                if exc.code == 404:
                    return None, False, "the experiment pod vanished (deleted or evicted by someone else)", False
                raise
            status = pod.get("status") or {}
            phase = status.get("phase") or "Pending"
            state = _container_state(status, container)
            now = time.monotonic()
            if phase in ("Succeeded", "Failed") or "terminated" in state:
                done = state.get("terminated") or {}
                oom = done.get("reason") == "OOMKilled"
                if status.get("reason") == "DeadlineExceeded":
                    return done.get("exitCode"), True, "killed by the kubelet at activeDeadlineSeconds", oom
                note = " ".join(filter(None, [status.get("reason"), status.get("message"), done.get("message")]))
                return done.get("exitCode"), False, note[-2000:], oom
            if phase == "Running" or "running" in state:
                running_since = running_since or now
                if now - running_since > limit:
                    return None, True, "", False  # logs first; the caller deletes the pod (the kill)
            else:
                waiting = state.get("waiting") or {}
                why = _unscheduled(status) or waiting.get("reason")
                if waiting.get("reason") in FATAL_WAITING:
                    return None, False, f"the experiment pod cannot start: {why}: {waiting.get('message', '')}", False
                if now - created > self.settings.start_timeout_s:
                    detail = (why or phase) + (f": {waiting['message']}" if waiting.get("message") else "")
                    note = f"the experiment pod did not start within {self.settings.start_timeout_s:g} s ({detail})"
                    return None, False, note, False
            time.sleep(pause)
            pause = min(pause * 1.5, self.settings.poll_max_s)

    def _read_back(self, name: str, out, killed: bool, container: str) -> None:
        """The runner's log (bounded): run.log and result.json into out/ as the runner wrote them inside."""
        try:
            text = self.client.log(name, container, tail_lines=LOG_TAIL_LINES, limit_bytes=LOG_LIMIT_BYTES)
        except SandboxError as exc:  # never started, or already gone: the result says there is none
            text = f"(no pod log: {str(exc)[:300]})"
        run_log, result, plain = parse_log(text)
        if run_log is not None:
            (out / LOG_FILE).write_bytes(run_log)
        if result is not None and not killed:
            (out / RESULT_FILE).write_bytes(result)
        if plain.strip():
            (out / "container.log").write_text(plain[-64 * 1024 :])
            if run_log is None:
                (out / LOG_FILE).write_text(plain[-64 * 1024 :])  # what collect shows as the log tail

    # -- clean-up --------------------------------------------------------------------------

    def _delete(self, name: str) -> None:
        """Delete the pod (the kill: no grace) and its ConfigMap; retried, then left to cleanup_leftovers."""
        for kind, obj in (("pods", name), ("configmaps", name + "-src")):
            for attempt in range(3):
                try:
                    self.client.delete(kind, obj)
                    break
                except SandboxError as exc:
                    if attempt == 2:
                        warnings.warn(f"could not delete {kind}/{obj}: {exc}; the farm's next start removes it",
                                      stacklevel=2)  # fmt: skip
                    else:
                        time.sleep(0.5)

    def _remove(self, selector: str) -> int:
        removed = 0
        for kind in ("pods", "configmaps"):
            for item in self.client.list(kind, selector):
                removed += self.client.delete(kind, item["metadata"]["name"])
        return removed

    def cleanup_leftovers(self) -> int:
        """Delete the experiment pods and ConfigMaps this farm instance left (by label); returns how many."""
        return self._remove(self._selector())


def _container_state(status: dict, container: str) -> dict:
    for cs in status.get("containerStatuses") or []:
        if cs.get("name") == container:
            return cs.get("state") or {}
    return {}


def _unscheduled(status: dict) -> str:
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return f"{cond.get('reason', 'Unschedulable')}: {cond.get('message', '')}".strip()
    return ""


__all__ = ["KubernetesSandbox", "KubernetesSettings", "SandboxError"]


def _evicted_for_disk(note: str) -> bool:
    """The kubelet evicted the pod because the experiment passed its own storage limits (the candidate's fault;
    an eviction for node pressure is not)."""
    return note.startswith("Evicted") and ("ephemeral local storage" in note or "EmptyDir volume" in note)
