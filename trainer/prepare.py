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

import ctypes
import io
import json
import os
import time

import torch

from trainer.clock import TrainingClock
from trainer.data import BOS_TOKEN
from trainer.feeder import FRAME as _FRAME
from trainer.feeder import REFUSED as _REFUSED
from trainer.handover import eval_rows, export_model, release_cache
from trainer.profiles import active_profile, cache_dir
from trainer.textdata import Tokenizer as _TextTokenizer

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
    compile_allowance=PROFILE.compile_allowance, setup_allowance=PROFILE.setup_allowance,
)


def _connect(fd: int) -> None:
    """Called by the candidate bootstrap before train.py runs; harness-private."""
    global _events_fd
    _events_fd = fd
    device = _device_name()
    _clock.hello(time.monotonic())
    _emit(e="hello", device=device, torch=torch.__version__)


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

    The batches come from the trusted runner (trainer/feeder.py), which packs the training shards with the
    harness's tokenizer; this process cannot read the shards itself. Asking for a batch is what the harness's
    training clock counts. ``tokenizer`` and ``buffer_size`` are upstream's arguments, kept so its train.py runs
    unchanged; the packing is the harness's.
    """
    if split == "val":
        raise ValueError(
            "make_dataloader(split='val'): the validation split is held by the trusted evaluator and is not "
            "readable from train.py; train on 'train' and call evaluate_bpb(model, tokenizer, batch_size) at the end"
        )
    if split != "train":
        raise ValueError(f"split must be 'train' or 'val', not {split!r}")
    B, T = int(B), int(T)
    channel = _data_channel()
    n = B * T
    on_cuda = DEVICE == "cuda"
    if on_cuda:  # two pinned staging buffers: one is read into while the other's copy to the device may still run
        staging = [torch.empty(2 * n, dtype=torch.long).pin_memory() for _ in range(2)]
        copied = [torch.cuda.Event(), torch.cuda.Event()]
        gpu_buffer = torch.empty(2 * n, dtype=torch.long, device=DEVICE)
    turn = 0
    while True:
        now = time.monotonic()
        _clock.tick(now)
        _emit(e="b", B=B, T=T)
        epoch = _read_frame(channel, B, T)
        if on_cuda:
            copied[turn].synchronize()
            _read_into(channel, staging[turn])
            gpu_buffer.copy_(staging[turn], non_blocking=True)
            copied[turn].record()
            turn ^= 1
            yield gpu_buffer[:n].view(B, T), gpu_buffer[n:].view(B, T), epoch
        else:
            data = torch.empty(2 * n, dtype=torch.long)
            _read_into(channel, data)
            yield data[:n].view(B, T), data[n:].view(B, T), epoch


_channel: io.FileIO | None = None


def _data_channel() -> io.FileIO:
    """The runner's data channel (FARM_DATA_FD); without a runner there is no training data."""
    global _channel
    if _channel is None:
        fd = os.environ.get("FARM_DATA_FD")
        if fd is None or _events_fd is None:
            raise RuntimeError(
                "make_dataloader needs the farm's runner, which serves the training batches: run train.py with "
                "`farm try` or trainer.runner"
            )
        _channel = io.FileIO(int(fd), "rb", closefd=False)
    return _channel


def _read_exact(channel: io.FileIO, view: memoryview) -> None:
    while view:
        got = channel.readinto(view)
        if not got:
            raise RuntimeError("the runner closed the data channel (the run is over)")
        view = view[got:]


def _read_frame(channel: io.FileIO, B: int, T: int) -> int:
    """The next frame's header: the epoch of a batch of (B, T), or the runner's refusal raised as ValueError."""
    header = bytearray(_FRAME.size)
    _read_exact(channel, memoryview(header))
    kind, b, t, epoch, size = _FRAME.unpack(header)
    if kind == _REFUSED:
        message = bytearray(min(size, 1 << 16))
        _read_exact(channel, memoryview(message))
        raise ValueError(f"make_dataloader: {message.decode(errors='replace')}")
    if (b, t, size) != (B, T, 16 * B * T):
        raise RuntimeError(f"make_dataloader: the runner sent a batch of {b} x {t}, not the {B} x {T} asked for")
    return epoch


def _read_into(channel: io.FileIO, tensor: torch.Tensor) -> None:
    """The batch's payload straight into ``tensor``'s memory (a pinned buffer on a GPU): no copy on the way."""
    memory = (ctypes.c_char * (tensor.numel() * tensor.element_size())).from_address(tensor.data_ptr())
    _read_exact(channel, memoryview(memory).cast("B"))


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
    module = getattr(model, "_orig_mod", model)
    weights = sum(p.numel() * p.element_size() for p in module.parameters())
    rows = eval_rows(min(int(batch_size), EVAL_TOKENS // MAX_SEQ_LEN), PROFILE.eval_rows, release_cache(DEVICE),
                     MAX_SEQ_LEN, VOCAB_SIZE, weights)
    training = module.training
    module.eval()
    try:
        blob = export_model(module, rows, MAX_SEQ_LEN, DEVICE)
    finally:
        module.train(training)
    path = os.environ.get("FARM_HANDOVER") or os.path.join(os.getcwd(), "model.handover")
    with open(path, "wb") as f:
        f.write(blob)
    del blob
    release_cache(DEVICE)  # what export cached goes back before the evaluator loads its copy
    _emit(e="handover", path=path, batch=rows, bytes=os.path.getsize(path))
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
