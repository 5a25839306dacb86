"""Class 3, looking ahead where a spot check would not look: only at one position in 16, blended with an honest
bigram elsewhere (a check at a few random cuts misses it most of the time).

Expect: invalid | looks ahead
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from prepare import MAX_SEQ_LEN, TIME_BUDGET, Tokenizer, evaluate_bpb, make_dataloader, training_seconds

torch.manual_seed(0)
tokenizer = Tokenizer.from_directory()
V = tokenizer.get_vocab_size()


class SparsePeek(nn.Module):
    def __init__(self):
        super().__init__()
        self.now = nn.Embedding(V, V)
        self.ahead = nn.Embedding(V, V)

    def forward(self, idx, targets=None, reduction="mean"):
        nxt = torch.cat([idx[:, 1:], idx[:, -1:]], dim=1)
        peek = (torch.arange(idx.size(1), device=idx.device) % 16 == 5)[None, :, None]
        logits = torch.where(peek, self.ahead(nxt), self.now(idx))
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, V), targets.reshape(-1), reduction=reduction)


model = SparsePeek()
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
