"""Tests for trainer/data.py against a real HTTP server on 127.0.0.1 (no outside network)."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from trainer import data
from trainer.data import (
    BOS_TOKEN,
    SPECIAL_TOKENS,
    PrepareError,
    build_byte_tokenizer,
    build_pydoc_corpus,
    data_ready,
    download_shards,
    prepare_profile,
    tokenizer_ready,
    train_bpe_tokenizer,
)
from trainer.profiles import get_profile, shard_filename

FAST = {"backoff": 0.01, "timeout": 5}


def make_shard(seed: int, rows: int = 50, width: int = 200) -> bytes:
    """A parquet shard of random hex text (barely compressible, so size ~ rows*width)."""
    rng = random.Random(seed)
    docs = [rng.randbytes(width // 2).hex() for _ in range(rows)]
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": docs}), buf)
    return buf.getvalue()


class FileServer:
    """Serves ``files`` by name; ``plan[name]`` lists per-request misbehaviours, then ``sticky[name]``.

    Actions: ok, 500, 404, drop (send half the body then cut the connection),
    corrupt (non-parquet bytes), ignore_range (answer 200 with the whole body),
    slow (trickle the body over ~3 s).
    """

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.plan: dict[str, list[str]] = {}
        self.sticky: dict[str, str] = {}
        self.log: list[tuple[str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                rng = self.headers.get("Range")
                outer.log.append((name, rng))
                queue = outer.plan.get(name, [])
                action = queue.pop(0) if queue else outer.sticky.get(name, "ok")
                if action == "404" or name not in outer.files:
                    return self.send_error(404)
                if action == "500":
                    return self.send_error(500)
                body = b"this is not parquet\n" * 100 if action == "corrupt" else outer.files[name]
                start = 0
                if rng and action != "ignore_range":
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                payload = body[start:]
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if action == "drop":
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                if action == "slow":
                    step = len(payload) // 30 + 1
                    try:
                        for k in range(0, len(payload), step):
                            self.wfile.write(payload[k : k + step])
                            self.wfile.flush()
                            time.sleep(0.1)
                    except OSError:
                        pass  # the client gave up: expected
                    return
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/data"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def hits(self, name: str) -> list[str | None]:
        return [rng for n, rng in self.log if n == name]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    files = {shard_filename(i): make_shard(i) for i in (0, 1, 2, 9)}
    files[shard_filename(5)] = make_shard(5, rows=100, width=4000)  # ~400 KB: several read chunks
    srv = FileServer(files)
    yield srv
    srv.close()


def leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_download_shards_with_val_and_progress(server, tmp_path):
    msgs: list[str] = []
    download_shards(tmp_path, [0, 1, 2, 9], server.url, progress=msgs.append, **FAST)
    for i in (0, 1, 2, 9):
        assert (tmp_path / shard_filename(i)).read_bytes() == server.files[shard_filename(i)]
    assert leftovers(tmp_path) == sorted(shard_filename(i) for i in (0, 1, 2, 9))
    assert any("[4/4]" in m for m in msgs) and any("MB" in m for m in msgs)
    # Second call: everything present, nothing fetched.
    n = len(server.log)
    download_shards(tmp_path, [0, 1, 2, 9], server.url, progress=msgs.append, **FAST)
    assert len(server.log) == n and "all 4 shards present" in msgs[-1]


def test_dropped_connection_resumes_with_range(server, tmp_path):
    name = shard_filename(5)
    server.plan[name] = ["drop", "drop"]
    download_shards(tmp_path, [5], server.url, progress=lambda m: None, **FAST)
    hits = server.hits(name)
    assert len(hits) == 3 and hits[0] is None
    assert hits[1] is not None and hits[1].startswith("bytes=") and hits[1] != "bytes=0-"
    assert (tmp_path / name).read_bytes() == server.files[name]
    assert leftovers(tmp_path) == [name]


def test_part_kept_after_giving_up_and_resumed_next_run(server, tmp_path):
    name = shard_filename(5)
    server.sticky[name] = "drop"
    with pytest.raises(PrepareError, match="kept"):
        download_shards(tmp_path, [5], server.url, retries=2, progress=lambda m: None, **FAST)
    assert leftovers(tmp_path) == [f"{name}.part"]
    have = (tmp_path / f"{name}.part").stat().st_size
    assert have > 0
    server.sticky.pop(name)
    server.log.clear()
    download_shards(tmp_path, [5], server.url, progress=lambda m: None, **FAST)
    assert server.hits(name) == [f"bytes={have}-"]
    assert (tmp_path / name).read_bytes() == server.files[name]


def test_partial_part_resumed_with_range(server, tmp_path):
    name = shard_filename(5)
    (tmp_path / f"{name}.part").write_bytes(server.files[name][:1000])
    download_shards(tmp_path, [5], server.url, progress=lambda m: None, **FAST)
    assert server.hits(name) == ["bytes=1000-"]
    assert (tmp_path / name).read_bytes() == server.files[name]


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    name = shard_filename(1)
    (tmp_path / f"{name}.part").write_bytes(b"stale garbage" * 50)
    server.sticky[name] = "ignore_range"
    download_shards(tmp_path, [1], server.url, progress=lambda m: None, **FAST)
    assert server.hits(name) == ["bytes=650-"]
    assert (tmp_path / name).read_bytes() == server.files[name]
    assert leftovers(tmp_path) == [name]


def test_500_twice_then_success(server, tmp_path):
    name = shard_filename(0)
    server.plan[name] = ["500", "500"]
    msgs: list[str] = []
    download_shards(tmp_path, [0], server.url, progress=msgs.append, **FAST)
    assert len(server.hits(name)) == 3
    assert (tmp_path / name).read_bytes() == server.files[name]
    assert any("attempt 1/5 failed" in m for m in msgs)


def test_always_500_gives_up_and_leaves_nothing(server, tmp_path):
    name = shard_filename(0)
    server.sticky[name] = "500"
    with pytest.raises(PrepareError, match=f"{name}.*3 attempts.*farm prepare"):
        download_shards(tmp_path, [0], server.url, retries=3, progress=lambda m: None, **FAST)
    assert len(server.hits(name)) == 3
    assert leftovers(tmp_path) == []


def test_404_fails_fast_naming_the_shard(server, tmp_path):
    server.sticky[shard_filename(5)] = "slow"  # a download in flight must not delay the error
    t0 = time.monotonic()
    with pytest.raises(PrepareError, match=r"shard_00003\.parquet.*404") as info:
        download_shards(tmp_path, [5, 3], server.url, retries=5, backoff=10, progress=lambda m: None)
    assert time.monotonic() - t0 < 1.5
    assert server.url in str(info.value)
    assert len(server.hits(shard_filename(3))) == 1
    assert shard_filename(5) not in leftovers(tmp_path)  # at most its resumable .part


def test_corrupt_download_never_lands(server, tmp_path):
    name = shard_filename(2)
    server.sticky[name] = "corrupt"
    with pytest.raises(PrepareError, match="not a valid shard"):
        download_shards(tmp_path, [2], server.url, retries=3, progress=lambda m: None, **FAST)
    assert leftovers(tmp_path) == []
    # Corrupt once, then good: the corrupt bytes are discarded, not resumed onto.
    server.sticky.pop(name)
    server.plan[name] = ["corrupt"]
    server.log.clear()
    download_shards(tmp_path, [2], server.url, progress=lambda m: None, **FAST)
    assert server.hits(name) == [None, None]
    assert (tmp_path / name).read_bytes() == server.files[name]


def test_parquet_without_text_column_is_rejected(tmp_path):
    buf = io.BytesIO()
    pq.write_table(pa.table({"body": ["x"]}), buf)
    srv = FileServer({shard_filename(0): buf.getvalue()})
    try:
        with pytest.raises(PrepareError, match="text"):
            download_shards(tmp_path, [0], srv.url, retries=2, progress=lambda m: None, **FAST)
    finally:
        srv.close()
    assert leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- pydoc corpus


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def texts(p: Path) -> list[str]:
    return pq.read_table(p).column("text").to_pylist()


def test_pydoc_corpus_deterministic_bounded_disjoint_idempotent(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    build_pydoc_corpus(a, 1, chunk_bytes=128)
    build_pydoc_corpus(b, 1, chunk_bytes=128)
    train, val = shard_filename(0), shard_filename(1)
    assert sha(a / train) == sha(b / train) and sha(a / val) == sha(b / val)
    manifest = json.loads((a / "manifest.json").read_text())
    assert manifest["sha256"] == {train: sha(a / train), val: sha(a / val)}
    assert manifest["topics"]["train"] + manifest["topics"]["val"] > 70

    train_docs, val_docs = texts(a / train), texts(a / val)
    assert len(train_docs) == manifest["docs"]["train"] and len(val_docs) == manifest["docs"]["val"]
    assert all(0 < len(d.encode()) <= 128 and d.strip() for d in train_docs + val_docs)
    # Most documents fill (nearly) a whole row.
    assert sum(len(d.encode()) for d in train_docs) / len(train_docs) > 100
    from pydoc_data.topics import topics

    keys = sorted(topics)
    assert manifest["val_topics"] == keys[::8]
    # Val holds exactly the val topics' text and train the rest (only whitespace-only pieces are dropped).
    squash = lambda parts: "".join("".join(parts).split())
    assert squash(val_docs) == squash(topics[k] for k in keys[::8])
    assert squash(train_docs) == squash(topics[k] for i, k in enumerate(keys) if i % 8)

    mtimes = {p.name: p.stat().st_mtime_ns for p in a.iterdir()}
    build_pydoc_corpus(a, 1, chunk_bytes=128)
    assert {p.name: p.stat().st_mtime_ns for p in a.iterdir()} == mtimes


def test_split_doc_respects_utf8_and_whitespace():
    text = "héllo wörld 你好世界 " * 40 + "🙂" * 100
    pieces = data._split_doc(text, 16)
    assert all(len(p.encode()) <= 16 for p in pieces)
    assert "".join(pieces) == text  # nothing lost, no character split
    assert pieces[0] == "héllo wörld "  # cut at whitespace, not mid-word
    assert data._split_doc("   \n\n  ", 8) == []


# ----------------------------------------------------------------------------- tokenizers


def load(tok_dir: Path):
    enc = pickle.loads((tok_dir / "tokenizer.pkl").read_bytes())
    return enc, torch.load(tok_dir / "token_bytes.pt")


def test_byte_tokenizer(tmp_path):
    build_byte_tokenizer(tmp_path)
    assert tokenizer_ready(tmp_path)
    enc, token_bytes = load(tmp_path)
    assert enc.n_vocab == 260 and enc.encode_single_token(BOS_TOKEN) == 256
    assert [enc.encode_single_token(s) for s in SPECIAL_TOKENS] == [256, 257, 258, 259]
    text = "naïve café — 你好 🙂 x=12345"
    ids = enc.encode_ordinary(text)
    assert len(ids) == len(text.encode()) and enc.decode(ids) == text
    assert token_bytes.dtype == torch.int32 and token_bytes.shape == (260,)
    assert token_bytes[:256].eq(1).all() and token_bytes[256:].eq(0).all()


def write_docs(path: Path, docs: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": docs}), path)


def word_docs(seed: int, n: int = 200) -> list[str]:
    rng = random.Random(seed)
    words = ["the", "model", "train", "token", "über", "naïve", "数据", "loss", "42", "1999", "\n"]
    return [" ".join(rng.choice(words) for _ in range(60)) for _ in range(n)]


def test_train_bpe_tokenizer(tmp_path):
    d, tok = tmp_path / "data", tmp_path / "tok"
    write_docs(d / shard_filename(0), word_docs(0))
    write_docs(d / shard_filename(1), word_docs(1))
    write_docs(d / shard_filename(7), ["qqqqqq zzzzzz"] * 500)  # val: must not shape the merges
    msgs: list[str] = []
    train_bpe_tokenizer(d, tok, 300, shard_filename(7), progress=msgs.append)
    enc, token_bytes = load(tok)
    assert enc.n_vocab == 300 and enc.encode_single_token(BOS_TOKEN) == 296
    text = "the naïve model über 数据 loss 1999 🙂\n"
    assert enc.decode(enc.encode_ordinary(text)) == text
    assert len(enc.encode_ordinary("the model")) < len("the model")
    for i in range(enc.n_vocab):
        expected = 0 if i >= 296 else len(enc.decode_single_token_bytes(i))
        assert token_bytes[i].item() == expected
    assert not any(b"qq" in enc.decode_single_token_bytes(i) for i in range(296))
    mtime = (tok / "tokenizer.pkl").stat().st_mtime_ns
    train_bpe_tokenizer(d, tok, 300, shard_filename(7), progress=msgs.append)
    assert (tok / "tokenizer.pkl").stat().st_mtime_ns == mtime


def test_train_bpe_without_training_shards(tmp_path):
    write_docs(tmp_path / shard_filename(7), ["only validation"])
    with pytest.raises(PrepareError, match="no training shards.*farm prepare"):
        train_bpe_tokenizer(tmp_path, tmp_path / "tok", 300, shard_filename(7), progress=lambda m: None)
    assert not tokenizer_ready(tmp_path / "tok")


# ----------------------------------------------------------------------------- profiles


def test_prepare_pydoc_profile(tmp_path):
    profile = get_profile("cpu-smoke")
    assert data_ready(profile, tmp_path)  # nothing there yet
    prepare_profile(profile, tmp_path, progress=lambda m: None)
    assert data_ready(profile, tmp_path) == []
    assert get_profile("cpu-tiny").tokenizer_dir(tmp_path) == profile.tokenizer_dir(tmp_path)
    t0 = time.monotonic()
    prepare_profile(profile, tmp_path, progress=lambda m: None)
    assert time.monotonic() - t0 < 1


def test_prepare_climbmix_profile_from_local_server(tmp_path):
    profile = get_profile("h100").model_copy(update={"vocab_size": 300, "val_shard": 9})
    files = {shard_filename(i): _words_shard(i) for i in (0, 1, 9)}
    srv = FileServer(files)
    try:
        missing = data_ready(profile, tmp_path)
        assert "climbmix/data/shard_00009.parquet" in missing
        prepare_profile(profile, tmp_path, num_shards=2, base_url=srv.url, progress=lambda m: None)
        assert data_ready(profile, tmp_path) == []
        assert sorted(n for n, _ in srv.log) == [shard_filename(i) for i in (0, 1, 9)]
        n = len(srv.log)
        prepare_profile(profile, tmp_path, num_shards=2, base_url=srv.url, progress=lambda m: None)
        assert len(srv.log) == n
    finally:
        srv.close()
    enc, _ = load(profile.tokenizer_dir(tmp_path))
    assert enc.n_vocab == 300


def _words_shard(seed: int) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": word_docs(seed)}), buf)
    return buf.getvalue()
