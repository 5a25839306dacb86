"""Stand-ins for registered attention kernels, under their real names and signatures, that run on a CPU.

Flash Attention's operators exist only where its CUDA build loads. These register operators with the same
namespace, name and schema (Dao-AILab flash-attention: hopper/flash_api.cpp's ``fwd``, hopper's Python custom op
``_flash_attn_forward``; flash_attn 2's ``_flash_attn_forward``), computed in plain torch, honouring every
feature the tests set (causal or not, a window, a softcap, a scale), so a graph that calls them is what
``torch.export`` makes of a model calling the real kernel, and a hostile setting really reads ahead.
"""

from __future__ import annotations

import math

import torch

_OPT = "Tensor? {} = None"
_FA3_TENSORS = ("k_new", "v_new", "q_v", "out", "cu_seqlens_q", "cu_seqlens_k", "cu_seqlens_k_new", "seqused_q",
                "seqused_k")
_FA3_TAIL = ("int? max_seqlen_q = None, int? max_seqlen_k = None, Tensor? page_table = None, "
             "Tensor? kv_batch_idx = None, Tensor? leftpad_k = None, Tensor? rotary_cos = None, "
             "Tensor? rotary_sin = None, Tensor? seqlens_rotary = None, Tensor? q_descale = None, "
             "Tensor? k_descale = None, Tensor? v_descale = None, float? softmax_scale = None, "
             "bool {causal} = False, int window_size_left = -1, int window_size_right = -1, "
             "int attention_chunk = 0, float softcap = 0.0, bool {interleaved} = False, "
             "Tensor? scheduler_metadata = None, int num_splits = {splits}, bool? pack_gqa = None, "
             "int sm_margin = 0) -> (Tensor, Tensor, Tensor, Tensor)")
SCHEMAS = {
    # hopper/flash_api.cpp, TORCH_LIBRARY(flash_attn_3): the C++ forward
    "fwd": "fwd(Tensor q, Tensor k, Tensor v, " + ", ".join(_OPT.format(n) for n in _FA3_TENSORS) + ", "
    + _FA3_TAIL.format(causal="is_causal", interleaved="is_rotary_interleaved", splits=0),
    # hopper/flash_attn_interface.py: the Python custom op around it
    "fa3_py": "_flash_attn_forward(Tensor q, Tensor k, Tensor v, "
    + ", ".join(_OPT.format(n) for n in ("k_new", "v_new", "qv", "out_", *_FA3_TENSORS[4:])) + ", "
    + _FA3_TAIL.format(causal="causal", interleaved="rotary_interleaved", splits=1),
    # flash_attn/flash_attn_interface.py (flash-attn 2.7): every argument required
    "fa2_py": "_flash_attn_forward(Tensor q, Tensor k, Tensor v, float dropout_p, float softmax_scale, bool causal, "
    "int window_size_left, int window_size_right, float softcap, Tensor? alibi_slopes, bool return_softmax) "
    "-> (Tensor, Tensor, Tensor, Tensor)",
}
_LIBS: dict[tuple[str, str], torch.library.Library] = {}


def attention(q, k, v, scale=None, causal=False, left=-1, right=-1, softcap=0.0):
    """What flash attention computes, in (batch, time, heads, head dim), written out: the stand-ins' body."""
    scale = scale if scale is not None else 1.0 / math.sqrt(q.size(-1))
    if k.size(2) != q.size(2):
        k, v = (x.repeat_interleave(q.size(2) // k.size(2), dim=2) for x in (k, v))
    s = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * scale
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    i = torch.arange(q.size(1))[:, None]
    j = torch.arange(k.size(1))[None, :]
    allowed = torch.ones(q.size(1), k.size(1), dtype=torch.bool)
    if causal:
        right = 0 if right < 0 else right
    if right >= 0:
        allowed &= j <= i + right
    if left >= 0:
        allowed &= j >= i - left
    s = s.masked_fill(~allowed, float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v.float()).to(q.dtype)


def _impl(names: list[str]):
    def run(q, k, v, *args, **kwargs):
        values = dict(zip(names[3:], args, strict=False)) | kwargs
        causal = values.get("causal", values.get("is_causal", False))
        out = attention(q, k, v, values.get("softmax_scale"), causal, values.get("window_size_left", -1),
                        values.get("window_size_right", -1), values.get("softcap", 0.0))
        lse = q.new_zeros((q.size(0), q.size(2), q.size(1)), dtype=torch.float32)
        return out.contiguous(), lse, q.new_empty((0,)), q.new_empty((0,))

    return run


def _fake(q, k, v, *args, **kwargs):
    lse = q.new_empty((q.size(0), q.size(2), q.size(1)), dtype=torch.float32)
    return q.new_empty(q.shape[:3] + v.shape[3:]), lse, q.new_empty((0,)), q.new_empty((0,))


def register(namespace: str, kind: str) -> object:
    """``torch.ops.<namespace>.<op>`` with the real schema of ``kind`` (fwd, fa3_py, fa2_py), once per process."""
    op = SCHEMAS[kind].split("(", 1)[0]
    if (namespace, op) not in _LIBS:
        lib = torch.library.Library(namespace, "FRAGMENT")
        lib.define(SCHEMAS[kind])
        names = [a.name for a in getattr(getattr(torch.ops, namespace), op).default._schema.arguments]
        lib.impl(op, _impl(names), "CPU")  # the real ones: CUDA, plus a fake for tracing
        torch.library.register_fake(f"{namespace}::{op}", _fake, lib=lib)
        _LIBS[(namespace, op)] = lib
    return getattr(getattr(torch.ops, namespace), op).default


def register_unknown() -> object:
    """An attention kernel nobody has an entry for: ``torch.ops.my_kernels.fused_attention``."""
    if ("my_kernels", "fused_attention") not in _LIBS:
        lib = torch.library.Library("my_kernels", "FRAGMENT")
        lib.define("fused_attention(Tensor q, Tensor k, Tensor v, bool causal) -> Tensor")
        lib.impl("fused_attention", lambda q, k, v, causal: attention(q, k, v, causal=causal), "CPU")
        torch.library.register_fake("my_kernels::fused_attention", lambda q, k, v, causal: torch.empty_like(q),
                                    lib=lib)
        _LIBS[("my_kernels", "fused_attention")] = lib
    return torch.ops.my_kernels.fused_attention.default
