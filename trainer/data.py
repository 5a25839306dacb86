"""Data and tokenizer preparation: everything ``farm prepare`` puts in the cache.

The cache is built once on the host and mounted read-only into every sandbox,
so the rules here are about never leaving it in a state a run could misread:
every file is written under a temporary name and renamed into place only when
complete and checked, and a file that already has its final name is trusted and
left alone. Downloads are resumable because the upstream shards are ~100 MB and
the farm often runs behind flaky links.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import pickle
import platform
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from trainer.profiles import Profile, cache_dir, shard_filename

if TYPE_CHECKING:
    import tiktoken

# torch, requests and tiktoken are imported where used: the runner imports this
# module on every experiment's start-up path and needs none of them.

Progress = Callable[[str], None]

SPECIAL_TOKENS = [f"<|reserved_{i}|>" for i in range(4)]
BOS_TOKEN = SPECIAL_TOKENS[0]
# GPT-4's split pattern with digits grouped 1-2 (not 1-3), as upstream uses: a
# tokenizer with a different pattern would make val_bpb incomparable.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)
TOKENIZER_FILES = ("tokenizer.pkl", "token_bytes.pt")
_ROUNDTRIP_TEXT = "Hello world! Numbers: 123 4567. Unicode: naïve café, 你好, 🙂\n\tdef f(x): return x"


class PrepareError(RuntimeError):
    """A failure the user can fix; the message says what went wrong and what to do."""


class _Transient(Exception):
    """A download attempt failed in a way that retrying may fix."""


class _Corrupt(_Transient):
    """The downloaded bytes are not a usable shard; they must not be resumed onto."""


class _Cancelled(Exception):
    """Another shard failed or the user pressed Ctrl-C: stop now, keep the .part for next time."""


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Have ``write`` fill a temp file beside ``path``, then rename it into place.

    A crash at any point leaves either the old file or none, never half a file
    under the final name; the temp name is unique per thread so parallel
    writers never share one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _check_parquet(path: Path) -> None:
    """Raise _Transient unless ``path`` is a parquet file whose ``text`` column reads.

    Reading every row group (not just the footer) catches a resume that spliced
    the wrong bytes into the middle of the file.
    """
    try:
        pf = pq.ParquetFile(path)
        if "text" not in pf.schema_arrow.names:
            raise ValueError(f"no 'text' column (columns: {pf.schema_arrow.names})")
        for i in range(pf.num_row_groups):
            pf.read_row_group(i, columns=["text"])
    except Exception as e:  # pyarrow raises several unrelated types for bad files
        raise _Corrupt(f"downloaded file is not a valid shard: {e}") from e


def _fetch(url: str, part: Path, timeout: float, say: Progress, stop: threading.Event) -> None:
    """One attempt to bring ``part`` up to the full remote file, resuming if it has bytes.

    Asks for identity encoding so the bytes on disk are the bytes the server's
    Content-Length and Range offsets count.
    """
    import requests
    have = part.stat().st_size if part.exists() else 0
    headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={have}-"} if have else {})}
    with requests.get(url, headers=headers, stream=True, timeout=timeout) as r:
        if r.status_code == 416 and have:
            return  # we already hold at least the whole file; validation decides
        if r.status_code == 404:
            raise PrepareError(f"{part.name[:-5]} does not exist at {url} (HTTP 404): check the base URL")
        if r.status_code in (408, 425, 429) or r.status_code >= 500:
            raise _Transient(f"HTTP {r.status_code}")
        if r.status_code >= 400:
            raise PrepareError(f"{url} refused the download (HTTP {r.status_code}): check access to the dataset")
        resumed = r.status_code == 206
        if resumed and not r.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
            part.unlink()
            raise _Transient(f"server sent a different range ({r.headers.get('Content-Range')}); restarting")
        offset = have if resumed else 0  # a 200 (server ignored Range) restarts from zero
        length = int(r.headers.get("Content-Length", -1))
        total = offset + length if length >= 0 else None
        got, last = 0, time.monotonic()
        with part.open("ab" if resumed else "wb") as f:
            for chunk in r.iter_content(chunk_size=1 << 16):
                if stop.is_set():
                    raise _Cancelled
                f.write(chunk)
                got += len(chunk)
                if time.monotonic() - last > 5:
                    last = time.monotonic()
                    say(f"  {part.name[:-5]}: {(offset + got) / 1e6:.1f}/{(total or 0) / 1e6:.1f} MB")
        if length >= 0 and got != length:
            raise _Transient(f"connection closed after {got} of {length} bytes")


_DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}


def _download_one(
    url: str, dest: Path, retries: int, timeout: float, backoff: float, say: Progress, stop: threading.Event
) -> None:
    import requests
    part = dest.with_name(dest.name + ".part")
    last_error = ""
    for attempt in range(1, retries + 1):
        try:
            _fetch(url, part, timeout, say, stop)
            _check_parquet(part)
            os.replace(part, dest)
            return
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema) as e:
            raise PrepareError(f"bad download URL {url!r}: {e}") from e
        except (_Transient, requests.RequestException) as e:
            last_error = str(e) or type(e).__name__
            if isinstance(e, _Corrupt):
                part.unlink(missing_ok=True)  # never resume onto a corrupt file
        except OSError as e:
            if e.errno in _DISK_ERRNOS:  # disk full, read-only, no permission: retrying cannot help
                raise PrepareError(f"cannot write {part}: {e}") from e
            last_error = str(e) or type(e).__name__  # a socket error that escaped requests' wrapping
        if attempt < retries:
            delay = backoff * 2 ** (attempt - 1)
            say(f"  {dest.name}: attempt {attempt}/{retries} failed ({last_error}); retrying in {delay:.1f}s")
            if stop.wait(delay):
                raise _Cancelled
    if part.exists() and part.stat().st_size == 0:
        part.unlink()
    kept = f"; the partial {part.name} is kept and the next run resumes it" if part.exists() else ""
    raise PrepareError(
        f"could not download {dest.name} from {url} after {retries} attempts ({last_error}){kept}: "
        "check the network and run `farm prepare` again"
    )


def download_shards(
    data_dir: Path,
    indices: list[int],
    base_url: str,
    *,
    retries: int = 5,
    timeout: float = 30,
    backoff: float = 1.0,
    workers: int = 4,
    progress: Progress = print,
) -> None:
    """Fetch ``shard_%05d.parquet`` for each index into ``data_dir``.

    ``retries`` is the number of attempts per shard. A file with its final name
    is complete by construction (it only gets that name after validation), so
    it is skipped. Partial downloads live in ``<name>.part`` and are resumed
    with a Range request; a 404 fails at once since retrying cannot help.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    todo = [i for i in dict.fromkeys(indices) if not (data_dir / shard_filename(i)).exists()]
    if not todo:
        progress(f"data: all {len(indices)} shards present in {data_dir}")
        return
    progress(f"data: downloading {len(todo)} of {len(indices)} shards into {data_dir}")
    lock, stop = threading.Lock(), threading.Event()
    done = [0, 0]  # shards, bytes

    def say(msg: str) -> None:
        with lock:
            progress(msg)

    def one(i: int) -> None:
        name = shard_filename(i)
        dest = data_dir / name
        _download_one(f"{base_url.rstrip('/')}/{name}", dest, retries, timeout, backoff, say, stop)
        size = dest.stat().st_size
        with lock:
            done[0] += 1
            done[1] += size
            progress(f"  [{done[0]}/{len(todo)}] {name} ({size / 1e6:.1f} MB, {done[1] / 1e6:.1f} MB total)")

    pool = ThreadPoolExecutor(max_workers=max(1, min(workers, len(todo))))
    try:
        for fut in as_completed([pool.submit(one, i) for i in todo]):
            fut.result()  # the first failure (or Ctrl-C) propagates at once...
    except BaseException:
        stop.set()  # ...and stops the other downloads at their next chunk instead of letting them finish
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _split_doc(text: str, chunk_bytes: int) -> list[str]:
    """Cut ``text`` into pieces of at most ``chunk_bytes`` UTF-8 bytes.

    Cuts go after the last whitespace in the window when that keeps at least
    half of it (so documents stay near the row length and the packer wastes
    little), else at the last character boundary. Whitespace-only pieces are
    dropped: they would cost a BOS token and teach nothing.
    """
    if chunk_bytes < 4:
        raise ValueError("chunk_bytes must be at least 4 (the longest UTF-8 character)")
    data, out, pos = text.encode("utf-8"), [], 0
    while pos < len(data):
        end = min(pos + chunk_bytes, len(data))
        if end < len(data):
            window = data[pos:end]
            ws = max(window.rfind(c) for c in (b" ", b"\n", b"\t", b"\r"))
            if ws + 1 >= chunk_bytes // 2:
                end = pos + ws + 1
            else:
                while data[end] & 0xC0 == 0x80:  # continuation byte: back up to a char start
                    end -= 1
        piece = data[pos:end].decode("utf-8")
        if piece.strip():
            out.append(piece)
        pos = end
    return out


def _write_text_parquet(path: Path, docs: list[str]) -> None:
    table = pa.table({"text": pa.array(docs, type=pa.string())})
    _atomic_write(path, lambda tmp: pq.write_table(table, tmp, row_group_size=max(1, len(docs))))


def build_pydoc_corpus(data_dir: Path, val_shard: int, chunk_bytes: int = 128) -> None:
    """Freeze CPython's ``pydoc_data.topics`` into train/val shards for the CPU profiles.

    It ships with every Python, so CPU profiles need no network. It is frozen
    once: CPython patch releases reword topics, and every sandbox must score
    against the same bytes, so existing shards are never rebuilt (only a lone
    shard, left by a deleted partner, is rebuilt with it). Every 8th
    topic (sorted keys) is validation, so val text is unseen in training.
    """
    if val_shard == 0:
        raise ValueError("val_shard must not be 0: shard_00000 holds the training split")
    train_path, val_path = data_dir / shard_filename(0), data_dir / shard_filename(val_shard)
    manifest_path = data_dir / "manifest.json"
    if train_path.exists() and val_path.exists():
        if not manifest_path.exists():
            _write_manifest(manifest_path, {"source": "unknown (frozen before manifests)"}, train_path, val_path)
        return
    from pydoc_data.topics import topics

    keys = sorted(topics)
    val_keys = [k for i, k in enumerate(keys) if i % 8 == 0]
    train_keys = [k for i, k in enumerate(keys) if i % 8 != 0]
    train_docs = [d for k in train_keys for d in _split_doc(topics[k], chunk_bytes)]
    val_docs = [d for k in val_keys for d in _split_doc(topics[k], chunk_bytes)]
    _write_text_parquet(train_path, train_docs)
    _write_text_parquet(val_path, val_docs)
    info = {
        "source": f"CPython {platform.python_version()} pydoc_data.topics",
        "chunk_bytes": chunk_bytes,
        "topics": {"train": len(train_keys), "val": len(val_keys)},
        "docs": {"train": len(train_docs), "val": len(val_docs)},
        "bytes": {"train": sum(len(d.encode()) for d in train_docs), "val": sum(len(d.encode()) for d in val_docs)},
        "val_topics": val_keys,
    }
    _write_manifest(manifest_path, info, train_path, val_path)


def _write_manifest(path: Path, info: dict, *shards: Path) -> None:
    info = {**info, "sha256": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in shards}}
    _atomic_write(path, lambda tmp: tmp.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n"))


def _save_tokenizer(enc: tiktoken.Encoding, tokenizer_dir: Path) -> None:
    """Check the round trip, then write token_bytes.pt and tokenizer.pkl atomically.

    Byte lengths come from the token's bytes, not a decoded str: a BPE token
    can hold part of a UTF-8 character, which decodes to U+FFFD (3 bytes).
    Specials get 0 so evaluate_bpb excludes them. The pickle is written last,
    so a present pickle means a complete tokenizer.
    """
    import torch
    if enc.decode(enc.encode_ordinary(_ROUNDTRIP_TEXT)) != _ROUNDTRIP_TEXT:
        raise PrepareError(f"tokenizer round trip failed: delete {tokenizer_dir} and prepare again")
    special_ids = {enc.encode_single_token(s) for s in enc.special_tokens_set}
    sizes = [0 if i in special_ids else len(enc.decode_single_token_bytes(i)) for i in range(enc.n_vocab)]
    tensor = torch.tensor(sizes, dtype=torch.int32)
    _atomic_write(tokenizer_dir / "token_bytes.pt", lambda tmp: torch.save(tensor, tmp))
    _atomic_write(tokenizer_dir / "tokenizer.pkl", lambda tmp: tmp.write_bytes(pickle.dumps(enc)))


def tokenizer_ready(tokenizer_dir: Path) -> bool:
    """Whether both tokenizer files exist (they are only ever written whole)."""
    return all((Path(tokenizer_dir) / f).exists() for f in TOKENIZER_FILES)


def build_byte_tokenizer(tokenizer_dir: Path) -> None:
    """Write the 260-token byte-level tokenizer: 256 bytes plus the 4 specials.

    No merges means no training data and no Unicode surprises; bits per byte
    then equals the per-token loss over ln 2, which makes CPU runs easy to read.
    """
    import tiktoken
    if tokenizer_ready(tokenizer_dir):
        return
    specials = {tok: 256 + i for i, tok in enumerate(SPECIAL_TOKENS)}
    ranks = {bytes([i]): i for i in range(256)}
    enc = tiktoken.Encoding(name="farm-byte", pat_str=SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens=specials)
    _save_tokenizer(enc, tokenizer_dir)


def _training_texts(paths: list[Path], max_chars: int, doc_cap: int) -> Iterator[str]:
    """Documents from ``paths`` in order, each cut to ``doc_cap`` chars, stopping near ``max_chars``."""
    seen = 0
    for path in paths:
        pf = pq.ParquetFile(path)
        for i in range(pf.num_row_groups):
            for text in pf.read_row_group(i, columns=["text"]).column("text").to_pylist():
                if not text:
                    continue
                doc = text[:doc_cap]
                seen += len(doc)
                yield doc
                if seen >= max_chars:
                    return


def train_bpe_tokenizer(
    data_dir: Path,
    tokenizer_dir: Path,
    vocab_size: int,
    val_filename: str,
    *,
    max_chars: int = 1_000_000_000,
    doc_cap: int = 10_000,
    progress: Progress = print,
) -> None:
    """Train a BPE tokenizer with rustbpe on every shard except ``val_filename``.

    Training on the val shard would leak it into the metric. The vocabulary is
    ``vocab_size - 4`` learned tokens (256 bytes + merges) plus the specials
    after them, the same layout as upstream so its train.py runs unchanged.
    """
    import tiktoken
    if tokenizer_ready(tokenizer_dir):
        progress(f"tokenizer: present in {tokenizer_dir}")
        return
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size {vocab_size} is below 260 (256 bytes + 4 special tokens)")
    import rustbpe

    paths = sorted(p for p in Path(data_dir).glob("*.parquet") if p.name != val_filename)
    if not paths:
        raise PrepareError(
            f"no training shards in {data_dir} to train the tokenizer on: "
            "run `farm prepare --profile h100` (or your climbmix profile) to download them"
        )
    progress(f"tokenizer: training BPE ({vocab_size} tokens) on {len(paths)} shards")
    t0 = time.monotonic()
    bpe, n_learned = rustbpe.Tokenizer(), vocab_size - len(SPECIAL_TOKENS)
    try:
        bpe.train_from_iterator(_training_texts(paths, max_chars, doc_cap), n_learned, pattern=SPLIT_PATTERN)
    except (OSError, pa.ArrowException) as e:
        raise PrepareError(f"cannot read the shards in {data_dir} ({e}): delete the bad one and prepare again") from e
    ranks = {bytes(tok): rank for tok, rank in bpe.get_mergeable_ranks()}
    if len(ranks) != n_learned:
        raise PrepareError(
            f"the training text only supports {len(ranks)} BPE tokens, not {n_learned}: "
            "download more shards (--num-shards) or use a smaller vocab_size"
        )
    specials = {tok: len(ranks) + i for i, tok in enumerate(SPECIAL_TOKENS)}
    enc = tiktoken.Encoding(name="farm-bpe", pat_str=bpe.get_pattern(), mergeable_ranks=ranks, special_tokens=specials)
    _save_tokenizer(enc, tokenizer_dir)
    progress(f"tokenizer: trained in {time.monotonic() - t0:.1f}s, saved to {tokenizer_dir}")


def data_ready(profile: Profile, cache: Path | None = None) -> list[str]:
    """The files a run of ``profile`` needs that are missing, relative to the cache; [] when ready.

    A climbmix profile needs the val shard and at least one training shard
    (how many were downloaded is the user's choice).
    """
    cache = cache or cache_dir()
    data, tok = profile.data_dir(cache), profile.tokenizer_dir(cache)
    missing = [data / profile.val_filename] if not (data / profile.val_filename).exists() else []
    if profile.dataset == "pydoc":
        missing += [p for p in [data / shard_filename(0)] if not p.exists()]
    elif not any(p.name != profile.val_filename for p in data.glob("*.parquet")):
        missing.append(data / shard_filename(0))
    missing += [tok / f for f in TOKENIZER_FILES if not (tok / f).exists()]
    return [str(p.relative_to(cache)) for p in missing]


def seal_data(profile: Profile, cache: Path | None = None) -> None:
    """Make every shard of the profile's data set readable by its owner only: the validation shard and the
    training shards alike.

    Only the trusted side reads them: the evaluator the validation shard, the runner's feeder (trainer/feeder.py)
    the training shards, whose batches it hands out one at a time, each charged to the training clock. A candidate
    runs as another user in every sandbox that separates users, so with mode 0600 no shard is within its reach
    even though the cache is mounted: it cannot train on the training text before its first batch or between
    batches, where no clock sees it. Best effort on a cache the farm does not own (the owner's `farm prepare`
    seals it).
    """
    data = profile.data_dir(cache or cache_dir())
    try:
        shards = [p for p in data.iterdir() if p.name.endswith((".parquet", ".parquet.part"))]
    except OSError:
        return
    for shard in shards:
        try:
            if not shard.is_symlink() and shard.stat().st_mode & 0o077:
                shard.chmod(0o600)
        except OSError:
            pass


def prepare_profile(
    profile: Profile,
    cache: Path | None = None,
    *,
    num_shards: int = 10,
    base_url: str | None = None,
    progress: Progress = print,
) -> None:
    """Build everything ``profile`` needs in the cache; quick when it is already there.

    Holds an exclusive lock on the dataset's cache folder so two concurrent
    ``farm prepare`` calls take turns instead of appending to the same .part.
    """
    cache = cache or cache_dir()
    data_dir, tok_dir = profile.data_dir(cache), profile.tokenizer_dir(cache)
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir.parent / ".prepare.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if profile.dataset == "pydoc":
            build_pydoc_corpus(data_dir, profile.val_shard, chunk_bytes=profile.max_seq_len)
        else:
            url = base_url or profile.base_url
            if not url:
                raise PrepareError(f"profile {profile.name} has no base_url to download {profile.dataset} from")
            if num_shards < 1:
                raise ValueError("num_shards must be at least 1")
            indices = [i for i in range(num_shards) if i != profile.val_shard] + [profile.val_shard]
            download_shards(data_dir, indices, url, progress=progress)
        if profile.tokenizer == "byte":
            if profile.vocab_size != 260:
                raise ValueError(f"{profile.name}: a byte tokenizer has vocab_size 260, not {profile.vocab_size}")
            build_byte_tokenizer(tok_dir)
        else:
            train_bpe_tokenizer(data_dir, tok_dir, profile.vocab_size, profile.val_filename, progress=progress)
        seal_data(profile, cache)
    progress(f"{profile.name}: data and tokenizer ready in {cache}")
