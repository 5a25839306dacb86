"""The offline mutator: valid, minimal, deterministic edits of train.py's constants block."""

from __future__ import annotations

import ast
import functools

import pytest

from agent.mutate import MutateProposer
from agent.mutate import parse_constants as _parse_constants
from agent.protocol import Context, ExperimentSummary
from trainer.profiles import get_profile
from trainer.seed import seed_source

UPSTREAM_STYLE = '''"""An upstream-autoresearch-style train.py (only its shape matters here)."""
import torch
from prepare import MAX_SEQ_LEN, TIME_BUDGET

# Model architecture
ASPECT_RATIO = 64       # model_dim = depth * ASPECT_RATIO
HEAD_DIM = 128          # target head dimension for attention
WINDOW_PATTERN = "SSSL" # sliding window pattern: L=full, S=half context

# Optimization
TOTAL_BATCH_SIZE = 2**19 # ~524K tokens per optimizer step
EMBEDDING_LR = 0.6      # learning rate for token embeddings (Adam)
UNEMBEDDING_LR = 0.004  # learning rate for lm_head (Adam)
MATRIX_LR = 0.04        # learning rate for matrix parameters (Muon)
SCALAR_LR = 0.5         # learning rate for per-layer scalars (Adam)
WEIGHT_DECAY = 0.2      # cautious weight decay for Muon
ADAM_BETAS = (0.8, 0.95) # Adam beta1, beta2
WARMUP_RATIO = 0.0      # fraction of time budget for LR warmup
WARMDOWN_RATIO = 0.5    # fraction of time budget for LR warmdown
FINAL_LR_FRAC = 0.0     # final LR as fraction of initial

# Model size
DEPTH = 8               # number of transformer layers
DEVICE_BATCH_SIZE = 128  # per-device batch size (reduce if OOM)

model_dim = DEPTH * ASPECT_RATIO
assert TOTAL_BATCH_SIZE % (DEVICE_BATCH_SIZE * MAX_SEQ_LEN) == 0
H100_BF16_PEAK_FLOPS = 989.5e12
print(model_dim, TIME_BUDGET)
'''

SEEDS = range(300)


parse_constants = functools.lru_cache(maxsize=8)(_parse_constants)  # the tests read each text several times


def context(source: str, profile: str = "cpu-tiny", seed: int = 0, **kw) -> Context:
    return Context(program="", profile=profile, parent_commit="c0ffee", parent_train_py=source, seed=seed, **kw)


def announced(description: str) -> dict[str, tuple[str, str]]:
    """'A 1 -> 2; B 3 -> 4' as {name: (old text, new text)}."""
    out = {}
    for clause in description.split("; "):
        name, old, arrow, new = clause.split()
        assert arrow == "->"
        out[name] = (old, new)
    return out


def values(source: str) -> dict[str, int | float]:
    return {name: c.value for name, c in parse_constants(source).items()}


def literal_text(source: str, name: str, block: dict | None = None) -> str:
    c = (block or parse_constants(source))[name]
    return source.split("\n")[c.line][c.start : c.end]


def check_minimal_edit(parent: str, child: str, description: str, trees: bool = True) -> dict[str, tuple[str, str]]:
    """The child differs from the parent exactly in the announced literals, comments and layout kept."""
    if trees:
        compile(child, "train.py", "exec")
    changes = announced(description)
    before, after = parse_constants(parent), parse_constants(child)
    assert set(before) == set(after)
    for name in before:
        if name in changes:
            old, new = changes[name]
            assert literal_text(parent, name, before) == old
            assert literal_text(child, name, after) == new
            assert before[name].value != after[name].value
        else:
            assert literal_text(parent, name, before) == literal_text(child, name, after)
    # Put the old literal texts back: the parent must come out, byte for byte.
    lines = child.split("\n")
    for name in sorted(changes, key=lambda n: (after[n].line, -after[n].start)):
        c = after[name]
        lines[c.line] = lines[c.line][: c.start] + changes[name][0] + lines[c.line][c.end :]
    assert "\n".join(lines) == parent
    # Every other statement is the same tree, every changed line keeps its comment.
    changed_lines = {after[n].line + 1 for n in changes}
    if trees:
        for a, b in zip(ast.parse(parent).body, ast.parse(child).body, strict=True):
            if a.lineno not in changed_lines:
                assert ast.dump(a) == ast.dump(b)
    for line in changed_lines:
        old_line, new_line = parent.split("\n")[line - 1], child.split("\n")[line - 1]
        if "#" in old_line:
            assert old_line[old_line.index("#") :] == new_line[new_line.index("#") :]
    return changes


@pytest.mark.parametrize("profile", ["cpu-tiny", "h100"])
def test_seed_proposals_are_minimal_valid_edits(profile: str) -> None:
    parent = seed_source(get_profile(profile))
    seq_len = get_profile(profile).max_seq_len
    proposer = MutateProposer()
    touched: set[str] = set()
    for seed in SEEDS:
        proposal = proposer.propose(context(parent, profile, seed))
        assert proposal.parent_commit == "c0ffee" and proposal.agent == "mutate"
        changes = check_minimal_edit(parent, proposal.train_py, proposal.description, trees=seed < 40)
        touched |= set(changes)
        v = values(proposal.train_py)
        assert "SEED" not in changes and v["SEED"] == 42
        assert v["TOTAL_BATCH_SIZE"] % (v["DEVICE_BATCH_SIZE"] * seq_len) == 0, proposal.description
        assert v["HEAD_DIM"] % 2 == 0 and v["HEAD_DIM"] >= 8
        assert all(x >= 1 for k, x in v.items() if isinstance(x, int))
        assert all(v[k] > 0 for k in v if k.endswith("_LR") or k == "WEIGHT_DECAY")
        assert all(0 < v[k] < 1 for k in ("ADAM_BETA1", "ADAM_BETA2", "MUON_MOMENTUM"))
        assert 0 < v["WARMDOWN_RATIO"] <= 1 and v["WARMUP_RATIO"] + v["WARMDOWN_RATIO"] <= 1
    assert len(touched) >= 15  # the draws cover the block, not one favourite


def test_steps_by_kind() -> None:
    parent = seed_source(get_profile("cpu-tiny"))
    base = values(parent)
    proposer = MutateProposer(two_change_prob=0.0)
    for seed in range(150):
        proposal = proposer.propose(context(parent, seed=seed))
        v = values(proposal.train_py)
        for name in announced(proposal.description):
            old, new = base[name], v[name]
            if name in ("DEPTH", "NS_STEPS", "MLP_RATIO"):
                assert abs(new - old) == 1
            elif name in ("HEAD_DIM", "ASPECT_RATIO", "DEVICE_BATCH_SIZE", "TOTAL_BATCH_SIZE"):
                assert new in (old * 2, old // 2)
            elif name in ("ADAM_BETA1", "ADAM_BETA2", "MUON_MOMENTUM"):
                assert (1 - new) / (1 - old) == pytest.approx(2, rel=0.02) or (1 - old) / (1 - new) == pytest.approx(
                    2, rel=0.02
                )
            elif name.endswith("_LR") and name != "FINAL_LR_FRAC":
                ratio = max(new / old, old / new)
                assert any(ratio == pytest.approx(f, rel=0.01) for f in (1.5, 2, 3))
            assert isinstance(new, type(old))


def test_deterministic_by_seed() -> None:
    parent = seed_source(get_profile("h100"))
    a = [MutateProposer().propose(context(parent, "h100", s)).train_py for s in range(20)]
    b = [MutateProposer().propose(context(parent, "h100", s)).train_py for s in range(20)]
    assert a == b
    assert len(set(a)) >= 15


def test_avoids_changes_already_tried() -> None:
    parent = seed_source(get_profile("cpu-tiny"))
    first = MutateProposer().propose(context(parent, seed=7))
    tried = [ExperimentSummary(experiment_id="e1", description=first.description)]
    for field in ("recent", "leaderboard", "own_recent"):
        again = MutateProposer().propose(context(parent, seed=7, **{field: tried}))
        assert again.description != first.description


def test_upstream_style_block() -> None:
    proposer = MutateProposer()
    block = parse_constants(UPSTREAM_STYLE)
    assert "WINDOW_PATTERN" not in block and "H100_BF16_PEAK_FLOPS" not in block
    assert block["TOTAL_BATCH_SIZE"].value == 2**19 and block["ADAM_BETAS[1]"].value == 0.95
    touched: set[str] = set()
    for seed in SEEDS:
        proposal = proposer.propose(context(UPSTREAM_STYLE, "h100", seed))
        changes = check_minimal_edit(UPSTREAM_STYLE, proposal.train_py, proposal.description)
        touched |= set(changes)
        v = values(proposal.train_py)
        assert v["TOTAL_BATCH_SIZE"] % (v["DEVICE_BATCH_SIZE"] * 2048) == 0
        assert 0 < v["ADAM_BETAS[0]"] < 1 and 0 < v["ADAM_BETAS[1]"] < 1
        assert literal_text(proposal.train_py, "TOTAL_BATCH_SIZE").startswith("2**")
        assert 'WINDOW_PATTERN = "SSSL" # sliding' in proposal.train_py
        assert "H100_BF16_PEAK_FLOPS = 989.5e12\n" in proposal.train_py
    assert {"TOTAL_BATCH_SIZE", "ADAM_BETAS[0]", "ADAM_BETAS[1]", "DEPTH", "MATRIX_LR"} <= touched


def test_offsets_after_non_ascii_text() -> None:
    source = 'LABELS = ("größe", 3)  # ü\nLR = 0.1  # η\n'
    for seed in range(20):
        proposal = MutateProposer().propose(context(source, seed=seed))
        check_minimal_edit(source, proposal.train_py, proposal.description)
        assert '("größe", ' in proposal.train_py


@pytest.mark.parametrize(
    "source, match",
    [
        ("import torch\nx = 1\nprint(x)\n", "no constants block"),
        ("NAME = 'gpt'\nmodel = None\n", "no constants block"),
        ("def f(:\n", "does not parse"),
        ("SEED = 1\n", "no constant the mutator may change"),
    ],
)
def test_clear_errors(source: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MutateProposer().propose(context(source))
