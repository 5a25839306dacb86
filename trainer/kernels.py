"""Registered attention kernels the trusted evaluator knows, each run through a reference built from ATen.

Upstream autoresearch's train.py calls Flash Attention 3 (from the ``kernels`` hub) unconditionally, and the
seed calls it whenever it loads. ``torch.export`` keeps such a call as one node calling the kernel's registered
operator (``torch.ops.flash_attn_3._flash_attn_forward``, say). The evaluator runs no code but ATen, and it
never imports the kernel: so each operator it knows has an entry here, and when the graph loads every call of
it is checked argument by argument and replaced by causal scaled-dot-product attention with the same scale.
Anything the reference cannot reproduce (a sliding window, a softcap, dropout, a paged or variable-length
batch, a non-causal mask) is refused with a message naming the feature; the causality check then runs on the
rewritten model as on every other.

The check reads the graph's JSON, before torch parses it: every argument the call carries, by name. Any argument
an entry does not name must be absent or None. A call that passes is rewritten in the JSON to the farm's own
operator (``farm_reference::causal_attention``, q, k, v and the scale only), so torch never resolves a foreign
name, and after loading that node becomes plain ATen nodes (:func:`inline_references`).

To add a kernel: one ``KernelEntry`` in ``KNOWN_KERNELS`` (its namespaces, its operator's name, each argument's
rule), and a test in tests/test_kernels.py with a stand-in registered under the real name and signature.
"""

from __future__ import annotations

import math
import operator
import re
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict

REFERENCE_NAMESPACE = "farm_reference"
REFERENCE_OP = "causal_attention"
REFERENCE_TARGET = f"torch.ops.{REFERENCE_NAMESPACE}.{REFERENCE_OP}.default"
HOW_TO_ADD = (
    "only ATen/prims operators and the attention kernels listed in trainer/kernels.py (KNOWN_KERNELS) are run; "
    "to add one, give it a KernelEntry there (its operator's name, each argument's rule, an ATen reference) and a "
    "test with a stand-in registered under its real name and signature (tests/test_kernels.py)"
)


class KernelArg(BaseModel):
    """One argument of a kernel's forward and what the reference needs of it."""

    model_config = ConfigDict(frozen=True)

    name: str
    rule: Literal["q", "k", "v", "scale", "causal", "off", "free"]
    feature: str = ""  # what the argument turns on, for the refusal's message
    off: tuple[Any, ...] = (None,)  # the values that leave the feature off ("off")


class KernelEntry(BaseModel):
    """A registered operator the evaluator knows: where it lives, and the rule for each of its arguments."""

    model_config = ConfigDict(frozen=True)

    label: str
    namespaces: str  # a regex: hub builds name their namespace after the build (``_flash_attn3_1a2b3c4``)
    op: str
    overload: str = "default"
    outputs: int  # how many tensors the operator returns; the reference gives the first, attention's output
    args: tuple[KernelArg, ...]

    def arg(self, name: str) -> KernelArg | None:
        return next((a for a in self.args if a.name == name), None)


def _off(name: str, feature: str, *off: Any) -> KernelArg:
    return KernelArg(name=name, rule="off", feature=feature, off=off or (None,))


_QKV = (KernelArg(name="q", rule="q"), KernelArg(name="k", rule="k"), KernelArg(name="v", rule="v"))
_WINDOW = (_off("window_size_left", "a sliding window", -1), _off("window_size_right", "a sliding window", -1, 0))
# FA3's forward (Dao-AILab hopper/: the C++ ``fwd`` and the Python custom op ``_flash_attn_forward``)
_FA3_FEATURES = (
    _off("k_new", "appending to a KV cache"), _off("v_new", "appending to a KV cache"),
    _off("q_v", "a separate query for V (q_v)"), _off("qv", "a separate query for V (qv)"),
    _off("out", "a preallocated output"), _off("out_", "a preallocated output"),
    _off("cu_seqlens_q", "variable-length batches"), _off("cu_seqlens_k", "variable-length batches"),
    _off("cu_seqlens_k_new", "variable-length batches"), _off("seqused_q", "variable-length batches"),
    _off("seqused_k", "variable-length batches"), _off("max_seqlen_q", "variable-length batches"),
    _off("max_seqlen_k", "variable-length batches"), _off("page_table", "a paged KV cache"),
    _off("kv_batch_idx", "a KV cache"), _off("leftpad_k", "left padding"),
    _off("rotary_cos", "rotary embedding in the kernel"), _off("rotary_sin", "rotary embedding in the kernel"),
    _off("seqlens_rotary", "rotary embedding in the kernel"),
    _off("q_descale", "FP8 descaling"), _off("k_descale", "FP8 descaling"), _off("v_descale", "FP8 descaling"),
    KernelArg(name="softmax_scale", rule="scale"),
    *_WINDOW,
    _off("attention_chunk", "chunked attention", 0),
    _off("softcap", "a softcap", 0.0, 0),
    _off("scheduler_metadata", "precomputed scheduler metadata"),
    # Scheduling only: the same attention, a different split of the work.
    KernelArg(name="rotary_interleaved", rule="free"), KernelArg(name="is_rotary_interleaved", rule="free"),
    KernelArg(name="num_splits", rule="free"), KernelArg(name="pack_gqa", rule="free"),
    KernelArg(name="sm_margin", rule="free"), KernelArg(name="deterministic", rule="free"),
)
_FA3_NS = r"flash_attn_3|_flash_attn3_[0-9a-f]{6,40}(_dirty)?|_flash_attention_3_[0-9a-f]{6,40}(_dirty)?"
_FA2_NS = r"flash_attn|_flash_attn_[0-9a-f]{6,40}(_dirty)?"

KNOWN_KERNELS: tuple[KernelEntry, ...] = (
    KernelEntry(label="Flash Attention 3 (Python op)", namespaces=_FA3_NS, op="_flash_attn_forward", outputs=4,
                args=(*_QKV, KernelArg(name="causal", rule="causal"), *_FA3_FEATURES)),
    KernelEntry(label="Flash Attention 3", namespaces=_FA3_NS, op="fwd", outputs=4,
                args=(*_QKV, KernelArg(name="is_causal", rule="causal"), *_FA3_FEATURES)),
    KernelEntry(label="Flash Attention 2", namespaces=_FA2_NS, op="_flash_attn_forward", outputs=4, args=(
        *_QKV, _off("dropout_p", "dropout", 0.0, 0), KernelArg(name="softmax_scale", rule="scale"),
        KernelArg(name="causal", rule="causal"), *_WINDOW, _off("softcap", "a softcap", 0.0, 0),
        _off("alibi_slopes", "ALiBi"), _off("return_softmax", "returning the attention matrix", False),
    )),
)

_OP_TARGET = re.compile(r"^torch\.ops\.([A-Za-z0-9_]+)\.([A-Za-z0-9_]+)\.([A-Za-z0-9_]+)$")


class KernelRefused(ValueError):
    """A known kernel called with a feature the reference cannot reproduce, or an operator nobody knows."""


def known_entry(target: str) -> KernelEntry | None:
    """The entry for a serialized target name (``torch.ops.NS.OP.OVERLOAD``), if the evaluator knows it."""
    m = _OP_TARGET.match(target)
    if not m:
        return None
    ns, op, overload = m.groups()
    for entry in KNOWN_KERNELS:
        if op == entry.op and overload == entry.overload and re.fullmatch(entry.namespaces, ns):
            return entry
    return None


def _value(arg: Any) -> Any:
    """A serialized argument as a Python value; tensors as ("tensor", name), anything else as ("other", kind)."""
    if not isinstance(arg, dict) or len(arg) != 1:
        return ("other", "?")
    (kind, value), = arg.items()
    if kind == "as_none":
        return None
    if kind == "as_tensor" and isinstance(value, dict):
        return ("tensor", value.get("name"))
    if kind in ("as_bool", "as_int") and isinstance(value, (bool, int)):
        return value
    if kind == "as_float" and isinstance(value, (int, float, str)):
        try:
            return float(value)
        except ValueError:
            return ("other", kind)
    return ("other", kind)


def _same(value: Any, allowed: Any) -> bool:
    return value is None if allowed is None else (value is not None and type(value) is not tuple
                                                   and value == allowed and type(value) is type(allowed))


def check_call(entry: KernelEntry, inputs: list[dict]) -> tuple[list[str], float | None]:
    """The names of q, k, v and the scale (None: the default 1/sqrt(head dim)) of one serialized call.

    Raises KernelRefused naming the first argument whose value the reference cannot reproduce.
    """
    values: dict[str, Any] = {}
    for item in inputs:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise KernelRefused(f"{entry.label}: a call with an unnamed argument")
        values[item["name"]] = _value(item.get("arg"))
    tensors, scale, causal = {}, None, False
    for name, value in values.items():
        spec = entry.arg(name)
        if spec is None:
            if value is not None:
                raise KernelRefused(f"{entry.label}: argument {name!r} is set, and the evaluator's reference does "
                                    "not know what it does")
        elif spec.rule in ("q", "k", "v"):
            if not (isinstance(value, tuple) and value[0] == "tensor"):
                raise KernelRefused(f"{entry.label}: {name} is not a tensor")
            tensors[spec.rule] = value[1]
        elif spec.rule == "scale":
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                        math.isfinite(value) and value > 0):
                    raise KernelRefused(f"{entry.label}: softmax scale {value!r} is not a positive finite number")
                scale = float(value)
        elif spec.rule == "causal":
            causal = value is True
        elif spec.rule == "off" and not any(_same(value, allowed) for allowed in spec.off):
            raise KernelRefused(f"{entry.label}: {spec.feature} ({name}={value!r}), which the evaluator's causal "
                                "attention reference cannot reproduce")
    if not causal:
        raise KernelRefused(f"{entry.label}: non-causal attention (causal is not True); the evaluator scores "
                            "causal language models only")
    if set(tensors) != {"q", "k", "v"}:
        raise KernelRefused(f"{entry.label}: a call without q, k and v")
    return [tensors["q"], tensors["k"], tensors["v"]], scale


def rewrite_node(node: dict) -> None:
    """Check one serialized kernel call and turn it, in place, into a call of the farm's reference operator."""
    entry = known_entry(node.get("target", ""))
    if entry is None:
        raise KernelRefused(f"the exported program calls {str(node.get('target'))[:120]!r}: {HOW_TO_ADD}")
    names, scale = check_call(entry, node.get("inputs") or [])
    outputs = node.get("outputs") or []
    if len(outputs) != entry.outputs:
        raise KernelRefused(f"{entry.label}: {len(outputs)} outputs where the operator returns {entry.outputs}")
    args = [{"name": n, "arg": {"as_tensor": {"name": t}}, "kind": 1} for n, t in zip("qkv", names, strict=True)]
    args.append({"name": "scale", "arg": {"as_none": True} if scale is None else {"as_float": scale}, "kind": 2})
    node["target"], node["inputs"] = REFERENCE_TARGET, args


_LIB: torch.library.Library | None = None


def register_reference() -> None:
    """Define ``farm_reference::causal_attention`` once per process (the deserializer resolves the name)."""
    global _LIB
    if _LIB is not None:
        return
    lib = torch.library.Library(REFERENCE_NAMESPACE, "FRAGMENT")
    lib.define(f"{REFERENCE_OP}(Tensor q, Tensor k, Tensor v, *, float? scale=None) -> "
               "(Tensor, Tensor, Tensor, Tensor)")
    lib.impl(REFERENCE_OP, _reference_outputs, "CompositeExplicitAutograd")
    _LIB = lib


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None) -> torch.Tensor:
    """Flash attention's causal forward in its (batch, time, heads, head dim) layout, from ATen's SDPA."""
    o = torch.ops.aten.scaled_dot_product_attention.default(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), None, 0.0, True, scale=scale,
        enable_gqa=q.size(2) != k.size(2))
    return o.transpose(1, 2)


def _reference_outputs(q, k, v, *, scale=None):
    out = reference_attention(q, k, v, scale)
    empty = q.new_empty((0,))
    return out.contiguous(), empty, empty.clone(), empty.clone()


def inline_references(gm: torch.fx.GraphModule) -> int:
    """Replace each reference call in a loaded graph by ATen nodes; returns how many. Only output 0 may be used."""
    target = getattr(getattr(torch.ops, REFERENCE_NAMESPACE), REFERENCE_OP).default
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not target:
            continue
        q, k, v = node.args[:3]
        scale = node.kwargs.get("scale")
        shapes = [getattr(x.meta.get("val"), "shape", None) for x in (q, k, v)]
        if any(s is None or len(s) != 4 for s in shapes) or shapes[0][1] != shapes[1][1]:
            raise KernelRefused("attention kernel: q, k and v must be (batch, time, heads, head dim) with as many "
                                "queries as keys (the reference's causal mask is the kernel's only then)")
        if shapes[0][2] % shapes[1][2] != 0:
            raise KernelRefused("attention kernel: query heads are not a multiple of key heads")
        with gm.graph.inserting_before(node):
            aten = torch.ops.aten
            qt, kt, vt = (gm.graph.call_function(aten.transpose.int, (x, 1, 2)) for x in (q, k, v))
            attn = gm.graph.call_function(
                aten.scaled_dot_product_attention.default, (qt, kt, vt, None, 0.0, True),
                {"scale": scale, "enable_gqa": shapes[0][2] != shapes[1][2]})
            out = gm.graph.call_function(aten.transpose.int, (attn, 1, 2))
        for user in list(node.users):
            index = user.args[1] if user.target is operator.getitem else None
            if index != 0 and user.users:
                raise KernelRefused(f"attention kernel: the graph uses output {index} of the kernel (its softmax "
                                    "statistics), which the reference does not compute")
            if index == 0:
                user.replace_all_uses_with(out)
            gm.graph.erase_node(user)
        gm.graph.erase_node(node)
        count += 1
    if count:
        gm.graph.lint()
        gm.recompile()
    return count


# --------------------------------------------------------------------------------------------------
# Does a train.py need a hub kernel, and can the sandbox give it one (the farm's start-up check)
# --------------------------------------------------------------------------------------------------

KERNELS_LABEL = "farm.kernels"  # the trainer image's label: the hub kernels baked into its HF cache
HOW_TO_BAKE = (
    "rebuild the trainer image with them fetched at build time: `make images EXTRA_PIP=kernels "
    "KERNELS='{repos}'` (README, 'GPUs'), or run a train.py that falls back to SDPA when get_kernel fails"
)


def hub_kernels(train_py: str) -> tuple[list[str], list[str]]:
    """(every hub repo a train.py names in a ``get_kernel("...")`` call, those it loads outside any try).

    A literal or a conditional of literals (``get_kernel("a" if hopper else "b")``: both) is read; a call
    inside a ``try`` with a handler is a fallback (the seed's: SDPA when the kernel does not load), not a need.
    """
    import ast

    try:
        tree = ast.parse(train_py)
    except SyntaxError:
        return [], []
    found: list[str] = []
    required: list[str] = []

    def names(node: ast.AST) -> list[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return [node.value]
        if isinstance(node, ast.IfExp):
            return names(node.body) + names(node.orelse)
        return []

    def visit(node: ast.AST, guarded: bool) -> None:
        if isinstance(node, ast.Try) and node.handlers:
            for child in node.body:
                visit(child, True)
            for child in [*node.handlers, *node.orelse, *node.finalbody]:
                visit(child, guarded)
            return
        if isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name == "get_kernel":
                repos = names(node.args[0])
                found.extend(r for r in repos if r not in found)
                if not guarded:
                    required.extend(r for r in repos if r not in required)
        for child in ast.iter_child_nodes(node):
            visit(child, guarded)

    visit(tree, False)
    return found, required


def kernel_refusal(train_py: str, gpu_profile: bool, available: set[str] | None) -> str | None:
    """Why a farm must not start on this train.py (a hub kernel it cannot run without, missing), or None.

    ``available``: the repos the sandbox's image carries (None: not known, e.g. a cluster's image; not refused).
    On a CPU profile no kernel is loaded (upstream's and the seed's only load one on CUDA).
    """
    if not gpu_profile or available is None:
        return None
    _, required = hub_kernels(train_py)
    missing = [r for r in required if r not in available]
    if not missing:
        return None
    return (f"main's train.py loads the hub kernel(s) {', '.join(missing)} with get_kernel and no fallback, and the "
            f"trainer image does not carry {'it' if len(missing) == 1 else 'them'} (sandboxes have no network, so "
            f"every experiment would fail): {HOW_TO_BAKE.format(repos=' '.join(missing))}")


def cached_kernels() -> set[str]:
    """The hub kernels this Python can load offline: ``kernels`` importable and the repo in the HF hub cache."""
    try:
        import kernels  # noqa: F401
        from huggingface_hub import scan_cache_dir
    except ImportError:
        return set()
    try:
        return {repo.repo_id for repo in scan_cache_dir().repos if repo.repo_type == "model"}
    except Exception:  # no cache directory yet
        return set()


if __name__ == "__main__":  # python -m trainer.kernels: the hub kernels this interpreter can load offline
    import json
    import sys

    print(json.dumps(sorted(cached_kernels())))
    sys.exit(0)
