"""The trained model as data: how it leaves the candidate's process and how the trusted side takes it in.

The candidate's ``evaluate_bpb`` exports its model with ``torch.export`` (the
forward pass ``model(idx) -> logits`` as a graph of ATen operators, plus the
weights) and writes it to a file. The trusted evaluator never imports the
candidate's code: it reads that file, checks it, and runs the graph itself.

Why not ``torch.export.load``: it falls back to an unrestricted unpickler, and
torch's deserializer parses symbolic-shape strings with sympy (which calls
``eval``) and turns ``torch.*`` target names into arbitrary functions. So the
file is our own container (four length-prefixed sections), tensors are read
with ``weights_only=True`` only, and the graph's JSON is checked before torch
sees it: static shapes, no guard code, no subgraphs, and every operator an
ATen/prims operator off a deny-list (nothing that reads files, sleeps, or
synchronises with anything outside the graph).
"""

from __future__ import annotations

import io
import json
import operator
import re
import struct
from typing import Any

import torch

from trainer.kernels import (
    HOW_TO_ADD,
    REFERENCE_TARGET,
    KernelRefused,
    inline_references,
    known_entry,
    register_reference,
    rewrite_node,
)

MAGIC = b"FARM-HANDOVER-1\n"
SECTIONS = ("program", "state_dict", "constants", "example_inputs")
MAX_PROGRAM_JSON = 64 << 20  # the graph's JSON; weights are the big sections
_TARGET = re.compile(r"^(torch\.ops\.(aten|prims)\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+|_operator\.getitem)$")
# ATen operators a scored forward pass has no business calling: I/O, host interaction, random numbers (dropout
# stays: exported in eval mode it is the identity; a model whose output is random fails the causality check anyway)

_DENIED = re.compile(
    r"^torch\.ops\.aten\.(from_file|_nested_.*from_file.*|_print|_local_scalar_dense|item|_assert_async|"
    r"_assert_scalar|_functional_assert.*|sym_constrain.*|rand.*|normal.*|bernoulli.*|multinomial|"
    r"uniform_?|exponential_?|geometric_?|cauchy_?|log_normal_?|random_?|"
    r"set_|resize_|copy_|_copy_from.*|record_stream|_cudnn_.*|_use_cudnn.*|empty_.*strided|_make_.*)\."
)


class HandoverError(RuntimeError):
    """The model could not be exported, or the file is not a model the evaluator will run; says which and why."""


def _runs(target: str) -> bool:
    """Whether the evaluator runs a graph node calling ``target`` (its serialized name)."""
    return bool(_TARGET.match(target)) and not _DENIED.match(target)


def _refused(target: str) -> HandoverError:
    return HandoverError(f"the exported program calls {target[:120]!r}, which the evaluator does not run: {HOW_TO_ADD}")


# --------------------------------------------------------------------------------------------------
# Candidate side
# --------------------------------------------------------------------------------------------------


def export_model(model: torch.nn.Module, batch: int, seq_len: int, device: str) -> bytes:
    """``model(idx)`` (logits, no targets) as a static-shape exported program for (batch, seq_len) int64 input."""
    from torch._export.serde.serialize import serialize

    module = getattr(model, "_orig_mod", model)  # torch.compile's wrapper: the model itself is what is exported
    example = torch.zeros((batch, seq_len), dtype=torch.long, device=device)
    try:
        # Full precision in the graph: the evaluator applies the same autocast to every candidate.
        with torch.no_grad(), torch.autocast(device_type=torch.device(device).type, enabled=False):
            program = torch.export.export(module, (example,), strict=False)
        artifact = serialize(program)
    except Exception as exc:
        raise HandoverError(
            "evaluate_bpb could not export the model for the trusted evaluator "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); the model must be a "
            "torch.nn.Module whose model(idx) returns logits of shape (B, T, vocab) — upstream's interface — "
            "and be exportable with torch.export (no data-dependent Python control flow in forward)"
        ) from exc
    parts = [artifact.exported_program, artifact.state_dict, artifact.constants, artifact.example_inputs]
    return MAGIC + b"".join(struct.pack("<Q", len(p)) + p for p in parts)


# The evaluator's device memory per scored row, in bytes per token of context: its logits in bf16 and float32, the
# log-softmax, and room for the activations of a ~50M-parameter model (the H100 seed scored 128 rows in its 80 GB).
EVAL_BYTES_PER_TOKEN_PER_VOCAB = 12
EVAL_BYTES_PER_TOKEN = 64 << 10
EVAL_FREE_SHARE = 0.8  # what the evaluator may plan on of the memory free at the hand-over (fragmentation, CUDA)


def eval_rows(requested: int, cap: int | None, free_bytes: int | None, seq_len: int, vocab: int,
              weight_bytes: int) -> int:
    """Rows per evaluator pass: train.py's batch, at most the profile's cap and what the free device memory holds.

    The evaluator loads a second copy of the model beside the candidate, which still holds its own (and its
    optimizer). Its batch is fixed at export (static shapes), so the harness sizes it here, from the memory free
    after it released its allocator's cache; a batch that still does not fit ends ``oom``, never ``error``.
    """
    rows = max(1, requested if cap is None else min(requested, cap))
    if free_bytes is None:
        return rows
    per_row = seq_len * (vocab * EVAL_BYTES_PER_TOKEN_PER_VOCAB + EVAL_BYTES_PER_TOKEN)
    fits = int((free_bytes * EVAL_FREE_SHARE - 2 * weight_bytes) // per_row)
    return max(1, min(rows, fits))


def release_cache(device: str) -> int | None:
    """Give the allocator's cached blocks back to the device and say how many bytes are free (None on a CPU)."""
    if device != "cuda" or not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    free, _total = torch.cuda.mem_get_info()
    return int(free)


# --------------------------------------------------------------------------------------------------
# Trusted side
# --------------------------------------------------------------------------------------------------


def split_sections(blob: bytes) -> dict[str, bytes]:
    if not blob.startswith(MAGIC):
        raise HandoverError("the handover file is not an exported model (wrong header)")
    at, sections = len(MAGIC), {}
    for name in SECTIONS:
        if at + 8 > len(blob):
            raise HandoverError("the handover file is truncated")
        (size,) = struct.unpack_from("<Q", blob, at)
        at += 8
        if at + size > len(blob):
            raise HandoverError("the handover file is truncated")
        sections[name] = blob[at : at + size]
        at += size
    if at != len(blob):
        raise HandoverError("the handover file has trailing bytes")
    return sections


def check_program_json(doc: Any) -> None:
    """Refuse anything in the graph's JSON that would make torch run more than ATen operators on tensors.

    A call of a registered kernel the evaluator knows (trainer/kernels.py) is checked argument by argument and
    rewritten, in ``doc``, to the farm's reference operator; any other operator that is not plain ATen is refused.
    """
    if not isinstance(doc, dict) or "graph_module" not in doc:
        raise HandoverError("the exported program has no graph")
    for node in _nodes(doc):
        target = node.get("target")
        if isinstance(target, str) and not _runs(target):
            if known_entry(target) is None:
                raise _refused(target)  # the farm's reference too: only the evaluator writes it
            try:
                rewrite_node(node)
            except KernelRefused as exc:
                raise HandoverError(f"the evaluator refused an attention kernel: {exc}") from exc
    if doc.get("guards_code"):
        raise HandoverError("the exported program carries guard code (the evaluator runs static shapes only)")
    if doc.get("range_constraints"):
        raise HandoverError("the exported program has symbolic shapes (the evaluator runs static shapes only)")
    for key, value in _walk(doc):
        if key in ("as_expr", "expr_str", "as_graph", "as_custom_obj", "as_custom_objs"):
            raise HandoverError(f"the exported program uses {key} (symbolic shapes, subgraphs or custom objects)")
        if key == "target" and isinstance(value, str) and not _runs(value) and value != REFERENCE_TARGET:
            raise _refused(value)


def _nodes(doc: dict) -> list[dict]:
    """The top-level graph's nodes as the JSON has them (anything malformed is left to the deserializer)."""
    graph = doc["graph_module"].get("graph") if isinstance(doc["graph_module"], dict) else None
    nodes = graph.get("nodes") if isinstance(graph, dict) else None
    return [n for n in nodes if isinstance(n, dict)] if isinstance(nodes, list) else []


def _walk(node: Any, key: str = ""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield k, v
            yield from _walk(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v, key)


def _tensors(data: bytes, what: str) -> Any:
    if not data:
        return {}
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise HandoverError(f"the {what} in the handover file are not plain tensors ({type(exc).__name__})") from exc


def load_program(blob: bytes, device: str) -> torch.nn.Module:
    """The exported model as a callable ``module(idx) -> logits`` on ``device``, after every check."""
    from torch._export.serde.serialize import SerializedArtifact, deserialize

    sections = split_sections(blob)
    if len(sections["program"]) > MAX_PROGRAM_JSON:
        raise HandoverError("the exported graph is larger than the evaluator reads")
    try:
        doc = json.loads(sections["program"])
    except ValueError as exc:
        raise HandoverError("the exported graph is not JSON") from exc
    check_program_json(doc)  # rewrites known kernels' calls to the reference
    register_reference()
    state = _tensors(sections["state_dict"], "weights")
    constants = _tensors(sections["constants"], "constants")
    examples = _tensors(sections["example_inputs"], "example inputs") or ((), {})
    if not isinstance(state, dict) or not isinstance(constants, dict):
        raise HandoverError("the handover file's weights are not a name -> tensor mapping")
    try:
        program = deserialize(SerializedArtifact(json.dumps(doc).encode(), state, constants, examples))
    except HandoverError:
        raise
    except Exception as exc:
        raise HandoverError(f"the exported program does not load ({type(exc).__name__}: {exc})"[:500]) from exc
    sig = program.graph_signature
    if sig.buffers_to_mutate or sig.user_inputs_to_mutate or getattr(sig, "parameters_to_mutate", None):
        raise HandoverError("the model's forward pass mutates its state or its input; the evaluator runs pure models")
    if len(sig.user_inputs) != 1 or len(sig.user_outputs) != 1:
        raise HandoverError("the exported model must take one input (the token ids) and return one tensor (logits)")
    # The JSON check again, on what torch actually built; known kernels' calls become ATen, then nothing else runs
    _check_graph(program.graph, allow=(REFERENCE_TARGET,))
    try:
        inline_references(program.graph_module)
    except KernelRefused as exc:
        raise HandoverError(f"the evaluator refused an attention kernel: {exc}") from exc
    _check_graph(program.graph, allow=())
    return program.module().to(device)


def _check_graph(graph: torch.fx.Graph, allow: tuple[str, ...]) -> None:
    """Every node of a loaded graph is an input, an output, a weight or a call of an operator the evaluator runs."""
    for node in graph.nodes:
        if node.op == "call_function":
            if isinstance(node.target, torch._ops.OpOverload):
                name = f"torch.ops.{node.target}"
            else:
                name = "_operator.getitem" if node.target is operator.getitem else repr(node.target)
            if not _runs(name) and name not in allow:
                raise _refused(name)
        elif node.op not in ("placeholder", "output"):
            raise HandoverError(f"the exported program has a {node.op} node; the evaluator runs plain ATen graphs")
