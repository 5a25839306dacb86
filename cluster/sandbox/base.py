"""What every sandbox backend shares: staging, the environment, reading the result.

A backend's whole job is to run ``python -m trainer.runner`` on a staged
candidate inside its isolation, kill it at the wall limit, and leave nothing
behind. The runner inside decides the status; a backend only fills in a
result when the runner could not (killed from outside, died, or never ran).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Protocol

from cluster.execution.spec import ExperimentSpec, GpuAssignment
from cluster.sandbox.untrusted import read_bytes, read_text
from trainer.data import seal_data
from trainer.profiles import get_profile
from trainer.result import RESULT_FILE, ExperimentResult, Status

# The runner's result.json is a few KB; anything far larger was not written by it (and is never read whole).
RESULT_MAX_BYTES = 1 << 20
CACHE_FILE_MAX_BYTES = 256 << 20  # one compiled kernel or graph in the compile cache

# CPU quota on top of the profile's torch threads, for the trusted runner's own threads (event
# reader, log pump, watchdog). Measured on cpu-tiny: a quota of exactly 1.0 costs the candidate
# ~10% of its steps (70 vs 78 batches in 20 s) against the process backend; 1.25 matches it.
RUNNER_CPU_SLACK = 0.25


def cpu_quota(spec: ExperimentSpec) -> float | None:
    """CPU cores the whole experiment may use (None: no quota): the limit, else the profile's torch threads plus the
    runner's slack, so that a candidate cannot slow its neighbours (main's baselines among them) and skew the noise."""
    threads = get_profile(spec.profile).torch_threads
    return spec.limits.cpus or (threads + RUNNER_CPU_SLACK if threads else None)


# Seconds the sandbox waits past the runner's own wall limit before it kills
# from outside: the runner normally stops the candidate itself and reports.
OUTER_KILL_GRACE = 20.0

# The only variables of the farm's environment a candidate ever sees.
# Never add anything that can hold a secret (API keys, tokens, proxies).
ENV_ALLOW = ("PATH", "LANG", "LC_ALL", "TZ", "TERM")

# The candidate's user inside a sandbox that separates it from the runner (docker, process as root): not the
# runner's, so it cannot write the verdict, read the validation shard, or signal the runner and the evaluator.
CANDIDATE_UID = 65534  # nobody:nogroup

# Where a backend that maps paths puts things (docker, kubernetes).
CANDIDATE_MOUNT = "/candidate"
OUT_MOUNT = "/out"
CACHE_MOUNT = "/cache"
COMPILE_CACHE_MOUNT = "/compile-cache"


class SandboxError(RuntimeError):
    """The sandbox cannot run anything (engine down, image missing, GPU not visible); says how to fix it."""


class Sandbox(Protocol):
    name: str

    def run(self, spec: ExperimentSpec, gpu: GpuAssignment) -> ExperimentResult:
        """Run one experiment to completion; always returns a result, never leaves anything running."""
        ...

    def cleanup_leftovers(self) -> int:
        """Remove what an earlier, crashed farm left behind; returns how many things were removed."""
        ...


def stage(spec: ExperimentSpec) -> tuple[Path, Path]:
    """Write the candidate (read-only) and a fresh, writable out dir; returns (candidate_dir, out_dir).

    A retried experiment (a lost worker) starts from a clean out dir, so a
    half-written result of the lost attempt can never be read as this one's.
    """
    candidate, out = spec.run_dir / "candidate", spec.run_dir / "out"
    for path in (candidate, out):
        if path.exists():
            shutil.rmtree(path)
    candidate.mkdir(parents=True)
    train_py = candidate / "train.py"
    train_py.write_text(spec.train_py)
    train_py.chmod(0o444)
    candidate.chmod(0o555)
    out.mkdir()
    out.chmod(0o777)  # the runner's user may not be the farm's (it takes the dir over and closes it to the candidate)
    seal_data(get_profile(spec.profile), spec.cache_dir)
    return candidate, out


def shared_dir(path: Path) -> None:
    """The compile cache: created if missing, readable by every sandbox user and writable by the farm only (an
    experiment compiles into its own copy; best effort on a directory that is not ours)."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        path.chmod(0o755)
    except PermissionError:
        pass


def sandbox_env(spec: ExperimentSpec, gpu: GpuAssignment, *, cache: str, compile_cache: str | None, home: str) -> dict:
    """The candidate's whole environment: an allow-list, never a copy of the farm's."""
    env = {k: os.environ[k] for k in ENV_ALLOW if k in os.environ}
    env.update(
        FARM_PROFILE=spec.profile,
        FARM_CACHE=cache,
        FARM_SEED=str(spec.seed),
        HOME=home,
        PYTHONDONTWRITEBYTECODE="1",
        CUDA_VISIBLE_DEVICES=gpu.visible or "",
    )
    if compile_cache:
        env.update(TORCHINDUCTOR_CACHE_DIR=f"{compile_cache}/inductor", TRITON_CACHE_DIR=f"{compile_cache}/triton")
    return env


def runner_args(
    spec: ExperimentSpec,
    train_py: str,
    out: str,
    candidate_uid: int | None = None,
    scratch: str | None = None,
    compile_cache: str | None = None,
) -> list[str]:
    """Arguments after ``python``: the runner with the spec's profile, seed and wall limit; the candidate's user,
    where the sandbox can give it one (only in a PID namespace: the runner kills every process of that user); the
    bounded scratch filesystem for the candidate's files; the shared compile cache as mounted (read-only)."""
    uid = ["--candidate-uid", str(candidate_uid)] if candidate_uid is not None else []
    if scratch:
        uid += ["--scratch", scratch]
    if compile_cache:
        uid += ["--compile-cache", compile_cache] + (["--publish-compile-cache"] if spec.publish_compile_cache else [])
    return [
        "-m",
        "trainer.runner",
        train_py,
        "--out",
        out,
        "--profile",
        spec.profile,
        "--seed",
        str(spec.seed),
        "--wall-limit",
        f"{spec.wall_limit():g}",
        *uid,
    ]


def collect(spec: ExperimentSpec, out: Path, started: float, *, killed: bool, exit_code: int | None, note: str = ""):
    """The runner's result if it wrote one, else one that says why there is none."""
    data = None if killed else read_bytes(out / RESULT_FILE, RESULT_MAX_BYTES + 1)
    if data is not None:
        try:
            if len(data) > RESULT_MAX_BYTES:
                raise ValueError(f"larger than {RESULT_MAX_BYTES} bytes")
            result = ExperimentResult.model_validate_json(data)
        except ValueError as exc:
            note = f"unreadable result file ({exc.__class__.__name__}); {note}"
        else:
            if result.status != Status.OK or exit_code == 0:
                return result
            # The runner exits 0 exactly when it wrote ok: an ok without that is not the runner's verdict.
            return no_result(spec, started, Status.INVALID, f"a result file says ok but the runner exited with "
                             f"{exit_code}: not the runner's verdict", exit_code=exit_code,
                             log_tail=read_text(out / "run.log", 4000, tail=True) or "")
    if killed:
        status, reason = Status.TIMEOUT, (
            f"killed by the sandbox at the wall limit ({spec.wall_limit():g} s + {OUTER_KILL_GRACE:g} s grace): "
            "the runner did not stop it itself"
        )
    else:
        status, reason = Status.ERROR, f"the runner wrote no result (exit code {exit_code}) {note}".strip()
    tail = read_text(out / "run.log", 4000, tail=True) or note
    return no_result(spec, started, status, reason, exit_code=exit_code, log_tail=tail)


def merge_published_cache(spec: ExperimentSpec, out: Path, result: ExperimentResult) -> int:
    """Add what a run of main compiled (out/compile-cache, left by the runner) to the shared compile cache: regular
    files the cache lacks, read without following links and written under a temporary name. Returns files added.

    Only runs the farm asked to publish (main's baselines, ``spec.publish_compile_cache``) and only when they ended
    ok: every other experiment compiles into a private copy that dies with it, so no candidate can plant a file that
    a later run (main's among them) loads."""
    published = out / "compile-cache"
    added = 0
    if spec.publish_compile_cache and spec.compile_cache_dir and result.status == Status.OK and published.is_dir() \
            and not published.is_symlink():
        for root, dirs, files in os.walk(published):
            dirs[:] = [d for d in dirs if not (Path(root) / d).is_symlink()]
            rel = Path(root).relative_to(published)
            for name in files:
                target = spec.compile_cache_dir / rel / name
                data = None if target.exists() else read_bytes(Path(root) / name, CACHE_FILE_MAX_BYTES + 1)
                if data is None or len(data) > CACHE_FILE_MAX_BYTES:
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f".{name}.{os.getpid()}.tmp")
                tmp.write_bytes(data)
                os.replace(tmp, target)
                added += 1
    shutil.rmtree(published, ignore_errors=True)
    return added


def no_result(spec: ExperimentSpec, started: float, status: Status, reason: str, **fields: object) -> ExperimentResult:
    """A result for a run the runner could not report on itself (killed, never started, refused)."""
    return ExperimentResult(
        status=status,
        reason=reason,
        profile=spec.profile,
        seed=spec.seed,
        time_budget=get_profile(spec.profile).time_budget,
        started_at=started,
        finished_at=time.time(),
        **fields,
    )
