"""The result of one experiment: written by the runner, read by the farm.

The harness's own records (``HarnessFacts``) are the source of truth; the
summary ``train.py`` prints is kept only to cross-check them.
"""

from __future__ import annotations

import base64
import math
from array import array
from enum import StrEnum

from pydantic import BaseModel, Field

RESULT_FILE = "result.json"
LOG_FILE = "run.log"


class Status(StrEnum):
    OK = "ok"
    CRASH = "crash"  # the candidate raised or exited non-zero
    OOM = "oom"  # out of (GPU or host) memory
    NAN = "nan"  # loss became NaN or exploded
    TIMEOUT = "timeout"  # killed at the wall limit
    INVALID = "invalid"  # finished, but the result cannot be trusted
    ERROR = "error"  # the farm's fault (missing data, broken image): not the candidate's


class Summary(BaseModel):
    """The block ``train.py`` prints after ``---`` (upstream format); every key optional."""

    val_bpb: float | None = None
    training_seconds: float | None = None
    total_seconds: float | None = None
    peak_vram_mb: float | None = None
    mfu_percent: float | None = None
    total_tokens_M: float | None = None
    num_steps: int | None = None
    num_params_M: float | None = None
    depth: int | None = None


class HarnessFacts(BaseModel):
    """What the trusted side observed, in its own clock."""

    startup_seconds: float | None = Field(None, description="process start to first training batch")
    setup_seconds: float | None = Field(
        None, description="train.py's own start-up: the harness ready (its hello) to the first batch"
    )
    warmup_seconds: float | None = Field(None, description="first batch to the start of charging (the warm-up)")
    train_batches: int = 0
    train_tokens: int = 0
    training_seconds: float = Field(0.0, description="charged by the profile's clock")
    training_wall_seconds: float = Field(0.0, description="first batch to evaluation, uncapped")
    eval_calls: int = Field(0, description="models handed over to the evaluator (evaluate_bpb calls); 1 when scored")
    handover_seconds: float | None = Field(None, description="evaluate_bpb's export of the model (runner's clock)")
    handover_bytes: int | None = None
    eval_seconds: float | None = Field(None, description="the trusted evaluator: load, causality check and scoring")
    eval_load_seconds: float | None = Field(None, description="the evaluator's checks and load of the model file")
    eval_check_seconds: float | None = Field(None, description="the evaluator's causality check")
    eval_peak_vram_mb: float | None = Field(None, description="the evaluator's peak device memory (GPU)")
    eval_tokens: int | None = None
    eval_split_files: list[str] = Field(default_factory=list)
    target_leak_ratio: float | None = Field(
        None, description="(results before the trusted evaluator) mean p(random target) x vocab"
    )
    causal_max_change: float | None = Field(
        None, description="largest change of a log-probability at or before a cut when only later tokens changed"
    )
    weights_sha256: str | None = Field(None, description="of the handed-over weights: replicates on other seeds differ")
    fingerprint: str | None = Field(
        None, description="the evaluator's log-probabilities of fixed validation targets (base64 float32): how far "
        "apart two runs' predictions are (prediction_distance)"
    )
    candidate_uid: int | None = Field(
        None, description="the user the candidate ran as; None: the runner's own (no separation, not a trusted verdict)"
    )
    val_bpb: float | None = None
    peak_memory_mb: float | None = None
    total_seconds: float = 0.0


class ExperimentResult(BaseModel):
    """One experiment's outcome; ``status`` decides, never an exit code."""

    status: Status
    reason: str = ""
    val_bpb: float | None = Field(None, description="the harness's value; set only when status is ok")
    profile: str
    seed: int = 0
    time_budget: float
    facts: HarnessFacts = Field(default_factory=HarnessFacts)
    summary: Summary = Field(default_factory=Summary)
    exit_code: int | None = None
    log_tail: str = ""
    log_bytes: int = 0
    train_py_sha256: str = ""
    device: str = "cpu"
    started_at: float = 0.0
    finished_at: float = 0.0


def prediction_distance(a: str, b: str) -> float:
    """Root-mean-square difference, in nats, between two runs' log-probabilities of the same validation targets.

    Honest replicates of a file on other seeds start from other weights and predict differently token by token
    even when their val_bpb agree; a run that pins its seed predicts what its first run did. ``inf`` when the two
    fingerprints cannot be compared (other profiles' positions, or a corrupt value), so nothing is flagged then.
    """
    try:
        x, y = array("f"), array("f")
        x.frombytes(base64.b64decode(a, validate=True))
        y.frombytes(base64.b64decode(b, validate=True))
    except (ValueError, TypeError):
        return math.inf
    if len(x) != len(y) or not x:
        return math.inf
    return math.sqrt(sum((p - q) ** 2 for p, q in zip(x, y, strict=True)) / len(x))
