"""The process sandbox: the runner as a local process, isolated as far as the OS allows.

For one-GPU mode and machines without a container engine. As root (CI, a
GPU box) the experiment gets its own network namespace with no way out, its
own PID namespace (when its first process dies, every process it started
dies with it, daemons included), a mount namespace where everything but its
out dir is read-only, cgroup limits on processes and memory, and no
capabilities. Without root it gets what an ordinary user can do: its own
session, rlimits and a scrubbed environment; a warning says what is missing.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path

from cluster.execution.spec import ExperimentSpec, GpuAssignment
from cluster.sandbox.base import (
    CANDIDATE_UID,
    OUTER_KILL_GRACE,
    collect,
    cpu_quota,
    merge_published_cache,
    no_result,
    runner_args,
    sandbox_env,
    shared_dir,
    stage,
)
from cluster.sandbox.jail import VIEW
from trainer.result import ExperimentResult, Status

CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_PARENT = "autoresearch-farm"
CFS_PERIOD_US = 100_000
MARKER = "FARM_SANDBOX_ID"


class ProcessSandbox:
    name = "process"

    def __init__(self, python: str = sys.executable, isolate: bool | None = None, owner: str | None = None) -> None:
        """``owner``: whose leftovers ``cleanup_leftovers`` kills (a farm run's ExperimentSpec.owner, or a
        `farm try`'s); None kills every experiment's. Two farms on one machine must never kill each other's."""
        self.python = python
        self.owner = owner
        self.isolate = os.geteuid() == 0 if isolate is None else isolate
        if not self.isolate:
            warnings.warn(
                "process sandbox without root: no network/PID/mount isolation, only rlimits, and the candidate runs "
                "as the farm's own user, so it could forge its verdict; use the docker sandbox or run as root for "
                "untrusted candidates",
                stacklevel=2,
            )

    def run(self, spec: ExperimentSpec, gpu: GpuAssignment) -> ExperimentResult:
        started = time.time()
        prefix = f"{spec.owner or '-'}.{spec.experiment_id}."  # this farm's experiment, any attempt
        _kill_marked(prefix)  # an earlier attempt whose worker was lost
        candidate, out = stage(spec)
        marker = f"{prefix}{uuid.uuid4().hex[:8]}"
        cgroups = _make_cgroups(marker, spec) if self.isolate else []
        if self.isolate:  # the runner and the candidate see the experiment's own view (cluster/sandbox/jail.py)
            view = {name: f"{VIEW}/{name}" for name in ("candidate", "out", "cache", "compile")}
            env = sandbox_env(spec, gpu, cache=view["cache"], compile_cache=None, home="/tmp")
            env["TMPDIR"] = "/tmp"
            argv = [self.python, *runner_args(spec, f"{view['candidate']}/train.py", view["out"],
                                              candidate_uid=CANDIDATE_UID, scratch="/tmp",
                                              compile_cache=view["compile"] if spec.compile_cache_dir else None)]
            jail = [self.python, "-m", "cluster.sandbox.jail", "--shm-mb", str(spec.limits.shm_mb),
                    "--tmp-mb", str(spec.limits.disk_mb),
                    "--bind", str(candidate), view["candidate"], "--bind", str(spec.cache_dir), view["cache"],
                    "--bind-rw", str(out), view["out"]]
            if spec.compile_cache_dir:  # shared across experiments so an unchanged model compiles once
                shared_dir(spec.compile_cache_dir)
                jail += ["--bind", str(spec.compile_cache_dir), view["compile"]]  # read-only: the runner copies it
            for path in _python_paths():
                jail += ["--reach", path]
            for hidden in _validation_text_sources():
                jail += ["--hide", hidden]
            for path in cgroups:
                jail += ["--cgroup", str(path)]
            argv = [
                "unshare",
                "--net",
                "--pid",
                "--mount",
                "--fork",
                "--kill-child",
                "--mount-proc",
                *jail,
                "--",
                *argv,
            ]
        else:  # an ordinary user: the candidate runs as the farm's user, beside the runner (not a trusted verdict)
            work = out / "home"
            work.mkdir(mode=0o777)
            env = sandbox_env(
                spec, gpu, cache=str(spec.cache_dir), compile_cache=_str(spec.compile_cache_dir), home=str(work)
            )
            env["TMPDIR"] = str(work)
            argv = [self.python, *runner_args(spec, str(candidate / "train.py"), str(out))]
        env[MARKER] = marker
        with open(out / "sandbox.log", "wb") as errors:
            try:
                proc = subprocess.Popen(
                    argv,
                    env=env,
                    cwd=out,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=errors,
                    start_new_session=True,
                    preexec_fn=lambda: _child_setup(spec, cpu_only=gpu.visible is None and not self.isolate),
                )
            except OSError as exc:  # e.g. unshare missing: the farm's fault, said plainly (it stops after a few)
                for path in cgroups:
                    _kill_cgroup(path)
                return no_result(spec, started, Status.ERROR, f"the process sandbox could not start {argv[0]}: "
                                 f"{exc.strerror or exc} (util-linux's unshare and setpriv are needed as root)")
        killed = False
        try:
            proc.wait(timeout=spec.wall_limit() + OUTER_KILL_GRACE)
        except subprocess.TimeoutExpired:
            killed = True
        finally:
            _kill_everything(proc, cgroups, marker)
        result = collect(spec, out, started, killed=killed, exit_code=proc.returncode)
        if self.isolate:
            merge_published_cache(spec, out, result)
        return result

    def cleanup_leftovers(self) -> int:
        """Kill the processes of experiments an earlier farm left running, and their cgroups."""
        removed = 0
        prefix = f"{self.owner}." if self.owner else ""
        for controller in ("pids", "memory", "cpu", ""):  # "": the v2 (unified) hierarchy
            parent = CGROUP_ROOT / controller / CGROUP_PARENT if controller else CGROUP_ROOT / CGROUP_PARENT
            for child in parent.glob(f"{prefix}*/") if parent.is_dir() else []:
                removed += _kill_cgroup(child)
        return removed + _kill_marked(prefix)


def _python_paths() -> list[str]:
    """What the candidate's user must be able to enter to run Python and import the harness."""
    import trainer

    paths = [sys.base_prefix, sys.prefix, os.path.dirname(os.path.realpath(sys.executable)),
             os.path.dirname(os.path.dirname(os.path.realpath(trainer.__file__)))]
    return [os.path.realpath(p) for p in dict.fromkeys(paths)]


def _validation_text_sources() -> list[str]:
    """Every CPython's pydoc_data on the machine: the CPU profiles' validation text is cut from its topics, and a
    system Python's copy holds much the same text as the farm's own, so a candidate must see none of them."""
    import glob
    import importlib.util

    spec = importlib.util.find_spec("pydoc_data")
    found = [os.path.dirname(spec.origin)] if spec and spec.origin else []
    for prefix in ("/usr", "/usr/local", "/opt/*", sys.base_prefix, sys.prefix):
        found += glob.glob(f"{prefix}/lib/python3*/pydoc_data")
    return sorted({os.path.realpath(p) for p in found if os.path.isfile(os.path.join(p, "topics.py"))})


def _str(path: Path | None) -> str | None:
    return str(path) if path else None


def _child_setup(spec: ExperimentSpec, cpu_only: bool) -> None:
    """In the child before exec: die with the caller (a lost Ray worker), and limits that hold without cgroups."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    file_bytes = spec.limits.file_mb * 1024**2
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if os.geteuid() != 0:  # root ignores RLIMIT_NPROC; the pids cgroup covers it there
        resource.setrlimit(resource.RLIMIT_NPROC, (spec.limits.pids, spec.limits.pids))
    if cpu_only:  # address-space limits break CUDA's large reservations, so only without a GPU
        mem = spec.limits.memory_mb * 1024**2
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))


def _make_cgroups(marker: str, spec: ExperimentSpec) -> list[Path]:
    """pids, memory and CPU cgroups for one experiment, on a cgroup v2 (unified) or v1 host; skipped where
    unavailable (the PID namespace and rlimits still hold)."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return _make_cgroup_v2(marker, spec)
    made = []
    limits = {
        "pids": ("pids.max", str(spec.limits.pids)),
        "memory": ("memory.limit_in_bytes", str(spec.limits.memory_mb * 1024**2)),
    }
    if cores := cpu_quota(spec):  # per 100 ms period (cpu.cfs_period_us' default)
        limits["cpu"] = ("cpu.cfs_quota_us", str(int(cores * CFS_PERIOD_US)))
    for controller, (knob, value) in limits.items():
        path = CGROUP_ROOT / controller / CGROUP_PARENT / marker
        try:
            path.mkdir(parents=True, exist_ok=True)
            (path / knob).write_text(value)
        except OSError:
            continue  # cgroup v2 or no permission: rlimits and the PID namespace still hold
        made.append(path)
    return made


def _make_cgroup_v2(marker: str, spec: ExperimentSpec) -> list[Path]:
    """One cgroup under CGROUP_ROOT/autoresearch-farm with pids.max, memory.max (no swap) and cpu.max."""
    parent = CGROUP_ROOT / CGROUP_PARENT
    try:
        parent.mkdir(exist_ok=True)
        for level in (CGROUP_ROOT, parent):  # a controller reaches our cgroup only if every level above delegates it
            wanted = {"pids", "memory", "cpu"} - set((level / "cgroup.subtree_control").read_text().split())
            available = set((level / "cgroup.controllers").read_text().split())
            if wanted & available:
                (level / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in sorted(wanted & available)))
        path = parent / marker
        path.mkdir(exist_ok=True)
    except OSError:
        return []
    knobs = {"pids.max": str(spec.limits.pids), "memory.max": str(spec.limits.memory_mb * 1024**2),
             "memory.swap.max": "0"}
    if cores := cpu_quota(spec):
        knobs["cpu.max"] = f"{int(cores * CFS_PERIOD_US)} {CFS_PERIOD_US}"
    for knob, value in knobs.items():
        try:
            (path / knob).write_text(value)
        except OSError:
            continue  # a controller the host does not delegate: the others still hold
    return [path]


def _kill_everything(proc: subprocess.Popen, cgroups: list[Path], marker: str) -> None:
    """Nothing the experiment started outlives it, whatever it did to escape its session."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    for path in cgroups:
        _kill_cgroup(path)
    _kill_marked(marker)


def _kill_cgroup(path: Path) -> int:
    killed = 0
    for _ in range(50):
        try:
            pids = [int(p) for p in (path / "cgroup.procs").read_text().split()]
        except OSError:
            return killed
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        time.sleep(0.02)
    try:
        path.rmdir()
    except OSError:
        pass
    return killed


def _kill_marked(prefix: str) -> int:
    """Kill processes whose sandbox marker starts with ``prefix`` ("OWNER.EXPERIMENT.ATTEMPT"; "": any)."""
    needle = f"{MARKER}={prefix}".encode()
    killed = 0
    for proc_dir in Path("/proc").glob("[0-9]*"):
        try:
            environ = (proc_dir / "environ").read_bytes()
        except OSError:
            continue
        if any(entry.startswith(needle) for entry in environ.split(b"\0")):
            try:
                os.kill(int(proc_dir.name), signal.SIGKILL)
                killed += 1
            except (ProcessLookupError, PermissionError):
                pass
    return killed
