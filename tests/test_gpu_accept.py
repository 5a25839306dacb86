"""bench/gpu_accept.sh, the one command a GPU session runs (issue 28 item 7), rehearsed on this CPU: the same steps
with cpu-smoke sizes, so the script itself is known to work before a GPU is lent."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_acceptance_script_runs_every_step_on_a_cpu(tmp_path: Path) -> None:
    env = dict(os.environ, OUT=str(tmp_path / "out"), GPU_ACCEPT_BUDGET="200", GPU_ACCEPT_TIMEOUT="320")
    proc = subprocess.run(["bash", "bench/gpu_accept.sh", "--allow-cpu", "--docs", str(tmp_path / "docs")], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=360)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    d = json.loads((tmp_path / "out" / "gpu_accept.json").read_text())
    runs = d["runs"]
    assert runs["seed cold"]["status"] == "ok" and runs["seed warm"]["status"] == "ok"
    assert runs["upstream-style, FA3 stand-in"]["status"] == "ok"  # a registered kernel, scored by the reference
    assert runs["look-ahead"]["status"] == "invalid" and "looks ahead" in runs["look-ahead"]["reason"]
    assert runs["forged program"]["status"] == "invalid"
    assert runs["training before the first batch"]["status"] in ("invalid", "skipped")
    assert runs["seed third"]["status"] in ("ok", "skipped")  # skipped only when the machine is too loaded
    warm = runs["seed warm"]
    for split in ("startup_s", "training_s", "handover_s", "eval_load_s", "scoring_s", "causal_check_s"):
        assert warm[split] is not None and warm[split] >= 0, split
    assert set(d["causality"]["modes"]) == {"scored", "rerun", "fp32"}
    assert all(m["honest_max_change"] <= 1e-3 for m in d["causality"]["modes"].values())
    assert d["kernel_parity"] == {"skipped": "no CUDA device"}
    md = (tmp_path / "docs" / "gpu-accept-cpu.md").read_text()
    assert "CPU rehearsal" in md and "## Goals" in md and "look-ahead gain bound" in md
    assert (tmp_path / "out" / "gpu-accept-cpu.md").read_text() == md
