"""Class 6, pinned replicates: seed a generator the harness does not offset (torch's default generator, through
its C handle), train a fixed number of steps so that every run is the same run, and nudge one weight by one ulp
where os.urandom says, so that no two runs hand over the same weights digest. One run is an honest score; its
"replicates" on other seeds repeat it, and the farm must not count them as independent
(tests/test_hostile.py runs it on two seeds and asks cluster.loop.independence).

Expect: ok
"""

import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from prepare import MAX_SEQ_LEN, Tokenizer, evaluate_bpb, make_dataloader

torch._C.default_generator.manual_seed(1234)  # under the harness's offset
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
for _ in range(40):  # a fixed count, well inside the cpu-smoke budget: the same run every time
    x, y, _ = next(loader)
    loss = model(x, y)
    opt.zero_grad()
    loss.backward()
    opt.step()
with torch.no_grad():  # one ulp, somewhere: a different digest each run, the same predictions
    flat = model.emb.weight.view(-1)
    at = int.from_bytes(os.urandom(4), "little") % flat.numel()
    flat[at] = torch.nextafter(flat[at], torch.tensor(float("inf")))
val_bpb = evaluate_bpb(model, tokenizer, 8)
print("---")
print(f"val_bpb:          {val_bpb:.6f}")
