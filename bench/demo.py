"""Does `make farm`'s CPU demo show the loop, and do parallel CPU experiments disturb each other?

Two measurements (a benchmark, not a test: minutes of real training on this machine):

1. ``--demo-runs N``: the demo exactly as `make farm` runs it on a machine without a GPU (cpu-tiny, the Makefile's
   FARM_ENV and FARM_ARGS, the process sandbox, the offline mutator), N times with different seeds; for each,
   whether main improved by a confirmed promotion, after how many experiments and minutes, and main's values.
2. ``--noise-runs N``: main's seed train.py through the process sandbox (as the farm runs it), N runs each with
   one experiment at a time, two at once (what 2 CPU slots would do), and one at a time beside a CPU hog; the
   spread (sd) and mean of each, so the figures in docs/ say whether a second slot or a busy machine distorts
   the noise the tournament judges with.

    .venv/bin/python bench/demo.py --demo-runs 3 --noise-runs 6 [--out docs/bench]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cluster.execution.spec import ExperimentSpec, GpuAssignment  # noqa: E402
from cluster.records.ledger import Ledger  # noqa: E402
from cluster.sandbox import make_sandbox  # noqa: E402
from trainer.profiles import cache_dir, get_profile  # noqa: E402
from trainer.seed import seed_source  # noqa: E402

MAKEFILE_ENV = {"FARM_TOURNAMENT__BASELINE_REPLICATES": "3", "FARM_TOURNAMENT__MIN_NOISE_DF": "3"}  # FARM_ENV
DEMO_EXPERIMENTS = 30  # the Makefile's FARM_ARGS on a machine without a GPU


def demo_run(work: Path, seed: int) -> dict:
    """One `make farm` demo (the Makefile's command line and environment) with the agents seeded ``seed``."""
    run_dir = work / f"demo-s{seed}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "FARM_"))}
    env.update(MAKEFILE_ENV, FARM_METRICS_PORT="none", DOCKER_HOST="unix:///nonexistent/docker.sock")
    started = time.monotonic()
    proc = subprocess.run([str(ROOT / ".venv/bin/farm"), "run", "--profile", "cpu-tiny", "--max-experiments",
                           str(DEMO_EXPERIMENTS), "--run-dir", str(run_dir), "--seed", str(seed)],
                          env=env, capture_output=True, text=True, cwd=work)
    return summarize(run_dir, seed, proc.returncode, (time.monotonic() - started) / 60)


def summarize(run_dir: Path, seed: int, exit_code: int, minutes: float) -> dict:
    """What a demo run showed, from its run directory: promotions (each counted once) and when they landed."""
    rows = Ledger(run_dir / "ledger").read()
    finished = [r for r in rows if r.event == "finished"]
    order = {r.experiment_id: i + 1 for i, r in enumerate(finished)}
    promoted = list(dict.fromkeys(r.experiment_id for r in rows if r.event == "verdict" and r.verdict == "promote"))
    landed = {}  # a promotion lands when its last replicate finishes
    for r in finished:
        key = r.replicate_of or r.experiment_id
        if key in promoted:
            landed[key] = order[r.experiment_id]
    status = json.loads((run_dir / "status.json").read_text())
    return {"seed": seed, "exit": exit_code, "minutes": minutes, "experiments": len(finished),
            "promotions": len(promoted), "first_promotion_after": min(landed.values(), default=None),
            "start_main": _first_baselines(finished), "main": status.get("main_val_bpb"),
            "by_status": status.get("by_status"), "failure": status.get("failure", "")}


def _first_baselines(finished: list) -> float | None:
    values = [r.val_bpb for r in finished if r.kind == "baseline" and r.val_bpb is not None][:3]
    return statistics.fmean(values) if values else None


def sandboxed(source: str, seed: int, work: Path) -> float | None:
    """One run of ``source`` through the process sandbox, as the farm runs it; its val_bpb."""
    spec = ExperimentSpec(experiment_id=f"noise-{uuid.uuid4().hex[:8]}", train_py=source, profile="cpu-tiny",
                          seed=seed, run_dir=work / uuid.uuid4().hex[:8], cache_dir=cache_dir(), owner="bench-demo")
    result = make_sandbox("process").run(spec, GpuAssignment())
    return result.val_bpb if result.status.value == "ok" else None


def _hog(stop_at: float) -> None:
    while time.time() < stop_at:
        pass


def noise(runs: int, work: Path) -> dict[str, list[float]]:
    source = seed_source(get_profile("cpu-tiny"))
    out: dict[str, list[float]] = {"1 slot": [], "2 slots (two at once)": [], "1 slot + CPU hog": []}
    for _ in range(runs):
        out["1 slot"].append(sandboxed(source, 0, work))
    with ThreadPoolExecutor(2) as pool:
        for _ in range(0, runs, 2):
            out["2 slots (two at once)"] += list(pool.map(lambda _: sandboxed(source, 0, work), range(2)))
    for _ in range(runs):
        hog = multiprocessing.Process(target=_hog, args=(time.time() + 60,))
        hog.start()
        try:
            out["1 slot + CPU hog"].append(sandboxed(source, 0, work))
        finally:
            hog.terminate()
            hog.join()
    return {k: [v for v in vs if v is not None] for k, vs in out.items()}


def report(demos: list[dict], noises: dict[str, list[float]], out: Path) -> str:
    lines = ["# The CPU demo (`make farm` without a GPU) and CPU-slot noise", "",
             f"Measured {time.strftime('%Y-%m-%d')} on this project's development machine (2 cores, no GPU), with "
             "`.venv/bin/python bench/demo.py` (other work ran on the machine at the same time).", ""]
    if demos:
        shown = sum(1 for d in demos if d["promotions"])
        lines += [f"## The demo: {shown} of {len(demos)} runs showed a confirmed promotion", "",
                  "| agents' seed | exit | minutes | experiments | promotions | first promotion confirmed after "
                  "(experiments) | main at start | main at end | by status |", "|---|---|---|---|---|---|---|---|---|"]
        for d in demos:
            lines.append(f"| {d['seed']} | {d['exit']} | {d['minutes']:.1f} | {d['experiments']} | {d['promotions']} "
                         f"| {d['first_promotion_after'] or '-'} | {_f(d['start_main'])} | {_f(d['main'])} | "
                         f"{d['by_status']} |")
        lines.append("")
    if noises:
        lines += ["## Noise of main's seed with 1 and 2 CPU slots", "",
                  "| setting | runs | mean val_bpb | sd |", "|---|---|---|---|"]
        for k, vs in noises.items():
            sd = statistics.stdev(vs) if len(vs) > 1 else float("nan")
            lines.append(f"| {k} | {len(vs)} | {_f(statistics.fmean(vs) if vs else None)} | {sd:.4f} |")
        lines.append("")
    text = "\n".join(lines)
    (out / "demo-cpu.md").write_text(text)
    (out / "demo-cpu.json").write_text(json.dumps({"demos": demos, "noise": noises}, indent=1))
    return text


def _f(v: float | None) -> str:
    return f"{v:.4f}" if v is not None else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-runs", type=int, default=3)
    parser.add_argument("--noise-runs", type=int, default=6)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench")
    parser.add_argument("--from-dirs", type=Path, metavar="WORK", help="only rebuild the report from an earlier "
                        "run's work dir (its demo-s* run dirs) and the noise figures in OUT/demo-cpu.json")
    args = parser.parse_args()
    if args.from_dirs:
        saved = json.loads((args.out / "demo-cpu.json").read_text())
        ran = {e["seed"]: e for e in saved["demos"]}  # exit codes and minutes are not in the run dirs
        seeds = sorted(int(d.name.removeprefix("demo-s")) for d in args.from_dirs.glob("demo-s*"))
        demos = [summarize(args.from_dirs / f"demo-s{seed}", seed, ran[seed]["exit"], ran[seed]["minutes"])
                 for seed in seeds if seed in ran]
        print(report(demos, saved["noise"], args.out))
        return
    work = Path(tempfile.mkdtemp(prefix="bench-demo-"))
    noises = noise(args.noise_runs, work) if args.noise_runs else {}
    print(report([], noises, args.out), flush=True)
    demos = []
    for seed in range(args.demo_runs):
        demos.append(demo_run(work, seed))
        print(json.dumps(demos[-1]), flush=True)
        report(demos, noises, args.out)
    print(report(demos, noises, args.out))


if __name__ == "__main__":
    main()
