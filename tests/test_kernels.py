"""Registered attention kernels in the trusted evaluator: known ones run through an ATen reference, argument by
argument; every feature the reference cannot reproduce, and every operator nobody has an entry for, is refused
with a message that names it. The kernels are stand-ins registered under the real names and signatures
(tests/kernel_standins.py), exported by the harness's own ``export_model`` as a candidate's model would be.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from tests.kernel_standins import attention, register, register_unknown
from trainer.evaluate import _target_log_probs, causality_check
from trainer.handover import HandoverError, export_model, load_program, split_sections
from trainer.kernels import KNOWN_KERNELS, known_entry

V, T, B, H, D = 64, 32, 2, 2, 8


class TinyAttention(nn.Module):
    """Embedding, one attention layer through ``op(q, k, v, **kwargs)``, a head: the shape of upstream's blocks."""

    def __init__(self, op, output: int = 0, **kwargs) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(V, H * D)
        self.qkv = nn.Linear(H * D, 3 * H * D, bias=False)
        self.head = nn.Linear(H * D, V, bias=False)
        self.op, self.output, self.kwargs = op, output, kwargs

    def forward(self, idx):
        x = self.emb(idx)
        q, k, v = self.qkv(x).view(idx.size(0), idx.size(1), 3, H, D).unbind(2)
        y = self.op(q, k, v, **self.kwargs)
        y = y if isinstance(y, torch.Tensor) else y[0] if self.output == 0 else y[0] + y[self.output].mean()
        return self.head(y.reshape(idx.size(0), idx.size(1), H * D))


def fa3_py(**kwargs) -> TinyAttention:
    return TinyAttention(register("flash_attn_3", "fa3_py"), **{"causal": True, **kwargs})


def fa3(namespace: str = "flash_attn_3", **kwargs) -> TinyAttention:
    return TinyAttention(register(namespace, "fwd"), **{"is_causal": True, **kwargs})


def fa2(**kwargs) -> TinyAttention:
    base = dict(dropout_p=0.0, softmax_scale=D**-0.5, causal=True, window_size_left=-1, window_size_right=-1,
                softcap=0.0, alibi_slopes=None, return_softmax=False)
    return TinyAttention(register("flash_attn", "fa2_py"), **{**base, **kwargs})


def causal_change(module) -> float:
    data = torch.randint(0, V, (6, T + 1), generator=torch.Generator().manual_seed(1))
    scored = _target_log_probs(module, data[:, :-1], data[:, 1:], V, "cpu")
    return causality_check(module, data, scored, B, V, "cpu", seed=5)


def loaded(model: nn.Module) -> nn.Module:
    return load_program(export_model(model, B, T, "cpu"), "cpu")


@pytest.mark.parametrize("make", [
    pytest.param(fa3_py, id="fa3-python-op"),
    pytest.param(fa3, id="fa3-cpp-fwd"),
    pytest.param(lambda: fa3("_flash_attn3_1a2b3c4"), id="fa3-hub-namespace"),
    pytest.param(fa2, id="fa2"),
    pytest.param(lambda: fa3_py(softmax_scale=0.2), id="fa3-recorded-scale"),
    pytest.param(lambda: fa3_py(num_splits=3, pack_gqa=True), id="fa3-scheduling-only"),
])
def test_a_known_kernel_runs_as_its_aten_reference_and_passes_the_causality_check(make) -> None:
    model = make().eval()
    blob = export_model(model, B, T, "cpu")
    assert "torch.ops.aten" in split_sections(blob)["program"].decode()
    module = load_program(blob, "cpu")
    targets = {str(n.target) for n in module.graph.nodes if n.op == "call_function"}
    assert "aten.scaled_dot_product_attention.default" in targets
    assert not any("flash" in t or "farm_reference" in t for t in targets), targets
    x = torch.randint(0, V, (B, T))
    with torch.no_grad():
        assert torch.allclose(module(x), model(x), atol=1e-5)
    data = torch.randint(0, V, (B, T + 1))
    scored = _target_log_probs(module, data[:, :-1], data[:, 1:], V, "cpu")
    assert causality_check(module, data, scored, B, V, "cpu", seed=5) <= 1e-4


@pytest.mark.parametrize(("make", "feature"), [
    pytest.param(lambda: fa3_py(causal=False), "non-causal", id="fa3-non-causal"),
    pytest.param(lambda: fa3(is_causal=False), "non-causal", id="fa3-cpp-non-causal"),
    pytest.param(lambda: fa3_py(window_size_left=4), "a sliding window", id="fa3-window-left"),
    pytest.param(lambda: fa3_py(window_size_right=3), "a sliding window", id="fa3-window-right-looks-ahead"),
    pytest.param(lambda: fa3_py(softcap=30.0), "a softcap", id="fa3-softcap"),
    pytest.param(lambda: fa3_py(attention_chunk=8), "chunked attention", id="fa3-chunked"),
    pytest.param(lambda: fa3_py(softmax_scale=float("inf")), "softmax scale", id="fa3-infinite-scale"),
    pytest.param(lambda: fa2(dropout_p=0.1), "dropout", id="fa2-dropout"),
    pytest.param(lambda: fa2(causal=False), "non-causal", id="fa2-non-causal"),
    pytest.param(lambda: fa2(softcap=50.0), "a softcap", id="fa2-softcap"),
    pytest.param(lambda: fa3_py(output=1), "output 1", id="uses-softmax-lse"),
])
def test_a_feature_the_reference_cannot_reproduce_is_refused_by_name(make, feature) -> None:
    with pytest.raises(HandoverError, match="attention kernel") as refused:
        loaded(make().eval())
    assert feature in str(refused.value)


def test_a_window_that_reads_ahead_would_have_passed_as_a_score_without_the_argument_check() -> None:
    """The hostile case the check exists for: a right window reads later tokens; eager, it moves the target."""
    assert causal_change(fa3_py(window_size_right=3).eval()) > 1e-2
    assert causal_change(fa3_py().eval()) < 1e-4


def test_an_unknown_operator_is_refused_naming_it_and_how_an_entry_is_added() -> None:
    with pytest.raises(HandoverError) as refused:
        loaded(TinyAttention(register_unknown(), causal=True).eval())
    message = str(refused.value)
    assert "my_kernels.fused_attention" in message and "KNOWN_KERNELS" in message and "stand-in" in message


def test_an_argument_no_entry_names_is_refused_unless_it_is_none() -> None:
    blob = export_model(fa3_py().eval(), B, T, "cpu")
    sections = split_sections(blob)
    doc = json.loads(sections["program"])
    node = next(n for n in doc["graph_module"]["graph"]["nodes"] if "flash" in n["target"])
    node["inputs"].append({"name": "arbitrary_func", "arg": {"as_tensor": {"name": node["inputs"][0]["arg"]
                                                                           ["as_tensor"]["name"]}}, "kind": 2})
    from tests.test_handover import pack

    with pytest.raises(HandoverError, match="'arbitrary_func' is set"):
        load_program(pack(doc, sections), "cpu")


def test_the_farms_reference_operator_cannot_be_written_by_a_candidate() -> None:
    blob = export_model(fa3_py().eval(), B, T, "cpu")
    sections = split_sections(blob)
    doc = json.loads(sections["program"])
    node = next(n for n in doc["graph_module"]["graph"]["nodes"] if "flash" in n["target"])
    node["target"] = "torch.ops.farm_reference.causal_attention.default"
    from tests.test_handover import pack

    with pytest.raises(HandoverError, match="farm_reference.causal_attention"):
        load_program(pack(doc, sections), "cpu")


def test_the_reference_is_the_kernels_causal_attention_with_gqa_and_scale() -> None:
    from trainer.kernels import reference_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, 16, 4, 8, generator=g), torch.randn(2, 16, 2, 8, generator=g), torch.randn(
        2, 16, 2, 8, generator=g)
    for scale in (None, 0.3):
        assert torch.allclose(reference_attention(q, k, v, scale), attention(q, k, v, scale, causal=True), atol=1e-5)


def test_the_table_matches_names_exactly() -> None:
    assert known_entry("torch.ops.flash_attn_3._flash_attn_forward.default")
    assert known_entry("torch.ops._flash_attn3_588b404_dirty.fwd.default")
    assert known_entry("torch.ops.flash_attn._flash_attn_forward.default")
    assert not known_entry("torch.ops.flash_attn_3_evil._flash_attn_forward.default")
    assert not known_entry("torch.ops.flash_attn_3.fwd_combine.default")
    assert not known_entry("torch.ops.flash_attn_3.fwd.out")
    assert len({(e.namespaces, e.op) for e in KNOWN_KERNELS}) == len(KNOWN_KERNELS)


# ----------------------------------------------------------------------------------------------------------
# Item 2: a train.py that needs a hub kernel, and a farm whose sandbox cannot give it one
# ----------------------------------------------------------------------------------------------------------

UPSTREAM_FA3 = '''
import torch
from kernels import get_kernel
cap = torch.cuda.get_device_capability()
repo = "varunneal/flash-attention-3" if cap == (9, 0) else "kernels-community/flash-attn3"
fa3 = get_kernel("varunneal/flash-attention-3" if cap == (9, 0) else "kernels-community/flash-attn3")
from prepare import evaluate_bpb
'''


def test_a_kernel_loaded_without_a_fallback_is_a_need_and_the_seeds_is_not() -> None:
    from trainer.kernels import hub_kernels
    from trainer.profiles import get_profile
    from trainer.seed import seed_source

    found, required = hub_kernels(seed_source(get_profile("h100")))
    assert set(found) == {"varunneal/flash-attention-3", "kernels-community/flash-attn3"} and required == []
    found, required = hub_kernels(UPSTREAM_FA3)
    assert set(required) == {"varunneal/flash-attention-3", "kernels-community/flash-attn3"}


def test_the_farm_refuses_to_start_upstreams_train_py_where_the_image_lacks_fa3(tmp_path) -> None:
    """farm run's check (cluster/run_cli.py) on a real research repo: the process sandbox here has no `kernels`."""
    from cluster.records.repo import ResearchRepo
    from cluster.run_cli import missing_kernel_refusal
    from trainer.kernels import kernel_refusal
    from trainer.profiles import get_profile
    from trainer.seed import seed_source

    ResearchRepo.create(tmp_path / "up" / "repo", UPSTREAM_FA3, "program")
    refusal = missing_kernel_refusal(tmp_path / "up", get_profile("h100"), "process", "unused")
    assert refusal and "kernels-community/flash-attn3" in refusal and "make images EXTRA_PIP=kernels" in refusal
    assert missing_kernel_refusal(tmp_path / "up", get_profile("cpu-tiny"), "process", "unused") is None
    ResearchRepo.create(tmp_path / "seed" / "repo", seed_source(get_profile("h100")), "program")
    assert missing_kernel_refusal(tmp_path / "seed", get_profile("h100"), "process", "unused") is None
    baked = {"varunneal/flash-attention-3", "kernels-community/flash-attn3"}
    assert kernel_refusal(UPSTREAM_FA3, True, baked) is None  # an image built with KERNELS=... starts
    assert kernel_refusal(UPSTREAM_FA3, True, None) is None  # a cluster's image: not known here, not refused


def test_the_docker_sandbox_is_judged_by_its_images_kernels_label(tmp_path) -> None:
    """The trainer image built without KERNELS (as `make images` here) carries no hub kernel: refused by name."""
    import shutil
    import subprocess

    from cluster.records.repo import ResearchRepo
    from cluster.run_cli import missing_kernel_refusal
    from trainer.profiles import get_profile

    image = "autoresearch-farm/trainer:latest"
    inspect = ["docker", "image", "inspect", image]
    if not shutil.which("docker") or subprocess.run(inspect, capture_output=True, timeout=60).returncode != 0:
        pytest.skip("no Docker Engine or no trainer image here")
    ResearchRepo.create(tmp_path / "up" / "repo", UPSTREAM_FA3, "program")
    refusal = missing_kernel_refusal(tmp_path / "up", get_profile("gpu-24gb"), "docker", image)
    assert refusal and "varunneal/flash-attention-3" in refusal and "KERNELS=" in refusal
    assert missing_kernel_refusal(tmp_path / "up", get_profile("gpu-24gb"), "docker", "no/such:image") is None
