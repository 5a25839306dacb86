"""The process that runs a candidate ``train.py`` (started by trainer.runner).

It makes the harness importable as ``prepare``, connects the harness to the
runner's event pipe, sets the replicate's seed, and runs the script as
``__main__``. Nothing here is trusted: the runner reads only what arrives on
the pipe, in its own clock, and scores only the model handed over.
"""

from __future__ import annotations

import os
import random
import runpy
import sys

# Replicate k's seeds differ from replicate 0's by this much times k, in every seeding call the script makes.
SEED_STRIDE = 1_000_003


def offset_seeds(seed: int) -> None:
    """Replicates on another seed: shift every usual seeding call the script makes by the replicate's offset.

    Upstream train.py seeds itself with a literal, so the farm cannot pass a seed in; offsetting the calls
    keeps such scripts unchanged. torch (global, CUDA, and new Generators), Python's ``random`` and numpy's
    legacy global seed are covered, so no usual call pins a replicate back to seed 0. A script that goes out
    of its way to undo this gains nothing: replicates with identical weights are flagged by the farm.
    """
    if seed == 0:
        return
    import torch

    shift = SEED_STRIDE * seed

    def shifted(fn):
        return lambda s, *a, **k: fn(int(s) + shift, *a, **k)

    torch.manual_seed = torch.random.manual_seed = shifted(torch.random.manual_seed)
    torch.cuda.manual_seed = shifted(torch.cuda.manual_seed)
    torch.cuda.manual_seed_all = shifted(torch.cuda.manual_seed_all)
    original_generator = torch.Generator

    class Generator(original_generator):  # torch.Generator(...).manual_seed(s)
        def manual_seed(self, s):
            return super().manual_seed(int(s) + shift)

    torch.Generator = Generator
    random.seed = shifted(random.seed)
    try:
        import numpy

        numpy.random.seed = shifted(numpy.random.seed)
    except ImportError:
        pass
    torch.random.manual_seed(0)  # a script that never seeds still differs per replicate


def main(argv: list[str]) -> None:
    train_py = os.path.abspath(argv[1])
    fd = int(os.environ.pop("FARM_EVENTS_FD"))
    # What every script's start-up pays for whatever it does, done here before its set-up allowance starts:
    # torch.optim's first optimizer imports torch._dynamo (about a second on a CPU).
    import torch._dynamo  # noqa: F401

    import trainer.prepare as prepare

    prepare._connect(fd)  # the hello: from here train.py's own set-up is timed
    sys.modules["prepare"] = prepare
    offset_seeds(int(os.environ.get("FARM_SEED", "0")))
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
