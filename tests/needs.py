"""What a test needs from the machine, said once: a missing engine skips the test on a laptop and fails it in CI."""

from __future__ import annotations

import os

import pytest

from cluster.sandbox import SandboxError, make_sandbox


def sandbox_or_skip(backend: str = "docker", what: str = "docker sandbox"):
    """``make_sandbox(backend)``; where it cannot be made (no Docker Engine, no image), the test is skipped, except
    under FARM_REQUIRE_DOCKER=1 (CI), where a skip would hide a missing install step: then it fails, saying why."""
    try:
        return make_sandbox(backend)
    except (SandboxError, ImportError) as exc:
        if os.environ.get("FARM_REQUIRE_DOCKER") == "1":
            pytest.fail(f"{what} required (FARM_REQUIRE_DOCKER=1) but unavailable: {exc}")
        pytest.skip(f"{what} unavailable: {exc}")
