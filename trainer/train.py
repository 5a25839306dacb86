"""
Train a small GPT for a fixed time budget and report validation bits per byte.

This is the seed of autoresearch-farm: the one file the research agents edit.
It reads top to bottom: hyperparameters, model, optimizer, training loop,
summary. The harness it imports (`prepare`: data, tokenizer, training clock,
evaluation) is fixed and cannot be changed from here.

On a CUDA GPU it trains in bf16 autocast under torch.compile, with Flash
Attention 3 when the `kernels` package can load it; on a CPU it runs plain
fp32 in eager mode. Run it with `python train.py` next to `prepare.py`.
"""

import contextlib
import gc
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from prepare import MAX_SEQ_LEN, TIME_BUDGET, Tokenizer, evaluate_bpb, make_dataloader, training_seconds

t_start = time.time()

# ---------------------------------------------------------------------------
# Hyperparameters: plain literals, edit them directly
# ---------------------------------------------------------------------------

# Model shape
DEPTH = 8  # number of transformer blocks
ASPECT_RATIO = 64  # model_dim = DEPTH * ASPECT_RATIO, rounded up to a multiple of HEAD_DIM
HEAD_DIM = 128  # channels per attention head
MLP_RATIO = 4  # MLP hidden width = MLP_RATIO * model_dim
ROPE_BASE = 10000.0  # rotary embedding base frequency
LOGIT_SOFTCAP = 15.0  # logits = LOGIT_SOFTCAP * tanh(logits / LOGIT_SOFTCAP)

# Batch
TOTAL_BATCH_SIZE = 524288  # tokens per optimizer step
DEVICE_BATCH_SIZE = 128  # rows of MAX_SEQ_LEN tokens per forward/backward

# Optimizer
MATRIX_LR = 0.04  # Muon, for the 2-D weights inside the blocks
EMBEDDING_LR = 0.6  # AdamW, token embedding (scaled by (model_dim / 768) ** -0.5)
UNEMBEDDING_LR = 0.004  # AdamW, lm_head (scaled by (model_dim / 768) ** -0.5)
SCALAR_LR = 0.5  # AdamW, per-block scalars
WEIGHT_DECAY = 0.2  # Muon, cautious decoupled weight decay
ADAM_BETA1 = 0.8  # AdamW first-moment decay
ADAM_BETA2 = 0.95  # AdamW second-moment decay
MUON_MOMENTUM = 0.95  # Muon Nesterov momentum, warmed up from 0.85 over the first 300 steps
NS_STEPS = 5  # Newton-Schulz iterations per Muon update

# Learning-rate schedule, in fractions of the time budget
WARMUP_RATIO = 0.0  # linear warmup from 0
WARMDOWN_RATIO = 0.5  # linear warmdown at the end
FINAL_LR_FRAC = 0.0  # LR at the end of the warmdown, as a fraction of the peak

SEED = 42  # random seed

# ---------------------------------------------------------------------------
# Device
# ---------------------------------------------------------------------------

torch.manual_seed(SEED)
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
on_cuda = device.type == "cuda"
if on_cuda:
    torch.set_float32_matmul_precision("high")  # TF32 for any fp32 matmul left outside autocast
autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_cuda else contextlib.nullcontext()
h100_bf16_peak_flops = 989.5e12  # dense bf16 FLOP/s, for MFU

flash_attn = None  # Flash Attention 3 from the kernels hub (Hopper and earlier); SDPA otherwise
if on_cuda and torch.cuda.get_device_capability()[0] < 10:
    try:
        from kernels import get_kernel

        hopper = torch.cuda.get_device_capability() == (9, 0)
        fa3 = get_kernel("varunneal/flash-attention-3" if hopper else "kernels-community/flash-attn3")
        flash_attn = fa3.flash_attn_interface.flash_attn_func
    except Exception as exc:
        print(f"Flash Attention 3 unavailable ({type(exc).__name__}: {exc}); using SDPA")

# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


def norm(x):
    """RMSNorm over the last dimension, without learnable gain."""
    return F.rms_norm(x, (x.size(-1),))


def rotate(x, cos, sin):
    """Rotary position embedding on (B, T, H, D): rotate pairs (i, i + D/2) by position-dependent angles."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


class Attention(nn.Module):
    def __init__(self, dim, n_head):
        super().__init__()
        self.n_head = n_head
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        heads = (B, T, self.n_head, C // self.n_head)
        v = self.v(x).view(heads)
        q = rotate(norm(self.q(x).view(heads)), cos, sin).to(v.dtype)  # QK-norm, then rotary
        k = rotate(norm(self.k(x).view(heads)), cos, sin).to(v.dtype)
        if flash_attn is not None:
            y = flash_attn(q, k, v, causal=True)
            y = y[0] if isinstance(y, tuple) else y
        else:
            y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
            y = y.transpose(1, 2)
        return self.proj(y.reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Linear(dim, MLP_RATIO * dim, bias=False)
        self.proj = nn.Linear(MLP_RATIO * dim, dim, bias=False)

    def forward(self, x):
        return self.proj(F.relu(self.fc(x)).square())


class Block(nn.Module):
    def __init__(self, dim, n_head):
        super().__init__()
        self.attn = Attention(dim, n_head)
        self.mlp = MLP(dim)

    def forward(self, x, cos, sin):
        x = x + self.attn(norm(x), cos, sin)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, vocab_size, depth, dim, n_head, seq_len):
        super().__init__()
        self.vocab_size = vocab_size
        padded_vocab = (vocab_size + 63) // 64 * 64  # friendlier matmul shapes; the extra rows are never targets
        self.wte = nn.Embedding(padded_vocab, dim)
        self.blocks = nn.ModuleList([Block(dim, n_head) for _ in range(depth)])
        self.lm_head = nn.Linear(dim, padded_vocab, bias=False)  # untied from wte
        self.x0_lambdas = nn.Parameter(torch.zeros(depth))  # how much of the embedding each block mixes back in
        head_dim = dim // n_head
        inv_freq = ROPE_BASE ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)[None, :, None, :]
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    @torch.no_grad()
    def init_weights(self):
        dim = self.wte.embedding_dim
        bound = (3 / dim) ** 0.5  # uniform with std 1/sqrt(dim)
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=0.001)
        for block in self.blocks:
            for linear in (block.attn.q, block.attn.k, block.attn.v, block.mlp.fc):
                nn.init.uniform_(linear.weight, -bound, bound)
            nn.init.zeros_(block.attn.proj.weight)  # every block starts as the identity
            nn.init.zeros_(block.mlp.proj.weight)
        self.x0_lambdas.fill_(0.1)

    def forward(self, idx, targets=None, reduction="mean"):
        T = idx.size(1)
        cos, sin = self.cos[:, :T], self.sin[:, :T]
        x = x0 = norm(self.wte(idx))
        for i, block in enumerate(self.blocks):
            x = block(x + self.x0_lambdas[i] * x0, cos, sin)
        logits = self.lm_head(norm(x))[..., : self.vocab_size].float()
        logits = LOGIT_SOFTCAP * torch.tanh(logits / LOGIT_SOFTCAP)
        if targets is None:
            return logits
        return F.cross_entropy(
            logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1, reduction=reduction
        )


# ---------------------------------------------------------------------------
# Optimizer: Muon for the block matrices, AdamW for everything else
# ---------------------------------------------------------------------------


def orthogonalize(G, steps):
    """Push the singular values of each matrix in the stack G towards 1 (U S V^T -> ~U V^T) by Newton-Schulz."""
    a, b, c = 3.4445, -4.7750, 2.0315  # quintic iteration tuned for speed, not exact convergence
    X = G.to(torch.bfloat16 if G.is_cuda else torch.float32)
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT  # iterate on the smaller Gram matrix
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    return X.mT if tall else X


class Muon(torch.optim.Optimizer):
    """Nesterov momentum whose update is orthogonalized; same-shape matrices are processed as one stack."""

    def __init__(self, params, lr, momentum, weight_decay, ns_steps):
        params = list(params)
        assert all(p.ndim == 2 for p in params), "Muon is for 2-D weights only"
        groups = [{"params": [p for p in params if p.shape == s]} for s in sorted({p.shape for p in params})]
        super().__init__(groups, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, ns_steps=ns_steps))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            params = group["params"]
            grads = torch.stack([p.grad for p in params])
            state = self.state[params[0]]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(grads)
            buf = state["momentum_buffer"]
            buf.lerp_(grads, 1 - group["momentum"])
            update = orthogonalize(grads.lerp_(buf, group["momentum"]), group["ns_steps"])
            rows, cols = params[0].shape
            lr = group["lr"] * max(1.0, rows / cols) ** 0.5  # same RMS update for tall matrices
            for p, u in zip(params, update.unbind(0), strict=True):
                u = u.to(p.dtype)
                decay = (u * p > 0) * p  # cautious: decay only where the update already shrinks p
                p.sub_(lr * (u + group["weight_decay"] * decay))


def lr_multiplier(progress):
    """Warmup, constant, then linear warmdown to FINAL_LR_FRAC; progress in [0, 1]."""
    if progress < WARMUP_RATIO:
        return progress / WARMUP_RATIO
    if progress < 1.0 - WARMDOWN_RATIO:
        return 1.0
    remaining = max(0.0, 1.0 - progress) / WARMDOWN_RATIO
    return FINAL_LR_FRAC + (1.0 - FINAL_LR_FRAC) * remaining


def muon_momentum(step):
    return 0.85 + (MUON_MOMENTUM - 0.85) * min(1.0, step / 300)


# ---------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------

tokenizer = Tokenizer.from_directory()
vocab_size = tokenizer.get_vocab_size()
model_dim = (DEPTH * ASPECT_RATIO + HEAD_DIM - 1) // HEAD_DIM * HEAD_DIM
n_head = model_dim // HEAD_DIM
tokens_per_micro_step = DEVICE_BATCH_SIZE * MAX_SEQ_LEN
assert TOTAL_BATCH_SIZE % tokens_per_micro_step == 0, (
    f"TOTAL_BATCH_SIZE ({TOTAL_BATCH_SIZE}) must be a multiple of "
    f"DEVICE_BATCH_SIZE * MAX_SEQ_LEN ({DEVICE_BATCH_SIZE} * {MAX_SEQ_LEN} = {tokens_per_micro_step})"
)
grad_accum_steps = TOTAL_BATCH_SIZE // tokens_per_micro_step

with torch.device(device):
    model = GPT(vocab_size, DEPTH, model_dim, n_head, MAX_SEQ_LEN)
model.init_weights()
num_params = sum(p.numel() for p in model.parameters())
matmul_params = sum(p.numel() for p in model.blocks.parameters()) + model.lm_head.weight.numel()
flops_per_token = 6 * matmul_params + 12 * DEPTH * model_dim * MAX_SEQ_LEN  # weights + attention, fwd + bwd

dmodel_lr_scale = (model_dim / 768) ** -0.5  # AdamW LRs were tuned at model_dim 768
adam_groups = [
    dict(params=[model.wte.weight], lr=EMBEDDING_LR * dmodel_lr_scale),
    dict(params=[model.lm_head.weight], lr=UNEMBEDDING_LR * dmodel_lr_scale),
    dict(params=[model.x0_lambdas], lr=SCALAR_LR),
]
adamw = torch.optim.AdamW(adam_groups, betas=(ADAM_BETA1, ADAM_BETA2), eps=1e-10, weight_decay=0.0, fused=True)
muon = Muon(model.blocks.parameters(), MATRIX_LR, MUON_MOMENTUM, WEIGHT_DECAY, NS_STEPS)
optimizers = [adamw, muon]
for opt in optimizers:
    for group in opt.param_groups:
        group["initial_lr"] = group["lr"]
assert sum(len(g["params"]) for opt in optimizers for g in opt.param_groups) == len(list(model.parameters()))

if on_cuda:
    model = torch.compile(model, dynamic=False)

print(f"device: {device} | attention: {'flash-attn-3' if flash_attn else 'sdpa'} | vocab: {vocab_size}")
print(f"model: depth {DEPTH}, dim {model_dim}, heads {n_head} x {HEAD_DIM}, {num_params / 1e6:.2f}M params")
print(f"batch: {TOTAL_BATCH_SIZE} tokens/step = {grad_accum_steps} x {DEVICE_BATCH_SIZE} rows x {MAX_SEQ_LEN}")
print(f"time budget: {TIME_BUDGET}s")

# ---------------------------------------------------------------------------
# Training loop: one optimizer step per iteration until the harness clock hits the budget
# ---------------------------------------------------------------------------

train_loader = make_dataloader(tokenizer, DEVICE_BATCH_SIZE, MAX_SEQ_LEN, "train")
x, y, epoch = next(train_loader)  # the harness clock starts at the first batch
step = 0
smooth_loss = 0.0
steady_seconds, steady_tokens = 0.0, 0  # for MFU: steps after the first 10 (compilation)
last_print = 0.0
while True:
    progress = training_seconds() / TIME_BUDGET
    if progress >= 1.0:
        break
    t0 = time.time()
    lrm = lr_multiplier(progress)
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * lrm
    for group in muon.param_groups:
        group["momentum"] = muon_momentum(step)

    train_loss = 0.0
    for _ in range(grad_accum_steps):
        with autocast:
            loss = model(x, y)
        (loss / grad_accum_steps).backward()
        train_loss += loss.detach() / grad_accum_steps
        x, y, epoch = next(train_loader)  # prefetch while the device works
    for opt in optimizers:
        opt.step()
    model.zero_grad(set_to_none=True)

    train_loss = train_loss.item()  # waits for the device
    if not math.isfinite(train_loss) or train_loss > 100:
        print(f"step {step:05d} | loss {train_loss}")
        print("FAIL")
        sys.exit(1)

    dt = time.time() - t0
    if step >= 10:
        steady_seconds += dt
        steady_tokens += TOTAL_BATCH_SIZE
    smooth_loss = 0.9 * smooth_loss + 0.1 * train_loss
    if time.time() - last_print >= 1.0 or step == 0:
        last_print = time.time()
        print(
            f"step {step:05d} | loss {smooth_loss / (1 - 0.9 ** (step + 1)):.4f} | lrm {lrm:.2f} | "
            f"dt {dt * 1000:.0f}ms | tok/s {TOTAL_BATCH_SIZE / dt:,.0f} | epoch {epoch} | {100 * progress:.1f}%",
            flush=True,
        )
    if step == 0:  # Python's cyclic GC causes long stalls; everything alive now lives forever
        gc.collect()
        gc.freeze()
        gc.disable()
    step += 1

# ---------------------------------------------------------------------------
# Evaluation and summary
# ---------------------------------------------------------------------------

train_seconds = training_seconds()
with torch.no_grad(), autocast:
    val_bpb = evaluate_bpb(model, tokenizer, DEVICE_BATCH_SIZE)

peak_vram_mb = torch.cuda.max_memory_allocated() / 1024**2 if on_cuda else 0.0
mfu = 0.0
if on_cuda and steady_seconds > 0:
    mfu = 100 * flops_per_token * steady_tokens / steady_seconds / h100_bf16_peak_flops
print("---")
print(f"val_bpb:          {val_bpb:.6f}")
print(f"training_seconds: {train_seconds:.1f}")
print(f"total_seconds:    {time.time() - t_start:.1f}")
print(f"peak_vram_mb:     {peak_vram_mb:.1f}")
print(f"mfu_percent:      {mfu:.2f}")
print(f"total_tokens_M:   {step * TOTAL_BATCH_SIZE / 1e6:.1f}")
print(f"num_steps:        {step}")
print(f"num_params_M:     {num_params / 1e6:.1f}")
print(f"depth:            {DEPTH}")
