"""The host reads and writes an experiment's files as hostile bytes: no link followed, no FIFO waited on, a cap."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cluster.execution.spec import ExperimentSpec
from cluster.sandbox.base import RESULT_MAX_BYTES, collect
from cluster.sandbox.untrusted import log_tail, read_bytes, read_text, write_bytes
from trainer.result import Status


def test_links_fifos_and_directories_are_not_read(tmp_path: Path) -> None:
    secret = tmp_path / "host-secret"
    secret.write_text("API_KEY=sk-ant-...")
    (tmp_path / "to-secret").symlink_to(secret)
    (tmp_path / "to-zero").symlink_to("/dev/zero")
    (tmp_path / "to-environ").symlink_to("/proc/self/environ")
    os.mkfifo(tmp_path / "fifo")  # opening it for reading would block forever
    (tmp_path / "dir").mkdir()
    for name in ("to-secret", "to-zero", "to-environ", "fifo", "dir", "missing"):
        assert read_bytes(tmp_path / name, 1024) is None, name
        assert read_text(tmp_path / name, 1024) == ""


def test_reads_are_capped_and_tails_are_the_end(tmp_path: Path) -> None:
    big = tmp_path / "run.log"
    big.write_bytes(b"x" * 3_000_000 + b"\nlast line\n")
    assert len(read_bytes(big, 1000)) == 1000
    assert read_text(big, 20, tail=True).endswith("last line\n")
    assert log_tail(big, 1) == "last line"


def test_a_write_replaces_a_planted_link_instead_of_writing_through_it(tmp_path: Path) -> None:
    host_file = tmp_path / "host-file"
    host_file.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "container.log").symlink_to(host_file)
    write_bytes(out / "container.log", b"the container's log")
    assert host_file.read_text() == "precious"
    assert not (out / "container.log").is_symlink() and (out / "container.log").read_bytes() == b"the container's log"
    (out / "planted").mkdir()
    with pytest.raises(OSError, match="directory planted"):
        write_bytes(out / "planted", b"x")


def test_collect_refuses_an_oversized_or_linked_result(tmp_path: Path, farm_cache: Path) -> None:
    spec = ExperimentSpec(experiment_id="e0001", train_py="", profile="cpu-smoke", run_dir=tmp_path,
                          cache_dir=farm_cache)
    out = tmp_path / "out"
    out.mkdir()
    (out / "result.json").write_bytes(b" " * (RESULT_MAX_BYTES + 10))
    result = collect(spec, out, 0.0, killed=False, exit_code=0)
    assert result.status == Status.ERROR and "unreadable result file" in result.reason
    (out / "result.json").unlink()
    (out / "result.json").symlink_to("/dev/zero")
    result = collect(spec, out, 0.0, killed=False, exit_code=0)
    assert result.status == Status.ERROR and "wrote no result" in result.reason
