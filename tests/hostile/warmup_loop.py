"""Class 4, a free training loop inside the warm-up: the warm-up batches (compilation, on a GPU) are not charged,
so draw the first batch and train on it over and over for four budgets before drawing the second, then train for
the budget as an honest run would.

Expect: invalid | warm-up allowance
"""

import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from prepare import MAX_SEQ_LEN, TIME_BUDGET, Tokenizer, evaluate_bpb, make_dataloader, training_seconds

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
        return F.cross_entropy(logits.view(-1, V), targets.reshape(-1), reduction=reduction)


model = Bigram()
opt = torch.optim.SGD(model.parameters(), lr=20.0)


def step(x, y):
    loss = model(x, y)
    opt.zero_grad()
    loss.backward()
    opt.step()


loader = make_dataloader(tokenizer, 64, MAX_SEQ_LEN, "train")  # one big first batch: all it trains on for free
x, y, _ = next(loader)
end = time.monotonic() + 4 * TIME_BUDGET
while time.monotonic() < end:
    step(x, y)
while training_seconds() < TIME_BUDGET:
    x, y, _ = next(loader)
    step(x, y)
val_bpb = evaluate_bpb(model, tokenizer, 8)
print("---")
print(f"val_bpb:          {val_bpb:.6f}")
