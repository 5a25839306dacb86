"""Text in, token rows out: the tokenizer and the packing both sides of the trust boundary share.

The candidate's training loader (``prepare.make_dataloader``) and the trusted
evaluator (``trainer.evaluate``) must cut text into rows the same way, or the
metric would depend on whose code packed it; so the rule lives here once, with
the profile and cache passed in rather than read from the environment.
"""

from __future__ import annotations

import bisect
import os
import pickle
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq

from trainer.profiles import Profile

# Mean characters per text below which a list is encoded in this thread: tiktoken's batch call submits one
# thread-pool task per text, which costs more than encoding a short one (the CPU profiles' 128-byte documents:
# 3.6 M tokens/s in one thread against 1.4 M batched, measured by bench/harness_windows.py's author).
SHORT_TEXTS = 1024


class Tokenizer:
    """A tiktoken encoding with a BOS special token (upstream's wrapper)."""

    def __init__(self, enc, bos_token: str) -> None:
        self.enc = enc
        self.bos_token_id = enc.encode_single_token(bos_token)

    @classmethod
    def load(cls, tokenizer_dir: str | Path, bos_token: str, profile_name: str) -> Tokenizer:
        path = os.path.join(tokenizer_dir, "tokenizer.pkl")
        if not os.path.exists(path):
            raise FileNotFoundError(f"no tokenizer at {path}: run `farm prepare --profile {profile_name}` first")
        with open(path, "rb") as f:
            return cls(pickle.load(f), bos_token)

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
            if sum(map(len, text)) < SHORT_TEXTS * len(text):  # short documents: a thread per text costs more
                rows = [self.enc.encode_ordinary(t) for t in text]
            else:
                rows = self.enc.encode_ordinary_batch(text, num_threads=num_threads)
            return rows if prepend is None else [[prepend, *row] for row in rows]
        raise ValueError(f"encode takes a str or a list of str, not {type(text)}")

    def decode(self, ids) -> str:
        return self.enc.decode(ids)


def split_files(profile: Profile, cache: Path, split: str) -> list[str]:
    """The shards of a split: the pinned validation shard, or every other shard in name order."""
    data_dir = profile.data_dir(cache)
    if split == "val":
        return [str(data_dir / profile.val_filename)]
    names = sorted(n for n in os.listdir(data_dir) if n.endswith(".parquet") and n != profile.val_filename)
    if not names:
        raise FileNotFoundError(f"no training shards in {data_dir}: run `farm prepare --profile {profile.name}`")
    return [str(data_dir / n) for n in names]


def documents(paths: list[str], files_read: list[str], chunk: int = 128) -> Iterator[tuple[list[str], int]]:
    """Endless (texts, epoch) chunks from the shards, in a fixed order; ``files_read`` records what was opened."""
    epoch = 1
    while True:
        for path in paths:
            if path not in files_read:
                files_read.append(path)
            pf = pq.ParquetFile(path)
            for rg in range(pf.num_row_groups):
                texts = pf.read_row_group(rg, columns=["text"]).column("text").to_pylist()
                for i in range(0, len(texts), chunk):
                    yield texts[i : i + chunk], epoch
        epoch += 1


def packed_rows(tokenizer: Tokenizer, T: int, docs: Iterator[tuple[list[str], int]], buffer_size: int = 1000):
    """Endless (row, epoch): rows of T+1 tokens, each starting with BOS, packed best-fit.

    The largest buffered document that fits the row's remaining space goes in
    whole; when none fits, the shortest one is cropped to fill the row, so no
    token is padding. The sequence of rows does not depend on the batch size.
    """
    capacity = T + 1
    bos = tokenizer.get_bos_token_id()
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
