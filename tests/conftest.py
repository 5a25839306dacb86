"""Shared fixtures: one prepared cpu data cache per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def farm_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """FARM_CACHE for the whole session, with the cpu profiles' data prepared (offline, < 1 s)."""
    from trainer.data import prepare_profile
    from trainer.profiles import get_profile

    cache = tmp_path_factory.mktemp("farm-cache")
    cache.chmod(0o755)  # sandboxes read it as another user
    os.environ["FARM_CACHE"] = str(cache)
    prepare_profile(get_profile("cpu-tiny"), cache, progress=lambda _msg: None)
    return cache
