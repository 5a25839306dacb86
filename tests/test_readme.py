"""The README's main command, run as a new user runs it: a fresh clone, `make farm`, no Docker, no API key.

Every other test passes absolute paths and an installed venv; the first user has neither. This test clones
the repository into a temporary directory and runs `make farm` there exactly as the README says (its own
`make install` included), with a small FARM_ARGS, the default relative run dir, a relative FARM_CACHE, no
Docker Engine reachable and no API key, then reads what the run left. A second test runs a farm whose sandbox
cannot start: it must stop after a few experiments with a clear message and a non-zero exit.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the isolated process sandbox needs root (CI is root)")


def user_env(**extra: str) -> dict[str, str]:
    """A new user's environment: no API key, no Docker Engine at hand, nothing of this test session's."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ANTHROPIC_", "FARM_", "PYTEST_", "VIRTUAL_ENV", "RAY_"))}
    env["DOCKER_HOST"] = "unix:///nonexistent/docker.sock"  # as on a machine without an engine
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    return {**env, **extra}


@pytest.mark.slow
@needs_root
def test_make_farm_from_a_fresh_clone_runs_real_experiments(tmp_path: Path) -> None:
    clone = tmp_path / "autoresearch-farm"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = user_env(FARM_CACHE="./cache")  # relative, resolved once where it enters
    proc = subprocess.run(["make", "farm", "FARM_ARGS=--max-experiments 5"], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=1500)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]
    runs = [p for p in (clone / "runs").iterdir() if (p / "farm-config.json").is_file()]
    assert len(runs) == 1, output[-3000:]
    run_dir = runs[0]
    rows = [line.split("\t") for line in (run_dir / "results.tsv").read_text().splitlines()[1:]]
    values = [float(r[1]) for r in rows]  # upstream's format: 0.000000 for a run without a value
    assert len([v for v in values if math.isfinite(v) and v > 0]) >= 3, (rows, output[-3000:])
    status = json.loads((run_dir / "status.json").read_text())
    assert status["main_val_bpb"] is not None and 0 < status["main_val_bpb"] < 8, status
    assert status["by_status"].get("error", 0) == 0, status
    assert "sandbox process" in output and "farm: finished: reached --max-experiments 5" in output
    assert (clone / "cache" / "cpu").exists() or any((clone / "cache").iterdir())  # FARM_CACHE=./cache was used


@pytest.mark.slow
@needs_root
def test_a_farm_whose_sandbox_cannot_start_stops_with_the_reason_and_a_non_zero_exit(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"  # this PATH's commands but util-linux's unshare: the process sandbox cannot start
    bin_dir.mkdir()
    for directory in user_env()["PATH"].split(os.pathsep):
        for command in Path(directory).glob("*") if Path(directory).is_dir() else []:
            if command.name != "unshare" and not (bin_dir / command.name).exists():
                (bin_dir / command.name).symlink_to(command)
    env = user_env(PATH=str(bin_dir), FARM_METRICS_PORT="none")
    proc = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "run", "--run-dir", "runs/broken", "--profile", "cpu-smoke",
         "--sandbox", "process", "--gpus", "1", "--max-experiments", "30", "--ui-port", "0"],
        cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=600,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-4000:]
    assert "3 experiments in a row failed through the farm's own fault" in output
    assert "could not start unshare" in output and "farm: FAILED" in output
    assert "farm run: run browser at http://127.0.0.1:" in output  # --ui-port: the run browser beside the farm
    status = json.loads((tmp_path / "runs" / "broken" / "status.json").read_text())
    assert status["by_status"] == {"error": 3} and "farm's own fault" in status["failure"]
    shown = subprocess.run([sys.executable, "-m", "cluster.cli", "status", "runs/broken"], cwd=tmp_path,
                           env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "farm's own fault" in shown.stdout


@pytest.mark.parametrize("command", ["status", "leaderboard", "report"])
def test_commands_that_read_a_run_dir_refuse_a_path_that_is_not_one(tmp_path: Path, command: str) -> None:
    for path in ("/nonexistent/run", str(tmp_path)):
        proc = subprocess.run([sys.executable, "-m", "cluster.cli", command, path], capture_output=True, text=True,
                              timeout=120, cwd=ROOT)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "not a farm run directory" in proc.stderr or "does not exist" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "cluster.cli", "show", "/nonexistent/run", "e0001"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
