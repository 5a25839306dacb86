"""The whole farm on CPU: real Ray (logical GPUs), real git, real Parquet, the process sandbox.

Each test drives the real `farm run` command in a subprocess, as a user would,
and then reads what it left: the research repo, the ledger, results.tsv.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cluster.records.ledger import Ledger
from cluster.records.repo import ResearchRepo

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the isolated process sandbox needs root (CI is root)")

FAST_TOURNAMENT = {"baseline_replicates": 3, "min_noise_df": 2}


def farm_yaml(tmp_path: Path, **config) -> Path:
    data = {"profile": "cpu-smoke", "sandbox": "process", "gpus": 2, "metrics_port": None,
            "tournament": FAST_TOURNAMENT, **config}  # fmt: skip
    path = tmp_path / "farm.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def start_farm(tmp_path: Path, run_dir: Path, *args: str) -> subprocess.Popen:
    log = open(tmp_path / f"farm-{time.monotonic_ns()}.log", "w")
    return subprocess.Popen(
        [sys.executable, "-m", "cluster.cli", "run", "--run-dir", str(run_dir), *args],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path,
    )


def finished(run_dir: Path) -> list:
    return [r for r in Ledger(run_dir / "ledger").read() if r.event == "finished"]


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_farm_promotes_a_confirmed_improvement_and_records_agree(tmp_path: Path) -> None:
    changes = [{"DEPTH": 2}, {"WARMDOWN_RATIO": 0.3}]
    # cpu-tiny (20 s): cpu-smoke's 3 s runs take too few steps to be quiet enough to confirm anything. The paired
    # policy (what make farm runs) starts judging from the profile's documented noise, beside main's first runs
    config = farm_yaml(tmp_path, profile="cpu-tiny", tournament={"policy": "paired"},
                       agents={"count": 1, "kind": "script", "options": [{"changes": changes}]})
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "run", "--config", str(config), "--run-dir", str(run_dir),
         "--max-experiments", "6"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    latest = Ledger(run_dir / "ledger").latest()
    rows = finished(run_dir)
    assert len(rows) == len({r.experiment_id for r in rows}) <= 6  # each experiment counted once
    winner = next(r for r in latest.values() if r.kind == "candidate" and r.description == "DEPTH = 2")
    assert winner.verdict == "promote", winner.reason
    confirms = [r for r in latest.values() if r.replicate_of == winner.experiment_id]
    assert confirms and all(r.status == "ok" for r in confirms)  # promoted only after a replicate on another seed
    assert {r.seed for r in confirms}.isdisjoint({winner.seed})

    repo = ResearchRepo.open(run_dir / "repo")
    assert "DEPTH = 2" in repo.train_py_at(repo.main_head())
    promoted = [c for c in repo.log_main() if c.trailers.get("Farm-Experiment") == winner.experiment_id]
    assert len(promoted) == 1 and float(promoted[0].trailers["Farm-Val-Bpb"]) > 0

    tsv = (run_dir / "results.tsv").read_text().splitlines()
    assert tsv[0].split("\t") == ["commit", "val_bpb", "memory_gb", "status", "description"]
    assert len(tsv) - 1 == len(rows)
    kept = [line for line in tsv[1:] if line.split("\t")[3] == "keep" and "DEPTH = 2" in line]
    assert kept and kept[0].split("\t")[0] == winner.commit[:7]
    assert (run_dir / "progress.png").stat().st_size > 10_000


@pytest.mark.slow
def test_driver_killed_then_resumed_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    config = farm_yaml(tmp_path, agents={"count": 2, "kind": "mutate"})
    run_dir = tmp_path / "run"
    proc = start_farm(tmp_path, run_dir, "--config", str(config), "--max-experiments", "10")
    def three_finished() -> bool:
        assert proc.poll() is None, _logs(tmp_path)
        return (run_dir / "ledger").exists() and len(finished(run_dir)) >= 3

    wait_for(three_finished, 300, "3 finished experiments")
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started, at once
    proc.wait()
    before = {r.experiment_id: r for r in finished(run_dir)}
    main_before = ResearchRepo.open(run_dir / "repo").main_head()

    resumed = start_farm(tmp_path, run_dir, "--resume", str(run_dir), "--max-experiments", "10")
    assert resumed.wait(timeout=500) == 0, _logs(tmp_path)

    rows = finished(run_dir)
    ids = [r.experiment_id for r in rows]
    assert len(ids) == len(set(ids)), "an experiment was counted twice"
    after = {r.experiment_id: r for r in rows}
    for eid, row in before.items():  # nothing finished before the crash was lost or changed
        assert after[eid].val_bpb == row.val_bpb and after[eid].status == row.status
    assert len(rows) >= 10
    queued = {r.experiment_id for r in Ledger(run_dir / "ledger").read() if r.event == "queued"}
    assert set(after) <= queued
    repo = ResearchRepo.open(run_dir / "repo")
    ancestry = ["git", "-C", str(run_dir / "repo"), "merge-base", "--is-ancestor", main_before, repo.main_head()]
    assert subprocess.run(ancestry).returncode == 0  # main where it was, or moved forward
    subprocess.run(["git", "-C", str(run_dir / "repo"), "fsck", "--strict"], check=True, capture_output=True)


@pytest.mark.slow
def test_killed_ray_worker_reruns_the_experiment_once(tmp_path: Path) -> None:
    changes = [{"WARMDOWN_RATIO": 0.4}]
    config = farm_yaml(tmp_path, gpus=1, agents={"count": 1, "kind": "script", "options": [{"changes": changes}]},
                       tournament={**FAST_TOURNAMENT, "baseline_replicates": 2, "min_noise_df": 1})
    run_dir = tmp_path / "run"
    proc = start_farm(tmp_path, run_dir, "--config", str(config), "--max-experiments", "3")
    victim: dict[str, int] = {}

    def worker_running_an_experiment() -> bool:
        assert proc.poll() is None, _logs(tmp_path)
        for runner in _sandboxed_runners(run_dir):
            worker = _ray_worker_ancestor(runner)
            if worker:
                victim.update(worker=worker, runner=runner)
                return True
        return False

    wait_for(worker_running_an_experiment, 300, "an experiment in a Ray worker")
    marker = _environ(victim["runner"]).get("FARM_SANDBOX_ID", "")
    eid = marker.split(".")[1]  # OWNER.EXPERIMENT.ATTEMPT
    os.kill(victim["worker"], signal.SIGKILL)
    assert proc.wait(timeout=400) == 0, _logs(tmp_path)
    rows = [r for r in finished(run_dir) if r.experiment_id == eid]
    assert len(rows) == 1 and rows[0].status == "ok", rows  # re-run by Ray, counted once
    assert not _sandboxed_runners(run_dir), "the killed attempt left processes behind"


def test_bad_config_names_the_field_and_the_reason(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "cluster.cli", "run", "--agents", "0", "--run-dir",
                           str(tmp_path / "r")], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert "agents.count" in proc.stderr and "--agents" in proc.stderr
    assert not (tmp_path / "r").exists()  # nothing created for a run that cannot start


def _logs(tmp_path: Path) -> str:
    return "\n".join(p.read_text()[-3000:] for p in sorted(tmp_path.glob("farm-*.log")))


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def _sandboxed_runners(run_dir: Path) -> list[int]:
    """Runner processes of this run's experiments (other tests may run sandboxes at the same time)."""
    pids = []
    for proc_dir in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc_dir / "cmdline").read_bytes()
        except OSError:
            continue
        if b"trainer.runner" in cmdline and str(run_dir).encode() in cmdline:
            pids.append(int(proc_dir.name))
    return pids


def _ray_worker_ancestor(pid: int) -> int | None:
    for _ in range(10):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        if pid <= 1:
            return None
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"ray::" in cmdline or b"default_worker.py" in cmdline:
            return pid
    return None
