"""The ``farm`` command.

Exit codes: 0 success; 1 the experiment ran but did not succeed (status not
ok) or a check failed; 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

from trainer.profiles import PROFILES, cache_dir, get_profile


def cmd_prepare(args: argparse.Namespace) -> int:
    """Download/build data and tokenizer for a profile (idempotent)."""
    from trainer.data import PrepareError, prepare_profile

    profile = get_profile(args.profile)
    print(f"preparing profile {profile.name} in {cache_dir()}", flush=True)
    try:
        prepare_profile(profile, num_shards=args.num_shards, base_url=args.base_url)
    except PrepareError as exc:
        print(f"farm prepare: {exc}", file=sys.stderr)
        return 1
    print(f"ready: data {profile.data_dir()}, tokenizer {profile.tokenizer_dir()}")
    return 0


def cmd_try(args: argparse.Namespace) -> int:
    """Run one experiment on a train.py (default: the profile's seed) and print its result."""
    from trainer.runner import run
    from trainer.seed import seed_source

    profile = get_profile(args.profile)
    out = Path(args.out or Path("runs") / f"try-{profile.name}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    train_py = Path(args.train_py) if args.train_py else out / "train.py"
    if not args.train_py:
        train_py.write_text(seed_source(profile))
    sandboxed = args.sandbox != "none"
    if args.output != "json":
        where = f" in the {args.sandbox} sandbox" if sandboxed else ""
        print(
            f"running {train_py} under profile {profile.name} (budget {profile.time_budget:g} s){where}; "
            f"output in {out}",
            flush=True,
        )
    if sandboxed:
        result = _try_in_sandbox(args, train_py, out)
        if result is None:
            return 2
        log = out / "out" / "run.log"
    else:
        result = run(train_py, out, profile, seed=args.seed)
        log = out / "run.log"
    if args.output == "json":
        print(result.model_dump_json(indent=2))
    else:
        f = result.facts
        print(f"status:            {result.status.value}")
        if result.reason:
            print(f"reason:            {result.reason}")
        if result.val_bpb is not None:
            print(f"val_bpb:           {result.val_bpb:.6f}")
        print(f"training_seconds:  {f.training_seconds:.1f} (harness clock; wall {f.training_wall_seconds:.1f})")
        print(f"startup_seconds:   {f.startup_seconds or 0:.1f}")
        print(f"eval_seconds:      {f.eval_seconds or 0:.1f}")
        print(f"total_seconds:     {f.total_seconds:.1f}")
        print(f"train_tokens:      {f.train_tokens} in {f.train_batches} batches")
        print(f"log:               {log}")
    return 0 if result.status.value == "ok" else 1


def _try_in_sandbox(args: argparse.Namespace, train_py: Path, out: Path):
    """The experiment through a sandbox backend (the farm's path); None after printing why it cannot run."""
    import uuid

    from cluster.execution.spec import ExperimentSpec, GpuAssignment, owner_of
    from cluster.sandbox import SandboxError, make_sandbox

    try:
        owner = "try-" + owner_of(out)  # its own lane: a farm or another `farm try` running beside it is left alone
        options = {"owner": owner} if args.sandbox in ("process", "docker") else {}
        sandbox = make_sandbox(args.sandbox, **options)
        sandbox.cleanup_leftovers()  # what an interrupted earlier `farm try` into the same --out left behind
        spec = ExperimentSpec(
            experiment_id=f"try-{uuid.uuid4().hex[:10]}",
            train_py=train_py.read_text(),
            profile=args.profile,
            seed=args.seed,
            run_dir=out,
            cache_dir=cache_dir(),
            owner=owner,
        )
        gpu = GpuAssignment(index=args.gpu) if args.gpu is not None else GpuAssignment()
        return sandbox.run(spec, gpu)
    except SandboxError as exc:
        print(f"farm try: {exc}", file=sys.stderr)
        return None


def cmd_doctor(args: argparse.Namespace) -> int:
    """What this machine can do for the farm, and what to fix."""
    from trainer.data import data_ready

    problems = 0

    def line(ok: bool | None, what: str, detail: str) -> None:
        nonlocal problems
        mark = {True: "ok  ", False: "FAIL", None: "note"}[ok]
        problems += ok is False
        print(f"[{mark}] {what:<12} {detail}")

    line(sys.version_info >= (3, 11), "python", f"{platform.python_version()} ({sys.executable})")
    try:
        import torch

        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        line(
            True,
            "torch",
            f"{torch.__version__}; "
            + (f"{len(gpus)} GPU(s): {', '.join(gpus)}" if gpus else "no CUDA GPU: the cpu-tiny profile will be used"),
        )
    except Exception as exc:  # a broken install is exactly what doctor is for
        line(False, "torch", f"cannot import: {exc}")
    from trainer.cards import pick_profile, query_cards

    pick = pick_profile(query_cards())  # what `make farm` and a farm without --profile would run
    line(pick.profile is not None, "profile", f"would pick {pick.profile}: {pick.reason}" if pick.profile else
         f"none fits: {pick.reason}")
    for name in PROFILES:
        missing = data_ready(get_profile(name), cache_dir())
        line(
            None if missing else True,
            f"data:{name}",
            f"missing {', '.join(missing[:3])}: run `farm prepare --profile {name}`" if missing else "prepared",
        )
    try:
        import ray

        line(True, "ray", ray.__version__)
    except Exception as exc:
        line(False, "ray", f"cannot import: {exc}")
    from cluster.sandbox import SandboxError, make_sandbox

    try:
        make_sandbox("docker")
        line(True, "docker", "engine reachable, trainer image present: experiments run in containers")
    except (SandboxError, ImportError) as exc:
        root = "as root: namespaces, cgroups, read-only mounts" if os.geteuid() == 0 else "NOT root: rlimits only"
        line(None, "docker", f"{str(exc).splitlines()[0][:160]} -> the process sandbox will be used ({root})")
    if os.environ.get("KUBERNETES_SERVICE_HOST") or os.environ.get("FARM_KUBERNETES__API_SERVER"):
        from cluster.config import ConfigError, absolute, load_config

        try:  # the settings a farm would run with: farm.yaml's kubernetes: (the chart's: --config), FARM_KUBERNETES__*
            config = load_config({}, absolute(args.config) if args.config else None)
            make_sandbox("kubernetes", settings=config.kubernetes)
            line(True, "kubernetes", "API reachable, experiment pods allowed: --sandbox kubernetes works")
        except (ConfigError, SandboxError) as exc:
            line(False, "kubernetes", str(exc).splitlines()[0][:200])
    from agent.llm import ApiKeyMissing, read_api_key  # the agents' own rule: the variable, else the key file

    try:
        read_api_key()
        line(None, "anthropic", "an API key is set (ANTHROPIC_API_KEY or ANTHROPIC_API_KEY_FILE): agents are Claude")
    except ApiKeyMissing as exc:  # a key file named but unreadable: Claude agents would start and stop at once
        named = bool(os.environ.get("ANTHROPIC_API_KEY_FILE"))
        line(False if named else None, "anthropic", str(exc) if named else f"{exc}: agents use the offline mutator")
    return 1 if problems else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="farm", description="autoresearch at farm scale")
    sub = parser.add_subparsers(dest="command", required=True)
    profiles = ", ".join(PROFILES)

    p = sub.add_parser("prepare", help="download/build data and tokenizer for a profile")
    p.add_argument("--profile", default="cpu-tiny", help=f"one of: {profiles}")
    p.add_argument("--num-shards", type=int, default=10, help="training shards to download (h100 profile)")
    p.add_argument("--base-url", default=None, help="mirror of the climbmix shards (default: the profile's)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("try", help="run one experiment on a train.py and print its result")
    p.add_argument("train_py", nargs="?", help="default: the profile's seed train.py")
    p.add_argument("--profile", default="cpu-tiny", help=f"one of: {profiles}")
    p.add_argument("--seed", type=int, default=0, help="replicate seed (0 = the script's own)")
    p.add_argument("--out", help="directory for result.json and run.log (default runs/try-PROFILE)")
    p.add_argument("--output", choices=["text", "json"], default="text")
    p.add_argument(
        "--sandbox",
        choices=["none", "process", "docker", "kubernetes"],
        default="none",
        help="run it isolated like the farm does (none: the runner directly, in this process's environment)",
    )
    p.add_argument("--gpu", type=int, default=None, help="host GPU index to give the sandbox (default: none)")
    p.set_defaults(func=cmd_try)

    p = sub.add_parser("doctor", help="check GPUs, data, Ray, Docker, API key")
    p.add_argument("--config", type=Path, help="farm.yaml whose kubernetes: settings to check (default ./farm.yaml "
                   "if present; on the chart's Ray head: /farm/config/farm.yaml)")
    p.set_defaults(func=cmd_doctor)

    from cluster.run_cli import add_commands

    add_commands(sub)
    from cluster.ui.cli import add_commands as add_ui  # `farm ui`: the run browser

    add_ui(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as exc:  # bad profile names and similar: say what and how to fix
        print(f"farm {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
