"""`farm run` and the commands that read a run directory (status, leaderboard, show, report)."""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
from pathlib import Path

from cluster.config import ConfigError, FarmConfig, absolute, add_config_arguments, load_config, overrides_from_args
from cluster.observers.report import finished_rows, leaderboard, progress_plot
from trainer.profiles import Profile, get_profile

CONFIG_FILE = "farm-config.json"
UPSTREAM_CONSTANTS = {"MAX_SEQ_LEN": "max_seq_len", "TIME_BUDGET": "time_budget", "EVAL_TOKENS": "eval_tokens",
                      "VOCAB_SIZE": "vocab_size"}  # fmt: skip


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the farm (a new run, or --resume RUN_DIR)")
    add_config_arguments(p)
    p.add_argument("--config", type=Path, help="farm.yaml (default ./farm.yaml if present)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a run: finished work kept, rest re-queued")
    p.add_argument("--from", dest="from_path", type=Path, metavar="PATH",
                   help="start from an autoresearch checkout's train.py and program.md")
    p.set_defaults(func=cmd_run)
    for name, func, helptext in (("status", cmd_status, "a run's state"),
                                 ("leaderboard", cmd_leaderboard, "best experiments of a run"),
                                 ("report", cmd_report, "write the progress plot")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("run_dir", type=Path)
        p.add_argument("--output", choices=["text", "json"], default="text")
        p.set_defaults(func=func)
    p = sub.add_parser("show", help="one experiment: description, diff, result, log tail")
    p.add_argument("run_dir", type=Path)
    p.add_argument("experiment_id")
    p.add_argument("--output", choices=["text", "json"], default="text")
    p.set_defaults(func=cmd_show)


def cmd_run(args: argparse.Namespace) -> int:
    import ray

    from cluster.execution.executor import RayExecutor
    from cluster.execution.spec import owner_of
    from cluster.loop.driver import Farm
    from cluster.sandbox import SandboxError, make_sandbox, resolve_sandbox
    from trainer.data import prepare_profile

    try:  # every path is made absolute here, where it enters: nothing below resolves one against its own cwd
        overrides = overrides_from_args(args)
        if args.resume:
            run_dir = absolute(args.resume)
            config = _resumed_config(run_dir, overrides)
        else:
            config = load_config(overrides, absolute(args.config) if args.config else None)
            run_dir = config.run_dir or absolute(Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
            config = config.model_copy(update={"run_dir": run_dir})
            _create_run(run_dir, config, absolute(args.from_path) if args.from_path else None)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"farm run: {exc}", file=sys.stderr)
        return 2
    profile = get_profile(config.profile)
    print(f"farm run: run dir {run_dir} (resume with `farm run --resume {run_dir}`)", flush=True)
    prepare_profile(profile, config.cache_dir)
    try:
        sandbox = resolve_sandbox(config.sandbox, image=config.image, kubernetes=config.kubernetes)
    except SandboxError as exc:
        print(f"farm run: the {config.sandbox} sandbox cannot run experiments: {exc}", file=sys.stderr)
        return 2
    if refusal := unisolated_refusal(config, sandbox, os.geteuid()):
        print(f"farm run: {refusal}", file=sys.stderr)
        return 2
    if refusal := missing_kernel_refusal(run_dir, profile, sandbox, config.image):
        print(f"farm run: {refusal}", file=sys.stderr)
        return 2
    owner = {"owner": owner_of(run_dir)} if sandbox in ("process", "docker") else {}
    removed = make_sandbox(sandbox, **owner).cleanup_leftovers()  # what this run left running when it crashed
    if removed:
        print(f"farm run: removed {removed} experiment(s) left running by an earlier farm", flush=True)
    _init_ray(config)
    try:
        farm = Farm(config, run_dir, RayExecutor(sandbox))
        server = _serve_metrics(farm, config)
        ui = _serve_ui(run_dir, config)
        try:
            code = farm.run()
        finally:
            for handle in (server, ui):
                if handle:
                    handle.close()
    finally:
        ray.shutdown()
    plot = progress_plot(run_dir)
    _print_leaderboard(run_dir, limit=10)
    print(f"results: {run_dir / 'results.tsv'}   plot: {plot}   ledger: {run_dir / 'ledger'}")
    print(closing_summary(run_dir, farm.failure or farm.stopping, failed=bool(farm.failure)), flush=True)
    return code


def unisolated_refusal(config: FarmConfig, sandbox: str, euid: int) -> str | None:
    """Why this farm must not start (LLM agents' code in a process sandbox without root, not opted into), or None.

    Without root the process sandbox isolates nothing: the candidate runs as the user, with the user's files,
    network and the power to write its own verdict. The offline proposers' edits are the farm's own; an LLM's
    are written to win by any means, so that takes an explicit yes."""
    if sandbox != "process" or euid == 0 or config.allow_unisolated or not (llms := config.llm_agents()):
        return None
    return (f"refusing to run {'/'.join(llms)} agents' train.py files in the process sandbox without root: the "
            "candidate would run as your own user, with your files, your network and the power to forge its "
            "verdict. Start the Docker Engine (README 'Docker sandbox'), or run as root, or pass "
            "--allow-unisolated (allow_unisolated: true in farm.yaml) if you accept that.")


def missing_kernel_refusal(run_dir: Path, profile: Profile, sandbox: str, image: str) -> str | None:
    """Why main's train.py cannot run in this sandbox (a hub kernel it needs that the image lacks), or None.

    Upstream's train.py loads FA3 with get_kernel and no fallback; without the kernel in the image every experiment
    would fail, so the farm says so once, with the fix (trainer/kernels.py). Kubernetes: the image is not local.
    """
    from cluster.records.repo import ResearchRepo
    from trainer.kernels import KERNELS_LABEL, cached_kernels, kernel_refusal

    repo = ResearchRepo.open(run_dir / "repo")
    available: set[str] | None = None
    if sandbox == "process":
        available = cached_kernels()
    elif sandbox == "docker":
        import subprocess

        out = subprocess.run(["docker", "image", "inspect", "-f", f'{{{{index .Config.Labels "{KERNELS_LABEL}"}}}}',
                              image], capture_output=True, text=True, timeout=60)
        available = set(out.stdout.split()) if out.returncode == 0 else None
    return kernel_refusal(repo.train_py_at(repo.main_head()), profile.on_gpu, available)


def closing_summary(run_dir: Path, why: str, failed: bool) -> str:
    """What the run did, said once at its end: experiments by status, main, the best, promotions, and why it
    stopped. Built from the run directory (the same numbers `farm status` shows)."""
    status = _read_status(run_dir)
    counts = status.get("by_status", {})
    done = sum(counts.values())
    main, best = status.get("main_val_bpb"), status.get("best_val_bpb")
    lines = [f"farm: {'FAILED' if failed else 'finished'}: {why or 'no more work'}",
             f"  experiments  {done}" + (f" ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})"
                                         if counts else ""),
             "  main         " + (f"{main:.6f} (mean of its replicates, {status.get('main_commit', '')[:8]})"
                                   if main is not None else f"not measured: {status.get('main_unmeasured', '?')}"),
             "  best         " + (f"{best:.6f} ({status.get('best_experiment') or '?'})" if best is not None
                                   else "-"),
             f"  promotions   {status.get('promotions', 0)}"]
    if failed:
        lines.append(f"  exit code 1: the farm could not do its job; the run dir keeps everything: {run_dir}")
    return "\n".join(lines)


def _read_status(run_dir: Path) -> dict:
    path = run_dir / "status.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}


def require_run_dir(command: str, run_dir: Path) -> Path | None:
    """The run directory made absolute, or None after saying that it is not one (and where runs are)."""
    path = absolute(run_dir)
    if (path / CONFIG_FILE).is_file() or (path / "ledger").is_dir():
        return path
    what = "does not exist" if not path.exists() else f"is not a farm run directory (no {CONFIG_FILE} or ledger/)"
    print(f"farm {command}: {run_dir} {what}; a run directory is what `farm run` printed at its start "
          "(runs/<date-time> under the directory it was started in, or its --run-dir)", file=sys.stderr)
    return None


def _serve_metrics(farm, config: FarmConfig):
    """The farm's /metrics endpoint, or None (off, or the port is taken: the farm runs on without it)."""
    from cluster.observers.metrics import serve

    try:
        server = serve(farm.metrics, config.metrics_port, config.metrics_address)
    except OSError as exc:
        print(f"farm run: warning: no metrics on {config.metrics_address}:{config.metrics_port}: {exc.strerror or exc}"
              " (pick another with --metrics-port)", file=sys.stderr, flush=True)
        return None
    if server:
        print(f"farm run: metrics at {server.url}", flush=True)
    return server


def _serve_ui(run_dir: Path, config: FarmConfig):
    """The run browser beside the farm (--ui-port), or None (off, or the port is taken: the farm runs on)."""
    if config.ui_port is None:
        return None
    from cluster.ui.server import serve_ui

    try:
        ui = serve_ui(run_dir, config.ui_address, config.ui_port, os.environ.get("FARM_UI_GRAFANA_URL"))
    except OSError as exc:
        print(f"farm run: warning: no run browser on {config.ui_address}:{config.ui_port}: {exc.strerror or exc} "
              "(pick another with --ui-port)", file=sys.stderr, flush=True)
        return None
    print(f"farm run: run browser at {ui.url}", flush=True)
    return ui


def _init_ray(config: FarmConfig) -> None:
    import ray

    address = config.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_gpus=config.gpus_total(), include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(sys.path)}})


def _create_run(run_dir: Path, config: FarmConfig, from_path: Path | None) -> None:
    from cluster.records.repo import ResearchRepo
    from trainer.seed import seed_source

    if (run_dir / CONFIG_FILE).exists():
        raise ValueError(f"{run_dir} already holds a run: continue it with --resume {run_dir}, or pick another")
    profile = get_profile(config.profile)
    program = (Path(__file__).resolve().parent.parent / "program.md").read_text()
    train_py = seed_source(profile)
    if from_path:
        train_py, program = _import_checkout(from_path, profile, program)
    run_dir.mkdir(parents=True, exist_ok=True)
    ResearchRepo.create(run_dir / "repo", train_py, program)
    (run_dir / CONFIG_FILE).write_text(config.model_dump_json(indent=2))


def _import_checkout(path: Path, profile: Profile, default_program: str) -> tuple[str, str]:
    """train.py and program.md of an autoresearch checkout; its prepare.py constants checked against the profile."""
    if not (path / "train.py").is_file():
        raise FileNotFoundError(f"--from {path}: no train.py there (expected an autoresearch checkout)")
    program = (path / "program.md").read_text() if (path / "program.md").is_file() else default_program
    if (path / "prepare.py").is_file():
        found = _module_constants((path / "prepare.py").read_text())
        for name, field in UPSTREAM_CONSTANTS.items():
            ours = getattr(profile, field)
            if name in found and float(found[name]) != float(ours):
                print(f"farm run: note: {path}/prepare.py has {name} = {found[name]}, profile {profile.name} uses "
                      f"{ours:g}; the profile's harness is what runs", file=sys.stderr)
    return (path / "train.py").read_text(), program


def _module_constants(source: str) -> dict[str, float]:
    """Module-level NAME = <arithmetic on literals> assignments (e.g. 40 * 524288), evaluated safely."""
    out = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = _arithmetic(node.value)
            except ValueError:
                continue
    return out


_OPS = {ast.Add: float.__add__, ast.Sub: float.__sub__, ast.Mult: float.__mul__, ast.Div: float.__truediv__,
        ast.FloorDiv: float.__floordiv__, ast.Pow: float.__pow__}  # fmt: skip


def _arithmetic(node: ast.expr) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_arithmetic(node.left), _arithmetic(node.right))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_arithmetic(node.operand)
    raise ValueError("not a constant expression")


def _resumed_config(run_dir: Path, overrides: dict) -> FarmConfig:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"--resume {run_dir}: no {CONFIG_FILE} there, so it is not a farm run directory")
    saved = FarmConfig.model_validate_json(path.read_text()).model_dump(mode="json")
    saved["run_dir"] = str(run_dir)  # where it is now (it may have been moved, or saved relative by an old farm)
    for key, value in overrides.items():  # flags given now win (e.g. more experiments, more GPUs)
        *parents, last = key.split(".")
        node = saved
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return FarmConfig.model_validate(saved)


def cmd_status(args: argparse.Namespace) -> int:
    if (run_dir := require_run_dir("status", args.run_dir)) is None:
        return 2
    rows = finished_rows(run_dir)
    status = _read_status(run_dir)
    status["finished"] = len(rows)
    status["by_status"] = {s: sum(1 for r in rows if r.status == s) for s in sorted({r.status for r in rows})}
    status["llm"] = _llm_spend(run_dir, status.get("llm", {}).get("cost_cap_usd"))
    status["cost_usd"] = status["llm"]["cost_usd"]
    if args.output == "json":
        print(json.dumps(status, indent=2))
    else:
        llm = status.pop("llm")
        for key, value in status.items():
            print(f"{key:<22} {value}")
        cap = f" of cap ${llm['cost_cap_usd']:.4f}" if llm["cost_cap_usd"] is not None else ""
        print(f"{'llm spend':<22} ${llm['cost_usd']:.4f}{cap} | {_spend_line(llm)}")
        for name, spend in llm["agents"].items():
            print(f"  {name:<20} ${spend['cost_usd']:.4f} | {_spend_line(spend)}")
    return 0


def _llm_spend(run_dir: Path, cap: float | None) -> dict:
    """LLM tokens and USD per agent and in all, from the ledger (so a crashed run's spend is right too)."""
    from cluster.records.ledger import Ledger
    from cluster.records.state import FarmState, spend_summary

    return spend_summary(FarmState.rebuild(Ledger(run_dir / "ledger").read(), "", "").spend, cap)


def _spend_line(s: dict) -> str:
    return (f"{s['proposals']} proposal(s), {s['failed']} failed | tokens in {s['tokens_in']} out {s['tokens_out']} "
            f"cache read {s['cache_read_tokens']} write {s['cache_write_tokens']}")


def cmd_leaderboard(args: argparse.Namespace) -> int:
    if (run_dir := require_run_dir("leaderboard", args.run_dir)) is None:
        return 2
    if args.output == "json":
        print(json.dumps([r.model_dump(exclude_none=True) for r in leaderboard(run_dir)], indent=2))
        return 0
    _print_leaderboard(run_dir)
    return 0


def _print_leaderboard(run_dir: Path, limit: int = 20) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"leaderboard: {run_dir}")
    for col in ("experiment", "kind", "val_bpb", "verdict", "agent", "description"):
        table.add_column(col)
    for r in leaderboard(run_dir, limit):
        table.add_row(r.experiment_id, r.kind or "", f"{r.val_bpb:.6f}", r.verdict or "", r.agent or "",
                      (r.description or "")[:60])
    Console().print(table)


def cmd_show(args: argparse.Namespace) -> int:
    from cluster.records.ledger import Ledger
    from cluster.records.repo import ResearchRepo
    from cluster.sandbox.untrusted import log_tail

    if (run_dir := require_run_dir("show", args.run_dir)) is None:
        return 2
    row = Ledger(run_dir / "ledger").latest().get(args.experiment_id)
    if row is None:
        print(f"farm show: no experiment {args.experiment_id} in {run_dir}", file=sys.stderr)
        return 1
    diff = ResearchRepo.open(run_dir / "repo").diff(row.commit) if row.commit else ""
    log = run_dir / "experiments" / args.experiment_id / "out" / "run.log"
    tail = log_tail(log, 20)  # the candidate's file: never a link followed, never read whole
    if args.output == "json":
        print(json.dumps({"row": row.model_dump(exclude_none=True), "diff": diff, "log_tail": tail}, indent=2))
        return 0
    for key, value in row.model_dump(exclude_none=True).items():
        print(f"{key:<18} {value}")
    print("\n--- diff vs parent ---\n" + (diff or "(none)"))
    print("\n--- log tail ---\n" + (tail or "(no log)"))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    if (run_dir := require_run_dir("report", args.run_dir)) is None:
        return 2
    print(progress_plot(run_dir))
    return 0
