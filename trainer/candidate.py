"""The process that runs a candidate ``train.py`` (started by trainer.runner).

It makes the harness importable as ``prepare``, connects the harness to the
runner's event pipe, and runs the script as ``__main__``. Nothing here is
trusted: the runner reads only what arrives on the pipe, in its own clock.
"""

from __future__ import annotations

import os
import runpy
import sys


def _seed_offset(seed: int) -> None:
    """Replicates on another seed: shift every torch.manual_seed call the script makes.

    Upstream train.py seeds itself with a literal, so the farm cannot pass a
    seed in; offsetting the call keeps such scripts unchanged.
    """
    if seed == 0:
        return
    import torch

    original = torch.manual_seed
    torch.manual_seed = lambda s: original(int(s) + 1_000_003 * seed)


def main(argv: list[str]) -> None:
    train_py = os.path.abspath(argv[1])
    fd = int(os.environ.pop("FARM_EVENTS_FD"))
    import trainer.prepare as prepare

    prepare._connect(fd)
    sys.modules["prepare"] = prepare
    _seed_offset(int(os.environ.get("FARM_SEED", "0")))
    sys.argv = [train_py]
    sys.path.insert(0, os.path.dirname(train_py))
    try:
        runpy.run_path(train_py, run_name="__main__")
    except MemoryError:
        prepare._emit(e="oom")
        raise
    except Exception as exc:
        if type(exc).__name__ == "OutOfMemoryError":
            prepare._emit(e="oom")
        raise


if __name__ == "__main__":
    main(sys.argv)
