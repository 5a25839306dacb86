"""Class 3, evaluation that trusts its arguments: hand over a tokenizer that packs many bytes into one token (the
old evaluation packed the validation text with the caller's tokenizer) and an absurd batch size.

Expect: ok
"""

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


class Packer:
    """Every 64 characters become one token id: near-zero loss per byte if the evaluation used it."""

    def __init__(self, inner):
        self.inner = inner

    def get_vocab_size(self):
        return V

    def get_bos_token_id(self):
        return self.inner.get_bos_token_id()

    def encode(self, text, prepend=None, num_threads=8):
        if isinstance(text, list):
            return [self.encode(t, prepend) for t in text]
        ids = [hash(text[i : i + 64]) % 4 for i in range(0, len(text), 64)]
        return ids if prepend is None else [prepend, *ids]


model = Bigram()
opt = torch.optim.SGD(model.parameters(), lr=20.0)
loader = make_dataloader(tokenizer, 8, MAX_SEQ_LEN, "train")
while training_seconds() < TIME_BUDGET:
    x, y, _ = next(loader)
    loss = model(x, y)
    opt.zero_grad()
    loss.backward()
    opt.step()

val_bpb = evaluate_bpb(model, Packer(tokenizer), 10**9)
print("---")
print(f"val_bpb:          {val_bpb:.6f}")
