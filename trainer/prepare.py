"""The fixed harness that ``train.py`` imports as ``prepare``.

It keeps upstream autoresearch's interface (constants, ``Tokenizer``,
``make_dataloader``, ``evaluate_bpb``, ``get_token_bytes``) so an existing
``train.py`` runs unchanged, with values from the active profile
(``FARM_PROFILE``). Unlike upstream it also *observes*: every training batch
drawn and every evaluation is reported to the trusted runner over a pipe, and
the runner, not ``train.py``, decides whether the run kept to its budget and
what its val_bpb is. It adds one function, ``training_seconds()``, the
budget used so far as the harness counts it.

Data preparation itself lives in ``trainer.data`` (``farm prepare``).
"""

from __future__ import annotations

import bisect
import json
import math
import os
import pickle
import time
from collections.abc import Iterator

import pyarrow.parquet as pq
import torch

from trainer.clock import TrainingClock
from trainer.data import BOS_TOKEN
from trainer.profiles import active_profile, cache_dir

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
_clock = TrainingClock(PROFILE.clock, PROFILE.warmup_batches, PROFILE.stall_factor, PROFILE.stall_floor)


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


class Tokenizer:
    """A tiktoken encoding with a BOS special token (upstream's wrapper)."""

    def __init__(self, enc) -> None:
        self.enc = enc
        self.bos_token_id = enc.encode_single_token(BOS_TOKEN)

    @classmethod
    def from_directory(cls, tokenizer_dir: str = TOKENIZER_DIR) -> Tokenizer:
        path = os.path.join(tokenizer_dir, "tokenizer.pkl")
        if not os.path.exists(path):
            raise FileNotFoundError(f"no tokenizer at {path}: run `farm prepare --profile {PROFILE.name}` first")
        with open(path, "rb") as f:
            return cls(pickle.load(f))

    def get_vocab_size(self) -> int:
        return self.enc.n_vocab

    def get_bos_token_id(self) -> int:
        return self.bos_token_id

    def encode(self, text, prepend=None, num_threads: int = 8):
        if prepend is not None and not isinstance(prepend, int):
            raise TypeError(f"prepend must be an int token id, got {type(prepend)}")
        if isinstance(text, str):
            ids = self.enc.encode_ordinary(text)
            return ids if prepend is None else [prepend, *ids]
        if isinstance(text, list):
            rows = self.enc.encode_ordinary_batch(text, num_threads=num_threads)
            return rows if prepend is None else [[prepend, *row] for row in rows]
        raise ValueError(f"encode takes a str or a list of str, not {type(text)}")

    def decode(self, ids) -> str:
        return self.enc.decode(ids)


def get_token_bytes(device="cpu") -> torch.Tensor:
    """UTF-8 byte length of every token id; 0 for special tokens."""
    with open(os.path.join(TOKENIZER_DIR, "token_bytes.pt"), "rb") as f:
        return torch.load(f, map_location=device)


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def _split_files(split: str) -> list[str]:
    val_path = os.path.join(DATA_DIR, VAL_FILENAME)
    if split == "val":
        return [val_path]
    names = sorted(n for n in os.listdir(DATA_DIR) if n.endswith(".parquet") and n != VAL_FILENAME)
    if not names:
        raise FileNotFoundError(f"no training shards in {DATA_DIR}: run `farm prepare --profile {PROFILE.name}`")
    return [os.path.join(DATA_DIR, n) for n in names]


def _documents(split: str, files_read: list[str], chunk: int = 128) -> Iterator[tuple[list[str], int]]:
    """Endless (texts, epoch) chunks from the split's shards, in a fixed order."""
    epoch = 1
    while True:
        for path in _split_files(split):
            if path not in files_read:
                files_read.append(path)
            pf = pq.ParquetFile(path)
            for rg in range(pf.num_row_groups):
                texts = pf.read_row_group(rg, columns=["text"]).column("text").to_pylist()
                for i in range(0, len(texts), chunk):
                    yield texts[i : i + chunk], epoch
        epoch += 1


def _packed_rows(tokenizer: Tokenizer, T: int, split: str, buffer_size: int, files_read: list[str]):
    """Endless (row, epoch): rows of T+1 tokens, each starting with BOS, packed best-fit.

    The largest buffered document that fits the row's remaining space goes in
    whole; when none fits, the shortest one is cropped to fill the row, so no
    token is padding. The sequence of rows does not depend on the batch size.
    """
    capacity = T + 1
    bos = tokenizer.get_bos_token_id()
    docs = _documents(split, files_read)
    lengths: list[int] = []  # sorted, parallel to `buffer`
    buffer: list[list[int]] = []
    epoch = 1
    while True:
        row: list[int] = []
        while len(row) < capacity:
            while len(buffer) < buffer_size:
                texts, epoch = next(docs)
                for ids in tokenizer.encode(texts, prepend=bos):
                    at = bisect.bisect_left(lengths, len(ids))
                    lengths.insert(at, len(ids))
                    buffer.insert(at, ids)
            remaining = capacity - len(row)
            fit = bisect.bisect_right(lengths, remaining) - 1
            if fit >= 0:
                lengths.pop(fit)
                row.extend(buffer.pop(fit))
            else:
                lengths.pop(0)
                row.extend(buffer.pop(0)[:remaining])
        yield row, epoch


def make_dataloader(tokenizer: Tokenizer, B: int, T: int, split: str, buffer_size: int = 1000):
    """Endless (inputs, targets, epoch) with (B, T) int64 tensors on the device.

    Drawing a "train" batch is what the harness's training clock counts.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', not {split!r}")
    rows = _packed_rows(tokenizer, T, split, buffer_size, files_read=[])
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
# Evaluation (the fixed metric)
# ---------------------------------------------------------------------------


@torch.no_grad()
def evaluate_bpb(model, tokenizer: Tokenizer, batch_size: int) -> float:
    """Bits per byte on the pinned validation shard.

    Sums per-token loss (nats) over targets that are real bytes (special
    tokens have byte length 0) and divides by ln 2 x their bytes. Exactly
    EVAL_TOKENS // MAX_SEQ_LEN rows are scored whatever ``batch_size`` is, so
    the batch size changes memory use, never the metric.
    """
    if on_cuda := DEVICE == "cuda":
        torch.cuda.synchronize()
    started = time.monotonic()
    _clock.pause(started)
    _emit(e="eval_start", t=started)
    token_bytes = get_token_bytes(device=DEVICE)
    files_read: list[str] = []
    rows = _packed_rows(tokenizer, MAX_SEQ_LEN, "val", 1000, files_read)
    n_rows = EVAL_TOKENS // MAX_SEQ_LEN
    total_nats = torch.zeros((), dtype=torch.float64, device=DEVICE)
    total_bytes = torch.zeros((), dtype=torch.int64, device=DEVICE)
    leak_ratio = None
    done = 0
    while done < n_rows:
        b = min(batch_size, n_rows - done)
        data = torch.tensor([next(rows)[0] for _ in range(b)], dtype=torch.long, device=DEVICE)
        x, y = data[:, :-1], data[:, 1:]
        loss = _per_token_loss(model, x, y)
        nbytes = token_bytes[y.reshape(-1)]
        total_nats += (loss * (nbytes > 0)).sum(dtype=torch.float64)
        total_bytes += nbytes.sum()
        if leak_ratio is None:
            leak_ratio = _target_leak_ratio(model, x, tokenizer.get_vocab_size())
        done += b
    val_bpb = (total_nats / (math.log(2) * total_bytes)).item()
    if on_cuda:
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 1024**2 if on_cuda else None
    _emit(
        e="eval_done",
        val_bpb=val_bpb if math.isfinite(val_bpb) else str(val_bpb),
        tokens=n_rows * MAX_SEQ_LEN,
        files=[os.path.basename(p) for p in files_read],
        leak_ratio=leak_ratio,
        peak_vram_mb=peak,
        t=(ended := time.monotonic()),
    )
    _clock.resume(ended)
    return val_bpb


def _per_token_loss(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    loss = model(x, y, reduction="none")
    if not isinstance(loss, torch.Tensor) or loss.numel() != y.numel():
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise RuntimeError(
            f"evaluate_bpb: model(x, y, reduction='none') must return one loss per target token "
            f"({y.numel()} values), got {shape}"
        )
    return loss.reshape(-1).float()


def _target_leak_ratio(model, x: torch.Tensor, vocab_size: int) -> float:
    """Mean probability the model gives to *random* targets, times the vocab size.

    For any real language model this averages 1 (probabilities sum to one);
    a forward pass that peeks at the targets it is scored against scores
    random targets as likely too, and the ratio explodes.
    """
    g = torch.Generator(device="cpu").manual_seed(1234)
    y = torch.randint(0, vocab_size, x.shape, generator=g).to(x.device)
    p = torch.exp(-_per_token_loss(model, x, y).double())
    return float(p.mean().item() * vocab_size)
