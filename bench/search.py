"""Search efficiency: does the farm find a better train.py per GPU-hour than one agent alone? (issue 7)

Every strategy is the REAL farm: ``cluster.loop.driver.Farm`` (its loop, dispatch queue with priorities, tournament
via cluster/decisions/policies/, research repo in git with three-way merges, Parquet ledger) with mutate agents, on the
same experiment budget and the same seeds. Only two things are stood in:

- the trainer: ``bench.surrogate:SurrogateSandbox`` (val_bpb = a fixed smooth function of train.py's constants
  + Gaussian noise; the benchmark knows the noiseless value) or, with ``--cpu-tiny``, the real cpu-tiny trainer
  in the process sandbox;
- Ray: the driver's in-process executor with a *virtual clock* (``cluster.execution.executor.InProcessExecutor``). An
  experiment occupies one of N logical GPUs for one time unit (x U(0.9, 1.1), so slots do not march in
  lock-step; a run that does not finish ok takes 0.25: crashes are found early); proposals are instant. Time is
  counted in experiment durations, so "sequential" takes one unit per experiment and parallel efficiency is well
  defined, and results do not depend on the load of this 2-core machine. The real trainer runs one experiment at
  a time (the same CPU conditions for every strategy: N logical workers time-share the machine).

Proposals are asked for just in time (``queue_ahead: 0``: when a slot would otherwise idle, with the state as it
is then), not ``queue_ahead`` per GPU ahead as a farm of LLM agents does to hide their latency: the mutator is
instant, so just-in-time is the strongest form of every strategy; ``--prefetch`` measures the driver's own policy.

Strategies (``STRATEGIES``), all configurations of the real farm:

- ``sequential``: autoresearch's loop. 1 GPU, tournament ``policy: greedy`` (main measured once, each
  candidate once, keep if lower than main's run, else revert), every proposal from main.
- ``naive``: N GPUs, the same greedy policy: keep whatever is lowest so far (a candidate whose parent is no
  longer main is merged into main and the merge measured once, like any farm merge).
- ``tournament``: N GPUs, the farm's noise-aware tournament with its shipped defaults.
- ``tournament-*``: tuned settings (see TOURNAMENT_VARIANTS and docs/bench/search.md for what was tried).

Reported (docs/bench/search.md, written by this file): the TRUE val_bpb of main (noiseless, surrogate) against
experiments, time and worker-time (N x time); time-to-target, where the target is the mean over seeds of
sequential's final true value and the time is when a strategy's mean curve first reaches it; speed-up =
sequential's time to the target / the strategy's; parallel efficiency = speed-up / N; false promotions (a main
change whose true effect is not an improvement, i.e. >= 0); wasted runs (not ok; duplicates are refused by the
driver before they run and counted as rejected).

    .venv/bin/python bench/search.py                    # the full surrogate benchmark (make bench-search)
    .venv/bin/python bench/search.py --seeds 2 --n 2 --budget 12 --out /tmp/s   # a quick look
    .venv/bin/python bench/search.py --cpu-tiny         # the real trainer, sequential vs tournament N=2
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import importlib
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import search_stats  # noqa: E402
from bench.search_stats import headline_markdown  # noqa: E402
from cluster.config import FarmConfig  # noqa: E402
from cluster.decisions.policies import PolicySettings  # noqa: E402
from cluster.decisions.policies.pipeline import linewise  # noqa: E402
from cluster.decisions.policy import Strategies  # noqa: E402
from cluster.execution.executor import InProcessExecutor, unit_duration  # noqa: E402
from cluster.execution.spec import ExperimentSpec, GpuAssignment  # noqa: E402
from cluster.loop import driver as driver_module  # noqa: E402
from cluster.records.repo import ResearchRepo  # noqa: E402
from cluster.records.state import sha  # noqa: E402
from cluster.sandbox import make_sandbox  # noqa: E402
from cluster.vocabulary import KEEP_VERDICTS  # noqa: E402
from trainer.profiles import get_profile  # noqa: E402
from trainer.result import Status  # noqa: E402
from trainer.seed import seed_source  # noqa: E402

SURROGATE = "bench.surrogate:SurrogateSandbox"
REALISTIC = "bench.realistic:RealisticSandbox"
# the built-in landscapes by name; any other ``--landscape package.module:Class`` is a plug-in (landscape())
LANDSCAPES = {"calibrated": SURROGATE, "realistic": REALISTIC}
SAME_PARENT = {"parent_main_prob": 1.0}  # every row proposes from main (or the policy's head) unless it sets its own
MARKER = "<!-- everything above is written by bench/search.py; notes below this line are kept on a rerun -->"
GOAL_N, GOAL_EFFICIENCY = 8, 0.8
# issue 15's goals for a farm policy (goals()): efficiency to 90 % of sequential's gain (calibrated landscape), the
# median time between promotions at N = 8 and the first promotion at N = 1 (experiment durations), the efficiency
# of the noiseless oracle
GOAL_PARTIAL_EFFICIENCY, GOAL_BETWEEN, GOAL_FIRST_N1, GOAL_ORACLE = 0.6, 1.5, 6.0, 1.0
ORACLE_VARIANTS = ("stack",)  # farm policies also run noiseless ("<name>-oracle"): what their structure wastes
CRASH_DURATION, JITTER = 0.25, 0.1
PARTIAL = 0.9  # a second, easier target: this share of sequential's gain from the seed
GREEDY = {"policy": "greedy", "parent_main_prob": 1.0}

PAIRED = {"policy": "paired"}  # cluster/decisions/policies/tournament.py PAIRED_DEFAULTS
# name -> (label, policy settings over PolicySettings' defaults, what-ifs)
TOURNAMENT_VARIANTS: dict[str, tuple[str, dict[str, Any], tuple[str, ...]]] = {
    "tournament": ("the farm's tournament, shipped defaults", {}, ()),
    "tournament-tuned": ("judged against a former-main parent, up to 4 replicates while promising",
                         {"judge_against": "parent", "max_replicates": 4}, ()),
    "paired": ("the paired policy: same seeds as main, paired where the noise is shared; a noise prior (2 "
               "baselines, candidates at once); judged against a former-main parent and merged; up to 4 replicates "
               "while promising (screen 1.0, margin 2.6 sigma); one second chance", PAIRED, ()),
    "paired-fast4": ("the paired policy with the fast track: a first run 4 standard errors better than main is "
                     "promoted without confirmation (docs/bench/fast-track.md)", {**PAIRED, "fast_track_sigmas": 4.0},
                     ()),
    "stack": ("stack, then certify: a candidate's first run that beats the screen joins the next stage; the "
              "stage (main + the round's winners) runs 3x at once on main's seeds and is promoted as one at the "
              "margin (docs/bench/stack.md)", {"policy": "stack"}, ()),
    "stack-ablate": ("stack + ablation: after a stage of several parts lands, main without each part but the "
                     "strongest runs as a candidate (docs/bench/stack.md)", {"policy": "stack", "ablate": True}, ()),
    "pipeline": ("pipelined stages with always-valid certification: each candidate judged once against its own "
                 "parent, winners stacked into a chain of stages, the newest certified against main one paired run "
                 "at a time (cluster/decisions/policies/pipeline.py, cluster/decisions/anytime.py)",
                 {"policy": "pipeline"}, ()),
    "tournament-lw": ("tournament-tuned + what-if linewise-merge", {"judge_against": "parent", "max_replicates": 4},
                      ("linewise-merge",)),
    "tournament-lw-cpp": ("tournament-tuned + what-ifs linewise-merge, change-per-parent",
                          {"judge_against": "parent", "max_replicates": 4}, ("linewise-merge", "change-per-parent")),
}


def landscape(name: str) -> type:
    """The sandbox class of a landscape: a built-in name or ``package.module:Class`` from anywhere on the path.

    A landscape plugs in unchanged if its class is a Sandbox (``run(spec, gpu)``, built with no arguments; the noise
    sd and seed of a benchmark run come as FARM_SURROGATE_SIGMA and FARM_SURROGATE_NOISE_SEED, as
    bench/surrogate.py reads them) and says ``true_bpb(train_py)`` (the noiseless value, None when it does not
    run); optionally ``noise_shared`` (the share of the noise variance common to a seed; 0) and ``optimum_bpb``.
    tests/landscape_example.py is one, written outside bench/."""
    module, _, attr = LANDSCAPES.get(name, name).partition(":")
    cls = getattr(importlib.import_module(module), attr)
    if not callable(getattr(cls, "true_bpb", None)):
        raise ValueError(f"landscape {name!r}: {cls.__name__} has no true_bpb(train_py)")
    return cls


# ---- what-ifs: a proposed change outside the tournament, passed in for one run only -------------------------------


def _linewise_merge(strategies: Strategies) -> Strategies:
    """The farm's three-way merge of train.py, line by line when no line was added or removed: git merge-file
    calls edits of two ADJACENT lines a conflict, and the constants block is one constant per line (DEPTH and
    ASPECT_RATIO changed by two workers conflict). Where both sides changed the same line, git decides."""
    original = strategies.merge

    def merge(base: str, ours: str, theirs: str, prefer_theirs: bool = False) -> tuple[str, str | None]:
        merged = linewise(base, ours, theirs)
        return (merged, None) if merged is not None else original(base, ours, theirs, prefer_theirs)

    return dataclasses.replace(strategies, merge=merge)


def _change_per_parent(strategies: Strategies) -> Strategies:
    """The policy refuses a proposal that makes the same edit as any earlier experiment, from whatever parent
    (Strategies.signature): with this, only the same edit of the same parent is refused, so an idea tried on an
    older main may be tried again on the current one."""
    original = strategies.signature

    def signature(parent: str, child: str) -> str | None:
        change = original(parent, child)
        return change and f"{change}:{hash(parent)}"

    return dataclasses.replace(strategies, signature=signature)


WHAT_IFS = {"linewise-merge": _linewise_merge, "change-per-parent": _change_per_parent}


@dataclasses.dataclass(frozen=True)
class Strategy:
    name: str  # sequential | naive | tournament[-variant]
    n: int
    settings: dict[str, Any]
    label: str
    what_ifs: tuple[str, ...] = ()
    sigma: float | None = None  # the landscape's noise for this strategy (None: the run's --sigma)
    agent: str = "mutate"  # the proposer kind of every agent (bench/proposers.py compares them)

    @property
    def key(self) -> str:
        return f"{self.name}@{self.n}"


def strategies(ns: list[int], variants: list[str], oracle: bool = False, oracle_n1: bool = False) -> list[Strategy]:
    """Sequential, (with ``oracle`` or ``oracle_n1``) its noiseless twin at N = 1, and at each N naive, (with
    ``oracle``) its oracle, and the variants; every row with SAME_PARENT unless its settings name a parent rule."""
    out = [Strategy("sequential", 1, GREEDY, "autoresearch's loop: 1 GPU, keep if lower")]
    if oracle or oracle_n1:
        out.append(Strategy("oracle", 1, GREEDY, "sequential on a NOISELESS landscape: what one loop finds when "
                            "every judgement is right", sigma=0.0))
    for n in ns:
        out.append(Strategy("naive", n, GREEDY, "N GPUs, keep whatever is lowest (greedy policy)"))
        if oracle:
            out.append(Strategy("oracle", n, GREEDY, "naive on a NOISELESS landscape: the bound of any judging "
                                "with this proposer and the farm's merges", sigma=0.0))
        for name in variants:
            label, settings, what_ifs = TOURNAMENT_VARIANTS[name]
            out.append(Strategy(name, n, {**SAME_PARENT, **settings}, label, what_ifs))
            if oracle and name in ORACLE_VARIANTS:
                out.append(Strategy(f"{name}-oracle", n, {**SAME_PARENT, **settings},
                                    f"{name} on a NOISELESS landscape: what its structure wastes (its judge starts "
                                    "from the profile's noise prior)", what_ifs, sigma=0.0))
    return out


# ---- the farm on the in-process executor -------------------------------------------------------------------------


class BenchFarm(driver_module.Farm):
    """The farm, asking for proposals just in time, and recording main's history on the virtual clock."""

    executor: InProcessExecutor

    def _on_experiment(self, event) -> None:
        before = self.state.main_commit
        super()._on_experiment(event)
        self.events.append((self.executor.now(), len(self.state.finished)))
        if self.state.main_commit != before:
            self.mains.append((self.executor.now(), len(self.state.finished), self.state.main_commit))


# ---- one run -------------------------------------------------------------------------------------------------------


def run_one(strategy: Strategy, seed: int, budget: int, root: Path, sigma: float, sandbox: str = SURROGATE,
            profile: str = "cpu-tiny", prefetch: bool = False) -> dict:
    """One farm run of a strategy on one seed; returns its record (see analyse)."""
    os.environ["FARM_SURROGATE_SIGMA"] = repr(sigma)
    os.environ["FARM_SURROGATE_NOISE_SEED"] = str(seed)
    run_dir = root / f"{strategy.key}-s{seed}"
    settings = dict(strategy.settings)
    truth = landscape(sandbox).true_bpb if ":" in sandbox else None  # None: the real trainer (remeasure)
    if PolicySettings(**settings).pairing == "auto" and truth:  # the landscape's documented noise, as a profile
        settings.setdefault("noise_prior_shared", getattr(landscape(sandbox), "noise_shared", 0.0))  # documents it
    config = FarmConfig(
        gpus=strategy.n, profile=profile, sandbox="process", metrics_port=None, run_dir=run_dir,
        agents={"count": strategy.n, "kind": strategy.agent}, queue_ahead=1 if prefetch else 0, max_experiments=budget,
        seed=seed,
        tournament=PolicySettings(**settings),
    )  # fmt: skip
    train_py = seed_source(get_profile(profile))
    run_dir.mkdir(parents=True)
    ResearchRepo.create(run_dir / "repo", train_py, (ROOT / "program.md").read_text())
    wall = time.monotonic()
    passed_in = Strategies()
    for name in strategy.what_ifs:
        passed_in = WHAT_IFS[name](passed_in)
    experiments = InProcessExecutor(sandbox, unit_duration(seed, JITTER, CRASH_DURATION))
    with open(run_dir / "farm.log", "w") as log, contextlib.redirect_stdout(log):
        farm = BenchFarm(config, run_dir, experiments, strategies=passed_in)
        farm.events, farm.mains = [], [(0.0, 0, farm.state.main_commit)]
        farm.run()
    st = farm.state
    runs = []
    for eid, row in st.finished.items():
        work = st.work[eid]
        runs.append({"id": eid, "kind": work.kind, "status": row.status, "val_bpb": row.val_bpb, "seed": work.seed,
                     "start": experiments.started.get(eid), "verdict": st.verdicts.get(eid, "")})
    mains = []
    for t, n_done, commit in farm.mains:
        text = farm.repo.train_py_at(commit)
        # reported: what the loop itself says main scores (the mean of its runs), which best-of-N picks by
        mains.append({"t": t, "n": n_done, "commit": commit, "true": truth(text) if truth else None,
                      "reported": farm.view_of_state.mean(sha(text)), "train_py": None if truth else text})
    kinds: dict[str, int] = {}
    for run in runs:
        kinds[run["kind"]] = kinds.get(run["kind"], 0) + 1
    verdicts = {}
    for decision in st.verdicts.values():
        verdicts[decision] = verdicts.get(decision, 0) + 1
    return {
        "strategy": strategy.name, "n": strategy.n, "seed": seed, "budget": budget, "sigma": sigma,
        "settings": strategy.settings, "end": experiments.now(), "finished": len(st.finished), "rejected": st.rejected,
        "promotions": st.promotions, "mains": mains, "runs": runs, "verdicts": verdicts, "kinds": kinds,
        "not_ok": sum(1 for run in runs if run["status"] != "ok"),
        # candidates whose change is on main (one promotion of a stage lands several)
        "landed": sum(1 for run in runs if run["kind"] == "candidate" and run["verdict"] in KEEP_VERDICTS),
        "wall_s": time.monotonic() - wall, "prefetch": prefetch, "what_ifs": list(strategy.what_ifs),
        "noop_promotions": sum("main <- " in line for line in (run_dir / "farm.log").read_text().splitlines())
        - (len(mains) - 1),  # promotions the driver counted though main did not move (repo.promote said noop)
    }


# ---- analysis ------------------------------------------------------------------------------------------------------


def main_true_at(record: dict, t: float, axis: str = "t") -> float:
    """The true value of main at time (or experiment count) ``t``: the last change at or before it."""
    value = record["mains"][0]["true"]
    for m in record["mains"]:
        if m[axis] <= t:
            value = m["true"]
        else:
            break
    return value


def false_promotions(record: dict) -> int:
    mains = record["mains"]
    return sum(1 for a, b in zip(mains, mains[1:], strict=False) if b["true"] >= a["true"] - 1e-12)


def mean_curve(records: list[dict], grid: list[float], axis: str = "t") -> list[float]:
    return [statistics.fmean(main_true_at(r, x, axis) for r in records) for x in grid]


def first_reach(records: list[dict], target: float, step: float = 0.05) -> float:
    """The first time the mean (over seeds) of main's true value is at or below ``target`` (inf: never)."""
    changes = sorted({m["t"] for r in records for m in r["mains"]})
    for t in changes:
        if statistics.fmean(main_true_at(r, t) for r in records) <= target + 1e-12:
            return t
    return math.inf


def bootstrap(values: list[float], stat=statistics.fmean, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """A 90 % percentile bootstrap interval of ``stat`` over ``values`` (over seeds)."""
    rng = random.Random(seed)
    draws = sorted(stat([rng.choice(values) for _ in values]) for _ in range(n))
    return draws[int(0.05 * n)], draws[int(0.95 * n) - 1]


def first_promotions(records: list[dict]) -> list[float]:
    """Each record's time to its first promotion (inf: none)."""
    return [r["mains"][1]["t"] if len(r["mains"]) > 1 else math.inf for r in records]


def latency(records: list[dict]) -> tuple[float, float]:
    """(median over seeds of the time to the first promotion (inf: none), median time between promotions)."""
    first = first_promotions(records)
    gaps = [b["t"] - a["t"] for r in records for a, b in zip(r["mains"][1:], r["mains"][2:], strict=False)]
    return statistics.median(first), statistics.median(gaps) if gaps else math.inf


def summarise(records: list[dict]) -> dict:
    """Per strategy: the table's numbers (see the module docstring)."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in records:
        groups.setdefault((r["strategy"], r["n"]), []).append(r)
    seq = groups.get(("sequential", 1))
    if not seq:
        raise ValueError("no sequential runs: nothing to compare with")
    target = statistics.fmean(main_true_at(r, math.inf) for r in seq)
    t_seq = first_reach(seq, target)
    start = seq[0]["mains"][0]["true"]
    seq_budget = seq[0]["budget"]
    shares = (0.5, 0.75, PARTIAL, 1.0)  # of sequential's gain from the seed (PARTIAL: the table's easier target)
    targets = {q: start - q * (start - target) for q in shares}
    t_seq_at = {q: first_reach(seq, targets[q]) for q in shares}
    per_seed_seq = {r["seed"]: (main_true_at(r, math.inf), first_reach([r], main_true_at(r, math.inf))) for r in seq}
    rows = []
    for (name, n), rs in groups.items():
        t = first_reach(rs, target)
        speedup = t_seq / t if t > 0 else math.inf
        seed_eff = []
        for r in rs:
            goal, t_goal = per_seed_seq.get(r["seed"], (None, None))
            if goal is None:
                continue
            t_r = first_reach([r], goal)
            seed_eff.append((t_goal / t_r if t_r > 0 else math.inf) / n)
        kinds: dict[str, int] = {}
        for r in rs:
            for kind, count in r["kinds"].items():
                kinds[kind] = kinds.get(kind, 0) + count
        total = sum(kinds.values())
        not_ok = sum(r["not_ok"] for r in rs)
        end = statistics.fmean(r["end"] for r in rs)
        finals = [main_true_at(r, math.inf) for r in rs]
        same_budget = [main_true_at(r, seq_budget, "n") for r in rs]
        first_promotion, between = latency(rs)
        eff_to = {}
        for q in shares:
            t_q = first_reach(rs, targets[q])
            eff_to[q] = t_seq_at[q] / t_q / n if 0 < t_q < math.inf else (math.inf if t_q == 0 else 0.0)
        rows.append({
            "strategy": name, "n": n, "seeds": len(rs), "budget": rs[0]["budget"],
            "final_true": statistics.fmean(finals), "final_sd": statistics.pstdev(finals),
            "final_ci": bootstrap(finals), "efficiency_to": eff_to, "first_promotion": first_promotion,
            "first_within_goal": sum(1 for t in first_promotions(rs) if t <= GOAL_FIRST_N1),
            "between_promotions": between,
            "true_at_seq_budget": statistics.fmean(same_budget),
            "time": statistics.fmean(r["end"] for r in rs), "time_to_target": t, "speedup": speedup,
            "efficiency_partial": eff_to[PARTIAL],
            "efficiency": speedup / n, "efficiency_bound": t_seq / (end * n) if math.isinf(t) else None,
            "seed_efficiency_median": statistics.median(seed_eff) if seed_eff else None,
            "seeds_reaching": sum(1 for e in seed_eff if e > 0),
            "promotions": sum(r["promotions"] for r in rs), "false_promotions": sum(false_promotions(r) for r in rs),
            "landed": sum(r.get("landed", 0) for r in rs),
            "seeds_with_false": sum(1 for r in rs if false_promotions(r)),
            "runs": total, "kinds": kinds, "not_ok": not_ok, "rejected": sum(r["rejected"] for r in rs),
            "wall_s": sum(r["wall_s"] for r in rs),
        })  # fmt: skip
    order = {"sequential": 0, "naive": 1, "oracle": 2}
    rows.sort(key=lambda row: (row["n"] != 1, row["n"], order.get(row["strategy"], 2), row["strategy"]))
    return {"target": target, "t_seq": t_seq, "target_partial": targets[PARTIAL], "t_seq_partial": t_seq_at[PARTIAL],
            "rows": rows}


# ---- report --------------------------------------------------------------------------------------------------------


def _fmt_t(x: float) -> str:
    return "never" if math.isinf(x) else f"{x:.1f}"


def _fmt_eff(row: dict) -> str:
    """The efficiency, or for a strategy that never reached the target its upper bound (had it reached it at the
    very end of its run)."""
    return f"< {row['efficiency_bound']:.2f}" if row.get("efficiency_bound") else f"{row['efficiency']:.2f}"


def table(summary: dict) -> str:
    head = ("| strategy | N | seeds | budget | true val_bpb at end (sd; 90 % CI) | at sequential's budget | "
            "time to target | speed-up | efficiency | eff. to 50 / 75 / 90 % of the gain | per-seed eff. (median) | "
            "first promotion (t, median) | between promotions (t, median) | promotions (candidates landed) | "
            "false promotions (seeds) | "
            "runs: candidate / baseline / confirm / merge | not ok | refused before running |")
    lines = [head, "|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|"]
    for r in summary["rows"]:
        k = r["kinds"]
        eff = r["seed_efficiency_median"]
        runs = " / ".join(str(k.get(kind, 0)) for kind in ("candidate", "baseline", "confirm", "merge"))
        speed = "-" if math.isinf(r["time_to_target"]) else f"{r['speedup']:.2f}"
        lo, hi = r.get("final_ci", (math.nan, math.nan))
        eff_to = r.get("efficiency_to", {})
        shares = " / ".join(f"{eff_to[q]:.2f}" for q in sorted(eff_to) if q < 1)
        lines.append(
            f"| {r['strategy']} | {r['n']} | {r['seeds']} | {r['budget']} | {r['final_true']:.4f} "
            f"({r['final_sd']:.4f}; {lo:.4f} - {hi:.4f}) | {r['true_at_seq_budget']:.4f} | "
            f"{_fmt_t(r['time_to_target'])} | {speed} | **{_fmt_eff(r)}** | {shares} | "
            f"{'-' if eff is None else f'{eff:.2f}'} | {_fmt_t(r.get('first_promotion', math.nan))} | "
            f"{_fmt_t(r.get('between_promotions', math.nan))} | {r['promotions']} ({r.get('landed', '?')}) | "
            f"**{r['false_promotions']}** "
            f"({r['seeds_with_false']}) | {runs} | {r['not_ok']} | {r['rejected']} |"
        )
    return "\n".join(lines)


def plot(records: list[dict], summary: dict, path: Path, n_show: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple[str, int], list[dict]] = {}
    for r in records:
        groups.setdefault((r["strategy"], r["n"]), []).append(r)
    shown = [k for k in groups if k[1] in (1, n_show)]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    for (name, n) in shown:
        rs = groups[(name, n)]
        label = f"{name} N={n}"
        budget = max(r["budget"] for r in rs)
        xs = [i * budget / 200 for i in range(201)]
        axes[0].plot(xs, mean_curve(rs, xs, "n"), label=label)
        t_end = max(r["end"] for r in rs)
        ts = [i * t_end / 400 for i in range(401)]
        curve = mean_curve(rs, ts)
        axes[1].plot(ts, curve, label=label)
        axes[2].plot([t * n for t in ts], curve, label=label)
    for ax, xlabel in zip(axes, ["experiments finished", "time (experiment durations)",
                                 "worker-time (N x time = GPU-hours in experiment durations)"], strict=True):
        ax.axhline(summary["target"], color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("main's true val_bpb (mean over seeds)")
        ax.grid(alpha=0.3)
    axes[1].set_xscale("log")
    axes[0].legend(fontsize=8)
    axes[1].set_title(f"dotted: sequential's final value ({summary['target']:.4f})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_scaling(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    names = sorted({r["strategy"] for r in summary["rows"] if r["n"] > 1})
    for i, name in enumerate(names):
        rows = sorted((r for r in summary["rows"] if r["strategy"] == name), key=lambda r: r["n"])
        color = f"C{i}"
        ns = [r["n"] for r in rows]
        axes[0].plot(ns, [r["efficiency_bound"] or r["efficiency"] for r in rows], color=color, label=name)
        for r in rows:  # filled: reached the target; a down-triangle: never reached, at most this
            marker = "v" if r["efficiency_bound"] else "o"
            axes[0].plot([r["n"]], [r["efficiency_bound"] or r["efficiency"]], marker=marker, color=color)
        axes[0].plot(ns, [r["efficiency_partial"] for r in rows], color=color, linestyle="--", marker=".",
                     label=f"{name}, to 90 % of sequential's gain")
        axes[1].plot([r["n"] for r in rows], [r["false_promotions"] / r["seeds"] for r in rows], marker="o", label=name)
    seq = next(r for r in summary["rows"] if r["strategy"] == "sequential")
    axes[1].axhline(seq["false_promotions"] / seq["seeds"], color="grey", linestyle=":", label="sequential")
    axes[0].axhline(GOAL_EFFICIENCY, color="red", linestyle=":", label=f"goal {GOAL_EFFICIENCY}")
    axes[0].set_ylabel("parallel efficiency (speed-up / N); v = never reached, at most")
    axes[1].set_ylabel("false promotions per run (mean over seeds)")
    for ax in axes:
        ax.set_xlabel("N (GPUs)")
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


FARM_POLICIES = ("tournament", "paired", "stack")


def goals(summary: dict, landscape: str) -> dict[str, dict[str, tuple[bool, str]]]:
    """Issue 15's goals, each for each farm policy in the summary: goal -> policy -> (met, the figure). Only the
    goals this run can measure: N = 8 rows for the landscape's goals, N = 1 rows for the first promotion, an
    oracle row of the same policy (``<policy>-oracle``) or naive's oracle for the structure's."""
    rows = {(r["strategy"], r["n"]): r for r in summary["rows"]}
    policies = [p for p in FARM_POLICIES if any(name == p for name, _ in rows)]
    out: dict[str, dict[str, tuple[bool, str]]] = {}

    def add(goal: str, policy: str, met: bool, figure: str) -> None:
        out.setdefault(goal, {})[policy] = (met, figure)

    for policy in policies:
        if (row := rows.get((policy, GOAL_N))) is not None:
            false = f"{row['false_promotions']} in {row['seeds']} seeds"
            if landscape == "calibrated":
                add(f"N = {GOAL_N}: mean true value at the end <= sequential's final ({summary['target']:.4f})",
                    policy, row["final_true"] <= summary["target"], f"{row['final_true']:.4f}")
                partial = row["efficiency_to"].get(PARTIAL, 0.0)
                add(f"N = {GOAL_N}: efficiency to {PARTIAL:.0%} of sequential's gain >= {GOAL_PARTIAL_EFFICIENCY}",
                    policy, partial >= GOAL_PARTIAL_EFFICIENCY, f"{partial:.2f}")
            else:
                add(f"N = {GOAL_N}: efficiency to sequential's final value >= {GOAL_EFFICIENCY}", policy,
                    row["efficiency"] >= GOAL_EFFICIENCY, _fmt_eff(row))
            add(f"N = {GOAL_N}: zero false promotions", policy, row["false_promotions"] == 0, false)
            add(f"N = {GOAL_N}: median time between promotions <= {GOAL_BETWEEN}", policy,
                row["between_promotions"] <= GOAL_BETWEEN, _fmt_t(row["between_promotions"]))
        oracle = rows.get((f"{policy}-oracle", GOAL_N)) or rows.get(("oracle", GOAL_N))
        if oracle is not None and (policy, GOAL_N) in rows:
            add(f"N = {GOAL_N}: the noiseless oracle's efficiency >= {GOAL_ORACLE} (own oracle, else naive's)",
                policy, oracle["efficiency"] >= GOAL_ORACLE, f"{_fmt_eff(oracle)} ({oracle['strategy']})")
        if (row := rows.get((policy, 1))) is not None:
            add(f"N = 1: first promotion within {GOAL_FIRST_N1:g} experiments in most seeds", policy,
                2 * row["first_within_goal"] > row["seeds"], f"{row['first_within_goal']} of {row['seeds']} seeds; "
                f"median {_fmt_t(row['first_promotion'])}")
    return out


def goals_table(summary: dict, landscape: str) -> str:
    """goals() as a markdown table: a goal per line, a policy per column."""
    measured = goals(summary, landscape)
    policies = [p for p in FARM_POLICIES if any(p in cells for cells in measured.values())]
    if not policies:
        return "(no farm policy in this run: no goal measured)"
    lines = ["| goal | " + " | ".join(policies) + " |", "|---|" + "---|" * len(policies)]
    for goal, cells in measured.items():
        shown = [f"{'**met**' if cells[p][0] else 'not met'} ({cells[p][1]})" if p in cells else "-"
                 for p in policies]
        lines.append(f"| {goal} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def write_doc(path: Path, summary: dict, meta: dict, png: list[str], records: list[dict] | None = None) -> None:
    notes = ""
    if path.exists():
        old = path.read_text()
        if MARKER in old:
            notes = old.split(MARKER, 1)[1]
    lines = [
        f"# Search efficiency: the farm against one agent alone ({meta.get('landscape', 'calibrated')} surrogate "
        "landscape)",
        "",
        f"`{meta['command']}` ({meta['minutes']:.1f} min; code at {meta['commit']}, Python {meta['python']}).",
        "",
        f"Every strategy runs on the same {meta['seeds']} seeds (a seed fixes the noise draw and the agents' "
        "randomness), and every row proposes from main (`parent_main_prob` 1.0; the pipeline from its head) "
        "unless its settings say otherwise. *Sequential* is autoresearch's loop as upstream runs it: its seed is "
        "pinned, so main and every candidate run on seed 0 (on a landscape whose noise is partly shared per seed, "
        "that shared part cancels in its comparisons, as it does upstream).",
        "",
        headline_markdown(records, GOAL_N if GOAL_N in meta["ns"] else max(meta["ns"])) if records else "",
        "",
        "## Earlier figures (issues 7 and 15), kept for history",
        "",
        f"The REAL farm (cluster.loop.driver.Farm, the tournament, the git research repo, the ledger, mutate agents) "
        f"on "
        f"`{meta.get('sandbox', SURROGATE)}` (noise sd {meta['sigma']}), with Ray replaced by a virtual clock: one "
        f"experiment = one time unit (x U(0.9, 1.1); a run that is not ok: {CRASH_DURATION}). Seeds "
        f"{meta['seeds']}; sequential's budget {meta['budget']} experiments, the parallel strategies' "
        f"{meta['parallel_budget']} (so that a slower strategy's time to the target can be measured). "
        f"Definitions: bench/search.py's docstring.",
        "",
        f"**Target** = sequential's final true val_bpb, mean over seeds: **{summary['target']:.4f}** (the seed "
        f"scores {meta['seed_true']:.4f}; the landscape's optimum is ~{meta['optimum']:.2f}), reached by "
        f"sequential's mean curve at t = {summary['t_seq']:.1f}. *Time to target*: the first time a strategy's "
        f"mean curve reaches it; *speed-up* = {summary['t_seq']:.1f} / that; *efficiency* = speed-up / N. "
        f"*Eff. to 50 / 75 / 90 % of the gain*: the same for easier targets, that share of sequential's gain from "
        f"the seed (90 %: {summary['target_partial']:.4f}, sequential at t = {summary['t_seq_partial']:.1f}). "
        f"*First promotion* and *between promotions*: medians over seeds, in experiment durations. "
        f"*Per-seed eff.*: the same against each seed's own sequential run (0 = never reached). *False "
        f"promotions*: main changes whose true effect is >= 0 (summed over seeds; in brackets the seeds with any).",
        "",
        table(summary),
        "",
        "**Goals** (issue 15), for each farm policy run here, met or not (the figure in brackets):",
        "",
        goals_table(summary, meta.get("landscape", "calibrated")),
        "",
    ]
    lines += [f"![{p}]({p})" for p in png]
    lines += ["", MARKER]
    path.write_text("\n".join(lines) + (notes if notes else "\n\n## Notes\n\n(none yet)\n"))


# ---- main ----------------------------------------------------------------------------------------------------------


def run_all(strats: list[Strategy], seeds: list[int], budget: int, parallel_budget: int, sigma: float,
            root: Path, prefetch: bool = False, log=print, sandbox: str = SURROGATE, jobs: int = 1,
            partial: Path | None = None) -> list[dict]:
    """Every strategy on the same seeds (sequential's target comes from the very seeds it is compared on), ``jobs``
    runs at a time in worker processes (each run is independent: its own dir, sandbox and noise seed), seed after
    seed; each record is also appended to ``partial`` (JSON lines) as it comes, so a cut-short run can be reported
    on the seeds it completed (--from-json)."""
    tasks = [(s, seed, budget if s.n == 1 else parallel_budget, root, sigma if s.sigma is None else s.sigma, sandbox,
              prefetch) for seed in seeds for s in strats]
    records = []
    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(concurrent.futures.ProcessPoolExecutor(max_workers=jobs)) if jobs > 1 else None
        for r in (pool.map(_run_task, tasks) if pool else map(_run_task, tasks)):
            records.append(r)
            if partial is not None:
                with partial.open("a") as out:
                    out.write(json.dumps(r, default=str) + "\n")
            log(f"  seed {r['seed']} {r['strategy']}@{r['n']:<12} end t={r['end']:6.1f} true "
                f"{main_true_at(r, math.inf):.4f} promotions {r['promotions']:2d} false {false_promotions(r)} "
                f"({r['wall_s']:.1f} s)")
    return records


def _run_task(task: tuple) -> dict:
    strategy, seed, budget, root, sigma, sandbox, prefetch = task
    record = run_one(strategy, seed, budget, root, sigma, sandbox=sandbox, prefetch=prefetch)
    return {k: v for k, v in record.items() if k != "runs"}  # the counts stay, not every run


# ---- the real cpu-tiny trainer -------------------------------------------------------------------------------------

CPU_TINY_SETTINGS = {"baseline_replicates": 3, "min_noise_df": 3}  # what `make farm` sets for cpu-tiny (Makefile)


def remeasure(train_pys: dict[str, str], replicates: int, root: Path, profile: str = "cpu-tiny",
              log=print) -> dict[str, list[float | None]]:
    """Fresh runs (seeds 1000+) of each named train.py through the process sandbox, round-robin so every file
    sees the same machine conditions; ok val_bpb or None per run."""
    from cluster.execution.spec import Limits

    config = FarmConfig(profile=profile, metrics_port=None, gpus=1)
    sandbox = make_sandbox("process")
    out: dict[str, list[float | None]] = {name: [] for name in train_pys}
    for r in range(replicates):
        for name, text in train_pys.items():
            spec = ExperimentSpec(experiment_id=f"r{r}-{name}", train_py=text, profile=profile, seed=1000 + r,
                                  run_dir=root / "remeasure" / f"r{r}-{name}", cache_dir=config.cache_dir,
                                  compile_cache_dir=config.cache_dir / "compile", limits=Limits())
            result = sandbox.run(spec, GpuAssignment())
            out[name].append(result.val_bpb if result.status == Status.OK else None)
            log(f"  remeasure {name:<12} seed {1000 + r}: {result.status} {result.val_bpb}")
    return out


def cpu_tiny(args: argparse.Namespace) -> int:
    """Sequential vs the tournament (N logical workers, one experiment at a time) on the real cpu-tiny trainer."""
    started = time.monotonic()
    strats = [Strategy("sequential", 1, GREEDY, "autoresearch's loop"),
              Strategy("tournament", args.cpu_tiny_n, CPU_TINY_SETTINGS, "the tournament as `make farm` sets it")]
    seed = 0
    records = []
    with tempfile.TemporaryDirectory(prefix="farm-search-cpu-") as tmp:
        root = args.keep or Path(tmp)
        for s in strats:
            r = run_one(s, seed, args.cpu_tiny_budget, root, 0.0, sandbox="process", profile="cpu-tiny")
            records.append(r)
            print(f"  {s.key}: {r['promotions']} promotions, end t={r['end']:.1f} ({r['wall_s'] / 60:.1f} min)")
        files = {"seed": seed_source(get_profile("cpu-tiny"))}
        for r in records:
            files[r["strategy"]] = r["mains"][-1]["train_py"]
        values = remeasure(files, args.cpu_tiny_replicates, root)
    means = {k: statistics.fmean(x for x in v if x is not None) if any(x is not None for x in v) else None
             for k, v in values.items()}
    meta = {"command": ".venv/bin/python bench/search.py " + " ".join(sys.argv[1:] if args.argv is None else args.argv),
            "minutes": (time.monotonic() - started) / 60, "commit": _git_head(), "python": platform.python_version(),
            "budget": args.cpu_tiny_budget, "n": args.cpu_tiny_n, "replicates": args.cpu_tiny_replicates}
    doc = args.out / f"{args.name}-cpu-tiny.md"
    (args.out / f"{args.name}-cpu-tiny.json").write_text(
        json.dumps({"meta": meta, "values": values, "records": records}, default=str))
    lines = [
        "# Search efficiency on the real cpu-tiny trainer",
        "",
        f"`{meta['command']}` ({meta['minutes']:.0f} min; code at {meta['commit']}). The real farm with the "
        f"process sandbox and the real cpu-tiny trainer (20 s budget, mutate agents), Ray on the virtual clock: "
        f"the N logical workers are time-shared, ONE experiment runs at a time on this 2-core machine, so every "
        f"strategy gets the same CPU per experiment and time is counted in experiments (1 unit each). Budget "
        f"{meta['budget']} experiments each, seed {seed}. The final main of each strategy and the seed were then "
        f"re-measured {meta['replicates']}x on fresh seeds (1000+), round-robin.",
        "",
        "| strategy | N | experiments | time | promotions | main's own estimate at the end | final main re-measured "
        "(mean; runs) | vs seed re-measured |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        name = r["strategy"]
        runs = ", ".join("-" if x is None else f"{x:.4f}" for x in values[name])
        est = next((f"{run['val_bpb']:.4f}" for run in reversed(r["runs"]) if run["verdict"] == "promote"
                    and run["val_bpb"] is not None), "-")
        delta = "-" if means[name] is None or means["seed"] is None else f"{means[name] - means['seed']:+.4f}"
        mean = "-" if means[name] is None else f"{means[name]:.4f}"
        lines.append(f"| {name} | {r['n']} | {r['finished']} | {r['end']:.1f} | {r['promotions']} | {est} | "
                     f"{mean} ({runs}) | {delta} |")
    seed_runs = ", ".join("-" if x is None else f"{x:.4f}" for x in values["seed"])
    lines += ["", f"The seed re-measured: {means['seed'] or float('nan'):.4f} ({seed_runs}).", "",
              "Main's history (time, experiments finished, commit) per strategy:", ""]
    for r in records:
        steps = "; ".join(f"t={m['t']:.1f} n={m['n']} {m['commit'][:8]}" for m in r["mains"])
        lines.append(f"- {r['strategy']}: {steps}")
    notes = "\n\n## Notes\n\n(none yet)\n"
    if doc.exists() and MARKER in (old := doc.read_text()):
        notes = old.split(MARKER, 1)[1]
    doc.write_text("\n".join(lines) + "\n\n" + MARKER + notes)
    print("\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=32, help="every strategy runs on seeds 0 .. this - 1")
    parser.add_argument("--n", default="8", help="parallel GPU counts")
    parser.add_argument("--budget", type=int, default=max(search_stats.GPU_HOURS), help="experiments (GPU-units) "
                        "of every strategy: the equal-GPU-hours table reads each at 40, 80 and 160")
    parser.add_argument("--parallel-budget", type=int, default=None, help="the N > 1 strategies' (default: "
                        "--budget)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, in worker processes")
    parser.add_argument("--sigma", type=float, default=0.037)
    parser.add_argument("--variants", default="stack,pipeline",
                        help=f"tournament variants, of: {', '.join(TOURNAMENT_VARIANTS)}")
    parser.add_argument("--no-oracle", action="store_true", help="leave out the noiseless greedy bound")
    parser.add_argument("--oracle-n1", action="store_true", help="the noiseless loop at N = 1 even with --no-oracle")
    parser.add_argument("--no-naive", action="store_true", help="leave out naive parallel search")
    parser.add_argument("--from-json", type=Path, default=None, help="redo the table, plots and doc from the "
                        "records of an earlier run (its <name>.json) instead of running")
    parser.add_argument("--prefetch", action="store_true", help="the driver's own proposal queue (queue_ahead 1)")
    parser.add_argument("--landscape", default="calibrated", help="bench/surrogate.py's (calibrated), "
                        "bench/realistic.py's (realistic: many small gains), or package.module:Class, a landscape "
                        "of your own (landscape())")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench")
    parser.add_argument("--name", default="search", help="file stem of the outputs in --out")
    parser.add_argument("--keep", type=Path, default=None, help="keep the run dirs here")
    parser.add_argument("--cpu-tiny", action="store_true", help="the real cpu-tiny trainer instead (slow: ~25 s "
                        "per experiment); writes <name>-cpu-tiny.{md,json}")
    parser.add_argument("--cpu-tiny-budget", type=int, default=16)
    parser.add_argument("--cpu-tiny-n", type=int, default=2)
    parser.add_argument("--cpu-tiny-replicates", type=int, default=3)
    args = parser.parse_args(argv)
    args.argv = argv
    if args.cpu_tiny:
        args.out.mkdir(parents=True, exist_ok=True)
        return cpu_tiny(args)
    ns = [int(x) for x in args.n.split(",") if x]
    variants = [v for v in args.variants.split(",") if v]
    seeds = list(range(args.seeds))
    pbudget = args.parallel_budget or args.budget
    strats = [s for s in strategies(ns, variants, oracle=not args.no_oracle, oracle_n1=args.oracle_n1)
              if not (args.no_naive and s.name == "naive")]
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        saved = _saved(args.from_json)
        records, meta = saved["records"], saved["meta"]
        return _report(records, summarise(records), meta, args.out, args.name, meta["ns"])
    with tempfile.TemporaryDirectory(prefix="farm-search-") as tmp:
        root = args.keep or Path(tmp)
        records = run_all(strats, seeds, args.budget, pbudget, args.sigma, root, args.prefetch,
                          sandbox=_spec(args.landscape), jobs=args.jobs, partial=args.out / f"{args.name}.partial")
    summary = summarise(records)
    command = "bench/search.py " + " ".join(argv if argv is not None else sys.argv[1:])
    meta = {
        "command": f".venv/bin/python {command.strip()}", "minutes": (time.monotonic() - started) / 60,
        "commit": _git_head(), "python": platform.python_version(), "sigma": args.sigma, "seeds": len(seeds),
        "budget": args.budget, "parallel_budget": pbudget, "ns": ns, "variants": variants,
        "seed_true": landscape(args.landscape).true_bpb(seed_source(get_profile("cpu-tiny"))),
        "optimum": getattr(landscape(args.landscape), "optimum_bpb", math.nan),
        "landscape": args.landscape, "sandbox": _spec(args.landscape), "jobs": args.jobs,
    }  # fmt: skip
    (args.out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "records": records}, default=str))
    return _report(records, summary, meta, args.out, args.name, ns)


def _saved(path: Path) -> dict:
    """An earlier run's records and meta: its <name>.json, or its <name>.partial (JSON lines of a run cut short:
    only the seeds every strategy finished, the meta rebuilt from them)."""
    if path.suffix != ".partial":
        return json.loads(path.read_text())
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    keys = {(r["strategy"], r["n"]) for r in records}
    complete = [s for s in sorted({r["seed"] for r in records})
                if {(r["strategy"], r["n"]) for r in records if r["seed"] == s} == keys]
    records = [r for r in records if r["seed"] in complete]
    first = records[0]
    name = next(r for r in records if r["n"] > 1)
    meta = {"command": f"(cut short after {len(complete)} seeds) {path}", "minutes": math.nan, "commit": _git_head(),
            "python": platform.python_version(), "sigma": first["sigma"], "seeds": len(complete),
            "budget": first["budget"], "parallel_budget": name["budget"], "ns": sorted({r["n"] for r in records
                                                                                       if r["n"] > 1}),
            "variants": [], "seed_true": first["mains"][0]["true"], "optimum": math.nan, "landscape": path.stem,
            "sandbox": "?"}
    return {"records": records, "meta": meta}


def _spec(name: str) -> str:
    return LANDSCAPES.get(name, name)


def _report(records: list[dict], summary: dict, meta: dict, out: Path, name: str, ns: list[int]) -> int:
    stem = out / name
    plot(records, summary, out / f"{name}-curves.png", GOAL_N if GOAL_N in ns else max(ns))
    plot_scaling(summary, out / f"{name}-scaling.png")
    write_doc(out / f"{name}.md", summary, meta, [f"{name}-curves.png", f"{name}-scaling.png"], records)
    print(table(summary))
    print(f"target {summary['target']:.4f} at t={summary['t_seq']:.1f}; wrote {stem}.md/.json/-*.png")
    return 0


def _git_head() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


if __name__ == "__main__":
    raise SystemExit(main())
