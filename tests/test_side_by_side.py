"""Two farms and a `farm try` on one machine, at the same time, leave each other alone.

Each cleans up only what its own run left behind (markers, cgroups and labels carry the run's identity); before,
starting one killed the other's experiments and the victim ended `error`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="the isolated process sandbox needs root (CI is root)")]


def start(cwd: Path, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env.update(FARM_METRICS_PORT="none", FARM_TOURNAMENT__BASELINE_REPLICATES="2", FARM_TOURNAMENT__MIN_NOISE_DF="1")
    return subprocess.Popen([sys.executable, "-m", "cluster.cli", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_two_farms_and_a_farm_try_run_side_by_side(tmp_path: Path) -> None:
    farm = ["run", "--profile", "cpu-smoke", "--sandbox", "process", "--gpus", "1", "--max-experiments", "3"]
    first = start(tmp_path, *farm, "--run-dir", "runs/a")
    time.sleep(15)  # the first is running experiments when the others start (and clean up their leftovers)
    second = start(tmp_path, *farm, "--run-dir", "runs/b")
    tried = start(tmp_path, "try", "--profile", "cpu-smoke", "--sandbox", "process", "--out", "tries/one")
    outputs = {name: proc.communicate(timeout=600)[0] for name, proc in
               (("a", first), ("b", second), ("try", tried))}
    # What a killed neighbour looks like is `error` (its runner gone, no result). On 2 busy cores a 3 s cpu-smoke
    # run may also end `invalid` (a stall past its tiny budget): a verdict on the candidate, not a kill.
    assert first.returncode == 0 and second.returncode == 0, outputs
    assert "status:            error" not in outputs["try"], outputs["try"]
    assert "status:            " in outputs["try"] and (tmp_path / "tries/one/out/result.json").is_file()
    for run in ("a", "b"):
        status = json.loads((tmp_path / "runs" / run / "status.json").read_text())
        assert sum(status["by_status"].values()) == 3 and "error" not in status["by_status"], (run, status)
        assert status["by_status"].get("ok", 0) >= 2, (run, status, outputs[run][-2000:])
