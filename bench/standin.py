"""A stand-in trainer for benchmarks of the farm itself: an experiment that only sleeps.

``StandinSandbox`` speaks the Sandbox protocol (``run(spec, gpu) ->
ExperimentResult``), so the driver, Ray and the ledger do exactly what they
do for real experiments, while the "GPU" work is a ``time.sleep`` of a fixed
length. Name it as the sandbox backend ``bench.standin:StandinSandbox``
(make_sandbox imports ``module:Class``; Ray workers find ``bench`` through
the PYTHONPATH the driver hands them, so run from the repository root).

make_sandbox passes no options, so the knobs are environment variables,
read when the sandbox is built (inside the Ray worker, which inherits the
driver's environment for a local Ray):

- ``FARM_STANDIN_SECONDS`` (default 2.0): how long each experiment "trains".
- ``FARM_STANDIN_NOISE`` (default 0.01): sd of the seed-to-seed noise of val_bpb.

val_bpb is a deterministic function of the train.py text (its sha256) plus
noise from (train.py, seed), so replicates agree up to the noise and the
tournament confirms and promotes as it would with real results.

Like the real runner it writes ``out/result.json``, and beside it
``out/standin.json`` with what a benchmark needs and the ledger lacks: the
wall-clock (``time.time()``) instants the sleep started and ended, the Ray
GPU id it held and the worker's pid. ``result.started_at``/``finished_at``
and ``facts.training_wall_seconds`` carry the same instants.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time

from cluster.execution.spec import ExperimentSpec, GpuAssignment
from cluster.sandbox.base import stage
from trainer.result import RESULT_FILE, ExperimentResult, HarnessFacts, Status

TIMING_FILE = "standin.json"
BASE_BPB = 2.80
SPREAD_BPB = 0.10  # how far a train.py's "true" value can lie from BASE_BPB (uniform, either side)


def true_bpb(train_py: str) -> float:
    """The stand-in's noise-free val_bpb of a train.py: a fixed function of its text."""
    digest = hashlib.sha256(train_py.encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return BASE_BPB + SPREAD_BPB * (2 * u - 1)


def measured_bpb(train_py: str, seed: int, noise: float) -> float:
    """true_bpb plus noise that depends only on (train.py, seed): a replicate on the same seed repeats exactly."""
    key = hashlib.sha256(f"{seed}:".encode() + train_py.encode()).digest()
    return true_bpb(train_py) + random.Random(key).gauss(0.0, noise)


def _ray_gpu_ids() -> list[str]:
    try:
        import ray

        return [str(i) for i in ray.get_gpu_ids()] if ray.is_initialized() else []
    except Exception:  # outside a Ray task
        return []


class StandinSandbox:
    """Sleeps for ``FARM_STANDIN_SECONDS`` and reports a plausible, deterministic result."""

    name = "standin"

    def __init__(self, seconds: float | None = None, noise: float | None = None) -> None:
        self.seconds = float(os.environ.get("FARM_STANDIN_SECONDS", "2.0")) if seconds is None else seconds
        self.noise = float(os.environ.get("FARM_STANDIN_NOISE", "0.01")) if noise is None else noise

    def run(self, spec: ExperimentSpec, gpu: GpuAssignment) -> ExperimentResult:
        called = time.time()
        _, out = stage(spec)  # what every backend does first (fresh out dir: a retried attempt starts clean)
        gpu_ids = _ray_gpu_ids()
        started = time.time()
        time.sleep(self.seconds)
        finished = time.time()
        slept = finished - started
        result = ExperimentResult(
            status=Status.OK,
            val_bpb=measured_bpb(spec.train_py, spec.seed, self.noise),
            profile=spec.profile,
            seed=spec.seed,
            time_budget=self.seconds,
            facts=HarnessFacts(
                startup_seconds=0.0, training_seconds=self.seconds, training_wall_seconds=slept,
                total_seconds=slept, eval_calls=1, eval_seconds=0.0,
            ),
            train_py_sha256=hashlib.sha256(spec.train_py.encode()).hexdigest(),
            exit_code=0,
            started_at=started,
            finished_at=finished,
        )
        timing = {"experiment_id": spec.experiment_id, "called": called, "started": started, "finished": finished,
                  "seconds": slept, "gpu_ids": gpu_ids, "visible": gpu.visible, "pid": os.getpid()}
        _write_atomic(out / TIMING_FILE, json.dumps(timing))
        _write_atomic(out / RESULT_FILE, result.model_dump_json())
        return result

    def cleanup_leftovers(self) -> int:
        return 0


def _write_atomic(path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
