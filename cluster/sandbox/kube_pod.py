"""What the kubernetes sandbox asks the API for: its settings, the experiment Pod and the candidate ConfigMap.

Pure functions from (spec, GPU, settings) to manifests, so that every
restriction can be read, tested and schema-validated without a cluster.

The pod separates the candidate from its judge with two containers, because
nothing in a pod under Pod Security "restricted" may be root (the docker and
process sandboxes start the runner as root and drop to another user for the
candidate). The ``runner`` container (the farm's uid, which owns the data
cache, so it alone reads the validation shard) runs the runner and the
trusted evaluator; the ``candidate`` container runs as a uid of its own per
attempt, with trainer.exchange's launcher as PID 1. They share one emptyDir,
the exchange, where the runner listens on a Unix socket and the candidate
hands its model over; each has its own /tmp, so the runner's out dir is not
even visible to the candidate. A GPU profile needs the GPU in both
containers (the candidate trains on it, the evaluator scores on it): a
Dynamic Resource Allocation claim shared by both (``gpu_claim_template``).
Without one, a GPU pod falls back to one container where the candidate runs
as the runner's user: its verdicts are not forgery-proof, and the backend
says so.

The candidate crosses into the pod as a ConfigMap mounted read-only at
/candidate (like the docker backend's read-only bind mount): no writable
shared volume, no exec-argument size limit, the source never in the pod spec.
The result crosses back in the pod's log: ``IN_POD`` caps the processes of
the pod's user (RLIMIT_NPROC), runs the runner, then
prints the tail of run.log and result.json base64-encoded between markers,
which ``parse_log`` reads back (the last block wins). Short lines, because
the container runtime splits long ones and the log API's tailLines counts
the pieces.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re

from cluster.execution.spec import ExperimentSpec, GpuAssignment, KubernetesSettings
from cluster.sandbox.base import CACHE_MOUNT, CANDIDATE_MOUNT, OUTER_KILL_GRACE, runner_args, sandbox_env
from trainer.profiles import get_profile

ROLE_LABEL = "autoresearch-farm/role"
ROLE = "experiment"
INSTANCE_LABEL = "autoresearch-farm/instance"  # the farm (Helm release) that owns it: cleanup stays in its lane
EXPERIMENT_LABEL = "autoresearch-farm/experiment"
RUN_LABEL = "autoresearch-farm/run"  # unique per attempt
CONTAINER = "experiment"  # the single container of a pod that cannot separate (a GPU without a shared claim)
RUNNER_CONTAINER, CANDIDATE_CONTAINER = "runner", "candidate"  # a separated pod's: the first one's log has the result
EXCHANGE_MOUNT = "/exchange"  # shared by the two containers: the runner's socket, the candidate's work dir
GPU_CLAIM = "gpu"  # the pod's ResourceClaim both containers use
# nobody: the uid of the farm's own pods (the owner of the data cache), so the runner's in a separated pod, and the
# group of a single-container pod
SANDBOX_UID = 65534
# Each experiment pod runs as its own uid from this range (from the attempt id): RLIMIT_NPROC counts every
# process of a uid on the node, so a shared uid (65534 is also the farm's, and often other tenants') would make
# one pod's limit depend on its neighbours; distinct uids also keep experiments on one node apart (signals, /proc).
UID_BASE, UID_SPAN = 200_000, 1_000_000
OUT_DIR = "/tmp/out"  # inside the pod: an emptyDir, gone with the pod; the result leaves through the log
RUNNER_CPU_SLACK = 0.25  # as in the docker backend: the trusted runner's own threads
CONFIGMAP_MAX_BYTES = 900 * 1024  # the API server refuses objects past ~1 MiB
LOG_TAIL_BYTES = 128 * 1024  # how much of run.log the pod prints back
LOG_MARK, RESULT_MARK, END_MARK = "@@farm-run-log@@", "@@farm-result@@", "@@farm-end@@"

# Runs in the pod as `python -c IN_POD <pids> <runner args>`: caps the processes and threads of the pod's uid
# (RLIMIT_NPROC, soft = hard, so nothing below can raise it; root would ignore it, the pod is never root; 0: no cap,
# in a separated pod, whose launcher caps the candidate's uid instead), runs
# the runner, then prints its run.log tail and result.json base64 in 76-character lines between markers (never
# mistaken for the candidate's own output).
IN_POD = f"""\
import base64, os, resource, subprocess, sys
pids = int(sys.argv[1])
if pids:
    resource.setrlimit(resource.RLIMIT_NPROC, (pids, pids))
rc = subprocess.call([sys.executable] + sys.argv[2:])
out = sys.argv[sys.argv.index("--out") + 1]
for mark, name, keep in (({LOG_MARK!r}, "run.log", {LOG_TAIL_BYTES}), ({RESULT_MARK!r}, "result.json", None)):
    try:
        with open(os.path.join(out, name), "rb") as f:
            data = f.read()
    except OSError:
        continue
    text = base64.b64encode(data[-keep:] if keep else data).decode()
    print(mark, flush=True)
    for i in range(0, len(text), 76):
        print(text[i:i + 76])
    print({END_MARK!r}, flush=True)
sys.exit(rc)
"""


def dns_name(text: str, limit: int = 63) -> str:
    """A valid DNS-1123 label (names) from an experiment id."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:limit].strip("-")
    return name or "x"


def label_value(text: str) -> str:
    """A valid label value: [A-Za-z0-9_.-], at most 63, starting and ending alphanumeric."""
    value = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", value)


def labels(settings: KubernetesSettings, spec: ExperimentSpec, attempt: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "autoresearch-farm",
        "app.kubernetes.io/component": ROLE,
        "app.kubernetes.io/managed-by": "autoresearch-farm",
        ROLE_LABEL: ROLE,
        INSTANCE_LABEL: label_value(settings.instance) or "farm",
        EXPERIMENT_LABEL: label_value(spec.experiment_id),
        RUN_LABEL: attempt,
    }


def sandbox_uid(attempt: str) -> int:
    """The experiment pod's own uid, from its attempt id: RLIMIT_NPROC is per uid and node, so the pids cap holds
    per pod only when no other pod on the node shares the uid (two given pods do with odds of one in a million)."""
    return UID_BASE + int(hashlib.sha256(attempt.encode()).hexdigest()[:12], 16) % UID_SPAN


def pids_limit(spec: ExperimentSpec, settings: KubernetesSettings) -> int:
    """RLIMIT_NPROC of the experiment pod: the setting, else the spec's limits.pids (the docker sandbox's pids)."""
    return settings.pids or spec.limits.pids


def deadline_seconds(spec: ExperimentSpec, settings: KubernetesSettings) -> int:
    """activeDeadlineSeconds: the kubelet's own backstop.

    Its clock starts when the pod is accepted on a node, before the image is
    pulled, so it is the wall limit plus the sandbox's grace plus the start
    allowance; the sandbox itself kills at wall limit + grace after the
    container starts running.
    """
    return math.ceil(spec.wall_limit() + OUTER_KILL_GRACE + settings.start_timeout_s)


def configmap_manifest(spec: ExperimentSpec, settings: KubernetesSettings, name: str, attempt: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels(settings, spec, attempt)},
        "data": {"train.py": spec.train_py},
        "immutable": True,
    }


def separated(spec: ExperimentSpec, settings: KubernetesSettings) -> bool:
    """Whether the experiment's pod runs the candidate in a container of its own (see the module's docstring)."""
    return not settings.wants_gpu(spec.profile) or bool(settings.gpu_claim_template)


def _locked(uid: int) -> dict:
    """A container's securityContext: its own user and group, nothing to gain, nothing to write but its volumes."""
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_manifest(
    spec: ExperimentSpec, gpu: GpuAssignment, settings: KubernetesSettings, name: str, configmap: str, attempt: str
) -> dict:
    """The experiment Pod: every restriction of the sandbox is in here."""
    profile = get_profile(spec.profile)
    limits = spec.limits
    want_gpu = settings.wants_gpu(spec.profile)
    split = separated(spec, settings)
    env = sandbox_env(spec, gpu, cache=CACHE_MOUNT, compile_cache=None, home="/tmp")
    env.pop("PATH", None)  # the host's PATH means nothing in the image
    if want_gpu:
        env.pop("CUDA_VISIBLE_DEVICES", None)  # the device plugin or the claim shows the pod exactly its one GPU
    else:
        env.update(CUDA_VISIBLE_DEVICES="", NVIDIA_VISIBLE_DEVICES="void")  # none, even on an nvidia runtime
    env["PYTHONUNBUFFERED"] = "1"
    env.update(USER="experiment", LOGNAME="experiment")  # the pod's uid has no passwd entry; getpass reads these
    env_list = [{"name": k, "value": v} for k, v in sorted(env.items())]
    cpus = limits.cpus or (profile.torch_threads and profile.torch_threads + RUNNER_CPU_SLACK)
    resources: dict[str, str] = {"memory": f"{limits.memory_mb}Mi"}
    if cpus:
        resources["cpu"] = f"{math.ceil(cpus * 1000)}m"
    if want_gpu and not settings.gpu_claim_template:
        resources[settings.gpu_resource] = "1"
    cache_mount = {"name": "cache", "mountPath": CACHE_MOUNT, "readOnly": True}
    if settings.cache_sub_path:
        cache_mount["subPath"] = settings.cache_sub_path
    uid = sandbox_uid(attempt)
    common = {
        "image": spec.image,
        "imagePullPolicy": settings.image_pull_policy,
        "workingDir": "/tmp",
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "stdin": False,
        "tty": False,
    }
    candidate_mount = {"name": "candidate", "mountPath": CANDIDATE_MOUNT, "readOnly": True}
    shm_mount = {"name": "shm", "mountPath": "/dev/shm"}
    if split:
        claims = {"claims": [{"name": GPU_CLAIM}]} if want_gpu else {}
        runner_limits = dict(resources)
        runner_requests = dict(resources, cpu=f"{math.ceil(RUNNER_CPU_SLACK * 1000)}m") if cpus else dict(resources)
        containers = [
            {  # first: the result comes back in its log
                "name": RUNNER_CONTAINER,
                **common,
                "command": ["python", "-c", IN_POD, "0"],
                "args": runner_args(spec, f"{CANDIDATE_MOUNT}/train.py", OUT_DIR)
                + ["--exchange", EXCHANGE_MOUNT, "--pids", str(pids_limit(spec, settings))],
                "env": env_list,  # the runner passes it on to the candidate (it holds nothing secret)
                # it evaluates the candidate's model while the candidate waits: the same memory, the CPU it then uses
                "resources": {"limits": runner_limits, "requests": runner_requests, **claims},
                "securityContext": _locked(SANDBOX_UID),
                "volumeMounts": [candidate_mount, cache_mount, {"name": "runner-tmp", "mountPath": "/tmp"},
                                 {"name": "exchange", "mountPath": EXCHANGE_MOUNT}],  # fmt: skip
            },
            {
                "name": CANDIDATE_CONTAINER,
                **common,
                "command": ["python", "-m", "trainer.exchange", EXCHANGE_MOUNT],
                "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}, {"name": "HOME", "value": "/tmp"}],
                "resources": {"limits": dict(resources), "requests": dict(resources), **claims},
                "securityContext": _locked(uid),
                "volumeMounts": [candidate_mount, cache_mount, {"name": "tmp", "mountPath": "/tmp"},
                                 {"name": "exchange", "mountPath": EXCHANGE_MOUNT}, shm_mount],  # fmt: skip
            },
        ]
        # No fsGroup: it would add its group to the candidate's user too. The cache belongs to the farm's uid (the
        # runner's) and only the validation shard is closed to others; the emptyDirs are open to both containers.
        pod_security: dict = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
        volumes = [
            {"name": "runner-tmp", "emptyDir": {"sizeLimit": f"{settings.tmp_mb}Mi"}},
            {"name": "exchange", "emptyDir": {"sizeLimit": f"{settings.tmp_mb}Mi"}},
        ]
    else:
        containers = [
            {
                "name": CONTAINER,
                **common,
                "command": ["python", "-c", IN_POD, str(pids_limit(spec, settings))],
                "args": runner_args(spec, f"{CANDIDATE_MOUNT}/train.py", OUT_DIR),
                "env": env_list,
                "resources": {"limits": dict(resources), "requests": dict(resources)},  # Guaranteed with a CPU limit
                "securityContext": {**_locked(uid), "runAsGroup": SANDBOX_UID},
                "volumeMounts": [candidate_mount, cache_mount, {"name": "tmp", "mountPath": "/tmp"}, shm_mount],
            }
        ]
        pod_security = {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": SANDBOX_UID, "fsGroup": SANDBOX_UID,
                        "seccompProfile": {"type": "RuntimeDefault"}}  # fmt: skip
        volumes = []
    pod_spec: dict = {
        "restartPolicy": "Never",
        "activeDeadlineSeconds": deadline_seconds(spec, settings),
        "automountServiceAccountToken": False,  # the API is never the candidate's business
        "enableServiceLinks": False,  # no *_SERVICE_HOST variables: nothing about the cluster leaks in
        "hostNetwork": False,
        "hostPID": False,
        "hostIPC": False,
        "shareProcessNamespace": False,  # each container its own PID 1: the launcher is out of the candidate's reach
        "hostname": "experiment",
        "terminationGracePeriodSeconds": 5,
        "securityContext": pod_security,
        "containers": containers,
        "volumes": [
            {"name": "candidate", "configMap": {"name": configmap, "defaultMode": 0o444}},
            {"name": "cache", "persistentVolumeClaim": {"claimName": settings.cache_pvc, "readOnly": True}},
            {"name": "tmp", "emptyDir": {"sizeLimit": f"{settings.tmp_mb}Mi"}},
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{limits.shm_mb}Mi"}},
            *volumes,
        ],
    }
    if split and want_gpu:
        pod_spec["resourceClaims"] = [{"name": GPU_CLAIM, "resourceClaimTemplateName": settings.gpu_claim_template}]
    if settings.service_account:
        pod_spec["serviceAccountName"] = settings.service_account
    if settings.runtime_class:
        pod_spec["runtimeClassName"] = settings.runtime_class
    if settings.node_selector:
        pod_spec["nodeSelector"] = dict(settings.node_selector)
    if settings.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in settings.tolerations]
    if settings.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in settings.image_pull_secrets]
    if settings.priority_class:
        pod_spec["priorityClassName"] = settings.priority_class
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels(settings, spec, attempt)},
        "spec": pod_spec,
    }


def parse_log(text: str) -> tuple[bytes | None, bytes | None, str]:
    """(run.log tail, result.json, the log without the encoded blocks) from an experiment pod's log."""
    blocks: dict[str, bytes] = {}
    plain: list[str] = []
    current: str | None = None
    chunk: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if current is None and stripped in (LOG_MARK, RESULT_MARK):
            current, chunk = stripped, []
        elif current is not None and stripped == END_MARK:
            try:
                blocks[current] = base64.b64decode("".join(chunk), validate=True)
            except ValueError:
                pass  # a damaged block counts as none
            current = None
        elif current is not None:
            chunk.append(stripped)
        else:
            plain.append(line)
    return blocks.get(LOG_MARK), blocks.get(RESULT_MARK), "\n".join(plain)
