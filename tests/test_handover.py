"""The hand-over and the trusted evaluator, without a sandbox: what a model file may and may not make them do.

The evaluator reads a file the candidate wrote. These tests build such files the way an attacker would (from a
real export, then edited) and check that nothing but a plain ATen graph with plain tensors is ever run, that a
model that reads ahead is refused whatever position it reads ahead at, and that the score is the loss of the
logits, computed by the evaluator.
"""

from __future__ import annotations

import json
import math
import struct

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer.evaluate import EvaluationError, _target_log_probs, causality_check, score, validation_rows
from trainer.handover import MAGIC, HandoverError, check_program_json, export_model, load_program, split_sections
from trainer.profiles import get_profile

PROFILE = get_profile("cpu-smoke")
V, T = 260, PROFILE.max_seq_len


class Bigram(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, V)

    def forward(self, idx, targets=None, reduction="mean"):
        return self.emb(idx)


class Peek(nn.Module):
    """Reads the next token at positions p % every == at (every=1: everywhere)."""

    def __init__(self, every: int = 1, at: int = 0) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, V)
        self.every, self.at = every, at

    def forward(self, idx):
        nxt = torch.cat([idx[:, 1:], idx[:, -1:]], dim=1)
        peek = (torch.arange(idx.size(1)) % self.every == self.at)[None, :, None]
        return torch.where(peek, self.emb(nxt), self.emb(idx))


def pack(doc: dict, sections: dict[str, bytes]) -> bytes:
    parts = [json.dumps(doc).encode(), sections["state_dict"], sections["constants"], sections["example_inputs"]]
    return MAGIC + b"".join(struct.pack("<Q", len(p)) + p for p in parts)


@pytest.fixture(scope="module")
def honest() -> tuple[bytes, dict, dict[str, bytes]]:
    blob = export_model(Bigram(), 8, T, "cpu")
    sections = split_sections(blob)
    return blob, json.loads(sections["program"]), sections


def test_an_exported_model_runs_on_the_trusted_side_as_it_did_in_the_candidate(honest) -> None:
    blob, _, _ = honest
    model = Bigram()
    blob = export_model(model, 8, T, "cpu")
    x = torch.randint(0, V, (8, T))
    assert torch.equal(load_program(blob, "cpu")(x), model(x))


@pytest.mark.parametrize("target", ["torch.save", "builtins.eval", "torch.ops.aten.from_file.default",
                                    "torch.ops.aten.rand.default", "torch.ops.myns.evil.default", "math.sqrt"])
def test_a_graph_that_calls_anything_but_plain_aten_is_refused_before_torch_parses_it(honest, target) -> None:
    _, doc, sections = honest
    doc = json.loads(json.dumps(doc))
    doc["graph_module"]["graph"]["nodes"][0]["target"] = target
    with pytest.raises(HandoverError, match="does not run"):
        load_program(pack(doc, sections), "cpu")


@pytest.mark.parametrize("edit", [
    lambda d: d.update(range_constraints={"s0": {"min_val": 2, "max_val": "__import__('os').system('true')"}}),
    lambda d: d.update(guards_code=["__import__('os').system('true')"]),
    lambda d: d["graph_module"]["graph"]["nodes"][0]["inputs"].append({"arg": {"as_expr": {"expr_str": "s0"}}}),
])
def test_symbolic_shapes_and_guard_code_never_reach_sympy_or_exec(honest, edit) -> None:
    _, doc, sections = honest
    doc = json.loads(json.dumps(doc))
    edit(doc)
    with pytest.raises(HandoverError):
        check_program_json(doc)


def test_weights_are_plain_tensors_or_nothing(honest) -> None:
    """A pickle that would run code is refused by the weights-only loader; torch's own load would fall back."""
    _, doc, sections = honest

    class Boom:
        def __reduce__(self):
            return (print, ("pickle ran code",))

    import io
    import pickle

    evil = io.BytesIO()
    pickle.dump({"emb.weight": Boom()}, evil)
    with pytest.raises(HandoverError, match="not plain tensors"):
        load_program(pack(doc, {**sections, "state_dict": evil.getvalue()}), "cpu")
    for broken in (b"", MAGIC, MAGIC + struct.pack("<Q", 10**9), pack(doc, sections) + b"x"):
        with pytest.raises(HandoverError):
            load_program(broken, "cpu")


@pytest.mark.parametrize(("every", "at"), [(1, 0), (16, 5), (64, 63), (128, 100)])
def test_a_model_that_reads_ahead_anywhere_fails_the_causality_check(farm_cache, every, at) -> None:
    data, _, _ = validation_rows(PROFILE, farm_cache)
    for model, looks_ahead in ((Peek(every, at), True), (Bigram(), False)):
        module = load_program(export_model(model, 8, T, "cpu"), "cpu")
        scored = torch.cat([_target_log_probs(module, data[i : i + 8, :-1], data[i : i + 8, 1:], V, "cpu")
                            for i in range(0, len(data), 8)])
        change = causality_check(module, data, scored, 8, V, "cpu", seed=1)
        assert (change > 1e-3) if looks_ahead else change == 0.0


def test_the_score_is_the_evaluators_loss_of_the_logits(farm_cache) -> None:
    model = Bigram()
    with torch.no_grad():
        model.emb.weight.zero_()  # uniform over 260 tokens: 8.02 bits per token
    report = score(export_model(model, 8, T, "cpu"), PROFILE, farm_cache, 8, "cpu", seed=3)
    data, token_bytes, files = validation_rows(PROFILE, farm_cache)
    y = data[:, 1:]
    expected = (math.log(V) * (token_bytes[y] > 0).sum().item()) / (math.log(2) * token_bytes[y].sum().item())
    assert report["val_bpb"] == pytest.approx(expected, rel=1e-6)  # log-softmax in float32
    assert report["files"] == [PROFILE.val_filename] and report["tokens"] == PROFILE.eval_tokens
    assert report["device"] == "cpu" and report["causal_max_change"] == 0.0


def test_a_model_with_the_wrong_output_is_refused(farm_cache) -> None:
    class Short(nn.Module):
        def forward(self, idx):
            return torch.zeros(idx.size(0), idx.size(1), 10)

    with pytest.raises(EvaluationError, match="logits of shape"):
        score(export_model(Short(), 8, T, "cpu"), PROFILE, farm_cache, 8, "cpu", seed=0)


def test_a_model_that_does_not_export_says_what_the_interface_is() -> None:
    class TargetsOnly(nn.Module):
        def forward(self, idx, targets):
            return F.cross_entropy(idx.float(), targets)

    with pytest.raises(HandoverError, match=r"model\(idx\) returns logits"):
        export_model(TargetsOnly(), 8, T, "cpu")


SEEDING = """
import random, sys
import numpy, torch
from trainer.candidate import offset_seeds
offset_seeds(int(sys.argv[1]))
torch.manual_seed(42); a = torch.rand(1).item()
b = torch.rand(1, generator=torch.Generator().manual_seed(42)).item()
torch.cuda.manual_seed_all(42)
random.seed(42); c = random.random()
numpy.random.seed(42); d = numpy.random.rand()
print(a, b, c, d)
"""


def test_a_replicate_seed_shifts_every_usual_seeding_call() -> None:
    """torch's global and Generator seeds, Python's random and numpy's: a script's own literal seed does not pin a
    replicate back to seed 0 (a script that goes around all of them is caught by its bit-identical weights)."""
    import subprocess
    import sys

    runs = {seed: subprocess.run([sys.executable, "-c", SEEDING, str(seed)], capture_output=True, text=True,
                                 check=True).stdout.split() for seed in (0, 0, 1, 2)}
    assert len(runs) == 3
    zero, one, two = runs[0], runs[1], runs[2]
    assert all(z != o and o != t for z, o, t in zip(zero, one, two, strict=True)), runs
    assert subprocess.run([sys.executable, "-c", SEEDING, "0"], capture_output=True, text=True).stdout.split() == zero
