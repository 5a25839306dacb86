"""Proposers compared: the optimiser (Optuna TPE over the constants) against the random mutator (issue 17).

The same harness as bench/search.py (the REAL farm on the in-process executor, the surrogate landscape, same seeds
for every strategy), run with two proposer kinds:

- ``sequential``: autoresearch's loop (1 GPU, greedy keep-if-lower), with the mutator, then with the optimiser;
- ``tournament``: the farm's tournament on N GPUs, with each.

Reported: main's true val_bpb at the end (mean, 90 % bootstrap interval over seeds), and the experiments each
needs until its mean curve reaches sequential-with-mutator's final value (the target), with a bootstrap interval.
The goal of issue 17: the optimiser reaches the target in at most half the experiments sequential-with-mutator
used (``--budget``).

    .venv/bin/python bench/proposers.py                       # 16 seeds, budget 60, N = 4 (make bench-proposers)
    .venv/bin/python bench/proposers.py --seeds 2 --budget 16  # a quick look
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.search import (  # noqa: E402
    GREEDY,
    LANDSCAPES,
    Strategy,
    bootstrap,
    false_promotions,
    first_reach,
    landscape,
    main_true_at,
    run_one,
)
from trainer.profiles import get_profile  # noqa: E402
from trainer.seed import seed_source  # noqa: E402

KINDS = ("mutate", "optuna")


def reach_n(records: list[dict], target: float) -> float:
    """Experiments until the mean (over seeds) of main's true value first reaches ``target`` (inf: never)."""
    ns = sorted({m["n"] for r in records for m in r["mains"]})
    for n in ns:
        if statistics.fmean(main_true_at(r, n, "n") for r in records) <= target + 1e-12:
            return float(n)
    return math.inf


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=16)
    p.add_argument("--budget", type=int, default=60, help="sequential's experiments")
    p.add_argument("--n", type=int, default=4, help="GPUs of the tournament strategies")
    p.add_argument("--sigma", type=float, default=0.037, help="the landscape's noise sd (cpu-tiny's)")
    p.add_argument("--landscape", choices=sorted(LANDSCAPES), default="calibrated",
                   help="bench/surrogate.py's (calibrated) or bench/realistic.py's (many small gains)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "bench")
    args = p.parse_args(argv)
    started = time.monotonic()
    strategies = []
    for kind in KINDS:
        strategies.append(Strategy("sequential", 1, GREEDY, f"autoresearch's loop, {kind}", agent=kind))
        strategies.append(Strategy("tournament", args.n, {}, f"the farm's tournament, {kind}", agent=kind))
    records: dict[tuple[str, str], list[dict]] = {}
    sandbox = LANDSCAPES[args.landscape]
    truth = landscape(sandbox).true_bpb
    with tempfile.TemporaryDirectory(prefix="bench-proposers-") as tmp:
        for seed in range(args.seeds):
            for s in strategies:
                budget = args.budget if s.n == 1 else 2 * args.budget
                root = Path(tmp) / s.agent
                root.mkdir(exist_ok=True)
                r = run_one(s, seed, budget, root, args.sigma, sandbox=sandbox)
                records.setdefault((f"{s.key}", s.agent), []).append(r)
                print(f"  seed {seed} {s.key:<14} {s.agent:<7} true {main_true_at(r, math.inf):.4f} "
                      f"promotions {r['promotions']} ({r['wall_s']:.1f} s)", flush=True)
    seq = records[("sequential@1", "mutate")]
    target = statistics.fmean(main_true_at(r, math.inf) for r in seq)
    rows = []
    for (key, kind), rs in records.items():
        finals = [main_true_at(r, math.inf) for r in rs]
        n_reach = reach_n(rs, target)
        boot = [reach_n(b, target) for b in _resamples(rs, 400)]
        rows.append({
            "strategy": key, "proposer": kind, "seeds": len(rs), "budget": rs[0]["budget"],
            "final": statistics.fmean(finals), "final_ci": bootstrap(finals),
            "reach": n_reach, "reach_ci": (_pct(boot, 0.05), _pct(boot, 0.95)),
            "time_reach": first_reach(rs, target),
            "not_ok": sum(r["not_ok"] for r in rs) / len(rs), "promotions": sum(r["promotions"] for r in rs) / len(rs),
            "false_promotions": sum(false_promotions(r) for r in rs),
        })  # fmt: skip
    opt = next(r for r in rows if r["strategy"] == "sequential@1" and r["proposer"] == "optuna")
    met = opt["reach"] <= args.budget / 2
    meta = {"command": "bench/proposers.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "minutes": (time.monotonic() - started) / 60, "target": target, "met": met, "budget": args.budget,
            "seed_true": truth(seed_source(get_profile("cpu-tiny"))), "sigma": args.sigma,
            "landscape": args.landscape}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "proposers" if args.landscape == "calibrated" else f"proposers-{args.landscape}"
    kept = {f"{k}|{kind}": [{f: v for f, v in r.items() if f != "runs"} for r in rs]  # counts, not every run
            for (k, kind), rs in records.items()}
    (args.out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows, "records": kept}, default=str))
    _plot(records, target, args.out / f"{stem}.png")
    text = _doc(rows, meta, stem)
    (args.out / f"{stem}.md").write_text(text)
    print(text)
    return 0


def _resamples(records: list[dict], n: int) -> list[list[dict]]:
    rng = random.Random(1)
    return [[rng.choice(records) for _ in records] for _ in range(n)]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _fmt(x: float) -> str:
    return "never" if math.isinf(x) else f"{x:.0f}"


def _doc(rows: list[dict], meta: dict, stem: str) -> str:
    lines = [
        f"# Proposers: the optimiser (Optuna TPE) against the random mutator ({meta['landscape']} landscape)",
        "",
        f"`.venv/bin/python {meta['command']}` ({meta['minutes']:.1f} min). The REAL farm on the in-process "
        f"executor and the {meta['landscape']} surrogate landscape (noise sd {meta['sigma']}; the seed file scores "
        f"{meta['seed_true']:.4f}), the same seeds for every row; see bench/proposers.py.",
        "",
        f"**Target** = sequential-with-mutator's final true val_bpb, mean over seeds: {meta['target']:.4f}. "
        "*Experiments to target*: when the strategy's mean curve first reaches it (90 % bootstrap interval over "
        "seeds in brackets).",
        "",
        "| strategy | proposer | seeds | budget | true val_bpb at end (90 % CI) | experiments to target (90 % CI) | "
        "promotions / run | false promotions | not ok / run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lo, hi = r["final_ci"]
        rl, rh = r["reach_ci"]
        lines.append(f"| {r['strategy']} | {r['proposer']} | {r['seeds']} | {r['budget']} | {r['final']:.4f} "
                     f"({lo:.4f} - {hi:.4f}) | {_fmt(r['reach'])} ({_fmt(rl)} - {_fmt(rh)}) | "
                     f"{r['promotions']:.1f} | {r['false_promotions']} | {r['not_ok']:.1f} |")
    verdict = "**met**" if meta["met"] else "**not met**"
    lines += ["", f"Goal (issue 17): the optimiser reaches sequential-with-mutator's final value in at most half "
              f"the experiments ({meta['budget'] / 2:.0f}): {verdict}.", "", f"![curves]({stem}.png)", ""]
    return "\n".join(lines)


def _plot(records: dict, target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for (key, kind), rs in records.items():
        budget = max(r["budget"] for r in rs)
        xs = list(range(budget + 1))
        ax.plot(xs, [statistics.fmean(main_true_at(r, x, "n") for r in rs) for x in xs], label=f"{key} {kind}")
    ax.axhline(target, color="grey", linestyle=":", label="target: sequential-with-mutator's final value")
    ax.set_xlabel("experiments finished")
    ax.set_ylabel("main's true val_bpb (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
