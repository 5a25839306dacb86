"""Candidate train.py files for harness tests: one small template, many variants.

Each variant is a whole, runnable train.py; a variant changes the template
at named hook points, so a test reads as "the good script, except ...".
"""

from __future__ import annotations

from pathlib import Path

TEMPLATE = """\
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from prepare import MAX_SEQ_LEN, TIME_BUDGET, Tokenizer, evaluate_bpb, make_dataloader, training_seconds
{prelude}
torch.manual_seed(0)
tokenizer = Tokenizer.from_directory()
V = tokenizer.get_vocab_size()


class Bigram(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, V)

    def forward(self, idx, targets=None, reduction="mean"):
        logits = self.emb(idx)
        if targets is None:
            return logits
        {forward_extra}
        return F.cross_entropy(logits.view(-1, V), targets.reshape(-1), reduction=reduction)


model = Bigram()
optimizer = torch.optim.SGD(model.parameters(), lr={lr})
loader = make_dataloader(tokenizer, 8, MAX_SEQ_LEN, "train")
t_start = time.time()
step = 0
while {keep_training}:
    x, y, epoch = next(loader)
    loss = model(x, y)
    {in_loop}
    if not math.isfinite(loss.item()):
        print("FAIL")
        sys.exit(1)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    step += 1
    if step % 50 == 0:
        print(f"step {{step}} loss {{loss.item():.4f}}")

val_bpb = {evaluate}
{after_eval}
print("---")
print(f"val_bpb:          {{val_bpb:.6f}}")
print(f"training_seconds: {{training_seconds():.1f}}")
print(f"num_steps:        {{step}}")
"""

DEFAULTS = dict(
    prelude="",
    forward_extra="pass",
    lr="20.0",
    keep_training="training_seconds() < TIME_BUDGET",
    in_loop="pass",
    evaluate="evaluate_bpb(model, tokenizer, 8)",
    after_eval="",
)

VARIANTS: dict[str, dict[str, str]] = {
    "good": {},
    # upstream style: the script times itself with the wall clock
    "own_wall_clock": {"keep_training": "time.time() - t_start < TIME_BUDGET"},
    "syntax_error": {"prelude": "def broken(:\n    pass"},
    "import_error": {"prelude": "import a_module_that_does_not_exist"},
    "crash_mid_training": {"in_loop": "if step == 5:\n        raise RuntimeError('boom at step 5')"},
    "nan_loss": {"in_loop": "if step == 5:\n        loss = loss * float('nan')"},
    "fake_printed_bpb": {"after_eval": "val_bpb = 0.1"},
    "over_budget_3x": {"keep_training": "training_seconds() < 3 * TIME_BUDGET"},
    "never_evaluates": {"evaluate": "0.95"},
    "evaluates_on_train_split": {"prelude": "import prepare\nprepare.VAL_FILENAME = 'shard_00000.parquet'"},
    "monkeypatches_evaluate": {
        "prelude": "import prepare\nprepare.evaluate_bpb = lambda model, tokenizer, batch_size: 0.1\n"
        "evaluate_bpb = prepare.evaluate_bpb"
    },
    "reads_targets": {"forward_extra": "if reduction == 'none':\n            return torch.zeros(targets.numel())"},
    "hangs_in_eval": {"forward_extra": "if reduction == 'none':\n            time.sleep(3600)"},
    # Hostile code for the sandboxes: each does its damage before training normally.
    "infinite_loop": {"prelude": "while True:\n    pass"},
    "fork_bomb": {
        "prelude": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        time.sleep(0.05)"
    },
    "memory_bomb": {"prelude": "hoard = []\nwhile True:\n    hoard.append(bytearray(50_000_000))"},
    # Exhausting its own resources, then failing: the candidate's fault (crash/oom), never the farm's (error).
    "disk_bomb": {
        "prelude": "import tempfile\nchunk = b'x' * 8_000_000\nfor i in range(100_000):\n"
        "    with open(f'{tempfile.gettempdir()}/fill-{i}', 'wb') as f:\n        f.write(chunk)"
    },
    "big_file": {
        "prelude": "import tempfile\nchunk = b'x' * 8_000_000\n"
        "with open(f'{tempfile.gettempdir()}/big', 'wb') as f:\n    while True:\n        f.write(chunk)"
    },
    "pids_bomb": {
        "prelude": "import os\nwhile True:\n    if os.fork() == 0:\n        time.sleep(120)\n        os._exit(0)"
    },
    # Plants links and blockers in its out dir after an honest run: the host must not follow them, and the runner's
    # verdict must still be written (a candidate cannot turn its run into the farm's "error").
    "plants_links": {
        "after_eval": "import os\nout = os.path.dirname(os.getcwd())\n"
        "for name, target in (('run.log', '/proc/self/environ'), ('container.log', '/etc/hostname')):\n"
        "    try:\n        os.unlink(os.path.join(out, name))\n    except OSError:\n        pass\n"
        "    os.symlink(target, os.path.join(out, name))\n"
        "os.mkdir(os.path.join(out, 'result.json'))\nos.mkfifo(os.path.join(out, 'result.json.tmp'))"
    },
    # Steals compute: 8 busy processes for 6 s, then trains as usual (its neighbours must not feel it).
    "cpu_hog": {
        "prelude": "import multiprocessing, os\ndef _spin(end):\n    while time.time() < end:\n        pass\n"
        "_t0, _cpu0 = time.time(), os.times()\n"
        "_procs = [multiprocessing.Process(target=_spin, args=(time.time() + 6,)) for _ in range(8)]\n"
        "[p.start() for p in _procs]\n[p.join() for p in _procs]\n_cpu = os.times()\n"
        "print('PROBE cores', (_cpu.children_user + _cpu.children_system - _cpu0.children_user - "
        "_cpu0.children_system) / (time.time() - _t0), flush=True)"
    },
    "stdout_flood": {"prelude": "for _ in range(200):\n    sys.stdout.write('x' * 1_000_000 + '\\n')"},
}


def probe(code: str) -> str:
    """A prelude that runs ``code`` and prints what it managed as 'PROBE ...' lines, never failing."""
    body = "\n".join("    " + line for line in code.splitlines())
    return f"try:\n{body}\nexcept BaseException as exc:\n    print('PROBE error', type(exc).__name__, exc)"


def source(name: str, **hooks: str) -> str:
    """The named variant's train.py; ``hooks`` replace further hook points (e.g. prelude=...)."""
    return TEMPLATE.format(**{**DEFAULTS, **VARIANTS[name], **hooks})


def write(directory: Path, name: str, **hooks: str) -> Path:
    path = directory / f"{name}.py"
    path.write_text(source(name, **hooks))
    return path
