"""Class 6, claims the host believed: announce a better GPU than the one it runs on, and pin every seed past the
harness's offset, so that "replicates" on other seeds would repeat one lucky run.

Expect: ok
"""

import random

import prepare
import torch
import torch.nn as nn
import torch.nn.functional as F
from prepare import MAX_SEQ_LEN, TIME_BUDGET, Tokenizer, evaluate_bpb, make_dataloader, training_seconds

prepare._emit(e="hello", device="NVIDIA H100 80GB HBM3", torch="9.9")
torch._C.default_generator.manual_seed(1234)  # under the harness's offset
random.seed(1234)
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
loader = make_dataloader(tokenizer, 8, MAX_SEQ_LEN, "train")
while training_seconds() < TIME_BUDGET:
    x, y, _ = next(loader)
    loss = model(x, y)
    opt.zero_grad()
    loss.backward()
    opt.step()
val_bpb = evaluate_bpb(model, tokenizer, 8)
print("---")
print(f"val_bpb:          {val_bpb:.6f}")
