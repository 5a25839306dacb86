"""The optimiser proposer: Optuna's TPE (or CMA-ES) over the literal constants of train.py's constants block.

A study on autoresearch-style tuning found classical optimisers beat LLM agents on a fixed hyperparameter space,
and a hybrid (the LLM changes the code, an optimiser tunes the constants) beat both. This proposer is the
optimiser: the same constants block the mutator edits (agent/mutate.py: same parser, same rules for which
constants may move, same batch-divisibility repair), a search space around the values of the file it first
sees, and Optuna's ask/tell.

What it learns from: every finished experiment of the run (``Context.measured``), whoever proposed it, each told
to the study as a trial with the constants its file had (a run that did not end ok is a failed trial). A file
whose constants fall outside the space, or has others, is not told. When main's code changes shape (the block
has other constants), the study starts again over the new block.

Each proposal is one ``study.ask``; the trial is closed at once (as failed, so the sampler ignores it) and its
real outcome comes back later as a measured experiment, like every other.
"""

from __future__ import annotations

import math

from agent.mutate import (
    Constant,
    _consistent,
    _kind,
    _repair_batch,
    apply_changes,
    describe,
    parse_constants,
)
from agent.protocol import Context, Measured, Proposal
from trainer.profiles import get_profile

SPAN = 4.0  # multiplicative range of rates and floats: [v / SPAN, v * SPAN] (tests/test_optimize.py: 8 searched worse)
SIZE_OCTAVES = 1  # powers of two up and down for sizes
DEPTH_STEPS = 2  # depth-like ints: v - 2 .. v + 2 (at least 1)
MAX_ASKS = 32  # asks per proposal before giving up (each one broke a rule or repeated a file)


def _distribution(c: Constant, kind: str):
    """The Optuna distribution one constant is searched over, or None when it cannot be."""
    from optuna.distributions import FloatDistribution, IntDistribution

    v = c.value
    if kind == "beta":  # searched as 1 - beta, on a log scale
        gap = 1 - v
        return FloatDistribution(max(gap / SPAN, 1e-4), min(gap * SPAN, 0.5), log=True)
    if kind == "fraction":
        return FloatDistribution(0.0, 1.0)
    if kind in ("rate", "float"):
        return FloatDistribution(v / SPAN, v * SPAN, log=True) if v > 0 else None
    if kind in ("depth", "int") and v <= 16:
        return IntDistribution(max(1, v - DEPTH_STEPS), v + DEPTH_STEPS)
    if kind in ("size", "int") and v >= 2 and v & (v - 1) == 0:  # a power of two: searched as its exponent
        k = int(math.log2(v))
        low = max(3 if c.base == "HEAD_DIM" else 0, k - SIZE_OCTAVES)
        return IntDistribution(low, k + SIZE_OCTAVES)
    return None


def _space(constants: dict[str, Constant]) -> dict[str, tuple[Constant, str, object]]:
    """The searchable constants: name -> (constant, how it moves, its Optuna distribution)."""
    space = {}
    for name, c in constants.items():
        kind = _kind(c)
        dist = _distribution(c, kind) if kind else None
        if dist is not None:
            space[name] = (c, kind, dist)
    return space


def _to_value(c: Constant, kind: str, x: float | int) -> int | float:
    if kind == "beta":
        return float(f"{1 - x:.6g}")
    if kind in ("size", "int") and not (kind == "int" and c.value <= 16):
        return 2 ** int(x)
    if isinstance(c.value, int):
        return int(x)
    return float(f"{x:.4g}")


def _to_param(c: Constant, kind: str, value: float) -> float | int | None:
    """The search coordinate of a value (None: it has no exact one, e.g. a size that is not a power of two)."""
    if kind == "beta":
        return 1 - value if value < 1 else None
    if kind in ("size", "int") and not (kind == "int" and c.value <= 16):
        if value < 1 or int(value) & (int(value) - 1):
            return None
        return int(math.log2(value))
    return int(value) if isinstance(c.value, int) else float(value)


class OptimizeProposer:
    """One agent running an Optuna study over the constants; deterministic given the contexts' seeds."""

    def __init__(self, name: str = "optuna", *, sampler: str = "tpe", startup_trials: int = 4) -> None:
        if sampler not in ("tpe", "cmaes"):
            raise ValueError(f"unknown sampler {sampler!r}: choose tpe or cmaes")
        self.name, self.sampler_kind, self.startup_trials = name, sampler, startup_trials
        self.study = None
        self.space: dict[str, tuple[Constant, str, object]] = {}  # name -> (constant, kind, distribution)
        self.told: set[str] = set()  # experiment ids already in the study
        self.restarts = 0

    # ---- the study ---------------------------------------------------------------------------------------

    def _new_study(self, constants: dict[str, Constant], seed: int) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.space = _space(constants)
        if not self.space:
            raise ValueError("train.py's constants block has no constant the optimiser can search")
        if self.sampler_kind == "cmaes":
            sampler = optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=self.startup_trials)
        else:
            sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.startup_trials, multivariate=True)
        self.study = optuna.create_study(direction="minimize", sampler=sampler)
        self.told = set()
        self.restarts += 1

    def _tell(self, measured: list[Measured]) -> None:
        """Every finished experiment not told yet whose constants are this space's, as a finished trial."""
        import optuna
        from optuna.trial import TrialState, create_trial

        for m in measured:
            if m.experiment_id in self.told or not m.constants:
                continue
            self.told.add(m.experiment_id)
            params, dists = {}, {}
            for name, (c, kind, dist) in self.space.items():
                if name not in m.constants:
                    break
                x = _to_param(c, kind, m.constants[name])
                if x is None or not dist.low <= x <= dist.high:
                    break
                params[name], dists[name] = x, dist
            else:
                ok = m.val_bpb is not None and math.isfinite(m.val_bpb)
                trial = create_trial(params=params, distributions=dists, value=m.val_bpb if ok else None,
                                     state=TrialState.COMPLETE if ok else TrialState.FAIL)
                try:
                    self.study.add_trial(trial)
                except (ValueError, optuna.exceptions.OptunaError):
                    continue

    # ---- a proposal --------------------------------------------------------------------------------------

    def propose(self, context: Context) -> Proposal:
        from optuna.trial import TrialState

        constants = parse_constants(context.parent_train_py)
        if self.study is None or set(_space(constants)) != set(self.space):
            self._new_study(constants, context.seed)  # main's code changed shape: a new space
        self._tell(context.measured)
        seq_len = get_profile(context.profile).max_seq_len
        for _ in range(MAX_ASKS):
            trial = self.study.ask({name: dist for name, (_, _, dist) in self.space.items()})
            self.study.tell(trial, state=TrialState.FAIL)  # its outcome comes back as a measured experiment
            values = {name: c.value for name, c in constants.items()}
            for name, (c, kind, _) in self.space.items():
                values[name] = _to_value(c, kind, trial.params[name])
            changed = [n for n in self.space if values[n] != constants[n].value]
            extra = _repair_batch(values, changed, seq_len)
            if extra is None or not _consistent(values) or not changed:
                continue
            changed += [n for n in extra if n not in changed]
            source = apply_changes(context.parent_train_py, constants, {n: values[n] for n in changed})
            compile(source, "train.py", "exec")
            changes = {n: (constants[n].value, values[n]) for n in changed}
            shown = dict(sorted(changes.items(), key=lambda kv: kv[0])[:4])
            more = f" (+{len(changes) - 4} more)" if len(changes) > 4 else ""
            return Proposal(parent_commit=context.parent_commit, train_py=source, agent=self.name,
                            description=f"{self.sampler_kind}: {describe(shown, constants)}{more}")
        raise ValueError(f"the optimiser found no valid new setting in {MAX_ASKS} asks")
