"""Does comparing two train.py files on the same run seed (paired) give a less noisy difference?

Runs two files through the real trainer: MAIN, the profile's seed train.py, and EDIT, the same file with one small
constant change of the kind an agent makes (default ``MATRIX_LR`` 0.04 -> 0.06). Noise model:

    val_bpb(file f, seed s, run r) = mu_f + b_s + e_{f,s,r}

b_s is shared by every file run on seed s (initialisation, data order); e is the run's own noise (cpu-tiny trains
for a fixed wall-clock budget, so even the same file on the same seed varies). The difference of two files run on
one seed has variance 2 var(e); on two different seeds, 2 (var(b) + var(e)). If b is a large part of the noise, a
tournament that runs a candidate and main on the same seeds ("common random numbers") needs fewer runs to see an
effect; if e dominates, pairing buys nothing.

Design: for seeds 1..K, MAIN and EDIT once each (the paired differences, and the across-seed sd of each file);
plus ``--same`` replicates of each file on seed 0 (the own noise e). Runs alternate MAIN, EDIT, MAIN, EDIT, ..., and
the seed pairs alternate with the seed-0 pairs, so slow drift of the machine hits both files and both designs alike.
Every figure gets a 90 % percentile bootstrap interval (seeds resampled jointly for the pairs, seed-0 replicates
resampled per file; 2000 draws, fixed RNG seed). Writes a short markdown report, a plot and the raw records.

    nice -n 10 .venv/bin/python bench/pairing.py [--seeds 6] [--same 6] [--edit MATRIX_LR=0.06] [--out docs/bench]
    .venv/bin/python bench/pairing.py --quick    # cpu-smoke, 2 seeds, 2 same: a plumbing check of about a minute
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import platform
import random
import shlex
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from trainer.data import prepare_profile
from trainer.profiles import get_profile
from trainer.runner import run
from trainer.seed import seed_source, set_constants

DEFAULT_EDIT: dict[str, int | float | str] = {"MATRIX_LR": 0.06}
DRAWS = 2000  # bootstrap draws
RNG_SEED = 12345  # the bootstrap's RNG seed
LEVEL = 0.90  # the intervals' coverage
MEANINGFUL = 0.8  # pairing is meaningfully better if the ratio's upper end is below this
SAME_SEED = 0  # the seed of the same-seed replicates; the paired design uses seeds 1..K
QUICK = {"profile": "cpu-smoke", "seeds": 2, "same": 2}


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap interval."""

    value: float
    lo: float
    hi: float


@dataclass(frozen=True)
class Run:
    """One planned run: which file, which seed, which replicate on that seed."""

    file: str  # "MAIN" or "EDIT"
    seed: int
    replicate: int


# ---------------------------------------------------------------------------
# Statistics: pure functions of lists of floats
# ---------------------------------------------------------------------------


def sd(values: Sequence[float]) -> float:
    """Sample standard deviation; nan for fewer than two values."""
    return statistics.stdev(values) if len(values) > 1 else math.nan


def var(values: Sequence[float]) -> float:
    """Sample variance; nan for fewer than two values."""
    return statistics.variance(values) if len(values) > 1 else math.nan


def shared_share(var_e: float, sigma2: float) -> float:
    """rho = sd(b) / sigma = sqrt(max(0, 1 - var(e) / sigma^2)); nan when sigma^2 is not positive."""
    if not sigma2 > 0 or math.isnan(var_e):
        return math.nan
    return math.sqrt(max(0.0, 1.0 - var_e / sigma2))


def point_stats(
    main_seeds: Sequence[float], edit_seeds: Sequence[float], main_same: Sequence[float], edit_same: Sequence[float]
) -> dict[str, float]:
    """Every figure of the report, from one sample.

    ``main_seeds[i]`` and ``edit_seeds[i]`` ran on the same seed (a pair); ``main_same`` and ``edit_same`` are
    replicates on one seed. sigma^2 and var(e) are pooled over the two files (the mean of their variances).
    """
    if len(main_seeds) != len(edit_seeds):
        raise ValueError("main_seeds and edit_seeds must be pairs (same length)")
    diffs = [e - m for m, e in zip(main_seeds, edit_seeds, strict=True)]
    var_main, var_edit = var(main_seeds), var(edit_seeds)
    paired = sd(diffs)
    unpaired = math.sqrt(var_main + var_edit)
    sigma2 = (var_main + var_edit) / 2
    var_e = (var(main_same) + var(edit_same)) / 2
    return {
        "sd_main_seeds": math.sqrt(var_main),
        "sd_edit_seeds": math.sqrt(var_edit),
        "sd_main_same": sd(main_same),
        "sd_edit_same": sd(edit_same),
        "sd_paired": paired,
        "sd_unpaired": unpaired,
        "ratio": paired / unpaired if unpaired > 0 else math.nan,
        "rho": shared_share(var_e, sigma2),
        "effect": statistics.fmean(diffs) if diffs else math.nan,
    }


def _interval(draws: list[float], level: float) -> tuple[float, float]:
    """The percentile interval of the finite draws (nan, nan if there are none)."""
    finite = sorted(d for d in draws if math.isfinite(d))
    if not finite:
        return math.nan, math.nan
    tail = (1 - level) / 2
    n = len(finite)
    return finite[int(tail * n)], finite[min(n - 1, math.ceil((1 - tail) * n) - 1)]


def bootstrap_stats(
    main_seeds: Sequence[float],
    edit_seeds: Sequence[float],
    main_same: Sequence[float],
    edit_same: Sequence[float],
    draws: int = DRAWS,
    rng_seed: int = RNG_SEED,
    level: float = LEVEL,
) -> dict[str, Estimate]:
    """``point_stats`` with a percentile bootstrap interval for each figure.

    Each draw resamples the seed index s (jointly for MAIN and EDIT, so pairs stay pairs) and, independently, each
    file's same-seed replicates; draws that leave a figure undefined (e.g. every resampled seed the same, so the
    unpaired sd is 0) are dropped for that figure.
    """
    point = point_stats(main_seeds, edit_seeds, main_same, edit_same)
    rng = random.Random(rng_seed)
    k = len(main_seeds)
    samples: dict[str, list[float]] = {name: [] for name in point}

    def pick(values: Sequence[float]) -> list[float]:
        return [values[rng.randrange(len(values))] for _ in values]

    for _ in range(draws):
        idx = [rng.randrange(k) for _ in range(k)]
        stats = point_stats([main_seeds[i] for i in idx], [edit_seeds[i] for i in idx], pick(main_same),
                            pick(edit_same))
        for name, value in stats.items():
            samples[name].append(value)
    return {name: Estimate(point[name], *_interval(samples[name], level)) for name in point}


def verdict(ratio: Estimate, threshold: float = MEANINGFUL) -> str:
    """One line: pairing is meaningfully better if the ratio's upper end is below ``threshold``."""
    if ratio.hi < threshold:
        return (f"Pairing is meaningfully better: the paired difference's sd is {ratio.value:.2f} x the unpaired one "
                f"(90 % interval {ratio.lo:.2f}-{ratio.hi:.2f}, upper end below {threshold}).")
    return (f"A meaningful gain from pairing is not established: paired / unpaired sd = {ratio.value:.2f} "
            f"(90 % interval {ratio.lo:.2f}-{ratio.hi:.2f}; the upper end is not below {threshold}).")


# ---------------------------------------------------------------------------
# The runs
# ---------------------------------------------------------------------------


def plan(seeds: int, same: int) -> list[Run]:
    """MAIN, EDIT, MAIN, EDIT, ...: the seed pairs (seeds 1..K) alternating with the same-seed pairs."""
    seed_pairs = [(s, 0) for s in range(1, seeds + 1)]
    same_pairs = [(SAME_SEED, r) for r in range(same)]
    order: list[tuple[int, int]] = []
    for i in range(max(seeds, same)):
        order += seed_pairs[i : i + 1] + same_pairs[i : i + 1]
    return [Run(file, seed, rep) for seed, rep in order for file in ("MAIN", "EDIT")]


def parse_edit(items: list[str] | None) -> dict[str, int | float | str]:
    """``["NAME=VALUE", ...]`` -> ``{NAME: value}``: numbers as numbers, anything else as a string."""
    if not items:
        return dict(DEFAULT_EDIT)
    edit: dict[str, int | float | str] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise SystemExit(f"--edit wants NAME=VALUE, got {item!r}")
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            value = text.strip()
        if not isinstance(value, int | float | str):
            raise SystemExit(f"--edit {name}: a number or a string, got {text!r}")
        edit[name.strip()] = value
    return edit


def run_all(profile_name: str, sources: dict[str, str], runs: list[Run], work: Path,
            progress: Callable[[str], None] = print) -> list[dict]:
    """Every planned run through the trusted runner, one at a time; one record per run."""
    profile = get_profile(profile_name)
    records: list[dict] = []
    start = time.time()
    for i, r in enumerate(runs):
        out = work / f"{r.file.lower()}-s{r.seed}-r{r.replicate}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        (out / "train.py").write_text(sources[r.file])
        t0 = time.time()
        result = run(out / "train.py", out, profile, seed=r.seed)
        wall = time.time() - t0
        records.append({
            "file": r.file, "seed": r.seed, "replicate": r.replicate, "status": result.status.value,
            "reason": result.reason, "val_bpb": result.val_bpb, "steps": result.summary.num_steps,
            "wall": round(wall, 2), "training_wall": round(result.facts.training_wall_seconds, 2),
        })
        elapsed = time.time() - start
        eta = elapsed / (i + 1) * (len(runs) - i - 1)
        bpb = f"{result.val_bpb:.4f}" if result.val_bpb is not None else "  -   "
        progress(f"[{i + 1:>2}/{len(runs)}] {r.file} seed {r.seed} rep {r.replicate}: {result.status.value:<7} "
                 f"val_bpb={bpb} steps={result.summary.num_steps} wall={wall:.1f}s "
                 f"elapsed={elapsed / 60:.1f}min eta={eta / 60:.1f}min"
                 + (f"  ({result.reason})" if result.reason and result.val_bpb is None else ""))
    return records


def samples(records: list[dict]) -> tuple[list[float], list[float], list[float], list[float], list[int]]:
    """(MAIN on seeds 1..K, EDIT on the same seeds, MAIN on seed 0, EDIT on seed 0, seeds dropped).

    A seed whose MAIN or EDIT run has no val_bpb is dropped from the pairs; failed replicates are left out.
    """
    by_seed: dict[int, dict[str, float]] = {}
    main_same: list[float] = []
    edit_same: list[float] = []
    for rec in records:
        if rec["seed"] == SAME_SEED:
            if rec["val_bpb"] is not None:
                (main_same if rec["file"] == "MAIN" else edit_same).append(rec["val_bpb"])
        else:
            by_seed.setdefault(rec["seed"], {})
            if rec["val_bpb"] is not None:
                by_seed[rec["seed"]][rec["file"]] = rec["val_bpb"]
    kept = sorted(s for s, v in by_seed.items() if {"MAIN", "EDIT"} <= v.keys())
    dropped = sorted(set(by_seed) - set(kept))
    return ([by_seed[s]["MAIN"] for s in kept], [by_seed[s]["EDIT"] for s in kept], main_same, edit_same, dropped)


# ---------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------

ROWS = [
    ("sd_main_seeds", "sd of MAIN across seeds 1..K (sigma)"),
    ("sd_edit_seeds", "sd of EDIT across seeds 1..K (sigma)"),
    ("sd_main_same", "sd of MAIN, same-seed replicates (own noise e)"),
    ("sd_edit_same", "sd of EDIT, same-seed replicates (own noise e)"),
    ("sd_paired", "sd of paired difference EDIT_s - MAIN_s"),
    ("sd_unpaired", "sd of unpaired difference, sqrt(var MAIN + var EDIT)"),
    ("ratio", "ratio paired sd / unpaired sd"),
    ("rho", "shared share rho = sd(b) / sigma"),
    ("effect", "mean effect of EDIT (paired mean EDIT_s - MAIN_s)"),
]


def table(stats: dict[str, Estimate]) -> str:
    lines = ["| figure | value | 90 % interval |", "|---|---|---|"]
    for key, label in ROWS:
        e = stats[key]
        sign = "+" if key == "effect" else ""
        lines.append(f"| {label} | {e.value:{sign}.4f} | {e.lo:{sign}.4f} .. {e.hi:{sign}.4f} |")
    return "\n".join(lines)


def plot(path: Path, profile: str, edit_label: str, data: tuple, stats: dict[str, Estimate]) -> bool:
    """Left: val_bpb per seed, pairs joined; right: the sds with their intervals. False if matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main_seeds, edit_seeds, main_same, edit_same, _ = data
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    xs = list(range(1, len(main_seeds) + 1))
    for x, m, e in zip(xs, main_seeds, edit_seeds, strict=True):
        ax.plot([x - 0.1, x + 0.1], [m, e], color="grey", lw=0.8)
    ax.scatter([x - 0.1 for x in xs], main_seeds, color="C0", label="MAIN")
    ax.scatter([x + 0.1 for x in xs], edit_seeds, color="C1", label=f"EDIT ({edit_label})")
    ax.scatter([-0.1] * len(main_same), main_same, color="C0", alpha=0.5, marker="x")
    ax.scatter([0.1] * len(edit_same), edit_same, color="C1", alpha=0.5, marker="x")
    ax.axvline(0.5, color="lightgrey", lw=0.8)
    ax.set_xticks([0, *xs], [f"seed {SAME_SEED}\n(replicates)", *[str(x) for x in xs]])
    ax.set_xlabel("run seed (kept pairs)")
    ax.set_ylabel("val_bpb (lower is better)")
    ax.legend(fontsize=8)
    ax.set_title(f"{profile}: MAIN and EDIT per seed")
    keys = [("sd_paired", "paired\ndiff"), ("sd_unpaired", "unpaired\ndiff"), ("sd_main_seeds", "MAIN\nseeds"),
            ("sd_main_same", "MAIN\nseed 0")]
    for i, (key, _) in enumerate(keys):
        e = stats[key]
        bx.errorbar([i], [e.value], yerr=[[e.value - e.lo], [e.hi - e.value]], fmt="o", capsize=4, color=f"C{i + 2}")
    bx.set_xticks(range(len(keys)), [label for _, label in keys])
    bx.set_ylabel("sd of val_bpb (90 % bootstrap interval)")
    bx.set_title(f"paired / unpaired = {stats['ratio'].value:.2f}")
    bx.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def report(args: argparse.Namespace, command: str, edit: dict, records: list[dict], wall: float) -> str:
    data = samples(records)
    main_seeds, edit_seeds, main_same, edit_same, dropped = data
    stats = bootstrap_stats(main_seeds, edit_seeds, main_same, edit_same)
    edit_label = ", ".join(f"{k} = {v!r}" for k, v in edit.items())
    failed = [r for r in records if r["val_bpb"] is None]
    stem = args.out / f"pairing-{args.profile}"
    args.out.mkdir(parents=True, exist_ok=True)
    plotted = plot(stem.with_suffix(".png"), args.profile, edit_label, data, stats)
    info = {
        "command": command, "profile": args.profile, "edit": edit, "seeds": args.seeds, "same": args.same,
        "wall_seconds": round(wall, 1), "python": platform.python_version(), "nproc": os.cpu_count(),
        "bootstrap": {"draws": DRAWS, "rng_seed": RNG_SEED, "level": LEVEL},
        "stats": {k: vars(v) for k, v in stats.items()}, "dropped_seeds": dropped, "runs": records,
    }
    stem.with_suffix(".json").write_text(json.dumps(info, indent=1) + "\n")
    lines = [
        f"# Paired vs. unpaired comparison on {args.profile}",
        "",
        "Does running two train.py files on the same run seed (common random numbers) make their difference less "
        "noisy than running them on different seeds? Model: val_bpb = mu_file + b_seed + e_run; a paired difference "
        "has variance 2 var(e), an unpaired one 2 (var(b) + var(e)).",
        "",
        f"    {command}",
        "",
        f"- wall time {wall / 60:.1f} min; Python {platform.python_version()}; nproc {os.cpu_count()}; "
        f"{len(records)} runs, {len(failed)} without val_bpb" + (f" (seeds dropped from the pairs: {dropped})"
                                                                 if dropped else ""),
        f"- MAIN: the {args.profile} seed train.py; EDIT: the same with {edit_label}",
        f"- seeds 1..{args.seeds}: MAIN and EDIT once each ({len(main_seeds)} pairs kept); seed {SAME_SEED}: "
        f"{args.same} replicates of each ({len(main_same)} MAIN, {len(edit_same)} EDIT kept); runs alternate "
        "MAIN, EDIT, seed pairs alternate with seed-0 pairs",
        f"- intervals: 90 % percentile bootstrap, {DRAWS} draws, RNG seed {RNG_SEED}; seeds resampled jointly for "
        "the pairs, seed-0 replicates per file",
        "",
        table(stats),
        "",
        f"**Verdict.** {verdict(stats['ratio'])}",
        "",
        f"Raw runs: [pairing-{args.profile}.json](pairing-{args.profile}.json)"
        + (f"; plot: ![pairing](pairing-{args.profile}.png)" if plotted else "."),
        "",
    ]
    text = "\n".join(lines)
    stem.with_suffix(".md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu-tiny")
    parser.add_argument("--seeds", type=int, default=6, help="K: MAIN and EDIT once each on seeds 1..K")
    parser.add_argument("--same", type=int, default=6, help="replicates of MAIN and of EDIT on seed 0")
    parser.add_argument("--edit", action="append", metavar="NAME=VALUE",
                        help="EDIT's constant change (repeatable; default MATRIX_LR=0.06)")
    parser.add_argument("--quick", action="store_true", help="cpu-smoke, 2 seeds, 2 same; writes under --work")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default docs/bench; --quick: --work)")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-pairing"))
    args = parser.parse_args(argv)
    if args.quick:
        args.profile, args.seeds, args.same = QUICK["profile"], QUICK["seeds"], QUICK["same"]
    if args.out is None:
        args.out = args.work if args.quick else Path("docs/bench")
    if args.seeds < 2 or args.same < 2:
        parser.error("--seeds and --same must be at least 2")
    niced = f"nice -n {os.nice(0)} " if os.nice(0) > 0 else ""
    command = niced + " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/pairing.py", *sys.argv[1:]])
    edit = parse_edit(args.edit)
    profile = get_profile(args.profile)
    prepare_profile(profile)
    main_source = seed_source(profile)
    sources = {"MAIN": main_source, "EDIT": set_constants(main_source, edit)}
    if sources["EDIT"] == sources["MAIN"]:
        parser.error("the edit does not change the seed train.py")

    start = time.time()
    # absolute: the runner hands the candidate paths under out/, and the candidate runs in another folder
    work = (args.work / args.profile).resolve()
    records = run_all(args.profile, sources, plan(args.seeds, args.same), work)
    wall = time.time() - start
    print(report(args, command, edit, records, wall))
    print(f"wrote {args.out / f'pairing-{args.profile}'}.md and .json (and .png if matplotlib is installed)")
    main_seeds, _, main_same, edit_same, _ = samples(records)
    if min(len(main_seeds), len(main_same), len(edit_same)) < 2:
        print("too few successful runs for the statistics (see the records' reasons)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
