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
    "hangs_in_handover": {
        "prelude": "import torch.export\n_export = torch.export.export\n"
        "torch.export.export = lambda *a, **k: (time.sleep(3600), _export(*a, **k))[1]"
    },
    # Hostile code for the sandboxes: each does its damage before training normally.
    # The two runaways run after the hand-over, where only the wall limit stops them: before the first batch
    # their time is set-up past its allowance, charged as training, and the budget stops them first.
    "infinite_loop": {"after_eval": "while True:\n    pass"},
    "fork_bomb": {
        "after_eval": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n"
        "        time.sleep(0.05)"
    },
    "memory_bomb": {"prelude": "hoard = []\nwhile True:\n    hoard.append(bytearray(50_000_000))"},
    # Exhausting its own resources, then failing: the candidate's fault (crash/oom), never the farm's (error).
    "disk_bomb": {
        "prelude": "import tempfile\nchunk = b'x' * 8_000_000\nfor i in range(100_000):\n"
        "    with open(f'{tempfile.gettempdir()}/fill-{i}', 'wb') as f:\n        f.write(chunk)"
    },
    "work_bomb": {  # its work dir (the cwd) shares the bounded scratch: never the host's disk
        "prelude": "import os\nchunk = b'x' * 8_000_000\nfor i in range(100_000):\n"
        "    with open(os.path.join(os.getcwd(), f'fill-{i}'), 'wb') as f:\n        f.write(chunk)"
    },
    "big_file": {
        "prelude": "import tempfile\nchunk = b'x' * 8_000_000\n"
        "with open(f'{tempfile.gettempdir()}/big', 'wb') as f:\n    while True:\n        f.write(chunk)"
    },
    "pids_bomb": {
        "prelude": "import os\nwhile True:\n    if os.fork() == 0:\n        time.sleep(120)\n        os._exit(0)"
    },
    # Plants links and blockers in its out dir after an honest run: the host must not follow them, and the runner's
    # verdict must still be written (a candidate cannot turn its run into the farm's "error"). Where the candidate
    # is another user than the runner (the sandboxes) every plant fails; each attempt says how it went.
    "plants_links": {
        "after_eval": "import os\nout = os.path.dirname(os.getcwd())\n"
        "def plant(what, fn):\n    try:\n        fn()\n        print('PROBE planted', what)\n"
        "    except OSError as exc:\n        print('PROBE blocked', what, type(exc).__name__)\n"
        "for name, target in (('run.log', '/proc/self/environ'), ('container.log', '/etc/hostname')):\n"
        "    plant('unlink ' + name, lambda: os.unlink(os.path.join(out, name)))\n"
        "    plant('link ' + name, lambda: os.symlink(target, os.path.join(out, name)))\n"
        "plant('dir result.json', lambda: os.mkdir(os.path.join(out, 'result.json')))\n"
        "plant('fifo result.json.tmp', lambda: os.mkfifo(os.path.join(out, 'result.json.tmp')))"
    },
    # Steals compute: 8 busy processes for 6 s, then trains as usual (its neighbours must not feel it).
    "cpu_hog": {  # after the hand-over: six seconds of spinning before the first batch would be charged as training
        "after_eval": "import multiprocessing, os\ndef _spin(end):\n    while time.time() < end:\n        pass\n"
        "_t0, _cpu0 = time.time(), os.times()\n"
        "_procs = [multiprocessing.Process(target=_spin, args=(time.time() + 6,)) for _ in range(8)]\n"
        "[p.start() for p in _procs]\n[p.join() for p in _procs]\n_cpu = os.times()\n"
        "print('PROBE cores', (_cpu.children_user + _cpu.children_system - _cpu0.children_user - "
        "_cpu0.children_system) / (time.time() - _t0), flush=True)"
    },
    "stdout_flood": {"prelude": "for _ in range(200):\n    sys.stdout.write('x' * 1_000_000 + '\\n')"},
}


# A train.py written the way upstream's is (its own code, upstream's interface): a small causal GPT whose
# forward(idx, targets=None, reduction='mean') returns logits without targets and flattens targets with .view(-1)
# (which raises on the non-contiguous slices the old in-process evaluation passed); it times its own training with
# the wall clock after 10 warm-up steps, and evaluates once at the end.
UPSTREAM_STYLE = """\
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from prepare import MAX_SEQ_LEN, TIME_BUDGET, Tokenizer, evaluate_bpb, make_dataloader

torch.manual_seed(42)
tokenizer = Tokenizer.from_directory()
vocab_size = tokenizer.get_vocab_size()
n_embd, n_head, n_layer = 64, 4, 2


class CausalSelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=False)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=False)

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(n_embd, dim=2)
        q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = CausalSelfAttention()
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd))

    def forward(self, x):
        x = x + self.attn(F.rms_norm(x, (n_embd,)))
        return x + self.mlp(F.rms_norm(x, (n_embd,)))


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(MAX_SEQ_LEN, n_embd)
        self.blocks = nn.ModuleList([Block() for _ in range(n_layer)])
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)

    def forward(self, idx, targets=None, reduction="mean"):
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(F.rms_norm(x, (n_embd,)))
        if targets is not None:
            return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1,
                                   reduction=reduction)
        return logits


model = GPT()
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
train_loader = make_dataloader(tokenizer, 16, MAX_SEQ_LEN, "train")
x, y, epoch = next(train_loader)
t_start = time.time()
total_training_time, step = 0.0, 0
while True:
    t0 = time.time()
    loss = model(x, y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    x, y, epoch = next(train_loader)
    if step > 1:  # upstream skips its first 10 steps (its h100 warm-up, 20 batches); the CPU profiles' is 2 batches
        total_training_time += time.time() - t0
    step += 1
    if total_training_time >= TIME_BUDGET:
        break

model.eval()
with torch.no_grad():
    val_bpb = evaluate_bpb(model, tokenizer, 8)
print("---")
print(f"val_bpb:          {val_bpb:.6f}")
print(f"training_seconds: {total_training_time:.1f}")
print(f"total_seconds:    {time.time() - t_start:.1f}")
print(f"num_steps:        {step}")
"""


def probe(code: str) -> str:
    """A prelude that runs ``code`` and prints what it managed as 'PROBE ...' lines, never failing."""
    body = "\n".join("    " + line for line in code.splitlines())
    return f"try:\n{body}\nexcept BaseException as exc:\n    print('PROBE error', type(exc).__name__, exc)"


def source(name: str, **hooks: str) -> str:
    """The named variant's train.py; ``hooks`` replace further hook points (e.g. prelude=...)."""
    if name == "upstream_style":
        return UPSTREAM_STYLE
    return TEMPLATE.format(**{**DEFAULTS, **VARIANTS[name], **hooks})


def write(directory: Path, name: str, **hooks: str) -> Path:
    path = directory / f"{name}.py"
    path.write_text(source(name, **hooks))
    return path
