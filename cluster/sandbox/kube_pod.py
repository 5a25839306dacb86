"""What the kubernetes sandbox asks the API for: its settings, the experiment Pod and the candidate ConfigMap.

Pure functions from (spec, GPU, settings) to manifests, so that every
restriction can be read, tested and schema-validated without a cluster.

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

from cluster.sandbox.base import CACHE_MOUNT, CANDIDATE_MOUNT, OUTER_KILL_GRACE, runner_args, sandbox_env
from cluster.spec import ExperimentSpec, GpuAssignment, KubernetesSettings
from trainer.profiles import get_profile

ROLE_LABEL = "autoresearch-farm/role"
ROLE = "experiment"
INSTANCE_LABEL = "autoresearch-farm/instance"  # the farm (Helm release) that owns it: cleanup stays in its lane
EXPERIMENT_LABEL = "autoresearch-farm/experiment"
RUN_LABEL = "autoresearch-farm/run"  # unique per attempt
CONTAINER = "experiment"
SANDBOX_UID = 65534  # nobody: the group of every experiment pod, and the uid of the farm's own pods
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
# (RLIMIT_NPROC, soft = hard, so nothing below can raise it; root would ignore it, the pod is never root), runs
# the runner, then prints its run.log tail and result.json base64 in 76-character lines between markers (never
# mistaken for the candidate's own output).
IN_POD = f"""\
import base64, os, resource, subprocess, sys
pids = int(sys.argv[1])
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


def pod_manifest(
    spec: ExperimentSpec, gpu: GpuAssignment, settings: KubernetesSettings, name: str, configmap: str, attempt: str
) -> dict:
    """The experiment Pod: every restriction of the sandbox is in here."""
    profile = get_profile(spec.profile)
    limits = spec.limits
    want_gpu = settings.wants_gpu(spec.profile)
    env = sandbox_env(spec, gpu, cache=CACHE_MOUNT, compile_cache=None, home="/tmp")
    env.pop("PATH", None)  # the host's PATH means nothing in the image
    if want_gpu:
        env.pop("CUDA_VISIBLE_DEVICES", None)  # the device plugin shows the pod exactly its one GPU
    else:
        env.update(CUDA_VISIBLE_DEVICES="", NVIDIA_VISIBLE_DEVICES="void")  # none, even on an nvidia runtime
    env["PYTHONUNBUFFERED"] = "1"
    env.update(USER="experiment", LOGNAME="experiment")  # the pod's uid has no passwd entry; getpass reads these
    cpus = limits.cpus or (profile.torch_threads and profile.torch_threads + RUNNER_CPU_SLACK)
    resources: dict[str, str] = {"memory": f"{limits.memory_mb}Mi"}
    if cpus:
        resources["cpu"] = f"{math.ceil(cpus * 1000)}m"
    if want_gpu:
        resources[settings.gpu_resource] = "1"
    cache_mount = {"name": "cache", "mountPath": CACHE_MOUNT, "readOnly": True}
    if settings.cache_sub_path:
        cache_mount["subPath"] = settings.cache_sub_path
    uid = sandbox_uid(attempt)
    container = {
        "name": CONTAINER,
        "image": spec.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["python", "-c", IN_POD, str(pids_limit(spec, settings))],
        "args": runner_args(spec, f"{CANDIDATE_MOUNT}/train.py", OUT_DIR),
        "workingDir": "/tmp",
        "env": [{"name": k, "value": v} for k, v in sorted(env.items())],
        "resources": {"limits": dict(resources), "requests": dict(resources)},  # Guaranteed when a CPU limit is set
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": uid,
            "runAsGroup": SANDBOX_UID,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": "candidate", "mountPath": CANDIDATE_MOUNT, "readOnly": True},
            cache_mount,
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "shm", "mountPath": "/dev/shm"},
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "stdin": False,
        "tty": False,
    }
    pod_spec: dict = {
        "restartPolicy": "Never",
        "activeDeadlineSeconds": deadline_seconds(spec, settings),
        "automountServiceAccountToken": False,  # the API is never the candidate's business
        "enableServiceLinks": False,  # no *_SERVICE_HOST variables: nothing about the cluster leaks in
        "hostNetwork": False,
        "hostPID": False,
        "hostIPC": False,
        "shareProcessNamespace": False,
        "hostname": "experiment",
        "terminationGracePeriodSeconds": 5,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": uid,
            "runAsGroup": SANDBOX_UID,
            "fsGroup": SANDBOX_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "candidate", "configMap": {"name": configmap, "defaultMode": 0o444}},
            {"name": "cache", "persistentVolumeClaim": {"claimName": settings.cache_pvc, "readOnly": True}},
            {"name": "tmp", "emptyDir": {"sizeLimit": f"{settings.tmp_mb}Mi"}},
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{limits.shm_mb}Mi"}},
        ],
    }
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
