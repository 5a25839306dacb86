"""How much of the GPUs' time does the farm itself waste? The driver's overhead with a sleeping stand-in trainer.

Runs the real farm (Farm's control loop, real local Ray with N logical GPUs,
mutate agents as Ray actors, the research repo in git, the Parquet ledger,
the tournament) on ``bench.standin:StandinSandbox``: every experiment sleeps
a fixed time (2 s by default, so that the overhead is visible) and returns a
deterministic val_bpb. Each configuration runs in its own process (its own
Ray), set up as ``farm run`` sets up a run (``load_config`` from a farm.yaml,
``_create_run``, ``_init_ray``), for ``--per-gpu`` x N experiments or until
``--cap`` seconds (the config's ``hours``: a farm too slow for the load is
stopped, and says so in the experiments column). Then, from the ledger and
the stand-in's own record of when each sleep started and ended
(``experiments/<id>/out/standin.json``, wall clock, with the Ray GPU id held):

- GPU duty: sum of sleep seconds / (N x span from the first sleep's start to
  the last sleep's end). Ramp-up (Ray starting worker processes, agents
  starting) and the drain at the stop count against it. *Steady duty* is the
  same fraction inside [N-th start, last start]: after N experiments have
  started and before the stop drains the slots.
- dispatch gap, per GPU slot (Ray's GPU id): for each experiment, the time
  from its end to the start of the next experiment on the same slot. A
  slot's idle time after its last experiment (the drain at the stop) is not
  a gap; neither is a slot's wait for its first one (that is ramp-up).
  p50/p95 are over all gaps. A gap is *starved* when no experiment was queued
  (and not yet submitted) at the instant the slot freed: no proposal was ready
  in time; the others are pure dispatch latency.
- latencies per experiment, from the ledger's driver timestamps: *result*
  (sleep end -> the driver records the finish) and *launch* (the driver
  submits the task -> its sleep starts: Ray scheduling, a worker, staging).
- peak busy: the most sleeps in progress at once (N when every slot was used).
- driver CPU: ``time.process_time()`` of the driver process around
  ``Farm.run()`` (all its threads: the loop, the ledger writer, Ray's core
  worker), total and per experiment; *git CPU*: the driver's child processes
  (the research repo's git commands) over the same time; machine CPU: every
  process's busy share of the cores over the same wall time (Ray, agents, other
  users of the machine included; the 1-min load average when the configuration
  started is recorded, and includes the tail of the configuration before).
- experiments/hour over the span, against the ideal N x 3600 / seconds.

``--what-if`` runs the same with proposed fixes patched in, in the child
process only (see WHAT_IFS), to measure what each would buy; ``--variants``
runs several sets side by side. Goals (issue 4): duty >= 97 %, p95 gap < 1 s,
linear to 64 GPUs. Not a test: the numbers depend on the machine and its load.

    .venv/bin/python bench/dispatch.py                      # the farm as it is: N = 8, 16, 64 at 2 s, N = 64 at 10 s
    .venv/bin/python bench/dispatch.py --variants "as-is;all" --profile all   # + every fix, + cProfile of it
    make bench-dispatch
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `bench` importable here, and (via _init_ray's PYTHONPATH) in Ray's workers

SANDBOX = "bench.standin:StandinSandbox"
MARKER = "<!-- everything above is written by bench/dispatch.py; notes below this line are kept on a rerun -->"
DUTY_GOAL, GAP_GOAL = 0.97, 1.0


# ---- what-ifs: proposed fixes, patched into the child process only ------------------------------------------
# (The first three found here, max_calls=0 for the experiment task, the blob cache and the one-pass pick_parent,
# are in the farm's code since 40beb9f; docs/bench/dispatch.md keeps the numbers from before.)


def _fast_commit() -> None:
    import re

    from cluster.records import repo as r

    original, entries, full_sha = r.ResearchRepo.commit_experiment, {}, re.compile(r"^[0-9a-f]{40}$")

    def commit_experiment(self, experiment_id, parent_commit, train_py, description, trailers=None):
        """4 git processes instead of 7: no rev-parse of a full sha, the parent's tree listing cached (commits never
        change), and no look-up of a branch that a new id cannot have (update-ref's compare-and-swap against
        zero checks that; if it fails, the original call does the idempotent re-commit)."""
        if not full_sha.match(parent_commit):
            return original(self, experiment_id, parent_commit, train_py, description, trailers)
        r._check_id(experiment_id)
        with self._lock:
            key = (str(self.path), parent_commit)
            if key not in entries:
                entries[key] = self._entries(parent_commit)
            tree = self._mktree(entries[key], {r.TRAIN_PY: train_py})
            message = r._format_message(description, {"Farm-Experiment": experiment_id, **(trailers or {})})
            sha = self._commit_tree(tree, [parent_commit], message)
            try:
                self._update_ref(f"refs/heads/{r.EXP_PREFIX}{experiment_id}", sha, r._ZERO,
                                 f"experiment {experiment_id}")  # fmt: skip
            except r.RepoError:  # the branch exists (a resumed run): the original's checks decide
                return original(self, experiment_id, parent_commit, train_py, description, trailers)
            return sha

    r.ResearchRepo.commit_experiment = commit_experiment


WHAT_IFS = {
    "fast-commit": (_fast_commit, "ResearchRepo.commit_experiment with 4 git processes instead of 7 "
                    "(cluster/records/repo.py: rev-parse, ls-tree and the branch look-up skipped where they cannot "
                    "matter)"),
}  # fmt: skip


def parse_variant(text: str) -> list[str]:
    names = [w.strip() for w in text.split(",") if w.strip() and w.strip() != "as-is"]
    if names == ["all"]:
        return list(WHAT_IFS)
    unknown = [w for w in names if w not in WHAT_IFS]
    if unknown:
        raise SystemExit(f"unknown what-if {unknown}: choose from as-is, all, {', '.join(WHAT_IFS)}")
    return names


# ---- one configuration, in its own process ---------------------------------------------------------------


def run_one(n: int, seconds: float, per_gpu: int, agents: int, root: Path, cap: float, what_ifs: list[str],
            profile: Path | None) -> dict:  # fmt: skip
    """Run the farm once with N logical GPUs; returns the measurements (see the module docstring)."""
    import ray
    import yaml

    from cluster.config import load_config
    from cluster.run_cli import _create_run, _init_ray

    os.environ["FARM_STANDIN_SECONDS"] = f"{seconds:g}"  # the local Ray's workers inherit the driver's environment
    run_dir = root / "run"
    data = {
        "gpus": n, "profile": "cpu-smoke", "sandbox": "process", "metrics_port": None,
        "agents": {"count": agents, "kind": "mutate"}, "queue_ahead": 2, "max_experiments": per_gpu * n,
        "hours": cap / 3600, "tournament": {"baseline_replicates": 3, "min_noise_df": 2},
        "cache_dir": str(root / "cache"), "run_dir": str(run_dir),
    }  # fmt: skip
    (root / "farm.yaml").write_text(yaml.safe_dump(data))
    config = load_config({}, root / "farm.yaml", env={})
    _create_run(run_dir, config, None)  # the seed train.py and program.md in a new research repo
    load = os.getloadavg()[0]
    _init_ray(config)
    try:
        for name in what_ifs:
            WHAT_IFS[name][0]()
        from cluster.execution.executor import RayExecutor
        from cluster.loop.driver import Farm

        farm = Farm(config, run_dir, RayExecutor(SANDBOX))
        profiler = None
        if profile:
            import cProfile

            profiler = cProfile.Profile()
        busy0, wall0, cpu0, kids0 = _machine_busy(), time.time(), time.process_time(), _children_cpu()
        with open(root / "farm.log", "w") as log, contextlib.redirect_stdout(log):
            if profiler:
                profiler.enable()
            farm.run()
            if profiler:
                profiler.disable()
        cpu1, wall1, busy1, kids1 = time.process_time(), time.time(), _machine_busy(), _children_cpu()
    finally:
        ray.shutdown()
    if profiler:
        profiler.dump_stats(profile)
    out = analyse(run_dir, n, seconds)
    out.update(
        variant=",".join(what_ifs) or "as-is", agents=agents, target=per_gpu * n, stop=farm.stopping,
        driver_cpu_s=cpu1 - cpu0, git_cpu_s=kids1 - kids0, driver_wall_s=wall1 - wall0, load_before=load,
        machine_cpu_util=(busy1 - busy0) / ((wall1 - wall0) * (os.cpu_count() or 1)),
        promotions=farm.state.promotions, rejected=getattr(farm.state, "rejected", 0), profiled=bool(profile),
    )  # fmt: skip
    out["driver_cpu_ms_per_exp"] = 1000 * out["driver_cpu_s"] / max(1, out["experiments"])
    return out


def _children_cpu() -> float:
    """CPU seconds of the driver's finished child processes: its git commands (Ray's are reaped only at shutdown)."""
    t = os.times()
    return t.children_user + t.children_system


def _machine_busy() -> float:
    """CPU seconds all processes of the machine have used (Linux /proc/stat; NaN elsewhere)."""
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    busy = sum(ticks[:8]) - ticks[3] - ticks[4]  # user..steal, less idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def analyse(run_dir: Path, n: int, seconds: float) -> dict:
    """Duty, gaps, latencies and throughput from the ledger and the stand-in's sleep records."""
    from cluster.records.ledger import Ledger

    rows = Ledger(run_dir / "ledger").read()
    queued = {r.experiment_id: r.ts for r in rows if r.event == "queued"}
    submitted: dict[str, float] = {}
    finished: dict[str, float] = {}
    for r in rows:  # a retried experiment has several attempts: its last counts
        if r.event == "started":
            submitted[r.experiment_id] = r.ts
        elif r.event == "finished":
            finished[r.experiment_id] = r.ts
    sleeps = []
    for eid in finished:
        path = run_dir / "experiments" / eid / "out" / "standin.json"
        if path.exists():
            rec = json.loads(path.read_text())
            sleeps.append((rec["started"], rec["finished"], (rec["gpu_ids"] or ["?"])[0], eid))
    if not sleeps:
        raise SystemExit(f"no experiment finished in {run_dir}")
    sleeps.sort()
    first, last_end = sleeps[0][0], max(s[1] for s in sleeps)
    span = last_end - first
    busy = sum(e - s for s, e, _, _ in sleeps)

    lo, hi = (sleeps[n - 1][0], sleeps[-1][0]) if len(sleeps) > n else (first, last_end)
    steady_busy = sum(max(0.0, min(e, hi) - max(s, lo)) for s, e, _, _ in sleeps)
    steady = steady_busy / (n * (hi - lo)) if hi > lo else float("nan")

    edges = sorted([(s, 1) for s, _, _, _ in sleeps] + [(e, -1) for _, e, _, _ in sleeps])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)

    waiting_at = sorted((queued[e], submitted.get(e, float("inf"))) for e in queued)
    by_slot: dict[str, list] = {}
    for s in sleeps:
        by_slot.setdefault(s[2], []).append(s)
    gaps, starved = [], []
    for seq in by_slot.values():
        for (_, end, _, _), (start, _, _, _) in zip(seq, seq[1:], strict=False):
            gaps.append(start - end)
            if not any(q <= end < sub for q, sub in waiting_at):  # nothing queued when the slot freed
                starved.append(start - end)
    result_lat = [finished[eid] - e for _, e, _, eid in sleeps]
    launch_lat = [s - submitted[eid] for s, _, _, eid in sleeps]
    return {
        "gpus": n, "seconds": seconds, "experiments": len(sleeps), "slots_used": len(by_slot), "peak_busy": peak,
        "span_s": span, "busy_s": busy, "duty": busy / (n * span), "steady_duty": steady,
        "ramp_s": sleeps[min(n, len(sleeps)) - 1][0] - first, "drain_s": last_end - sleeps[-1][0],
        "gap_p50": _pct(gaps, 50), "gap_p95": _pct(gaps, 95), "gap_max": max(gaps, default=float("nan")),
        "gaps": len(gaps), "gaps_starved": len(starved), "starved_p95": _pct(starved, 95),
        "result_p50": _pct(result_lat, 50), "result_p95": _pct(result_lat, 95),
        "launch_p50": _pct(launch_lat, 50), "launch_p95": _pct(launch_lat, 95),
        "exp_per_hour": len(sleeps) / span * 3600, "ideal_per_hour": n * 3600 / seconds,
        "sleep_mean_s": statistics.fmean(e - s for s, e, _, _ in sleeps),
    }  # fmt: skip


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    k = (len(v) - 1) * q / 100
    i = int(k)
    return v[i] + (v[min(i + 1, len(v) - 1)] - v[i]) * (k - i)


# ---- the whole bench ---------------------------------------------------------------------------------------


def spawn(n: int, seconds: float, what_ifs: list[str], args, work: Path, profile: Path | None = None) -> dict:
    label = ",".join(what_ifs) or "as-is"
    root = work / f"n{n}-s{seconds:g}-{label.replace(',', '+')}{'-profile' if profile else ''}"
    if (root / "result.json").exists() and (profile is None or profile.exists()):  # rerun with the same --work
        print(f"N={n:<3} {seconds:g} s, {label}{' (cProfile)' if profile else ''}: kept from {root}", flush=True)
        return json.loads((root / "result.json").read_text())
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    agents = args.agents or min(n, 16)
    cap = max(args.cap, 1.5 * args.per_gpu * seconds)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", str(n), "--seconds", str(seconds),
           "--per-gpu", str(args.per_gpu), "--agents", str(agents), "--cap", str(cap), "--root", str(root),
           "--what-if", label]  # fmt: skip
    if profile:
        cmd += ["--profile-to", str(profile)]
    print(f"N={n:<3} {seconds:g} s x {args.per_gpu * n}, {agents} agents, {label}{' (cProfile)' if profile else ''}"
          f" ...", flush=True)  # fmt: skip
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=cap + 300)
    if proc.returncode != 0:
        raise SystemExit(f"N={n} failed (rc {proc.returncode}); see {root}/farm.log\n{proc.stderr[-3000:]}")
    r = json.loads((root / "result.json").read_text())
    r["process_wall_s"] = time.monotonic() - started
    (root / "result.json").write_text(json.dumps(r, indent=2))
    print(f"      {r['experiments']}/{r['target']} exp., duty {r['duty']:.1%} (steady {r['steady_duty']:.1%}), "
          f"gap p50 {r['gap_p50']:.3f} s p95 {r['gap_p95']:.3f} s, driver CPU {r['driver_cpu_s']:.1f} s "
          f"({r['driver_cpu_ms_per_exp']:.0f} ms/exp.), {r['exp_per_hour']:.0f}/h of {r['ideal_per_hour']:.0f}/h "
          f"[{r['process_wall_s']:.0f} s, load {r['load_before']:.1f}]", flush=True)  # fmt: skip
    return r


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpus", default="8,16,64", help="comma-separated N (default 8,16,64)")
    p.add_argument("--seconds", type=float, default=2.0, help="stand-in experiment length (default 2)")
    p.add_argument("--long", type=float, default=10.0, help="also run the largest N at this length (0: skip)")
    p.add_argument("--per-gpu", type=int, default=10, help="experiments per GPU (max_experiments = this x N)")
    p.add_argument("--agents", type=int, default=0, help="mutate agents (default min(N, 16))")
    p.add_argument("--cap", type=float, default=120, help="stop a configuration after max(this, 1.5 x per-gpu x "
                   "seconds) seconds (default 120)")  # fmt: skip
    p.add_argument("--what-if", default="as-is", help=f"fixes to patch in: as-is, all, or some of "
                   f"{', '.join(WHAT_IFS)} (comma-separated)")  # fmt: skip
    p.add_argument("--variants", help="several --what-if sets, ';'-separated, each run for every N")
    p.add_argument("--profile", metavar="VARIANTS", help="';'-separated what-if sets (e.g. 'as-is;all') whose "
                   "largest N runs once more under cProfile")  # fmt: skip
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "bench", help="where dispatch.md/.png/.json go")
    p.add_argument("--work", type=Path, help="keep the run dirs here (default: a temp dir, removed); a rerun with "
                   "the same --work keeps the configurations that finished")  # fmt: skip
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    p.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--profile-to", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.one:  # the child: one configuration
        result = run_one(args.one, args.seconds, args.per_gpu, args.agents, args.root, args.cap,
                         parse_variant(args.what_if), args.profile_to)  # fmt: skip
        (args.root / "result.json").write_text(json.dumps(result, indent=2))
        return 0

    ns = sorted(int(x) for x in args.gpus.split(","))
    variants = [parse_variant(v) for v in (args.variants.split(";") if args.variants else [args.what_if])]
    code_version = _code_version()
    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-dispatch-")))
        work.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        results, profiles = [], {}
        for what_ifs in variants:
            results += [spawn(n, args.seconds, what_ifs, args, work) for n in ns]
            if args.long:
                results.append(spawn(ns[-1], args.long, what_ifs, args, work))
            label = ",".join(what_ifs) or "as-is"
            if args.profile and what_ifs in [parse_variant(v) for v in args.profile.split(";")]:
                prof_path = work / f"driver-n{ns[-1]}-{label.replace(',', '+')}.prof"
                spawn(ns[-1], args.seconds, what_ifs, args, work, profile=prof_path)
                profiles[label] = hot_spots(prof_path)
                print(profiles[label][:3000])
        total = max(time.monotonic() - started, sum(r.get("process_wall_s", 0.0) for r in results))
        machine = (f"{os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}, "
                   f"Ray {_ray_version()}; farm code at {code_version}")  # fmt: skip
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "dispatch.json").write_text(json.dumps({"machine": machine, "results": results}, indent=2))
        plot(results, args.seconds, args.out / "dispatch.png")
        write_doc(results, args, machine, total, profiles, args.out / "dispatch.md")
    print(f"wrote {args.out / 'dispatch.md'}, dispatch.png, dispatch.json ({total:.0f} s)")
    return 0


def _code_version() -> str:
    """The commit the farm's code is at, and whether cluster/ agent/ trainer/ differ from it."""
    git = ["git", "-C", str(ROOT)]
    try:
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "cluster", "agent", "trainer"], capture_output=True,
                               text=True).stdout.strip()  # fmt: skip
    except OSError:
        return "unknown"
    return f"{head or 'unknown'}{' + uncommitted changes' if dirty else ''}"


def _ray_version() -> str:
    import ray

    return ray.__version__


def hot_spots(path: Path, limit: int = 20) -> str:
    """The driver's profile: the farm's own functions by cumulative time, then everything by own time."""
    import io
    import pstats

    buf = io.StringIO()
    stats = pstats.Stats(str(path), stream=buf)
    stats.sort_stats("cumulative").print_stats(r"cluster|agent", limit)
    stats.sort_stats("tottime").print_stats(limit)
    return "\n".join(line.replace(str(ROOT) + "/", "") for line in buf.getvalue().splitlines() if line.strip())


def plot(results: list[dict], seconds: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 5.6))
    xs = sorted({r["gpus"] for r in results})
    for i, name in enumerate(dict.fromkeys(r["variant"] for r in results)):
        base = [r for r in results if r["variant"] == name and r["seconds"] == seconds]
        variant = name
        color = f"C{i}"
        gx = [r["gpus"] for r in base]
        a.plot(gx, [100 * r["duty"] for r in base], "o-", color=color, label=f"{variant}: duty")
        a.plot(gx, [100 * r["steady_duty"] for r in base], "s--", color=color, label=f"{variant}: steady duty")
        for r in results:
            if r["variant"] == name and r["seconds"] != seconds:
                a.plot([r["gpus"]], [100 * r["duty"]], "^", color=color, ms=9,
                       label=f"{variant}: duty, {r['seconds']:g} s exp.")  # fmt: skip
                b.plot([r["gpus"]], [max(r["gap_p95"], 1e-3)], "^", color=color, ms=9,
                       label=f"{variant}: p95, {r['seconds']:g} s exp.")  # fmt: skip
        b.plot(gx, [max(r["gap_p50"], 1e-3) for r in base], "o-", color=color, label=f"{variant}: gap p50")
        b.plot(gx, [max(r["gap_p95"], 1e-3) for r in base], "s--", color=color, label=f"{variant}: gap p95")
    a.axhline(100 * DUTY_GOAL, color="red", lw=0.8, ls=":", label="goal 97 %")
    a.set(xscale="log", ylim=(0, 105), xlabel="logical GPUs (N)", ylabel="GPU duty (%)",
          title=f"GPU duty ({seconds:g} s experiments unless marked)")  # fmt: skip
    b.axhline(GAP_GOAL, color="red", lw=0.8, ls=":", label="goal: p95 < 1 s")
    b.set(xscale="log", yscale="log", xlabel="logical GPUs (N)", ylabel="seconds",
          title="dispatch gap (slot freed -> next start)")  # fmt: skip
    for ax in (a, b):
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.minorticks_off()
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_doc(results: list[dict], args, machine: str, total: float, profiles: dict, path: Path) -> None:
    kept = path.read_text().split(MARKER, 1)[1] if path.exists() and MARKER in path.read_text() else "\n"
    flags = [f"--gpus {args.gpus}", f"--seconds {args.seconds:g}", f"--long {args.long:g}",
             f"--per-gpu {args.per_gpu}", f"--cap {args.cap:g}"]  # fmt: skip
    flags += [f'--variants "{args.variants}"'] if args.variants else [f"--what-if {args.what_if}"]
    flags += [f'--profile "{args.profile}"'] if args.profile else []
    lines = [
        "# Dispatch overhead: GPU duty and dispatch gap with a stand-in trainer",
        "",
        f"`.venv/bin/python bench/dispatch.py {' '.join(flags)}` ({total / 60:.1f} min in all; `make bench-dispatch` "
        "runs the farm as it is). The real farm (driver loop, local Ray with N logical GPUs, mutate agents as Ray "
        "actors, git research repo, Parquet ledger, tournament) runs `bench.standin:StandinSandbox`, whose "
        "experiments sleep a fixed time. Definitions: the docstring of bench/dispatch.py. In short: *duty* = sleep "
        "seconds / (N x first start -> last end); *steady* = the same inside [N-th start, last start] (no ramp-up, "
        "no drain); *gap* = per Ray GPU slot, an experiment's end -> the next start on that slot; *starved* = gaps "
        "where nothing was queued when the slot freed; *result* = sleep end -> driver records it; *launch* = driver "
        "submits -> sleep starts; *peak* = most experiments running at once; *driver CPU* = `time.process_time()` "
        "of the driver around `Farm.run()`; *git CPU* = its child processes (git); *machine CPU* = all processes' "
        "share of the cores (Ray, agents, other users included), with the 1-min load average at the start.",
        "",
        f"Machine: {machine}. Agents: min(N, 16) mutate agents; queue_ahead 2; baseline 3 replicates.",
        "",
    ]
    if any(r["variant"] != "as-is" for r in results):
        lines += ["What-ifs (patched into the bench's own driver process, not in the farm's code):", ""]
        lines += [f"- `{name}`: {desc}" for name, (_, desc) in WHAT_IFS.items()] + [""]
    lines += [
        "| variant | N | exp. s | experiments | duty | steady duty | gap p50 | gap p95 | gap max | starved gaps "
        "| result p50 / p95 | launch p50 / p95 | peak busy | driver CPU | per exp. | git CPU | machine CPU (load) "
        "| exp/h (ideal) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        capped = "" if r["experiments"] >= r["target"] else " (cap)"
        lines.append(
            f"| {r['variant']} | {r['gpus']} | {r['seconds']:g} | {r['experiments']}/{r['target']}{capped} "
            f"| {r['duty']:.1%} | {r['steady_duty']:.1%} | {r['gap_p50']:.3f} s | {r['gap_p95']:.3f} s "
            f"| {r['gap_max']:.1f} s | {r['gaps_starved']}/{r['gaps']} "
            f"| {r['result_p50']:.2f} / {r['result_p95']:.2f} s "
            f"| {r['launch_p50']:.2f} / {r['launch_p95']:.2f} s | {r['peak_busy']} | {r['driver_cpu_s']:.0f} s "
            f"| {r['driver_cpu_ms_per_exp']:.0f} ms | {r['git_cpu_s']:.1f} s "
            f"| {r['machine_cpu_util']:.0%} ({r['load_before']:.1f}) "
            f"| {r['exp_per_hour']:.0f} ({r['ideal_per_hour']:.0f}) |"
        )  # fmt: skip
    lines.append("")
    for variant in dict.fromkeys(r["variant"] for r in results):
        lines += [verdict([r for r in results if r["variant"] == variant], args.seconds, variant), ""]
    lines += ["![duty and gap vs N](dispatch.png)", ""]
    for label, text in profiles.items():
        lines += [f"Driver profile, {label} (cProfile, wall time, a separate run of the largest N):", "", "```",
                  *text.splitlines()[:70], "```", ""]  # fmt: skip
    path.write_text("\n".join(lines) + "\n" + MARKER + kept)


def verdict(results: list[dict], seconds: float, variant: str) -> str:
    base = [r for r in results if r["seconds"] == seconds]
    duty_ok = all(r["duty"] >= DUTY_GOAL for r in base)
    gap_ok = all(r["gap_p95"] < GAP_GOAL for r in base)
    per_exp = [r["driver_cpu_ms_per_exp"] for r in base]
    linear = duty_ok and gap_ok and all(r["experiments"] >= r["target"] for r in base)
    said = lambda ok: "met" if ok else "**missed**"
    duties = ", ".join(f"N={r['gpus']}: {r['duty']:.1%}" for r in base)
    gaps = ", ".join(f"N={r['gpus']}: {r['gap_p95']:.2f} s" for r in base)
    rates = ", ".join(f"{r['exp_per_hour'] / r['ideal_per_hour']:.0%}" for r in base)
    cpu = ", ".join(f"{x:.0f}" for x in per_exp)
    return (
        f"**{variant}**, {seconds:g} s experiments: duty >= 97 % {said(duty_ok)} ({duties}); p95 gap < 1 s "
        f"{said(gap_ok)} ({gaps}); linear to {base[-1]['gpus']} GPUs {said(linear)} (throughput {rates} of ideal; "
        f"driver CPU per experiment {cpu} ms)."
    )


if __name__ == "__main__":
    sys.exit(main())
