"""Training batches from the trusted side: the only way training text reaches a candidate.

Upstream's ``make_dataloader`` reads the shards in the training process. Here the shards are readable by the
runner's user only (``trainer.data.seal_data``): a candidate that could read them could train on them before its
first batch, or between batches, where no clock sees it. So the runner packs the rows (the same
``trainer.textdata`` rule as before, with the harness's tokenizer) and sends each batch down a pipe of its own
(the *data channel*) when the candidate asks for it with a ``b`` event; the event is charged on arrival, as every
batch always was, and the batch is only written after it.

A frame is a fixed header (kind, B, T, epoch, payload bytes) and a payload: for a batch, ``2*B*T`` little-endian
int64, the inputs (B, T) then the targets (B, T), the layout the candidate copies to the device in one go; for a
refusal, a UTF-8 message the candidate raises. One thread here prepares the next batch while the candidate trains
on the last, so what the candidate waits for is a pipe write, not tokenization.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import struct
import sys
import threading
from array import array
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from trainer.data import BOS_TOKEN
from trainer.profiles import Profile
from trainer.textdata import Tokenizer, documents, packed_rows, split_files

FRAME = struct.Struct("<BxxxIIqQ")  # kind, B, T, epoch, payload bytes
BATCH, REFUSED = 1, 2
MAX_BATCH_TOKENS = 1 << 24  # rows x (T + 1) of one batch: far above any real one (upstream's is 2^18)
MAX_ROW_LENGTHS = 4  # distinct T a run may ask for (each keeps a packing buffer)
MAX_PENDING = 1024  # batches asked for and not yet written: more is a candidate flooding the runner
PACKING_BUFFER = 1000  # documents the packer picks from (upstream's default)
PIPE_BYTES = 1 << 20  # the data pipe's kernel buffer: a GPU batch (a few MB) in few writes


def enlarge_pipe(fd: int) -> None:
    """Best effort: a bigger kernel buffer on a pipe means fewer wake-ups per batch."""
    try:
        fcntl.fcntl(fd, 1031, PIPE_BYTES)  # F_SETPIPE_SZ
    except OSError:
        pass


class Feeder:
    """Writes the batches the runner granted to the candidate's data channel, in the order granted."""

    def __init__(self, profile: Profile, cache: Path, fd: int) -> None:
        self.profile, self.cache, self.fd = profile, cache, fd
        self._tokenizer: Tokenizer | None = None
        self._lengths: set[int] = set()  # the T granted so far (the events thread's)
        self._streams: dict[int, Iterator[tuple[list[int], int]]] = {}
        self._ready: dict[int, deque[tuple[list[int], int]]] = {}  # packed rows waiting, per T
        self._grants: deque[tuple[int, int] | str] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.failure = ""  # the trusted side could not read its own data: the farm's fault
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def grant(self, B: object, T: object) -> str | None:
        """A batch the candidate asked for (its ``b`` event, already charged): queued for writing. Returns why it
        is refused instead (the candidate is sent the reason and raises it), or None."""
        why = self._refusal(B, T)
        if not self._queue(why or (B, T)):  # type: ignore[arg-type]
            return why or "too many batches asked for and not read"
        return why

    def refuse(self, why: str) -> None:
        """Answer one request with a refusal (a batch asked for after the model was handed over)."""
        self._queue(why)

    def _queue(self, item: tuple[int, int] | str) -> bool:
        """Hand ``item`` to the writer thread; False when a candidate flooding the runner filled the queue."""
        with self._cond:
            if len(self._grants) >= MAX_PENDING:
                return False
            self._grants.append(item)
            self._cond.notify()
        return True

    def _refusal(self, B: object, T: object) -> str | None:
        if type(B) is not int or type(T) is not int or B < 1 or T < 1:
            return f"make_dataloader needs positive integer B and T, not B={B!r}, T={T!r}"
        if B * (T + 1) > MAX_BATCH_TOKENS:
            return f"a batch of {B} x {T} tokens is larger than the harness serves ({MAX_BATCH_TOKENS} tokens)"
        if T not in self._lengths and len(self._lengths) >= MAX_ROW_LENGTHS:
            return f"at most {MAX_ROW_LENGTHS} different sequence lengths T per run"
        self._lengths.add(T)
        return None

    def close(self) -> None:
        """No more batches; the thread ends (a write blocked on a candidate that stopped reading ends with it)."""
        with self._cond:
            self._closed = True
            self._cond.notify()

    # -- the writer thread ---------------------------------------------------------------------------------------

    def _rows(self, T: int) -> Iterator[tuple[list[int], int]]:
        if self._tokenizer is None:
            self._tokenizer = Tokenizer.load(self.profile.tokenizer_dir(self.cache), BOS_TOKEN, self.profile.name)
        files = split_files(self.profile, self.cache, "train")
        return packed_rows(self._tokenizer, T, documents(files, files_read=[]), PACKING_BUFFER)

    def _take(self, B: int, T: int) -> tuple[list[list[int]], int]:
        if T not in self._streams:
            self._ready[T], self._streams[T] = deque(), self._rows(T)
        ready = self._ready[T]
        while len(ready) < B:
            ready.append(next(self._streams[T]))
        rows = [ready.popleft() for _ in range(B)]
        return [row for row, _ in rows], rows[-1][1]

    def _top_up(self, B: int, T: int) -> None:
        """Pack the next batch of this shape ahead, while the candidate trains on the one just sent."""
        ready = self._ready[T]
        while len(ready) < B:
            with self._cond:
                if self._grants or self._closed:
                    return  # the candidate is waiting: serve it first
            ready.append(next(self._streams[T]))

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._grants and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        return
                    grant = self._grants.popleft()
                if isinstance(grant, str):
                    message = grant.encode()
                    self._write(FRAME.pack(REFUSED, 0, 0, 0, len(message)) + message)
                    continue
                B, T = grant
                rows, epoch = self._take(B, T)
                payload = array("q", itertools.chain.from_iterable(row[:-1] for row in rows))
                payload.extend(itertools.chain.from_iterable(row[1:] for row in rows))
                if sys.byteorder != "little":
                    payload.byteswap()
                self._write(FRAME.pack(BATCH, B, T, epoch, len(payload) * 8))
                self._write(memoryview(payload).cast("B"))
                self._top_up(B, T)
        except _Gone:
            return  # the candidate is gone (EPIPE) or the channel closed: nothing left to feed
        except Exception as exc:  # the trusted side cannot read its own shards: the farm's fault, not the candidate's
            self.failure = f"the runner could not read the training data: {type(exc).__name__}: {exc}"[:500]

    def _write(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError as exc:
            raise _Gone from exc


class _Gone(Exception):
    """The data channel's reader went away."""
