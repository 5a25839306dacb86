"""The seed train.py for a profile.

There is one seed, ``trainer/train.py``, written for an H100. A profile may
rescale it (a CPU cannot train a 50M-parameter model in 20 s) by replacing
literals in its constants block, so every farm run starts from a file with
plain numbers an agent or a mutator can edit, and no profile logic inside.
"""

from __future__ import annotations

import re
from pathlib import Path

from trainer.profiles import Profile

SEED_PATH = Path(__file__).with_name("train.py")


def set_constants(source: str, values: dict[str, int | float | str]) -> str:
    """Replace ``NAME = literal`` lines, keeping each line's comment; every name must exist."""
    for name, value in values.items():
        pattern = re.compile(rf"^({re.escape(name)}\s*=\s*)([^#\n]*?)(\s*(#.*)?)$", re.M)
        source, count = pattern.subn(lambda m, v=value: f"{m.group(1)}{v!r}{m.group(3)}", source, count=1)
        if count == 0:
            raise KeyError(f"the constants block has no line `{name} = ...`")
    return source


def seed_source(profile: Profile) -> str:
    """The seed train.py text with the profile's constants applied."""
    return set_constants(SEED_PATH.read_text(), profile.seed_constants)
