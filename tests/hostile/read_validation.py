"""Class 5, validation data within reach: look for the validation text in the cache, through the loader, in
Python's own pydoc_data (the CPU profiles' source), then train honestly, and once the model is handed over search
the whole file system for it. Each success prints a LEAK line.

Expect: ok
Needs: separation
"""

import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from prepare import (
    DATA_DIR,
    MAX_SEQ_LEN,
    TIME_BUDGET,
    VAL_FILENAME,
    Tokenizer,
    evaluate_bpb,
    make_dataloader,
    training_seconds,
)


def attempt(what, fn):
    try:
        fn()
        print("LEAK", what, flush=True)
    except Exception as exc:  # noqa: BLE001 - every way of failing is the point
        print("blocked", what, type(exc).__name__, flush=True)


attempt("read the validation shard", lambda: open(os.path.join(DATA_DIR, VAL_FILENAME), "rb").read(16))
attempt("import pydoc_data.topics", lambda: __import__("pydoc_data.topics"))
tokenizer = Tokenizer.from_directory()
attempt("the val loader", lambda: next(make_dataloader(tokenizer, 1, MAX_SEQ_LEN, "val")))
torch.manual_seed(0)
V = tokenizer.get_vocab_size()


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
loader = make_dataloader(tokenizer, 8, MAX_SEQ_LEN, "train")
while training_seconds() < TIME_BUDGET:
    x, y, _ = next(loader)
    loss = model(x, y)
    opt.zero_grad()
    loss.backward()
    opt.step()
val_bpb = evaluate_bpb(model, tokenizer, 8)
# The long search of the file system comes after the hand-over, where it is not charged (before the first batch
# it would be: a set-up of seconds is training time past its allowance). What it finds is what it could have used.
found = []
for top in ("/tmp", "/run", "/cache", "/out", "/root", "/home", "/work", "/opt", "/srv", "/var", "/usr", "/mnt"):
    for root, _dirs, files in os.walk(top):  # links are not followed
        found += [os.path.join(root, n) for n in files if n == VAL_FILENAME
                  or (n == "topics.py" and root.endswith("pydoc_data"))]
for path in found[:50]:
    attempt(f"read {path}", lambda p=path: open(p, "rb").read(16))
print("---")
print(f"val_bpb:          {val_bpb:.6f}")
