"""How reproducible is cpu-tiny, and how far do real changes move it?

Runs the seed train.py under a profile (default cpu-tiny) several times
unchanged and with the same seed, then a few single-constant changes of the
kind an agent makes, each through the real runner. Writes a markdown table
and a plot; the noise figure is what the tournament's margin must beat.

    .venv/bin/python bench/cpu_tiny_noise.py [--repeats 5] [--change-repeats 2] [--out docs/bench]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from trainer.data import prepare_profile
from trainer.profiles import get_profile
from trainer.runner import run
from trainer.seed import seed_source, set_constants

CHANGES: dict[str, dict[str, int | float]] = {
    "MATRIX_LR x10": {"MATRIX_LR": 0.4},
    "DEPTH 4 -> 2": {"DEPTH": 2},
    "ASPECT_RATIO 32 -> 16": {"ASPECT_RATIO": 16},
    "DEVICE_BATCH_SIZE 16 -> 8": {"DEVICE_BATCH_SIZE": 8, "TOTAL_BATCH_SIZE": 1024},
}


def measure(profile_name: str, label: str, changes: dict, repeats: int, work: Path, seeds: list[int]) -> list[float]:
    profile = get_profile(profile_name)
    source = set_constants(seed_source(profile), changes)
    values = []
    for i, seed in enumerate(seeds[:repeats]):
        out = work / f"{label.replace(' ', '_').replace('>', '')}-{i}"
        out.mkdir(parents=True, exist_ok=True)
        (out / "train.py").write_text(source)
        t0 = time.time()
        result = run(out / "train.py", out, profile, seed=seed)
        f = result.facts
        print(
            f"{label:<28} run {i}: {result.status.value:<7} val_bpb={result.val_bpb or float('nan'):.4f} "
            f"steps={result.summary.num_steps} batches={f.train_batches} charged={f.training_seconds:.1f}s "
            f"wall={f.training_wall_seconds:.1f}s total={time.time() - t0:.1f}s",
            flush=True,
        )
        if result.val_bpb is not None:
            values.append(result.val_bpb)
    return values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu-tiny")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--change-repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("docs/bench"))
    parser.add_argument("--work", type=Path, default=Path("runs/bench-noise"))
    args = parser.parse_args()
    prepare_profile(get_profile(args.profile))

    rows = []
    n = args.repeats
    same = measure(args.profile, "seed, same seed", {}, n, args.work, seeds=[0] * n)
    seeds = measure(args.profile, "seed, other seeds", {}, n, args.work, seeds=list(range(1, n + 1)))
    rows.append(("seed (same seed)", same))
    rows.append(("seed (seeds 1..n)", seeds))
    base = statistics.mean(same + seeds)
    for label, changes in CHANGES.items():
        seeds = list(range(args.change_repeats))
        rows.append((label, measure(args.profile, label, changes, args.change_repeats, args.work, seeds=seeds)))

    args.out.mkdir(parents=True, exist_ok=True)
    lines = [
        f"| {args.profile} config | runs | mean val_bpb | sd | effect vs seed |",
        "|---|---|---|---|---|",
    ]
    for label, values in rows:
        sd = statistics.stdev(values) if len(values) > 1 else float("nan")
        mean = statistics.mean(values) if values else float("nan")
        lines.append(f"| {label} | {len(values)} | {mean:.4f} | {sd:.4f} | {mean - base:+.4f} |")
    table = "\n".join(lines)
    (args.out / f"noise-{args.profile}.md").write_text(table + "\n")
    print(table)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for i, (_label, values) in enumerate(rows):
        ax.scatter([i] * len(values), values, alpha=0.7)
    ax.set_xticks(range(len(rows)), [label for label, _ in rows], rotation=20, ha="right")
    ax.set_ylabel("val_bpb (lower is better)")
    ax.set_title(f"{args.profile}: run-to-run noise vs. the effect of single changes")
    fig.tight_layout()
    fig.savefig(args.out / f"noise-{args.profile}.png", dpi=110)
    print(f"wrote {args.out / f'noise-{args.profile}.md'} and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
