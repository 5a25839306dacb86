"""The entrypoint a sandbox runs: one candidate train.py in, one result.json out.

    python -m trainer.runner TRAIN_PY --out DIR [--profile NAME] [--seed N]

The runner is the trusted side. It starts the candidate in a child process
(trainer.candidate), receives the harness's events on a pipe and timestamps
them itself, keeps a bounded log, stops a run the moment it trains past its
budget (GPU time is not wasted on a result that cannot count), and
classifies the outcome. Its exit code is 0 for ``ok`` and 1 otherwise, but
only result.json is authoritative.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from trainer.clock import TrainingClock
from trainer.data import data_ready
from trainer.profiles import Profile, cache_dir, get_profile
from trainer.result import LOG_FILE, RESULT_FILE, ExperimentResult, HarnessFacts, Status, Summary

LOG_HEAD_BYTES = 512 * 1024
LOG_TAIL_BYTES = 512 * 1024
LEAK_RATIO_LIMIT = 5.0
PRINTED_BPB_TOLERANCE = 2e-6  # the summary prints 6 decimals


class BoundedLog:
    """Keeps the first and last bytes of a stream; what lies between is counted, not stored.

    The file is only ever written: the candidate can replace it (with a link, say), so the tail this returns comes
    from memory, never from reading the path back."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "wb")
        self.head = bytearray()
        self.written = 0
        self.total = 0
        self.tail = bytearray()

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        if self.written < LOG_HEAD_BYTES:
            head = chunk[: LOG_HEAD_BYTES - self.written]
            self.file.write(head)
            self.file.flush()
            self.head += head
            self.written += len(head)
            chunk = chunk[len(head) :]
        if chunk:
            self.tail += chunk
            del self.tail[:-LOG_TAIL_BYTES]

    def close(self) -> str:
        """Finish the file and return the last lines of output."""
        omitted = self.total - self.written - len(self.tail)
        if omitted > 0:
            self.file.write(f"\n[... {omitted} bytes of output omitted ...]\n".encode())
        self.file.write(bytes(self.tail))
        self.file.close()
        text = bytes(self.tail or self.head).decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-40:])[-4000:]


class Observer:
    """The runner's own account of the run, built from harness events as they arrive."""

    def __init__(self, profile: Profile, spawned_at: float, wall_limit: float) -> None:
        self.profile = profile
        self.wall_limit = wall_limit
        self.spawned_at = spawned_at
        self.clock = TrainingClock(profile.clock, profile.warmup_batches, profile.stall_factor, profile.stall_floor)
        self.facts = HarnessFacts()
        self.device = "cpu"
        self.oom = False
        self.in_eval = False
        self.eval_wall = 0.0
        self._eval_started = 0.0
        self.killed_reason = ""
        self.first_batch_received: float | None = None
        self._last_t = 0.0
        self.lock = threading.Lock()

    def read(self, fd: int) -> None:
        with os.fdopen(fd, "rb") as pipe:
            for line in pipe:
                now = time.monotonic()
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                with self.lock:
                    self._handle(event, now)

    def _handle(self, event: dict, received: float) -> None:
        kind = event.get("e")
        # The charged clock uses the harness's own draw times (the pipe delivers
        # events in bursts), but never a time later than we received it nor one
        # earlier than the last; the wall-time rule uses receipt times only.
        try:
            at = min(max(float(event.get("t", received)), self._last_t), received)
        except (TypeError, ValueError):
            at = received
        self._last_t = at
        if kind == "b":
            if self.facts.startup_seconds is None:
                self.facts.startup_seconds = received - self.spawned_at
            self.clock.tick(at)
            if self.first_batch_received is None and self.clock.batches >= max(1, self.profile.warmup_batches):
                self.first_batch_received = received  # wall time counts from where the budget does
            self.facts.train_batches += 1
            self.facts.train_tokens += int(event.get("n", 0))
        elif kind == "eval_start":
            self.clock.pause(at)
            self.in_eval, self._eval_started = True, received
            self.facts.training_seconds = self.clock.charged
            self.facts.training_wall_seconds = self.training_wall(received)
        elif kind == "eval_done":
            self.in_eval = False
            self.eval_wall += received - self._eval_started
            self.clock.resume(at)
            self.facts.eval_calls += 1
            self.facts.eval_seconds = received - self._eval_started
            self.facts.val_bpb = float(event["val_bpb"])
            self.facts.eval_tokens = int(event["tokens"])
            self.facts.eval_split_files = list(event["files"])
            self.facts.target_leak_ratio = event.get("leak_ratio")
            if event.get("peak_vram_mb") is not None:
                self.facts.peak_memory_mb = float(event["peak_vram_mb"])
        elif kind == "hello":
            self.device = str(event.get("device", "cpu"))
        elif kind == "oom":
            self.oom = True

    def training_wall(self, now: float) -> float:
        if self.first_batch_received is None:
            return 0.0
        running_eval = now - self._eval_started if self.in_eval else 0.0
        return now - self.first_batch_received - self.eval_wall - running_eval

    def over_budget(self, now: float) -> str | None:
        """Why the run has trained past what the profile allows, or None."""
        p = self.profile
        with self.lock:
            charged = self.clock.seconds(now)
            limit = p.time_budget * (1 + p.budget_tolerance) + self.clock.step_allowance
            if charged > limit:
                return (
                    f"trained past the budget: {charged:.1f} s charged, "
                    f"limit {limit:.1f} s (budget {p.time_budget:g} s)"
                )
            wall = self.training_wall(now)
            if wall > p.time_budget * p.max_wall_factor:
                return (
                    f"training took {wall:.1f} s of wall time, more than {p.max_wall_factor:g}x the "
                    f"{p.time_budget:g} s budget"
                )
        return None


def parse_summary(log_tail: str) -> Summary:
    """The key: value lines after the last '---' line that train.py printed."""
    lines = log_tail.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == "---"]
    fields: dict[str, str] = {}
    for line in lines[starts[-1] + 1 :] if starts else []:
        m = re.match(r"^(\w+):\s+(\S+)\s*$", line)
        if m and m.group(1) in Summary.model_fields:
            fields[m.group(1)] = m.group(2)
    clean = {}
    for key, value in fields.items():
        try:
            clean[key] = float(value) if Summary.model_fields[key].annotation != (int | None) else int(float(value))
        except ValueError:
            continue
    return Summary(**clean)


def classify(
    obs: Observer, rc: int | None, killed_for: str | None, log_tail: str, summary: Summary
) -> tuple[Status, str]:
    """Decide the status from the harness's facts; the exit code only says how it ended."""
    p, f = obs.profile, obs.facts
    if killed_for == "budget":
        return Status.INVALID, obs.killed_reason
    if killed_for == "wall":
        phase = "evaluating" if obs.in_eval else ("training" if f.train_batches else "starting up")
        return Status.TIMEOUT, f"killed at the wall limit of {obs.wall_limit:g} s while {phase}"
    oom_text = re.search(r"OutOfMemoryError|CUDA out of memory|MemoryError", log_tail)
    if obs.oom or oom_text or rc == -signal.SIGKILL:
        return Status.OOM, "out of memory" + (
            "" if obs.oom or oom_text else " (killed by SIGKILL, likely the OOM killer)"
        )
    if rc != 0:
        if re.search(r"^FAIL\s*$", log_tail, re.M) or (f.val_bpb is not None and not math.isfinite(f.val_bpb)):
            return Status.NAN, "the loss became NaN or exploded (train.py printed FAIL)"
        return Status.CRASH, _crash_reason(log_tail, rc)
    if f.eval_calls == 0:
        return (
            Status.INVALID,
            "train.py never called evaluate_bpb, so the harness has no val_bpb (a printed one is not trusted)",
        )
    if not math.isfinite(f.val_bpb):
        return Status.NAN, f"val_bpb is {f.val_bpb}"
    if f.eval_split_files != [p.val_filename]:
        return Status.INVALID, f"evaluation read {f.eval_split_files}, not the pinned validation shard {p.val_filename}"
    if f.eval_tokens != (p.eval_tokens // p.max_seq_len) * p.max_seq_len:
        return Status.INVALID, f"evaluation scored {f.eval_tokens} tokens, not the fixed {p.eval_tokens}"
    if f.train_batches == 0:
        return Status.INVALID, "train.py never drew a training batch from the harness"
    if f.target_leak_ratio is not None and f.target_leak_ratio > LEAK_RATIO_LIMIT:
        return Status.INVALID, (
            f"the model scores random targets {f.target_leak_ratio:.0f}x likelier than chance: "
            "its forward pass reads the targets it is evaluated on"
        )
    if summary.val_bpb is not None and abs(summary.val_bpb - f.val_bpb) > PRINTED_BPB_TOLERANCE:
        return Status.INVALID, f"train.py printed val_bpb {summary.val_bpb} but the harness measured {f.val_bpb:.6f}"
    return Status.OK, "" if summary.val_bpb is not None else "no summary block printed"


def _crash_reason(log_tail: str, rc: int) -> str:
    lines = [line for line in log_tail.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^\w*(Error|Exception|Interrupt)\b", line)]
    if errors:
        return errors[-1][:500]
    if rc < 0:
        return f"killed by signal {signal.Signals(-rc).name}"
    return f"exited with code {rc}" + (f": {lines[-1][:300]}" if lines else "")


def run(
    train_py: Path, out: Path, profile: Profile, seed: int = 0, wall_limit: float | None = None
) -> ExperimentResult:
    """Run one candidate to completion and write out/result.json."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    source = train_py.read_bytes() if train_py.is_file() else b""
    base = dict(
        profile=profile.name,
        seed=seed,
        time_budget=profile.time_budget,
        started_at=started,
        train_py_sha256=hashlib.sha256(source).hexdigest(),
    )
    missing = data_ready(profile, cache_dir())
    if not train_py.is_file() or missing:
        reason = (
            f"no train.py at {train_py}"
            if not train_py.is_file()
            else (f"data not prepared ({', '.join(missing)}): run `farm prepare --profile {profile.name}`")
        )
        return _write(out, ExperimentResult(status=Status.ERROR, reason=reason, finished_at=time.time(), **base))

    work = out / "work"
    work.mkdir(exist_ok=True)
    read_fd, write_fd = os.pipe()
    env = dict(
        os.environ,
        FARM_PROFILE=profile.name,
        FARM_CACHE=str(cache_dir()),
        FARM_SEED=str(seed),
        FARM_EVENTS_FD=str(write_fd),
        PYTHONUNBUFFERED="1",
    )
    if profile.torch_threads:
        env.update(OMP_NUM_THREADS=str(profile.torch_threads), MKL_NUM_THREADS=str(profile.torch_threads))
    spawned = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainer.candidate", str(train_py.resolve())],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        pass_fds=(write_fd,),
        start_new_session=True,
        cwd=work,
        env=env,
    )
    os.close(write_fd)
    limit = wall_limit or profile.wall_limit
    obs = Observer(profile, spawned, limit)
    log = BoundedLog(out / LOG_FILE)
    readers = [
        threading.Thread(target=obs.read, args=(read_fd,), daemon=True),
        threading.Thread(
            target=lambda: [log.feed(c) for c in iter(lambda: proc.stdout.read1(65536), b"")], daemon=True
        ),
    ]
    for t in readers:
        t.start()

    killed_for = None
    while proc.poll() is None:
        now = time.monotonic()
        if now - spawned > limit:
            killed_for = "wall"
        elif reason := obs.over_budget(now):
            killed_for, obs.killed_reason = "budget", reason
        if killed_for:
            _kill_group(proc)
            break
        time.sleep(0.1)
    rc = proc.wait()
    _kill_group(proc)  # anything the candidate left behind in its session
    for t in readers:
        t.join(timeout=5)
    log_tail = log.close()
    summary = parse_summary(log_tail)
    status, reason = classify(obs, rc, killed_for, log_tail, summary)
    facts = obs.facts
    facts.total_seconds = time.monotonic() - spawned
    if facts.peak_memory_mb is None:
        facts.peak_memory_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result = ExperimentResult(
        status=status,
        reason=reason,
        val_bpb=facts.val_bpb if status == Status.OK else None,
        facts=facts,
        summary=summary,
        exit_code=rc,
        log_tail=log_tail,
        log_bytes=log.total,
        device=obs.device,
        finished_at=time.time(),
        **base,
    )
    return _write(out, result)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _write(out: Path, result: ExperimentResult) -> ExperimentResult:
    """The result, whatever the candidate left in out/: an entry it planted under the result's names (a directory,
    a link, a FIFO) is removed, and if its files filled the disk they are removed to make room. A candidate must
    never turn its own failure into "no result", which the farm counts as its own fault (status error)."""
    data = result.model_dump_json(indent=2).encode()
    for attempt in range(2):
        try:
            for name in (RESULT_FILE + ".tmp", RESULT_FILE):
                _remove(out / name)
            fd = os.open(out / (RESULT_FILE + ".tmp"), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(out / (RESULT_FILE + ".tmp"), out / RESULT_FILE)
            return result
        except OSError:
            if attempt:
                raise
            for entry in out.iterdir():  # no room (or no way): the candidate's files go, the run's facts stay
                if entry.name not in (LOG_FILE,):
                    _remove(entry)
    return result


def _remove(path: Path) -> None:
    """Remove a file, link or directory tree at ``path`` (a link itself, never what it points to)."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()
    except FileNotFoundError:
        pass
    except OSError:
        pass  # e.g. a mount point (the scratch tmpfs): its contents are gone, the mount stays


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.runner", description=__doc__.splitlines()[0])
    parser.add_argument("train_py", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="directory for result.json and run.log")
    parser.add_argument("--profile", default=os.environ.get("FARM_PROFILE", "h100"))
    parser.add_argument("--seed", type=int, default=int(os.environ.get("FARM_SEED", "0")))
    parser.add_argument("--wall-limit", type=float, default=None, help="seconds; default from the profile")
    args = parser.parse_args(argv)
    try:
        profile = get_profile(args.profile)
    except ValueError as exc:
        parser.error(str(exc))
    result = run(args.train_py, args.out, profile, seed=args.seed, wall_limit=args.wall_limit)
    bpb = f"{result.val_bpb:.6f}" if result.val_bpb is not None else "-"
    print(f"status={result.status.value} val_bpb={bpb} {result.reason}".rstrip(), flush=True)
    return 0 if result.status == Status.OK else 1


if __name__ == "__main__":
    sys.exit(main())
