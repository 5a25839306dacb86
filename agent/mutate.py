"""The offline proposer: perturb the literal hyperparameters of train.py's constants block.

No LLM, no network: the farm's default when no API key is set. The constants
block is the longest run of consecutive module-level ``UPPER_CASE = <number>``
assignments (``2**19`` and tuples of numbers such as ``ADAM_BETAS = (0.8,
0.95)`` count; strings and other expressions are kept but never touched).
Each proposal changes one constant, sometimes two, by a step that fits the
name: rates and ratios multiplicatively, betas and momenta through ``1 - beta``,
sizes by powers of two, depth-like small ints by one. Only the literal's text
is replaced, so every line keeps its comment and layout. The divisibility the
seed asserts (``TOTAL_BATCH_SIZE % (DEVICE_BATCH_SIZE * MAX_SEQ_LEN) == 0``,
with the profile's ``MAX_SEQ_LEN``) is kept by adjusting the other batch size.
"""

from __future__ import annotations

import ast
import math
import random
import re
from dataclasses import dataclass

from agent.protocol import Context, Proposal
from trainer.profiles import get_profile

# Never touched: the replicate seed and the harness's constants (a train.py that redefines them is not ours to tune).
FROZEN = {"MAX_SEQ_LEN", "TIME_BUDGET", "EVAL_TOKENS", "VOCAB_SIZE"}
DEPTH_WORDS = ("DEPTH", "N_LAYER", "NUM_LAYERS", "N_LAYERS", "NS_STEPS")
SIZE_WORDS = ("BATCH_SIZE", "HEAD_DIM", "ASPECT_RATIO", "_DIM", "DIM_", "EMBD", "WIDTH", "HIDDEN", "_SIZE")
RATE_STEPS = (1.5, 2.0, 3.0)
FLOAT_STEPS = (1.25, 1.5, 2.0)
ZERO_STARTS = (0.01, 0.02, 0.05, 0.1)  # a rate or fraction that is 0.0 can only move to a small value


@dataclass(frozen=True)
class Constant:
    """One numeric literal of the constants block and where its text lies."""

    name: str  # "DEPTH", or "ADAM_BETAS[1]" for an element of a tuple
    base: str  # the assigned name
    value: int | float
    line: int  # 0-based
    start: int  # character offsets in the line
    end: int
    pow_base: int | None = None  # written as pow_base**k


def _number(node: ast.expr) -> tuple[int | float, int | None] | None:
    """The value of a numeric literal or of ``int**int``; None for anything else."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value, None
    if (
        isinstance(node, ast.BinOp)
        and isinstance(node.op, ast.Pow)
        and all(isinstance(n, ast.Constant) and type(n.value) is int for n in (node.left, node.right))
        and 2 <= node.left.value <= 16
        and 0 <= node.right.value <= 64
    ):
        return node.left.value**node.right.value, node.left.value
    return None


def _char_col(line: str, byte_col: int) -> int:
    """ast offsets count UTF-8 bytes; string slicing counts characters."""
    return len(line.encode("utf-8")[:byte_col].decode("utf-8", errors="replace"))


def parse_constants(source: str) -> dict[str, Constant]:
    """The numeric literals of the constants block, by name; ValueError when there is no block."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise ValueError(f"train.py does not parse (line {exc.lineno}: {exc.msg})") from None
    lines = source.split("\n")
    runs: list[list[Constant]] = []
    current: list[Constant] | None = None
    for stmt in tree.body:
        target = value = None
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            target, value = stmt.targets[0].id, stmt.value
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            target, value = stmt.target.id, stmt.value
        if target is None or not re.fullmatch(r"[A-Z][A-Z0-9_]*", target):
            current = None
            continue
        if current is None:
            current = []
            runs.append(current)
        elements = [(target, value)]
        if isinstance(value, ast.Tuple):
            elements = [(f"{target}[{i}]", elt) for i, elt in enumerate(value.elts)]
        for name, node in elements:
            number = _number(node)
            if number is None or node.lineno != node.end_lineno:
                continue
            text = lines[node.lineno - 1]
            start, end = _char_col(text, node.col_offset), _char_col(text, node.end_col_offset)
            current.append(Constant(name, target, number[0], node.lineno - 1, start, end, number[1]))
    best = max(runs, key=len, default=[])
    if not best:
        raise ValueError(
            "train.py has no constants block: no module-level `UPPER_CASE = <number>` assignments to mutate"
        )
    return {c.name: c for c in best}


def format_number(value: int | float, pow_base: int | None = None) -> str:
    """Python source for a value: ints stay ints (as base**k when written so), floats as Python writes them."""
    if isinstance(value, int):
        if pow_base and value > 0:
            k = round(math.log(value, pow_base))
            if pow_base**k == value:
                return f"{pow_base}**{k}"
        return str(value)
    return repr(float(value))


def _kind(c: Constant) -> str | None:
    """How a constant moves: beta, depth, size, fraction, rate, float, int; None = never."""
    name = c.base
    if "SEED" in name or name in FROZEN or c.value < 0:
        return None
    if isinstance(c.value, float):
        if ("BETA" in name or "MOMENTUM" in name) and 0 < c.value < 1:
            return "beta"
        if ("FRAC" in name or "RATIO" in name) and c.value <= 1:
            return "fraction"
        if "LR" in name.split("_") or "WEIGHT_DECAY" in name or "RATE" in name:
            return "rate"
        return "float" if c.value > 0 else None
    if c.value < 1:
        return None
    if any(w in name for w in DEPTH_WORDS):
        return "depth"
    if any(w in name for w in SIZE_WORDS) or name.endswith(("_DIM", "_SIZE", "_LEN")):
        return "size"
    return "int"


def _step(c: Constant, kind: str, rng: random.Random) -> int | float | None:
    """A new value for one constant, or None when the draw leaves the valid range."""
    v = c.value
    up = rng.random() < 0.5
    if kind == "beta":
        gap = (1 - v) / 2 if up else (1 - v) * 2
        new = float(f"{1 - float(f'{gap:.3g}'):.6g}")
        return new if 0 < new < 1 else None
    if kind == "depth":
        return v + 1 if up else (v - 1 if v > 1 else None)
    if kind == "size":
        if c.base == "HEAD_DIM":
            new = v * 2 if up else v // 2
            return new if new >= 8 and new % 2 == 0 and (up or v % 2 == 0) else None
        return v * 2 if up else (v // 2 if v % 2 == 0 and v >= 2 else None)
    if kind == "int":
        if v <= 16:
            return v + 1 if up else (v - 1 if v > 1 else None)
        return v * 2 if up else (v // 2 if v % 2 == 0 else None)
    # fraction, rate, float: multiplicative
    if v == 0:
        return rng.choice(ZERO_STARTS)
    factor = rng.choice(FLOAT_STEPS if kind == "float" else RATE_STEPS)
    new = float(f"{(v * factor if up else v / factor):.3g}")
    if kind == "fraction" and new > 1:
        return None
    return new if new > 0 and new != v else None


def _repair_batch(values: dict[str, int | float], changed: list[str], seq_len: int) -> list[str] | None:
    """Keep TOTAL_BATCH_SIZE a multiple of DEVICE_BATCH_SIZE * MAX_SEQ_LEN; returns the names it also changed."""
    total, device = values.get("TOTAL_BATCH_SIZE"), values.get("DEVICE_BATCH_SIZE")
    if not isinstance(total, int) or not isinstance(device, int):
        return []
    if "TOTAL_BATCH_SIZE" not in changed and "DEVICE_BATCH_SIZE" not in changed:
        return []
    if total % (device * seq_len) == 0:
        return []
    if "DEVICE_BATCH_SIZE" in changed:  # raise the total to the next multiple
        micro = device * seq_len
        values["TOTAL_BATCH_SIZE"] = -(-total // micro) * micro
        return ["TOTAL_BATCH_SIZE"]
    while device > 1 and total % (device * seq_len):  # the total moved: shrink the micro-batch until it divides
        device //= 2
    if total % (device * seq_len):
        return None
    values["DEVICE_BATCH_SIZE"] = device
    return ["DEVICE_BATCH_SIZE"]


def _consistent(values: dict[str, int | float]) -> bool:
    """Cross-constant rules the seed relies on."""
    warm = values.get("WARMUP_RATIO", 0.0) + values.get("WARMDOWN_RATIO", 0.0)
    return warm <= 1.0


def describe(changes: dict[str, tuple[int | float, int | float]], constants: dict[str, Constant]) -> str:
    return "; ".join(
        f"{name} {format_number(old, constants[name].pow_base)} -> {format_number(new, constants[name].pow_base)}"
        for name, (old, new) in changes.items()
    )


def apply_changes(source: str, constants: dict[str, Constant], new_values: dict[str, int | float]) -> str:
    """Replace only the literal spans, right to left within a line so offsets stay valid."""
    lines = source.split("\n")
    for name in sorted(new_values, key=lambda n: (constants[n].line, -constants[n].start)):
        c = constants[name]
        text = lines[c.line]
        lines[c.line] = text[: c.start] + format_number(new_values[name], c.pow_base) + text[c.end :]
    return "\n".join(lines)


def _clauses(description: str) -> frozenset[str]:
    return frozenset(" ".join(part.split()) for part in description.split(";") if part.strip())


class MutateProposer:
    """Proposer that perturbs one or two literal hyperparameters; deterministic given ``context.seed``."""

    def __init__(self, name: str = "mutate", *, two_change_prob: float = 0.3, max_draws: int = 20) -> None:
        self.name = name
        self.two_change_prob = two_change_prob
        self.max_draws = max_draws

    def propose(self, context: Context) -> Proposal:
        constants = parse_constants(context.parent_train_py)
        movable = {name: kind for name, c in constants.items() if (kind := _kind(c))}
        if not movable:
            raise ValueError("train.py's constants block has no constant the mutator may change")
        seq_len = get_profile(context.profile).max_seq_len
        seen = {
            _clauses(e.description)
            for e in [*context.recent, *context.leaderboard, *context.own_recent]
            if e.description
        }
        rng = random.Random(context.seed)
        fallback = None
        for _ in range(self.max_draws):
            draw = self._draw(context.parent_train_py, constants, movable, seq_len, rng)
            if draw is None:
                continue
            fallback = fallback or draw
            if _clauses(draw[1]) not in seen:
                break
        else:
            if fallback is None:
                raise ValueError(f"no valid mutation found in {self.max_draws} draws")
            draw = fallback
        source, description = draw
        compile(source, "train.py", "exec")
        return Proposal(parent_commit=context.parent_commit, train_py=source, description=description, agent=self.name)

    def _draw(
        self, source: str, constants: dict[str, Constant], movable: dict[str, str], seq_len: int, rng: random.Random
    ) -> tuple[str, str] | None:
        """One candidate edit (new source, description), or None when the draw broke a rule."""
        names = sorted(movable)
        count = 2 if len(names) > 1 and rng.random() < self.two_change_prob else 1
        picked = rng.sample(names, count)
        values = {name: c.value for name, c in constants.items()}
        for name in picked:
            new = _step(constants[name], movable[name], rng)
            if new is None:
                return None
            values[name] = new
        extra = _repair_batch(values, picked, seq_len)
        if extra is None or not _consistent(values):
            return None
        changed = [n for n in [*picked, *extra] if values[n] != constants[n].value]
        if not changed:
            return None
        changes = {n: (constants[n].value, values[n]) for n in changed}
        return apply_changes(source, constants, {n: values[n] for n in changed}), describe(changes, constants)
