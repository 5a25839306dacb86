"""Rules about isolation that need no sandbox run: when the farm refuses to start, and the cgroup v2 layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.config import FarmConfig
from cluster.execution.spec import ExperimentSpec, Limits
from cluster.run_cli import unisolated_refusal
from cluster.sandbox import process


@pytest.mark.parametrize(("kind", "sandbox", "euid", "allowed", "refused"), [
    ("claude", "process", 1000, False, True),  # an LLM's code, no root, no opt-in: refused
    ("openai", "process", 1000, False, True),
    ("claude", "process", 1000, True, False),  # opted in
    ("claude", "process", 0, False, False),  # root: the isolated process sandbox
    ("claude", "docker", 1000, False, False),
    ("mutate", "process", 1000, False, False),  # the offline proposer's edits are the farm's own
])
def test_llm_code_needs_isolation_or_an_explicit_yes(kind, sandbox, euid, allowed, refused) -> None:
    config = FarmConfig(agents={"kind": kind, "count": 2}, allow_unisolated=allowed)
    reason = unisolated_refusal(config, sandbox, euid)
    assert (reason is not None) == refused
    if refused:
        assert "--allow-unisolated" in reason and "Docker" in reason and kind in reason


def test_a_mixed_population_with_one_llm_agent_is_refused_too() -> None:
    config = FarmConfig(agents={"kind": "mutate", "count": 2, "options": [{}, {"kind": "claude"}]})
    assert "claude" in unisolated_refusal(config, "process", 1000)


def test_cgroup_v2_gets_pids_memory_swap_and_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a unified hierarchy: one cgroup per experiment, controllers delegated down to it, every limit set."""
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("memory pids\n")
    monkeypatch.setattr(process, "CGROUP_ROOT", root)
    parent = root / process.CGROUP_PARENT
    parent.mkdir()  # the kernel fills these in; a plain directory needs them written
    (parent / "cgroup.controllers").write_text("cpu memory pids\n")
    (parent / "cgroup.subtree_control").write_text("")
    spec = ExperimentSpec(experiment_id="e1", train_py="", profile="cpu-tiny", run_dir=tmp_path / "run",
                          cache_dir=tmp_path, limits=Limits(pids=123, memory_mb=456))
    [path] = process._make_cgroups("owner.e1.abc", spec)
    assert path == parent / "owner.e1.abc"
    assert (path / "pids.max").read_text() == "123"
    assert (path / "memory.max").read_text() == str(456 * 1024**2) and (path / "memory.swap.max").read_text() == "0"
    assert (path / "cpu.max").read_text() == "125000 100000"  # cpu-tiny: 1 torch thread + the runner's slack
    assert (root / "cgroup.subtree_control").read_text() == "+cpu"  # what was missing at the root
    assert (parent / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
