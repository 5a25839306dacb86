"""The entrypoint a sandbox runs: one candidate train.py in, one result.json out.

    python -m trainer.runner TRAIN_PY --out DIR [--profile NAME] [--seed N]

The runner is the trusted side. With ``--candidate-uid`` (the docker and
process sandboxes pass one; they start the runner as root) the candidate runs
as that user; with ``--exchange`` (the kubernetes pod, where nothing may be
root) it runs in a container of its own as another user, started there by
trainer.exchange's launcher. Either way it cannot write in the out dir,
read the validation shard, signal or trace the runner, or touch the trusted
evaluator. The runner starts the evaluator (trainer.evaluate) first, then the
candidate (trainer.candidate); it receives the harness's events on a pipe and
times them by their arrival (never by a time the candidate sends), keeps a
bounded log, stops a run the moment it trains past its budget, takes the
model the candidate hands over (evaluate_bpb), has the evaluator score it,
answers the candidate with the score, and classifies the outcome. Only the
runner writes result.json, and only when it has finished; its exit code is 0
for ``ok`` and 1 otherwise, and a host accepts ``ok`` only with exit code 0.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import math
import os
import re
import resource
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trainer.clock import TrainingClock
from trainer.data import data_ready
from trainer.exchange import WORK, LauncherError, PodCandidate
from trainer.feeder import Feeder, enlarge_pipe
from trainer.profiles import Profile, cache_dir, get_profile
from trainer.result import LOG_FILE, RESULT_FILE, ExperimentResult, HarnessFacts, Status, Summary

LOG_HEAD_BYTES = 512 * 1024
LOG_TAIL_BYTES = 512 * 1024
PRINTED_BPB_TOLERANCE = 2e-6  # the summary prints 6 decimals
EVENT_LINE_MAX = 64 * 1024  # a harness event is a short JSON line; a longer one is the candidate's noise
HANDOVER_MAX_BYTES = 8 << 30  # an exported model larger than this is refused, not copied
HANDOVER_FILE = "model.handover"
PUBLISHED_CACHE = "compile-cache"  # in the out dir: what a run of main compiled, for the host to share


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
    """The runner's own account of the run, built from harness events as they arrive.

    Every time is the runner's receipt time: the candidate writes the events and may lie in them, so nothing
    in an event is trusted beyond what it is (a batch was drawn, the model was handed over)."""

    def __init__(self, profile: Profile, spawned_at: float, wall_limit: float) -> None:
        self.profile = profile
        self.wall_limit = wall_limit
        self.spawned_at = spawned_at
        self.clock = TrainingClock(
            profile.clock, profile.warmup_batches, profile.stall_factor, profile.stall_floor,
            compile_allowance=profile.compile_allowance, setup_allowance=profile.setup_allowance,
        )
        self.feeder: Feeder | None = None  # serves the batches granted here
        self.facts = HarnessFacts()
        self.oom = False
        self.handover_started: float | None = None  # evaluate_bpb was entered: the clock stopped
        self.handover_at: float | None = None  # the exported model is complete
        self.handover_batch = 1
        self.late_batches = 0  # drawn after the model was handed over
        self.killed_reason = ""
        self.lock = threading.Lock()
        self.handover_ready = threading.Event()

    def read(self, fd: int) -> None:
        with os.fdopen(fd, "rb") as pipe:
            while line := pipe.readline(EVENT_LINE_MAX):
                now = time.monotonic()
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    with self.lock:
                        self._handle(event, now)

    def _handle(self, event: dict, now: float) -> None:
        kind = event.get("e")
        if kind == "b":
            if self.handover_started is not None:
                self.late_batches += 1
                if self.feeder is not None:
                    self.feeder.refuse("no training batch after the model was handed over to evaluate_bpb")
                return
            B, T = event.get("B"), event.get("T")
            if self.feeder is not None and self.feeder.grant(B, T) is not None:
                return  # refused (the candidate is told why): no batch, nothing to charge
            if self.facts.startup_seconds is None:
                self.facts.startup_seconds = now - self.spawned_at
                if self.clock.hello_at is not None:
                    self.facts.setup_seconds = now - self.clock.hello_at
            self.clock.tick(now)
            self.facts.train_batches += 1
            self.facts.train_tokens += B * T if isinstance(B, int) and isinstance(T, int) else 0
            if self.facts.warmup_seconds is None and self.clock.started_at is not None:
                self.facts.warmup_seconds = max(0.0, self.clock.started_at - self.clock.first_batch_at)
        elif kind == "hello":
            self.clock.hello(now)
        elif kind == "eval_start" and self.handover_started is None:
            self.clock.pause(now)
            self.handover_started = now
            self.facts.training_wall_seconds = self.training_wall(now)
        elif kind == "handover" and self.handover_started is not None and self.handover_at is None:
            self.handover_at = now
            self.facts.eval_calls = 1
            self.facts.handover_seconds = now - self.handover_started
            batch = event.get("batch")
            self.handover_batch = batch if isinstance(batch, int) and batch >= 1 else 1
            self.facts.training_seconds = self.charged(now)
            self.handover_ready.set()
        elif kind == "oom":
            self.oom = True

    def charged(self, now: float) -> float:
        """Charged training seconds: the clock, plus any time evaluate_bpb took past the handover allowance."""
        if self.handover_started is None:
            return self.clock.seconds(now)
        end = self.handover_at if self.handover_at is not None else now
        return self.clock.charged + max(0.0, end - self.handover_started - self.profile.handover_allowance)

    def _windows(self, now: float) -> str:
        """Which free window the run trained in past its allowance, for the reason."""
        c, p = self.clock, self.profile
        before = now - c.started_at if c.first_batch_at is None and c.started_at is not None else c.setup_overrun
        if before:
            return (f"; {before:.1f} s of it before the first batch, past the {p.setup_allowance:g} s "
                    "set-up allowance (train.py's start-up is charged as training beyond it)")
        if c.warmup_overrun:
            return (f"; charged from {p.compile_allowance:g} s after the first batch, where the warm-up allowance "
                    "ends (the warm-up batches are free of charge only that long)")
        return ""

    def training_wall(self, now: float) -> float:
        start = self.clock.started_at
        if start is None:
            return 0.0
        end = self.handover_started if self.handover_started is not None else now
        return max(0.0, end - start)

    def over_budget(self, now: float) -> str | None:
        """Why the run has trained past what the profile allows, or None."""
        p = self.profile
        with self.lock:
            charged = self.charged(now)
            limit = p.time_budget * (1 + p.budget_tolerance) + self.clock.step_allowance
            if charged > limit:
                return (
                    f"trained past the budget: {charged:.1f} s charged, "
                    f"limit {limit:.1f} s (budget {p.time_budget:g} s){self._windows(now)}"
                )
            wall = self.training_wall(now)
            if wall > p.time_budget * p.max_wall_factor:
                return (
                    f"training took {wall:.1f} s of wall time, more than {p.max_wall_factor:g}x the "
                    f"{p.time_budget:g} s budget"
                )
            if self.facts.startup_seconds is None and now - self.spawned_at > p.startup_allowance:
                return f"no training batch drawn within the {p.startup_allowance:g} s start-up allowance"
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
    obs: Observer, rc: int | None, killed_for: str | None, log_tail: str, summary: Summary, verdict: dict | None
) -> tuple[Status, str]:
    """Decide the status from the runner's facts and the evaluator's verdict; the exit code only says how it ended."""
    p, f = obs.profile, obs.facts
    if killed_for == "budget":
        return Status.INVALID, obs.killed_reason
    if killed_for == "wall":
        phase = (
            "being evaluated" if obs.handover_at is not None
            else "handing the model over" if obs.handover_started is not None
            else "training" if f.train_batches else "starting up"
        )
        return Status.TIMEOUT, f"killed at the wall limit of {obs.wall_limit:g} s while {phase}"
    if killed_for == "farm":  # the trusted side broke (its evaluator, its data): not the candidate's doing
        return Status.ERROR, obs.killed_reason
    oom_text = re.search(r"OutOfMemoryError|CUDA out of memory|MemoryError", log_tail)
    if verdict and "oom" in verdict:
        return Status.OOM, f"out of memory while the evaluator ran the model: {verdict['oom']}"
    if obs.oom or oom_text or rc == -signal.SIGKILL:
        return Status.OOM, "out of memory" + (
            "" if obs.oom or oom_text else " (killed by SIGKILL, likely the OOM killer)"
        )
    if verdict and "rejected" in verdict:
        return Status.INVALID, f"the evaluator refused the model: {verdict['rejected']}"
    if obs.late_batches:  # before the exit code: the refused batch is what made the script fail
        return Status.INVALID, f"train.py asked for {obs.late_batches} training batches after handing its model over"
    if rc != 0:
        if re.search(r"^FAIL\s*$", log_tail, re.M) or (f.val_bpb is not None and not math.isfinite(f.val_bpb)):
            return Status.NAN, "the loss became NaN or exploded (train.py printed FAIL)"
        return Status.CRASH, _crash_reason(log_tail, rc)
    if f.eval_calls == 0 or f.val_bpb is None:
        return (
            Status.INVALID,
            "train.py never handed its model to evaluate_bpb, so the evaluator has no val_bpb (a printed one is "
            "not trusted)",
        )
    if not math.isfinite(f.val_bpb):
        return Status.NAN, f"val_bpb is {f.val_bpb}"
    # Defence in depth: the evaluator is trusted code; these say it did what it must.
    if f.eval_split_files != [p.val_filename]:
        return Status.INVALID, f"evaluation read {f.eval_split_files}, not the pinned validation shard {p.val_filename}"
    if f.eval_tokens != (p.eval_tokens // p.max_seq_len) * p.max_seq_len:
        return Status.INVALID, f"evaluation scored {f.eval_tokens} tokens, not the fixed {p.eval_tokens}"
    if f.train_batches == 0:
        return Status.INVALID, "train.py never drew a training batch from the harness"
    if summary.val_bpb is not None and abs(summary.val_bpb - f.val_bpb) > PRINTED_BPB_TOLERANCE:
        return Status.INVALID, f"train.py printed val_bpb {summary.val_bpb} but the evaluator measured {f.val_bpb:.6f}"
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
    train_py: Path,
    out: Path,
    profile: Profile,
    seed: int = 0,
    wall_limit: float | None = None,
    candidate_uid: int | None = None,
    scratch: Path | None = None,
    compile_cache: Path | None = None,
    publish_compile_cache: bool = False,
    exchange: Path | None = None,
    pids: int | None = None,
) -> ExperimentResult:
    """Run one candidate to completion and write out/result.json.

    The candidate is this process's child (as ``candidate_uid`` when given), or, with ``exchange``, a process
    in another container that connects through that directory (trainer.exchange; ``pids`` caps its processes).
    Paths are made absolute first: the candidate and the evaluator run in other working directories, and a relative
    ``out`` once made every run crash on a handover file it could not find. The steps, each its own function so that
    each can be reviewed as the security code it is: prepare the directories, start the evaluator, launch the
    candidate (here or in its pod container), watch it, and classify what the runner saw.
    """
    train_py, out = Path(train_py).absolute(), Path(out).absolute()
    exchange = Path(exchange).absolute() if exchange is not None else None
    scratch = Path(scratch).absolute() if scratch is not None else None
    compile_cache = Path(compile_cache).absolute() if compile_cache is not None else None
    out.mkdir(parents=True, exist_ok=True)
    source = train_py.read_bytes() if train_py.is_file() else b""
    base = dict(profile=profile.name, seed=seed, time_budget=profile.time_budget, started_at=time.time(),
                train_py_sha256=hashlib.sha256(source).hexdigest())

    def farm_fault(reason: str) -> ExperimentResult:
        return _write(out, ExperimentResult(status=Status.ERROR, reason=reason, finished_at=time.time(), **base))

    if reason := _cannot_start(train_py, profile):
        return farm_fault(reason)
    places = _prepare_dirs(out, scratch, exchange, compile_cache, candidate_uid)
    env = _environment(profile)
    evaluator = _start_evaluator(profile, out, places.trusted, env)
    if evaluator is None:
        return farm_fault("the trusted evaluator did not start (see eval.log in the run's out dir)")
    handover = places.work / HANDOVER_FILE
    candidate_env = dict(env, FARM_SEED=str(seed), FARM_HANDOVER=str(handover))
    if compile_cache is not None:
        candidate_env.update(TORCHINDUCTOR_CACHE_DIR=str(places.compiled / "inductor"),
                             TRITON_CACHE_DIR=str(places.compiled / "triton"))
    argv = [sys.executable, "-m", "trainer.candidate", str(train_py.resolve())]
    try:
        if exchange is None:
            cand = _launch_here(argv, candidate_env, places.work, candidate_uid)
        else:
            cand = _launch_in_pod(exchange, argv, candidate_env, places.work, pids, profile.startup_allowance)
    except (LauncherError, OSError) as exc:
        _stop_evaluator(evaluator)
        return farm_fault(str(exc))
    watched = _watch(cand, profile, wall_limit or profile.wall_limit, evaluator, handover, places, out)
    if publish_compile_cache and watched.status == Status.OK and compile_cache is not None:
        _publish(places.compiled, out / PUBLISHED_CACHE)  # the host merges it into the shared cache (main's runs only)
    if exchange is not None:
        cand.proc.close()
    elif cand.uid is not None:
        _give_back(out, places.owner, places.work if scratch is None else None)
    facts = watched.obs.facts
    return _write(out, ExperimentResult(
        status=watched.status, reason=watched.reason, val_bpb=facts.val_bpb if watched.status == Status.OK else None,
        facts=facts, summary=watched.summary, exit_code=watched.rc, log_tail=watched.log_tail,
        log_bytes=watched.log_bytes, device=watched.device, finished_at=time.time(), **base,
    ))


def _cannot_start(train_py: Path, profile: Profile) -> str:
    """Why this run cannot start through no fault of the candidate (the farm's: status error), or ""."""
    if not train_py.is_file():
        return f"no train.py at {train_py}"
    if missing := data_ready(profile, cache_dir()):
        return f"data not prepared ({', '.join(missing)}): run `farm prepare --profile {profile.name}`"
    return ""


@dataclass(frozen=True)
class _Places:
    """Where one run's files live, made fresh for it."""

    owner: os.stat_result  # the out dir's owner and mode, given back at the end
    work: Path  # the candidate's working dir: the only place it may write (with its /tmp); its model lands here
    trusted: Path  # the evaluator's: the copy of the model it scores
    compiled: Path  # the candidate's private copy of the compile cache


def _prepare_dirs(out: Path, scratch: Path | None, exchange: Path | None, compile_cache: Path | None,
                  candidate_uid: int | None) -> _Places:
    """The candidate's work dir and the evaluator's dir, each new, each open to its own side only.

    The candidate's files and the copy of its model live on the sandbox's bounded scratch filesystem when there is
    one (never on the host's disk), under a directory of the runner's that the candidate cannot rename; in a pod,
    its work dir is in the exchange, inside a directory of the runner's it cannot write in.
    """
    owner = out.stat()
    private = (scratch / "farm") if scratch is not None else out
    if scratch is not None:
        _remove(private)
        private.mkdir(mode=0o711)
    work = private / "work" if exchange is None else exchange / WORK
    trusted, compiled = private / "eval", work / "compile-cache"
    for path in (work, trusted) if exchange is None else (work.parent, trusted):
        _remove(path)
        path.mkdir(mode=0o700)
    if exchange is not None:
        work.parent.chmod(0o711)
        work.mkdir()
        work.chmod(0o777)
    if compile_cache is not None:  # a private copy of the shared cache: what this run compiles stays its own
        _seed_compile_cache(compile_cache, compiled)
    if candidate_uid is not None and exchange is None:
        _chown_tree(work, candidate_uid, candidate_uid)
        out.chmod(0o711)  # the candidate may pass through to its work dir, never create anything here
    return _Places(owner, work, trusted, compiled)


def _environment(profile: Profile) -> dict[str, str]:
    """What the evaluator and the candidate both run with: the profile, the cache, the thread count."""
    env = dict(os.environ, FARM_PROFILE=profile.name, FARM_CACHE=str(cache_dir()), PYTHONUNBUFFERED="1")
    if profile.torch_threads:
        env.update(OMP_NUM_THREADS=str(profile.torch_threads), MKL_NUM_THREADS=str(profile.torch_threads))
    return env


def _start_evaluator(profile: Profile, out: Path, trusted: Path, env: dict[str, str]) -> subprocess.Popen | None:
    """The evaluator, started before the candidate and ready (torch imported): whatever the candidate later exhausts
    (processes, memory), its scorer already runs. None if it did not get ready within the start-up allowance."""
    with open(out / "eval.log", "wb") as eval_log:
        evaluator = subprocess.Popen(
            [sys.executable, "-m", "trainer.evaluate", "--profile", profile.name],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=eval_log, cwd=trusted, env=env,
            start_new_session=True,
        )
    if _ready(evaluator, profile.startup_allowance):
        return evaluator
    _stop_evaluator(evaluator)
    return None


def _stop_evaluator(evaluator: subprocess.Popen) -> None:
    _kill_group(evaluator)
    evaluator.wait()


@dataclass
class _Candidate:
    """A started candidate: the runner's ends of its channels, and how to stop it."""

    proc: subprocess.Popen | PodCandidate  # stdout, poll() and wait() alike
    events_r: int  # its harness events, to read
    reply_w: int  # evaluate_bpb's answer, to write
    data_w: int  # its training batches, to write
    spawned: float  # monotonic, when it started: the wall limit counts from here
    kill: Callable[[], None]  # every process of the candidate
    uid: int | None  # the user it runs as; None: the runner's own (not separated)


def _launch_here(argv: list[str], env: dict[str, str], work: Path, uid: int | None) -> _Candidate:
    """The candidate as this process's child: its own session, as ``uid`` when given (the sandboxes pass one and
    start the runner as root), with a pipe per channel."""
    events_r, events_w = os.pipe()
    reply_r, reply_w = os.pipe()
    data_r, data_w = os.pipe()
    enlarge_pipe(data_w)
    env = dict(env, FARM_EVENTS_FD=str(events_w), FARM_REPLY_FD=str(reply_r), FARM_DATA_FD=str(data_r))
    spawned = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        pass_fds=(events_w, reply_r, data_r),
        start_new_session=True,
        cwd=work if uid is None else None,  # as another user it enters its work dir once it is that user
        env=env,
        preexec_fn=(lambda: _become(uid, work)) if uid is not None else _oom_first,
    )
    for fd in (events_w, reply_r, data_r):
        os.close(fd)
    return _Candidate(proc, events_r, reply_w, data_w, spawned, lambda: _kill_candidate(proc, uid), uid)


def _launch_in_pod(exchange: Path, argv: list[str], env: dict[str, str], work: Path, pids: int | None,
                   timeout: float) -> _Candidate:
    """The candidate in its own container, started there by the launcher that connects through ``exchange``; its
    user is what the kernel says of the launcher's connections. Raises LauncherError if it never connects."""
    proc = PodCandidate(exchange)
    try:
        events_r, reply_w, data_w = proc.start(argv, env, work, pids, timeout)
    except (LauncherError, OSError):
        proc.close()
        raise
    uid = proc.peer_uid if proc.separated else None
    return _Candidate(proc, events_r, reply_w, data_w, time.monotonic(), proc.kill, uid)


@dataclass
class _Watched:
    """What the runner saw of one candidate, classified."""

    obs: Observer
    status: Status
    reason: str
    rc: int | None
    summary: Summary
    log_tail: str
    log_bytes: int
    device: str


def _watch(cand: _Candidate, profile: Profile, limit: float, evaluator: subprocess.Popen, handover: Path,
           places: _Places, out: Path) -> _Watched:
    """Read the candidate's events, output and model while it runs; stop it at the first limit it hits; score a
    model it handed over; then end every process and classify. The candidate is gone when this returns."""
    obs = Observer(profile, cand.spawned, limit)
    obs.facts.candidate_uid = cand.uid
    obs.feeder = feeder = Feeder(profile, cache_dir(), cand.data_w)
    feeder.start()
    log = BoundedLog(out / LOG_FILE)
    scorer = _Scorer(evaluator, obs, handover, places.trusted / HANDOVER_FILE, cand.reply_w)
    proc = cand.proc
    threads = [
        threading.Thread(target=obs.read, args=(cand.events_r,), daemon=True),
        threading.Thread(
            target=lambda: [log.feed(c) for c in iter(lambda: proc.stdout.read1(65536), b"")], daemon=True
        ),
        threading.Thread(target=scorer.run, daemon=True),
    ]
    for t in threads:
        t.start()

    def until(busy: Callable[[], bool]) -> str | None:
        """Poll until ``busy()`` is false or a limit is hit; the limit's name."""
        while busy():
            now = time.monotonic()
            if now - cand.spawned > limit:
                return "wall"
            if reason := obs.over_budget(now):
                obs.killed_reason = reason
                return "budget"
            if scorer.failure or feeder.failure:
                obs.killed_reason = scorer.failure or feeder.failure
                return "farm"
            time.sleep(0.1)
        return None

    killed_for = until(lambda: proc.poll() is None)
    rc = proc.poll()
    cand.kill()  # anything it left behind, in its session or out of it
    rc = proc.wait() if rc is None else rc
    threads[0].join(timeout=5)  # every event the candidate sent is read (its writers are gone)
    if killed_for is None:  # a model handed over is scored, even if its script did not wait for the answer
        killed_for = until(lambda: obs.handover_at is not None and not scorer.done.is_set())
    scorer.stop()
    feeder.close()
    _stop_evaluator(evaluator)
    for t in threads:
        t.join(timeout=5)
    feeder.thread.join(timeout=5)  # its reader is gone: a blocked write has failed
    if not feeder.thread.is_alive():
        os.close(cand.data_w)
    log_tail = log.close()
    summary = parse_summary(log_tail)
    status, reason = classify(obs, rc, killed_for, log_tail, summary, scorer.verdict)
    facts = obs.facts
    facts.total_seconds = time.monotonic() - cand.spawned
    if facts.peak_memory_mb is None:
        facts.peak_memory_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return _Watched(obs, status, reason, rc, summary, log_tail, log.total, scorer.device)


class _Scorer:
    """Takes the handed-over model, has the evaluator score it, and answers the waiting candidate."""

    def __init__(self, evaluator: subprocess.Popen, obs: Observer, handover: Path, copy: Path, reply_fd: int) -> None:
        self.evaluator, self.obs, self.handover, self.copy, self.reply_fd = evaluator, obs, handover, copy, reply_fd
        self.verdict: dict | None = None
        self.failure = ""  # the evaluator itself broke: the farm's fault
        self.device = "cpu"
        self.done = threading.Event()
        self._stopping = False

    def run(self) -> None:
        try:
            while not self.obs.handover_ready.wait(0.5):
                if self._stopping:
                    return
            started = time.monotonic()
            try:
                size = _copy_regular(self.handover, self.copy, HANDOVER_MAX_BYTES)
            except OSError as exc:
                self._answer({"rejected": f"no exported model at the handover ({exc.strerror or exc})"})
                return
            self.obs.facts.handover_bytes = size
            request = {"program": str(self.copy), "batch": self.obs.handover_batch,
                       "seed": int.from_bytes(os.urandom(4), "little")}
            try:
                self.evaluator.stdin.write((json.dumps(request) + "\n").encode())
                self.evaluator.stdin.flush()
                line = self.evaluator.stdout.readline()
            except OSError:
                line = b""
            if not line:
                if self._stopping:
                    return
                try:
                    code = self.evaluator.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    code = None
                if code == -signal.SIGKILL:  # nothing but the OOM killer kills it (the candidate is another user)
                    self._answer({"oom": "the evaluator was killed (SIGKILL: the OOM killer) while loading or "
                                  "scoring the model; it does not fit beside what the candidate holds"})
                else:
                    self.failure = "the trusted evaluator exited without a verdict (see eval.log in the run's out dir)"
                return
            reply = json.loads(line)
            if "val_bpb" in reply:
                f = self.obs.facts
                f.val_bpb = float(reply["val_bpb"])
                f.eval_tokens, f.eval_split_files = int(reply["tokens"]), list(reply["files"])
                f.causal_max_change, f.weights_sha256 = reply["causal_max_change"], reply["weights_sha256"]
                f.fingerprint = reply.get("fingerprint")
                f.eval_seconds = time.monotonic() - started
                f.eval_load_seconds, f.eval_check_seconds = reply.get("load_seconds"), reply.get("check_seconds")
                f.eval_peak_vram_mb = reply.get("peak_vram_mb")
                if reply.get("peak_vram_mb") is not None:
                    f.peak_memory_mb = float(reply["peak_vram_mb"])
                self.device = str(reply["device"])
            self._answer(reply)
        finally:
            self.done.set()

    def _answer(self, reply: dict) -> None:
        self.verdict = reply
        if "val_bpb" in reply:
            answer = {"val_bpb": reply["val_bpb"]}
        else:
            answer = {"error": reply.get("rejected") or reply.get("oom") or "not scored"}
        try:
            os.write(self.reply_fd, (json.dumps(answer) + "\n").encode())
        except OSError:
            pass  # the candidate is gone; the verdict stands

    def stop(self) -> None:
        self._stopping = True
        for close in (lambda: os.close(self.reply_fd), self.evaluator.stdin.close):
            try:
                close()
            except OSError:
                pass


def _ready(evaluator: subprocess.Popen, timeout: float) -> bool:
    """Whether the evaluator said it is ready (torch imported) within ``timeout`` seconds."""
    import select

    readable, _, _ = select.select([evaluator.stdout], [], [], timeout)
    return bool(readable) and bool(evaluator.stdout.readline())


def _copy_regular(src: Path, dst: Path, max_bytes: int) -> int:
    """Copy a regular file the candidate wrote, never following a link (not even as its directory: the candidate
    may swap its work dir for a link into the runner's files) or reading a FIFO or device."""
    parent = os.open(src.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        fd = os.open(src.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=parent)
    finally:
        os.close(parent)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(0, "the handover is not a regular file")
        total = 0
        with open(dst, "wb") as f:
            while chunk := os.read(fd, 1 << 20):
                total += len(chunk)
                if total > max_bytes:
                    raise OSError(0, f"the exported model is larger than {max_bytes >> 30} GiB")
                f.write(chunk)
        return total
    finally:
        os.close(fd)


def _oom_first() -> None:
    """In the candidate before exec: under memory pressure the kernel kills it before the runner or evaluator."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass


def _become(uid: int, cwd: Path) -> None:
    """In the candidate before exec: its own user and group, no supplementary groups, no way to gain privileges."""
    _oom_first()
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)  # from root this clears every capability
    PR_SET_NO_NEW_PRIVS = 38
    ctypes.CDLL(None).prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    os.chdir(cwd)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_candidate(proc: subprocess.Popen, uid: int | None) -> None:
    """Every process of the candidate's user (in a sandbox's PID namespace: the candidate's, and only those)."""
    _kill_group(proc)
    if uid is None:
        return
    for _ in range(20):
        found = False
        for entry in Path("/proc").glob("[0-9]*"):
            try:
                if entry.stat().st_uid == uid:
                    os.kill(int(entry.name), signal.SIGKILL)
                    found = True
            except (OSError, ValueError):
                continue
        if not found:
            return
        time.sleep(0.05)


def _give_back(out: Path, owner: os.stat_result, work: Path | None) -> None:
    """The out dir opens again, and the candidate's files there become its owner's, so the farm can remove them."""
    out.chmod(stat.S_IMODE(owner.st_mode))
    if work is not None:
        _chown_tree(work, owner.st_uid, owner.st_gid)
    for path in out.iterdir():
        try:
            os.lchown(path, owner.st_uid, owner.st_gid)
        except OSError:
            pass
    if (out / PUBLISHED_CACHE).is_dir():
        _chown_tree(out / PUBLISHED_CACHE, owner.st_uid, owner.st_gid)


def _chown_tree(top: Path, uid: int, gid: int) -> None:
    """lchown everything under ``top`` (never following a link, not even ``top`` itself)."""
    if top.is_symlink() or not top.is_dir():
        return
    for root, dirs, files in os.walk(top):
        for name in [*dirs, *files, ""]:
            try:
                os.lchown(os.path.join(root, name) if name else root, uid, gid)
            except OSError:
                pass


def _seed_compile_cache(shared: Path, private: Path) -> None:
    """Copy the farm's shared compile cache (read-only to every experiment) into this run's private one."""
    _remove(private)
    if shared.is_dir():
        shutil.copytree(shared, private, symlinks=True, ignore_dangling_symlinks=True)
    else:
        private.mkdir()


def _publish(private: Path, dest: Path) -> None:
    """What this run compiled, for the host to merge into the shared cache: regular files and directories only."""
    _remove(dest)
    if private.is_symlink() or not private.is_dir():
        return
    for root, _dirs, files in os.walk(private):
        rel = Path(root).relative_to(private)
        (dest / rel).mkdir(parents=True, exist_ok=True)
        for name in files:
            src = Path(root) / name
            try:
                _copy_regular(src, dest / rel / name, HANDOVER_MAX_BYTES)
            except OSError:
                continue


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
    parser.add_argument(
        "--candidate-uid", type=int, default=None,
        help="run the candidate as this user (and group): needed for a verdict it cannot forge; the runner must be "
        "root or hold CAP_SETUID/SETGID/CHOWN/KILL",
    )
    parser.add_argument("--scratch", type=Path, default=None,
                        help="a bounded scratch filesystem (the sandbox's /tmp): the candidate's work dir and the "
                        "copy of its model go there instead of the out dir")
    parser.add_argument("--compile-cache", type=Path, default=None,
                        help="the shared compile cache (read-only): the candidate gets a private copy of it")
    parser.add_argument("--publish-compile-cache", action="store_true",
                        help="leave what this run compiled in OUT/compile-cache for the host to share (main's runs)")
    parser.add_argument("--exchange", type=Path, default=None,
                        help="the candidate runs in another container: its launcher (python -m trainer.exchange) "
                        "connects through this shared directory (the kubernetes pod; the runner needs no privilege)")
    parser.add_argument("--pids", type=int, default=None,
                        help="with --exchange: the candidate's processes and threads (RLIMIT_NPROC of its user)")
    args = parser.parse_args(argv)
    if args.exchange is not None and args.candidate_uid is not None:
        parser.error("--exchange and --candidate-uid are two ways to separate the candidate: give one")
    try:
        profile = get_profile(args.profile)
    except ValueError as exc:
        parser.error(str(exc))
    result = run(
        args.train_py, args.out, profile, seed=args.seed, wall_limit=args.wall_limit, candidate_uid=args.candidate_uid,
        scratch=args.scratch, compile_cache=args.compile_cache, publish_compile_cache=args.publish_compile_cache,
        exchange=args.exchange, pids=args.pids,
    )
    bpb = f"{result.val_bpb:.6f}" if result.val_bpb is not None else "-"
    print(f"status={result.status.value} val_bpb={bpb} {result.reason}".rstrip(), flush=True)
    return 0 if result.status == Status.OK else 1


if __name__ == "__main__":
    sys.exit(main())
