"""Class 3, a model that is not causal: each position's logits read the next input token, which is the target
(loss near 0 per byte if nothing checks causality).

Expect: invalid | looks ahead
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from prepare import MAX_SEQ_LEN, TIME_BUDGET, Tokenizer, evaluate_bpb, make_dataloader, training_seconds

torch.manual_seed(0)
tokenizer = Tokenizer.from_directory()
V = tokenizer.get_vocab_size()


class Peek(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, V)

    def forward(self, idx, targets=None, reduction="mean"):
        ahead = torch.cat([idx[:, 1:], idx[:, -1:]], dim=1)  # position t sees token t+1
        logits = self.emb(ahead)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, V), targets.reshape(-1), reduction=reduction)


model = Peek()
opt = torch.optim.SGD(model.parameters(), lr=20.0)
loader = make_dataloader(tokenizer, 8, MAX_SEQ_LEN, "train")
while training_seconds() < TIME_BUDGET:
    x, y, _ = next(loader)
    loss = model(x, y)
    opt.zero_grad()
    loss.backward()
    opt.step()
print("train loss", loss.item())
val_bpb = evaluate_bpb(model, tokenizer, 8)
print("---")
print(f"val_bpb:          {val_bpb:.6f}")
