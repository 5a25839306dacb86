"""A fake Kubernetes API server on 127.0.0.1 for the kubernetes sandbox's tests.

Speaks the real REST paths and JSON of the core/v1 pods, pods/log and
configmaps endpoints the backend uses (create, get, list by labelSelector,
delete, log with tailLines/limitBytes), answers errors as v1 Status objects
(401 without the right bearer token, 403 for forbidden kinds, 404, 409), and
records every request. A pod either *runs*: its containers' commands are
executed locally (the image's ``python`` is this interpreter, mount paths are
mapped onto local directories: ConfigMap volumes written out, PVCs from
``pvcs``, emptyDirs fresh and open to all), or runs in *docker*: each
container a real container of its image in the Docker Engine, as the
kubelet's container runtime would run it (its user, read-only root, no
capabilities, no network, its own PID namespace, the same local volumes
bind-mounted), or follows a *script* (phases, container states and a canned
log), or *hangs* in Running until deleted. activeDeadlineSeconds
is enforced like the kubelet does (phase Failed, reason DeadlineExceeded).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

REPO = Path(__file__).resolve().parent.parent
PATH_RE = re.compile(r"^/api/v1/namespaces/([^/]+)/(pods|configmaps)(?:/([^/]+))?(?:/(log))?$")


@dataclass
class Script:
    """What a pod does when it is not run for real: states over time, then a final one."""

    pending_s: float = 0.0  # in Pending (with ``waiting``) this long, then Running
    waiting: dict | None = None  # e.g. {"reason": "ContainerCreating"}; forever if pending_s is inf
    conditions: list[dict] = field(default_factory=list)  # status.conditions while pending
    run_s: float = float("inf")  # Running this long (inf: hang until deleted or the deadline)
    exit_code: int = 0
    reason: str = "Completed"  # terminated.reason, e.g. OOMKilled
    log: str = ""
    pod_reason: str = ""  # status.reason at the end, e.g. Evicted
    pod_message: str = ""  # status.message with it


class Pod:
    def __init__(self, server: FakeKube, obj: dict, script: Script | str | None = None) -> None:
        self.server, self.obj = server, obj
        self.created = time.monotonic()
        self.started: float | None = None
        self.logs: dict[str, bytes] = {}  # per container (a scripted pod's log is its first container's)
        self.exits: dict[str, int] = {}
        self.procs: list[subprocess.Popen] = []
        self.docker_names: list[str] = []
        self.workdir: Path | None = None
        self.final: dict | None = None  # {"phase", "exit_code", "reason", "pod_reason"}
        self.script = script or server.behaviour(obj)
        if self.script in ("run", "docker"):
            threading.Thread(target=self._run, args=(self.script == "docker",), daemon=True).start()

    @property
    def log(self) -> bytes:
        return self.logs.get(self.obj["spec"]["containers"][0]["name"], b"")

    # -- a real run ------------------------------------------------------------------------

    def _volumes(self) -> dict[str, Path]:
        """Each pod volume as a local directory, made the way the kubelet makes it (emptyDirs open to every user)."""
        local: dict[str, Path] = {}
        for vol in self.obj["spec"].get("volumes", []):
            path = self.workdir / vol["name"]
            if "configMap" in vol:
                cm = self.server.objects["configmaps"][vol["configMap"]["name"]]
                path.mkdir()
                for key, text in cm.get("data", {}).items():
                    (path / key).write_text(text)
                    (path / key).chmod(vol["configMap"].get("defaultMode", 0o644))
                path.chmod(0o755)
            elif "persistentVolumeClaim" in vol:
                path = Path(self.server.pvcs[vol["persistentVolumeClaim"]["claimName"]])
            else:
                path.mkdir()
                path.chmod(0o777)
            local[vol["name"]] = path
        return local

    def _run(self, docker: bool) -> None:
        """Every container at once, as a local process (``run``: this interpreter, mount paths mapped onto the
        local directories, as the test's own user) or as a real container of the trainer image in the Docker
        Engine (``docker``: its user, read-only root, no capabilities, no network, the volumes bind-mounted where
        the pod mounts them, and PID 1 of a PID namespace of its own, as the kubelet's runtime does)."""
        spec = self.obj["spec"]
        self.workdir = Path(tempfile.mkdtemp(prefix="fake-pod-"))
        self.workdir.chmod(0o755)
        volumes = self._volumes()
        threads = []
        for container in spec["containers"]:
            mounts: dict[str, tuple[str, bool]] = {}
            for m in container.get("volumeMounts", []):
                local = volumes[m["name"]] / m.get("subPath", "")
                mounts[m["mountPath"]] = (str(local), bool(m.get("readOnly")))
            argv = self._docker_argv(container, mounts) if docker else None
            threads.append(threading.Thread(target=self._container, args=(container, mounts, argv), daemon=True))
        self.started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if self.final is None:
            failed = [rc for rc in self.exits.values() if rc != 0]
            rc = failed[0] if failed else 0
            self.final = {"phase": "Failed" if failed else "Succeeded", "exit_code": rc,
                          "reason": "Error" if failed else "Completed"}  # fmt: skip

    def _docker_argv(self, container: dict, mounts: dict[str, tuple[str, bool]]) -> list[str]:
        sc, limits = container.get("securityContext", {}), container.get("resources", {}).get("limits", {})
        name = f"fake-kube-{uuid.uuid4().hex[:12]}"
        self.docker_names.append(name)
        argv = ["docker", "run", "--rm", "--name", name, "--network", "none", "--read-only", "--cap-drop", "ALL",
                "--security-opt", "no-new-privileges", "--user", f"{sc['runAsUser']}:{sc['runAsGroup']}",
                "--workdir", container.get("workingDir", "/"), "--pids-limit", "4096"]  # fmt: skip
        if "memory" in limits:
            argv += ["--memory", limits["memory"].replace("Mi", "m")]
        for path, (local, read_only) in mounts.items():
            if path == "/dev/shm":
                argv += ["--shm-size", "64m"]
            else:
                argv += ["-v", f"{local}:{path}" + (":ro" if read_only else "")]
        for e in container.get("env", []):
            argv += ["-e", f"{e['name']}={e['value']}"]
        return argv + ["--entrypoint", container["command"][0], container["image"], *container["command"][1:],
                       *container.get("args", [])]  # fmt: skip

    def _container(self, container: dict, mounts: dict[str, tuple[str, bool]], argv: list[str] | None) -> None:
        name = container["name"]
        env: dict[str, str] | None = None
        cwd = None
        if argv is None:
            def local_path(text: str) -> str:
                for mount in sorted(mounts, key=len, reverse=True):
                    if text == mount or text.startswith(mount + "/"):
                        return mounts[mount][0] + text[len(mount) :]
                return text

            argv = [sys.executable if container["command"][0] == "python" else container["command"][0]]
            argv += [local_path(a) for a in container["command"][1:] + container.get("args", [])]
            env = {e["name"]: local_path(e["value"]) for e in container.get("env", [])}
            env.update(PATH=os.environ.get("PATH", "/usr/bin:/bin"), PYTHONPATH=str(REPO))  # the image's own
            cwd = local_path(container.get("workingDir", "/tmp"))
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        self.procs.append(proc)
        self.logs[name] = b""
        for chunk in iter(lambda: proc.stdout.read1(65536), b""):
            self.logs[name] += chunk
        self.exits[name] = proc.wait()

    def kill(self) -> None:
        for name in self.docker_names:
            subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- what GET shows --------------------------------------------------------------------

    def status(self) -> dict:
        now = time.monotonic()
        deadline = self.obj["spec"].get("activeDeadlineSeconds")
        if self.final is None and deadline and now - self.created > deadline:
            self.kill()
            self.final = {"phase": "Failed", "exit_code": 137, "reason": "Error", "pod_reason": "DeadlineExceeded"}
        script = self.script
        if self.final is None and isinstance(script, Script):
            if now - self.created >= script.pending_s:
                self.started = self.started or self.created + script.pending_s
                self.logs[self.obj["spec"]["containers"][0]["name"]] = script.log.encode()
                if now - self.started >= script.run_s:
                    phase = "Succeeded" if script.exit_code == 0 else "Failed"
                    self.final = {"phase": phase, "exit_code": script.exit_code, "reason": script.reason,
                                  "pod_reason": script.pod_reason, "pod_message": script.pod_message}
            else:
                unscheduled = {} if script.conditions else {"waiting": {"reason": "ContainerCreating"}}
                return self._status("Pending", {"waiting": script.waiting} if script.waiting else unscheduled,
                                    script.conditions)  # fmt: skip
        if self.final:
            f = self.final
            done = {"terminated": {"exitCode": f["exit_code"], "reason": f["reason"]}}
            out = self._status(f["phase"], done, [])
            if f.get("pod_reason"):
                out.update(reason=f["pod_reason"], message=f.get("pod_message")
                           or "Pod was active on the node longer than specified deadline")
            return out
        if self.started is None:
            return self._status("Pending", {"waiting": {"reason": "ContainerCreating"}}, [])
        return self._status("Running", {"running": {"startedAt": "2026-11-27T00:00:00Z"}}, [])

    def _status(self, phase: str, state: dict, conditions: list) -> dict:
        if not state:  # not scheduled yet: no container statuses at all
            return {"phase": phase, "conditions": conditions}
        statuses = []
        for container in self.obj["spec"]["containers"]:
            mine = state
            if container["name"] in self.exits:  # a real run: each container ends on its own
                rc = self.exits[container["name"]]
                mine = {"terminated": {"exitCode": rc, "reason": "Completed" if rc == 0 else "Error"}}
            statuses.append({"name": container["name"], "state": mine, "ready": "running" in mine,
                             "restartCount": 0, "image": "", "imageID": ""})  # fmt: skip
        return {"phase": phase, "conditions": conditions, "containerStatuses": statuses}


class FakeKube:
    """``with FakeKube(behaviour=...) as kube:`` serves on kube.url until the block ends."""

    def __init__(self, behaviour=lambda pod: Script(run_s=0.2), *, token: str = "good-token",
                 forbidden: tuple[str, ...] = (), pvcs: dict[str, str] | None = None) -> None:  # fmt: skip
        self.behaviour, self.token, self.forbidden = behaviour, token, forbidden
        self.pvcs = pvcs or {}
        self.objects: dict[str, dict[str, Any]] = {"pods": {}, "configmaps": {}}
        self.pods: dict[str, Pod] = {}
        self.requests: list[tuple[str, str, dict]] = []
        self.fail_gets_after: int | None = None  # answer GET pod with 500 after this many
        self.lock = threading.RLock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeKube:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        for pod in list(self.pods.values()):
            pod.kill()

    def add(self, kind: str, name: str, labels: dict[str, str], namespace: str = "farm") -> None:
        """An object that was there before (a crashed farm's leftover)."""
        obj = {"apiVersion": "v1", "kind": "Pod" if kind == "pods" else "ConfigMap",
               "metadata": {"name": name, "namespace": namespace, "labels": labels}}  # fmt: skip
        if kind == "pods":
            obj["spec"] = {"containers": [{"name": "experiment", "image": "x"}]}
        with self.lock:
            self.objects[kind][name] = obj
            if kind == "pods":
                self.pods[name] = Pod(self, obj, Script())

    def rbac_pairs(self) -> set[tuple[str, str, str]]:
        """(namespace, resource, verb) of every request so far, as the API server's RBAC sees them."""
        pairs = set()
        for method, path, _ in self.requests:
            m = PATH_RE.match(path)
            if m:
                ns, kind, name, sub = m.groups()
                verb = {"POST": "create", "DELETE": "delete"}.get(method) or ("get" if name else "list")
                pairs.add((ns, f"{kind}/{sub}" if sub else kind, verb))
        return pairs

    def names(self, kind: str) -> list[str]:
        with self.lock:
            return sorted(self.objects[kind])

    # -- HTTP ------------------------------------------------------------------------------

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _send(self, code: int, body: Any, content_type: str = "application/json") -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _status(self, code: int, reason: str, message: str) -> None:
                self._send(code, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                  "message": message, "reason": reason, "code": code})  # fmt: skip

            def _handle(self, method: str) -> None:
                url = urlparse(self.path)
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                fake.requests.append((method, url.path, query))
                if self.headers.get("Authorization") != f"Bearer {fake.token}":
                    return self._status(401, "Unauthorized", "Unauthorized")
                m = PATH_RE.match(url.path)
                if not m:
                    return self._status(404, "NotFound", "the server could not find the requested resource")
                ns, kind, name, sub = m.group(1), m.group(2), m.group(3) and unquote(m.group(3)), m.group(4)
                if kind in fake.forbidden:
                    return self._status(
                        403,
                        "Forbidden",
                        f'{kind} is forbidden: User "system:serviceaccount:'
                        f'{ns}:farm" cannot {method.lower()} resource "{kind}" in the namespace',
                    )
                with fake.lock:
                    return self._dispatch(method, ns, kind, name, sub, query, body)

            def _dispatch(self, method, ns, kind, name, sub, query, body) -> None:
                store = fake.objects[kind]
                singular = kind[:-1]
                if method == "POST" and not name:
                    name = body["metadata"]["name"]
                    if name in store:
                        return self._status(409, "AlreadyExists", f'{kind} "{name}" already exists')
                    body["metadata"].update(namespace=ns, uid=str(uuid.uuid4()), resourceVersion="1",
                                            creationTimestamp="2026-11-27T00:00:00Z")  # fmt: skip
                    store[name] = body
                    if kind == "pods":
                        fake.pods[name] = Pod(fake, body)
                    return self._send(201, body)
                if method == "GET" and not name:
                    wanted = dict(p.split("=", 1) for p in query.get("labelSelector", "").split(",") if p)
                    items = [o for o in store.values() if wanted.items() <= o["metadata"].get("labels", {}).items()]
                    listing = "PodList" if kind == "pods" else "ConfigMapList"
                    return self._send(200, {"kind": listing, "apiVersion": "v1", "metadata": {"resourceVersion": "9"},
                                            "items": items})  # fmt: skip
                if name not in store:
                    return self._status(404, "NotFound", f'{kind} "{name}" not found')
                if method == "DELETE":
                    obj = store.pop(name)
                    if kind == "pods":
                        fake.pods.pop(name).kill()
                    return self._send(200, obj)
                if method == "GET" and sub == "log":
                    pod = fake.pods[name]
                    if pod.status()["phase"] == "Pending":
                        return self._status(400, "BadRequest", f'container "experiment" in pod "{name}" is waiting '
                                            "to start: ContainerCreating")  # fmt: skip
                    container = query.get("container") or pod.obj["spec"]["containers"][0]["name"]
                    lines = pod.logs.get(container, b"").splitlines(keepends=True)
                    if "tailLines" in query:
                        lines = lines[-int(query["tailLines"]) :] if int(query["tailLines"]) else []
                    data = b"".join(lines)[: int(query.get("limitBytes") or 1 << 40)]
                    return self._send(200, data, "text/plain")
                if method == "GET":
                    if kind == "pods":
                        if fake.fail_gets_after is not None:
                            fake.fail_gets_after -= 1
                            if fake.fail_gets_after < 0:
                                return self._status(500, "InternalError", "etcdserver: request timed out")
                        return self._send(200, {**store[name], "status": fake.pods[name].status()})
                    return self._send(200, store[name])
                return self._status(405, "MethodNotAllowed", f"{method} is not supported on {singular}")

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

        return Handler


def farm_owned_copy(cache: Path, dest: Path) -> Path:
    """A copy of a prepared data cache owned by the farm's uid, as the chart's head leaves it on the PVC (the
    experiment pod's runner runs as that uid; needs root)."""
    from cluster.sandbox.kube_pod import SANDBOX_UID

    shutil.copytree(cache, dest, symlinks=True)
    for root, dirs, files in os.walk(dest):
        for name in [*dirs, *files, ""]:
            os.lchown(os.path.join(root, name), SANDBOX_UID, SANDBOX_UID)
    return dest


def run_in_docker_pod(train_py: str, tmp_path: Path, farm_cache: Path, profile: str = "cpu-smoke", seed: int = 0):
    """One experiment through the kubernetes sandbox, against a FakeKube whose pods run in the Docker Engine: the
    runner's and the candidate's containers of the trainer image, as the pod's users, sharing the pod's volumes.
    The data cache is a copy owned by the farm's uid, as the chart's head prepares it on the PVC (needs root)."""
    from cluster.execution.spec import ExperimentSpec, GpuAssignment, KubernetesSettings
    from cluster.sandbox.kubernetes import KubernetesSandbox

    cache = farm_owned_copy(farm_cache, tmp_path / "pvc")
    token = tmp_path / "token"
    token.write_text("good-token\n")
    with FakeKube(lambda pod: "docker", pvcs={"cache": str(cache)}) as fake:
        settings = KubernetesSettings(api_server=fake.url, token_file=token, namespace="farm", instance="docker-pod",
                                      cache_pvc="cache", poll_max_s=0.2)  # fmt: skip
        spec = ExperimentSpec(experiment_id=f"p-{uuid.uuid4().hex[:10]}", train_py=train_py, profile=profile,
                              seed=seed, run_dir=tmp_path / "run", cache_dir=cache)  # fmt: skip
        result = KubernetesSandbox(settings).run(spec, GpuAssignment())
        assert fake.names("pods") == [] and fake.names("configmaps") == []
    return result
