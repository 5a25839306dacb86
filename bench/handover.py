"""What the trusted verdict costs per experiment: the hand-over and the evaluator, before and after.

    python -m bench.handover [--runs 4] [--profile cpu-tiny] [--before REV] [--out docs/bench/handover-cpu.md]

Runs the profile's seed train.py through the real runner, one run at a time, with the current trainer/ ("after":
the model exported, copied, checked and scored by the separate evaluator) and with trainer/ as it was at REV
("before": evaluation inside the candidate's process). For each run it reads the runner's own facts: start-up,
training wall time, the hand-over (export), the evaluation, and the whole run; the overhead is the whole run
minus training. Writes a markdown table (mean and sd over the runs) and a bar chart beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

from trainer.profiles import get_profile
from trainer.seed import seed_source

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "dea4b8c"  # the last commit with evaluation inside the candidate's process


def run_once(trainer_root: Path, train_py: Path, out: Path, profile: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(trainer_root))
    subprocess.run([sys.executable, "-m", "trainer.runner", str(train_py), "--out", str(out), "--profile", profile],
                   cwd=trainer_root, env=env, capture_output=True, timeout=600)
    result = json.loads((out / "result.json").read_text())
    f = result["facts"]
    return {
        "status": result["status"],
        "val_bpb": result["val_bpb"],
        "startup": f.get("startup_seconds") or 0.0,
        "training": f.get("training_wall_seconds") or 0.0,
        "handover": f.get("handover_seconds") or 0.0,
        "eval": f.get("eval_seconds") or 0.0,
        "total": f.get("total_seconds") or 0.0,
    }


def old_trainer(rev: str, into: Path) -> Path:
    """trainer/ as it was at ``rev``, extracted under ``into``."""
    archive = subprocess.run(["git", "archive", rev, "trainer"], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def summarize(rows: list[dict], key: str) -> str:
    values = [r[key] for r in rows]
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


PARTS = ("startup", "training", "handover", "eval")


def plot(means: dict[str, dict[str, float]], path: Path) -> bool:
    """Stacked bars: where each version's experiment spends its time (mean seconds per part)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 2.6))
    for y, parts in enumerate(means.values()):
        left = 0.0
        for i, part in enumerate(PARTS):
            ax.barh(y, parts[part], left=left, color=f"C{i}", label=part if y == 0 else None)
            left += parts[part]
    ax.set_yticks(range(len(means)), list(means))
    ax.set_xlabel("seconds per experiment (mean)")
    ax.legend(ncols=4, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--profile", default="cpu-tiny")
    parser.add_argument("--before", default=BEFORE)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "handover-cpu.md")
    args = parser.parse_args(argv)
    source = seed_source(get_profile(args.profile))
    results: dict[str, list[dict]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train_py = tmp / "train.py"
        train_py.write_text(source)
        roots = {"before": old_trainer(args.before, tmp / "before"), "after": ROOT}
        for i in range(args.runs):  # interleaved, so load on the machine hits both alike
            for label, root in roots.items():
                row = run_once(root, train_py, tmp / f"{label}-{i}", args.profile)
                results[label].append(row)
                print(f"{label} {i + 1}/{args.runs}: {row['status']} val_bpb {row['val_bpb']} "
                      f"handover {row['handover']:.2f} s eval {row['eval']:.2f} s total {row['total']:.1f} s",
                      flush=True)
    for rows in results.values():
        for r in rows:
            r["overhead"] = r["total"] - r["training"]
    lines = [
        f"# The trusted verdict's cost per experiment ({args.profile}, CPU)",
        "",
        f"`python -m bench.handover --runs {args.runs} --profile {args.profile}` on the development machine "
        "(2 cores, shared). Seconds per experiment, mean ± sd over the runs, both versions interleaved. "
        f"before: trainer/ at {args.before} (evaluation inside the candidate's process); after: the model handed "
        "over and scored by the separate evaluator (which starts before the candidate).",
        "",
        "| | runs ok | val_bpb | start-up | training (wall) | hand-over (export) | evaluation | whole run | "
        "overhead (whole run - training) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, rows in results.items():
        ok = [r for r in rows if r["status"] == "ok"]
        bpb = summarize(ok, "val_bpb") if ok else "-"
        lines.append(f"| {label} | {len(ok)}/{len(rows)} | {bpb} | {summarize(rows, 'startup')} | "
                     f"{summarize(rows, 'training')} | {summarize(rows, 'handover')} | {summarize(rows, 'eval')} | "
                     f"{summarize(rows, 'total')} | {summarize(rows, 'overhead')} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    means = {label: {part: statistics.mean(r[part] for r in rows) for part in PARTS} for label, rows in results.items()}
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    if plot(means, args.out.with_suffix(".png")):
        lines += ["", f"![where an experiment's time goes]({args.out.with_suffix('.png').name})"]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
