"""The fixed harness that ``train.py`` imports as ``prepare``.

It keeps upstream autoresearch's interface (constants, ``Tokenizer``,
``make_dataloader``, ``evaluate_bpb``, ``get_token_bytes``) so an existing
``train.py`` runs unchanged, with values from the active profile
(``FARM_PROFILE``). Unlike upstream it neither counts the budget nor
evaluates in this process: every training batch drawn is reported to the
trusted runner over a pipe (the runner's clock decides), and
``evaluate_bpb`` hands the model over as data to a trusted evaluator that
scores it on validation text this process cannot read. Nothing here is
trusted; patching it changes nothing the runner believes. It adds one
function, ``training_seconds()``, the budget used so far as the harness
counts it.

Data preparation itself lives in ``trainer.data`` (``farm prepare``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from trainer.clock import TrainingClock
from trainer.data import BOS_TOKEN
from trainer.handover import export_model
from trainer.profiles import active_profile, cache_dir
from trainer.textdata import Tokenizer as _TextTokenizer
from trainer.textdata import documents, packed_rows, split_files

PROFILE = active_profile()

# Constants (fixed by the profile; train.py must not change them)
MAX_SEQ_LEN = PROFILE.max_seq_len
TIME_BUDGET = int(PROFILE.time_budget) if PROFILE.time_budget.is_integer() else PROFILE.time_budget
EVAL_TOKENS = PROFILE.eval_tokens
VOCAB_SIZE = PROFILE.vocab_size

CACHE_DIR = str(cache_dir())
DATA_DIR = str(PROFILE.data_dir())
TOKENIZER_DIR = str(PROFILE.tokenizer_dir())
VAL_FILENAME = PROFILE.val_filename
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

if PROFILE.torch_threads:
    torch.set_num_threads(PROFILE.torch_threads)

# ---------------------------------------------------------------------------
# Reporting to the trusted runner
# ---------------------------------------------------------------------------

_events_fd: int | None = None
_clock = TrainingClock(
    PROFILE.clock, PROFILE.warmup_batches, PROFILE.stall_factor, PROFILE.stall_floor,
    compile_allowance=PROFILE.compile_allowance,
)


def _connect(fd: int) -> None:
    """Called by the candidate bootstrap before train.py runs; harness-private."""
    global _events_fd
    _events_fd = fd
    _emit(e="hello", device=_device_name(), torch=torch.__version__)


def _emit(**event: object) -> None:
    if _events_fd is not None:
        os.write(_events_fd, (json.dumps(event) + "\n").encode())


def _device_name() -> str:
    return torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"


def training_seconds() -> float:
    """Seconds of the budget used so far, counted by the harness from batch draws."""
    return _clock.seconds(time.monotonic())


# ---------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------


class Tokenizer(_TextTokenizer):
    """A tiktoken encoding with a BOS special token (upstream's wrapper)."""

    def __init__(self, enc) -> None:
        super().__init__(enc, BOS_TOKEN)

    @classmethod
    def from_directory(cls, tokenizer_dir: str = TOKENIZER_DIR) -> Tokenizer:
        loaded = _TextTokenizer.load(tokenizer_dir, BOS_TOKEN, PROFILE.name)
        return cls(loaded.enc)


def get_token_bytes(device="cpu") -> torch.Tensor:
    """UTF-8 byte length of every token id; 0 for special tokens."""
    with open(os.path.join(TOKENIZER_DIR, "token_bytes.pt"), "rb") as f:
        return torch.load(f, map_location=device)


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def make_dataloader(tokenizer: Tokenizer, B: int, T: int, split: str, buffer_size: int = 1000):
    """Endless (inputs, targets, epoch) with (B, T) int64 tensors on the device.

    Drawing a "train" batch is what the harness's training clock counts.
    """
    if split == "val":
        raise ValueError(
            "make_dataloader(split='val'): the validation split is held by the trusted evaluator and is not "
            "readable from train.py; train on 'train' and call evaluate_bpb(model, tokenizer, batch_size) at the end"
        )
    if split != "train":
        raise ValueError(f"split must be 'train' or 'val', not {split!r}")
    docs = documents(split_files(PROFILE, Path(CACHE_DIR), split), files_read=[])
    rows = packed_rows(tokenizer, T, docs, buffer_size)
    on_cuda = DEVICE == "cuda"
    gpu_buffer = torch.empty(2 * B * T, dtype=torch.long, device=DEVICE) if on_cuda else None
    while True:
        if split == "train":
            now = time.monotonic()
            _clock.tick(now)
            _emit(e="b", n=B * T, t=now)
        batch, epoch = [], 1
        for _ in range(B):
            row, epoch = next(rows)
            batch.append(row)
        data = torch.tensor(batch, dtype=torch.long)
        if on_cuda:
            staged = torch.cat([data[:, :-1].reshape(-1), data[:, 1:].reshape(-1)]).pin_memory()
            gpu_buffer.copy_(staged, non_blocking=True)
            yield gpu_buffer[: B * T].view(B, T), gpu_buffer[B * T :].view(B, T), epoch
        else:
            yield data[:, :-1].contiguous(), data[:, 1:].contiguous(), epoch


# ---------------------------------------------------------------------------
# Evaluation: the model is handed over and scored by the trusted side
# ---------------------------------------------------------------------------

_handed_over = False


def evaluate_bpb(model, tokenizer, batch_size: int) -> float:
    """Bits per byte on the pinned validation shard, measured by the trusted evaluator.

    Upstream evaluates in this process; here this call *hands the model over*:
    it ends training (the clock stops), exports ``model(idx) -> logits`` with
    torch.export, and waits for the trusted evaluator, which scores it on
    validation text this process cannot read, with the harness's tokenizer
    (``tokenizer`` is not used) and its own loss. Exactly
    EVAL_TOKENS // MAX_SEQ_LEN rows are scored; ``batch_size`` sets the rows
    per forward pass (memory), never the metric. Call it once, at the end.
    """
    global _handed_over
    if _handed_over:
        raise RuntimeError("evaluate_bpb hands the model over to the evaluator once, at the end of training")
    _handed_over = True
    _clock.pause(time.monotonic())
    _emit(e="eval_start")
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    rows = max(1, min(int(batch_size), EVAL_TOKENS // MAX_SEQ_LEN))
    module = getattr(model, "_orig_mod", model)
    training = module.training
    module.eval()
    try:
        blob = export_model(module, rows, MAX_SEQ_LEN, DEVICE)
    finally:
        module.train(training)
    path = os.environ.get("FARM_HANDOVER") or os.path.join(os.getcwd(), "model.handover")
    with open(path, "wb") as f:
        f.write(blob)
    _emit(e="handover", path=path, batch=rows, bytes=len(blob))
    reply = _await_verdict()
    if "val_bpb" not in reply:
        raise RuntimeError(f"evaluate_bpb: the evaluator did not score the model: {reply.get('error', reply)}")
    return float(reply["val_bpb"])


def _await_verdict() -> dict:
    """The runner's answer on the reply pipe (one JSON line); without a runner there is no evaluator."""
    fd = os.environ.get("FARM_REPLY_FD")
    if fd is None or _events_fd is None:
        raise RuntimeError("evaluate_bpb needs the farm's runner: run train.py with `farm try` or trainer.runner")
    with os.fdopen(int(fd), "rb", closefd=False) as pipe:
        line = pipe.readline(1 << 16)
    try:
        return json.loads(line)
    except ValueError:
        return {"error": "no answer from the runner"}
