"""What does a sandbox cost per experiment? docker vs the process backend vs the bare runner.

Runs the same tiny candidate (tests/candidates.py "good": a bigram, the
cpu-smoke profile's 3 s budget) N times in each backend, interleaved, and
reports per backend the p50 of:

- start -> first line: from the ``sandbox.run()`` call to the first line of
  train.py running (the candidate prints ``time.time()``; host and container
  share the clock);
- first batch: from the call to the harness's first training batch;
- teardown: from the runner writing its result (``finished_at``) to ``run()``
  returning (container kill/remove, reading the result);
- overhead: ``run()`` wall time minus the runner's own ``total_seconds``
  (candidate spawn -> result): everything the sandbox adds around the run,
  including the runner's own start-up (Python, imports), which every backend pays;
- wall: the whole ``run()``.

"Extra" is docker minus the bare runner (and minus the process backend): the
issue's goal is under 1.5 s per experiment. Not a test: numbers depend on the
machine and its load (reported with them).

    .venv/bin/python bench/sandbox_overhead.py [-n 5] [--out docs/bench]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cluster.execution.spec import ExperimentSpec, GpuAssignment  # noqa: E402
from tests import candidates  # noqa: E402
from trainer.result import ExperimentResult  # noqa: E402

PROFILE = "cpu-smoke"
FIRST_LINE = "import time as _bench_t; print('BENCH first-line', repr(_bench_t.time()), flush=True)\n"
METRICS = ("first_line", "first_batch", "teardown", "overhead", "wall")


class Bare:
    """No sandbox: ``python -m trainer.runner`` as a plain subprocess (the floor every backend pays)."""

    name = "bare"

    def run(self, spec: ExperimentSpec, gpu: GpuAssignment) -> ExperimentResult:
        from cluster.sandbox.base import runner_args, stage

        candidate, out = stage(spec)
        env = dict(os.environ, FARM_CACHE=str(spec.cache_dir))
        subprocess.run(
            [sys.executable, *runner_args(spec, str(candidate / "train.py"), str(out))],
            env=env,
            check=False,
            stdout=subprocess.DEVNULL,
        )
        return ExperimentResult.model_validate_json((out / "result.json").read_text())


class Pod:
    """The kubernetes sandbox's two-container pod, against the tests' fake API server whose kubelet runs the pod's
    containers in the Docker Engine (tests/fake_kube.py): the runner's and the candidate's containers, a Unix
    socket between them. Needs root (the data cache is copied and given to the farm's uid, as on the PVC)."""

    name = "pod"

    def __init__(self) -> None:
        from cluster.execution.spec import KubernetesSettings
        from cluster.sandbox.kubernetes import KubernetesSandbox
        from tests.fake_kube import FakeKube, farm_owned_copy
        from trainer.profiles import cache_dir

        if os.geteuid() != 0:
            raise RuntimeError("the pod's two users need root here")
        self.tmp = Path(tempfile.mkdtemp(prefix="farm-bench-pod-"))
        self.cache = farm_owned_copy(cache_dir(), self.tmp / "pvc")
        token = self.tmp / "token"
        token.write_text("good-token\n")
        self.fake = FakeKube(lambda pod: "docker", pvcs={"cache": str(self.cache)}).__enter__()
        settings = KubernetesSettings(api_server=self.fake.url, token_file=token, namespace="farm",
                                      instance="bench", cache_pvc="cache", poll_max_s=0.2)  # fmt: skip
        self.sandbox = KubernetesSandbox(settings)

    def run(self, spec: ExperimentSpec, gpu: GpuAssignment) -> ExperimentResult:
        return self.sandbox.run(spec.model_copy(update={"cache_dir": self.cache}), gpu)


def backends(names: list[str]) -> dict[str, object]:
    from cluster.sandbox import make_sandbox

    found: dict[str, object] = {}
    for name in names:
        if name == "bare":
            found[name] = Bare()
            continue
        try:
            found[name] = Pod() if name == "pod" else make_sandbox(name)
        except Exception as exc:  # not built yet, no engine, no root: say so and go on with the rest
            print(f"skipping {name}: {exc}", file=sys.stderr)
    return found


def one_run(sandbox, work: Path, cache: Path) -> dict[str, float]:
    spec = ExperimentSpec(
        experiment_id=f"bench-{uuid.uuid4().hex[:8]}",
        train_py=FIRST_LINE + candidates.source("good"),
        profile=PROFILE,
        run_dir=work / uuid.uuid4().hex[:8],
        cache_dir=cache,
    )
    called = time.time()
    result = sandbox.run(spec, GpuAssignment())
    returned = time.time()
    if result.status.value != "ok":
        raise RuntimeError(f"{sandbox.name}: {result.status.value} {result.reason}\n{result.log_tail}")
    log = (spec.run_dir / "out" / "run.log").read_text()
    first_line = next(float(line.split()[2]) for line in log.splitlines() if line.startswith("BENCH first-line"))
    f = result.facts
    return {
        "first_line": first_line - called,
        # the runner spawns the candidate at finished_at - total_seconds (its own clocks)
        "first_batch": result.finished_at - f.total_seconds + (f.startup_seconds or 0) - called,
        "teardown": returned - result.finished_at,
        "overhead": (returned - called) - f.total_seconds,
        "wall": returned - called,
        "val_bpb": result.val_bpb,
    }


def timed_docker_phases(sandbox) -> dict[str, list[float]]:
    """Wrap the docker backend's engine calls to time create, start and remove."""
    phases: dict[str, list[float]] = {"create": [], "start": [], "remove": []}
    create, remove = sandbox._create, sandbox._remove

    def _create(config):
        t0 = time.monotonic()
        container = create(config)
        phases["create"].append(time.monotonic() - t0)
        start = container.start

        def _start(*a, **k):
            t1 = time.monotonic()
            start(*a, **k)
            phases["start"].append(time.monotonic() - t1)

        container.start = _start
        return container

    def _remove(container, attempt):
        t0 = time.monotonic()
        remove(container, attempt)
        phases["remove"].append(time.monotonic() - t0)

    sandbox._create, sandbox._remove = _create, _remove
    return phases


def p50(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=5, help="measured runs per backend (after one warm-up)")
    parser.add_argument("--backends", default="bare,process,docker",
                        help="any of bare, process, docker, pod (the kubernetes pod's two containers in docker)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench")
    args = parser.parse_args()

    from trainer.data import prepare_profile
    from trainer.profiles import cache_dir, get_profile

    cache = cache_dir()
    prepare_profile(get_profile(PROFILE), cache, progress=lambda _m: None)
    found = backends(args.backends.split(","))
    if "docker" not in found:
        print("the docker backend is unavailable: nothing to compare", file=sys.stderr)
        return 1
    phases = timed_docker_phases(found["docker"])
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in found}
    cold: dict[str, dict[str, float]] = {}
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="farm-bench-") as tmp:
        work = Path(tmp)
        for i in range(args.runs + 1):  # run 0 warms caches (image layers, page cache) and is reported apart
            for name, sandbox in found.items():
                row = one_run(sandbox, work, cache)
                if i == 0:
                    cold[name] = row
                else:
                    samples[name].append(row)
                print(
                    f"{'warm-up' if i == 0 else f'run {i}':<8} {name:<8} "
                    + " ".join(f"{m}={row[m]:.2f}s" for m in METRICS)
                    + f" val_bpb={row['val_bpb']:.3f}",
                    flush=True,
                )
            load.append(os.getloadavg()[0])
    for key in phases:
        phases[key] = phases[key][1:]  # drop the warm-up

    med = {name: {m: p50([r[m] for r in rows]) for m in METRICS} for name, rows in samples.items()}
    base = "bare" if "bare" in med else "process"
    lines = [
        "# Sandbox overhead per experiment",
        "",
        f"`bench/sandbox_overhead.py -n {args.runs}`: the same tiny candidate (tests/candidates.py `good`, "
        f"profile `{PROFILE}`, 3 s training budget) through each backend, interleaved; p50 of {args.runs} "
        "runs after one warm-up run each. Seconds.",
        "",
        f"Machine: {platform.node()}, {os.cpu_count()} cores, {platform.platform()}; "
        f"load average during the runs {min(load):.1f}-{max(load):.1f} (other work shares these cores). "
        f"{_docker_facts(found['docker'])}",
        "",
        "| backend | start -> train.py first line | start -> first batch | teardown | overhead (wall - runner total) "
        "| run() wall |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in med.items():
        lines.append(f"| {name} | " + " | ".join(f"{m[k]:.2f}" for k in METRICS) + " |")
    lines += ["", "Extra cost of docker (p50 difference; ratio docker / other):", ""]
    lines += ["| vs | start -> first line | teardown | overhead | wall |", "|---|---|---|---|---|"]
    for other in [n for n in med if n != "docker"]:
        d, o = med["docker"], med[other]
        lines.append(
            f"| {other} | "
            + " | ".join(
                f"{d[k] - o[k]:+.2f} s ({d[k] / o[k]:.2f}x)" for k in ("first_line", "teardown", "overhead", "wall")
            )
            + " |"
        )
    extra = med["docker"]["overhead"] - med[base]["overhead"]
    verdict = "meets" if extra < 1.5 else "MISSES"
    lines += [
        "",
        f"**docker adds {extra:+.2f} s per experiment over the {base} runner (goal < 1.5 s: {verdict} it).**",
        "",
        "Docker engine calls (p50): "
        + ", ".join(f"{k} {p50(v):.3f} s" for k, v in phases.items())
        + ". First (cold) run of each backend, overhead: "
        + ", ".join(f"{n} {r['overhead']:.2f} s" for n, r in cold.items())
        + ".",
        "",
        "What the columns mean: *start -> first line* is from the `sandbox.run()` call to the first line of "
        "train.py executing (the candidate prints `time.time()`; the container shares the host's clock); it "
        "includes the runner's own start-up (Python, `import torch` in the runner, then in the candidate), "
        "which every backend pays. *Teardown* is from the runner's `finished_at` to `run()` returning. "
        "*Overhead* is `run()` wall minus the runner's `total_seconds` (candidate spawn to result).",
        "",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "sandbox-overhead.md"
    path.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {path}")
    return 0


def _docker_facts(sandbox) -> str:
    try:
        version = sandbox.client.version()
        image = sandbox.client.images.get(sandbox.image or ExperimentSpec.model_fields["image"].default)
        return (
            f"Docker Engine {version.get('Version')} (cgroup v{sandbox.client.info().get('CgroupVersion', '?')}), "
            f"image {image.tags[0] if image.tags else image.short_id} {image.attrs['Size'] / 1e6:.0f} MB."
        )
    except Exception as exc:
        return f"(docker facts unavailable: {exc})"


if __name__ == "__main__":
    sys.exit(main())
