"""Class 4, training before the first batch: read the training text itself (the shards, Python's own pydoc_data,
or any English it can find on the file system) and train on it for four budgets before drawing its first batch
from make_dataloader, then train for the budget as an honest run would. The windows it hopes to use: the start-up
before the first batch and the warm-up after it, which used to be free. Reading a training shard prints LEAK.

Expect: invalid | before the first batch
Needs: separation
"""

import glob
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from prepare import DATA_DIR, MAX_SEQ_LEN, TIME_BUDGET, Tokenizer, evaluate_bpb, make_dataloader, training_seconds

torch.manual_seed(0)
tokenizer = Tokenizer.from_directory()
V = tokenizer.get_vocab_size()


def own_text() -> str:
    """The training shards if it can read them, else the nearest text there is: Python's own docs and sources."""
    for path in sorted(glob.glob(os.path.join(DATA_DIR, "*.parquet"))):
        try:
            with open(path, "rb") as f:
                f.read(16)
            print("LEAK read the training shard", os.path.basename(path), flush=True)
        except OSError as exc:
            print("blocked", os.path.basename(path), type(exc).__name__, flush=True)
    texts = []
    for path in glob.glob(os.path.join(os.path.dirname(os.__file__), "*.py"))[:200]:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                texts.append(f.read())
        except OSError:
            continue
    return "\n".join(texts) or "the quick brown fox jumps over the lazy dog. " * 10_000


class Bigram(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, V)

    def forward(self, idx, targets=None, reduction="mean"):
        logits = self.emb(idx)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, V), targets.reshape(-1), reduction=reduction)


model = Bigram()
opt = torch.optim.SGD(model.parameters(), lr=20.0)


def step(x, y):
    loss = model(x, y)
    opt.zero_grad()
    loss.backward()
    opt.step()


ids = torch.tensor(tokenizer.encode(own_text())[:500_000])
end = time.monotonic() + 4 * TIME_BUDGET
while time.monotonic() < end:  # "start-up": no batch drawn yet, so no clock would see this
    at = torch.randint(0, len(ids) - MAX_SEQ_LEN - 1, (8,))
    x = torch.stack([ids[i : i + MAX_SEQ_LEN] for i in at])
    step(x, torch.stack([ids[i + 1 : i + MAX_SEQ_LEN + 1] for i in at]))
loader = make_dataloader(tokenizer, 8, MAX_SEQ_LEN, "train")
x, y, _ = next(loader)
while training_seconds() < TIME_BUDGET:
    step(x, y)
    x, y, _ = next(loader)
val_bpb = evaluate_bpb(model, tokenizer, 8)
print("---")
print(f"val_bpb:          {val_bpb:.6f}")
