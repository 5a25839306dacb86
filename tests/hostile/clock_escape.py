"""Class 4, training that escapes the clock: draw one batch, then train on data packed from the training shards
itself (where it can read them; else on the batch it drew) for four budgets, sending batch events with made-up
timestamps; then hand over.

Expect: invalid | budget
"""

import glob
import os
import time

import prepare
import pyarrow.parquet as pq
import torch
import torch.nn as nn
import torch.nn.functional as F
from prepare import DATA_DIR, MAX_SEQ_LEN, TIME_BUDGET, Tokenizer, evaluate_bpb, make_dataloader

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
first, _, _ = next(make_dataloader(tokenizer, 8, MAX_SEQ_LEN, "train"))  # the clock's only sight of training
texts = []
for path in sorted(glob.glob(os.path.join(DATA_DIR, "shard_00000.parquet"))):
    try:
        texts += pq.read_table(path).column("text").to_pylist()
    except OSError:
        pass  # sealed: the runner's user alone reads the shards
ids = torch.tensor([t for doc in tokenizer.encode(texts) for t in doc][: 200_000]) if texts else first.reshape(-1)
end = time.monotonic() + 4 * TIME_BUDGET
step = 0
while time.monotonic() < end:
    at = torch.randint(0, len(ids) - MAX_SEQ_LEN - 1, (8,))
    x = torch.stack([ids[i : i + MAX_SEQ_LEN] for i in at])
    y = torch.stack([ids[i + 1 : i + MAX_SEQ_LEN + 1] for i in at])
    loss = model(x, y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    step += 1
    if step % 20 == 0:
        prepare._emit(e="b", n=0, t=0.0)  # a batch "drawn" at the dawn of time
val_bpb = evaluate_bpb(model, tokenizer, 8)
print("---")
print(f"val_bpb:          {val_bpb:.6f}")
