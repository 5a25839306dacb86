"""Class 3 through a registered kernel: "Flash Attention 3" (a stand-in registered under FA3's real operator name,
flash_attn_3::_flash_attn_forward) called with a right window of one token, so each position attends to the
next input token, which is its target. The evaluator runs known kernels through its own causal reference, and a
window it cannot reproduce is refused by name before any score is computed.

Expect: invalid | a sliding window
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from prepare import MAX_SEQ_LEN, TIME_BUDGET, Tokenizer, evaluate_bpb, make_dataloader, training_seconds

torch.manual_seed(0)
tokenizer = Tokenizer.from_directory()
V = tokenizer.get_vocab_size()
H, D = 2, 16

lib = torch.library.Library("flash_attn_3", "FRAGMENT")
lib.define("_flash_attn_forward(Tensor q, Tensor k, Tensor v, float? softmax_scale=None, bool causal=False, "
           "int window_size_left=-1, int window_size_right=-1, float softcap=0.0) -> (Tensor, Tensor, Tensor, Tensor)")


def windowed(q, k, v, softmax_scale=None, causal=False, window_size_left=-1, window_size_right=-1, softcap=0.0):
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.size(-1))
    i, j = torch.arange(q.size(1))[:, None], torch.arange(k.size(1))[None, :]
    s = s.masked_fill(j > i + max(window_size_right, 0), float("-inf"))
    out = torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v)
    return out, q.new_zeros(q.size(0), q.size(2), q.size(1)), q.new_empty(0), q.new_empty(0)


def fake(q, k, v, *args, **kwargs):
    return torch.empty_like(q), q.new_empty(q.size(0), q.size(2), q.size(1)), q.new_empty(0), q.new_empty(0)


lib.impl("_flash_attn_forward", windowed, "CompositeExplicitAutograd")
torch.library.register_fake("flash_attn_3::_flash_attn_forward", fake, lib=lib)


class Peek(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, H * D)
        self.qkv = nn.Linear(H * D, 3 * H * D, bias=False)
        self.head = nn.Linear(H * D, V, bias=False)

    def forward(self, idx, targets=None, reduction="mean"):
        B, T = idx.shape
        q, k, v = self.qkv(self.emb(idx)).view(B, T, 3, H, D).unbind(2)
        y = torch.ops.flash_attn_3._flash_attn_forward(q, k, v, causal=True, window_size_right=1)[0]
        logits = self.head(y.reshape(B, T, H * D))
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, V), targets.reshape(-1), reduction=reduction)


model = Peek()
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
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
