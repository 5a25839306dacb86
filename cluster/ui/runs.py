"""Several runs of one project side by side: `farm ui RUN_DIR RUN_DIR...`, or `farm ui DIR` where DIR holds runs.

Each run keeps its own browser (every page of :func:`cluster.ui.app.create_app`), mounted at ``/r/<name>/``; the
page at ``/`` lists the runs with what tells them apart (profile, policy, agents, GPUs from the run's
``farm-config.json``; main's value, promotions, spend, GPU duty, state from its ledger and ``status.json``) and
draws main's val_bpb of each over the hours since its start. One server, one set of static files (their URLs are
the server root's), the same guards on every part: GET only, loopback names only, the strict CSP.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from flask import Flask, Response, render_template, request
from pydantic import BaseModel
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from cluster.sandbox.untrusted import UnsafeFile, read_beneath
from cluster.ui.app import PACKAGE, create_app, error_detail, harden
from cluster.ui.assets import Assets
from cluster.ui.model import RunModel, run_status, to_json

CONFIG_FILE = "farm-config.json"  # what `farm run` writes at a run's start (cluster/run_cli.py)
CONFIG_BYTES = 256 * 1024


class RunSummary(BaseModel):
    """One run as the list of runs shows it."""

    name: str  # where it is mounted: /r/<name>/
    path: str
    state: str  # live, stopping, finished, quiet (run_status)
    reason: str = ""
    profile: str | None = None
    policy: str | None = None
    agents: str | None = None
    gpus: int | None = None
    experiments: int = 0
    main_val_bpb: float | None = None
    noise_sd: float | None = None
    best_val_bpb: float | None = None
    promotions: int = 0
    promoted: list[str] = []
    spend_usd: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    gpu_duty: float | None = None
    wall_hours: float = 0.0
    started: float | None = None
    main_hours: list[float] = []  # main's level over the hours since the run's first event (a step line)
    main_mean: list[float] = []


def is_run(path: Path) -> bool:
    """A farm run directory: `farm run` wrote its config there, or it has a ledger."""
    return (path / CONFIG_FILE).is_file() or (path / "ledger").is_dir()


def find_runs(paths: list[Path]) -> list[Path]:
    """The runs named: each path that is a run, and the runs one level below a path that is not (sorted)."""
    out: list[Path] = []
    for path in paths:
        if is_run(path):
            out.append(path)
        elif path.is_dir():
            out += sorted(p for p in path.iterdir() if p.is_dir() and not p.is_symlink() and is_run(p))
    return list(dict.fromkeys(out))


def mount_names(runs: list[Path]) -> dict[str, Path]:
    """A URL-safe name per run (its directory's name; a repeated one gets -2, -3...)."""
    names: dict[str, Path] = {}
    for run in runs:
        base = re.sub(r"[^A-Za-z0-9_.-]", "_", run.resolve().name)[:60].lstrip(".") or "run"
        name, k = base, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names[name] = run
    return names


def run_config(run_dir: Path) -> dict:
    """The run's farm-config.json (read like every file of a run: no link, bounded), or {}."""
    try:
        text, cut = read_beneath(run_dir, [CONFIG_FILE], CONFIG_BYTES)
        config = json.loads(text) if not cut else {}
    except (UnsafeFile, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def summarise(name: str, model: RunModel) -> RunSummary:
    """What tells this run apart from the others: its set-up (config) and its outcome (ledger, status.json)."""
    state = model.state()
    config = run_config(model.run_dir)
    status = run_status(model.run_dir)
    agents = config.get("agents") if isinstance(config.get("agents"), dict) else {}
    tournament = config.get("tournament") if isinstance(config.get("tournament"), dict) else {}
    seen = sorted(a for a in state.spend["agents"] if a != "?")
    agents_text = (f"{agents.get('count')} x {agents.get('kind')}" if agents else "") + (
        f" ({', '.join(seen[:3])}{f' +{len(seen) - 3} more' if len(seen) > 3 else ''})" if seen else "")
    level = state.main_line.level
    c = state.cols
    ok = [v for v, s in zip(c["val_bpb"], c["status"], strict=True) if s == "ok" and v is not None]
    duty = state.gpu_duty
    ts = state.snapshot.events.column("ts").to_pylist()
    start = min(ts) if ts else None
    return RunSummary(
        name=name, path=str(model.run_dir.resolve()), state=status["state"], reason=status["reason"],
        profile=_text(config.get("profile")), policy=_text(tournament.get("policy")), agents=agents_text or None,
        gpus=config.get("gpus") if isinstance(config.get("gpus"), int) else duty["slots"],
        experiments=state.latest.num_rows, main_val_bpb=level[-1]["mean"] if level else None,
        noise_sd=level[-1]["sd"] if level else None, best_val_bpb=min(ok) if ok else None,
        promotions=len(state.promoted), promoted=state.promoted[-20:], spend_usd=state.spend["cost_usd"],
        tokens_in=state.spend["tokens_in"], tokens_out=state.spend["tokens_out"], gpu_duty=duty["duty"],
        wall_hours=duty["wall_seconds"] / 3600, started=start,
        main_hours=[(p["t"] - start) / 3600 for p in level] if start is not None else [],
        main_mean=[p["mean"] for p in level],
    )  # fmt: skip


def _text(value: object) -> str | None:
    return str(value)[:80] if isinstance(value, str | int | float) else None


def create_runs_app(runs: dict[str, Path], grafana_url: str | None = None, loopback_only: bool = True):
    """The WSGI app for several runs: the list at ``/``, each run's browser at ``/r/<name>/``."""
    assets = Assets(PACKAGE / "static")
    apps = {name: create_app(path, grafana_url, loopback_only, assets) for name, path in runs.items()}
    models = {name: app.extensions["farm_ui_model"] for name, app in apps.items()}
    index = Flask("cluster.ui.runs", root_path=str(PACKAGE), static_folder=None, template_folder="templates")
    index.extensions["farm_ui_models"] = models
    title = _common_parent(list(runs.values()))

    def page(template: str, **context: object) -> str:
        return render_template(template, run_name=title, grafana_url=None, runs_index=True, **context)

    harden(index, loopback_only, assets, lambda exc: page("error.html", active="", code=exc.code, title=exc.name,
                                                          detail=error_detail(exc), path=request.path))

    @index.get("/")
    def runs_page() -> str:
        return page("runs.html", active="runs", names=list(runs))

    @index.get("/api/runs-index")
    def api_runs_index() -> Response:
        summaries = [summarise(name, model).model_dump() for name, model in models.items()]
        return Response(to_json({"version": _version(models), "runs": summaries}), mimetype="application/json")

    @index.get("/api/version")
    def api_version() -> Response:
        """The page's poll: it changes when any run's ledger does; 'live' while any run is."""
        states = [run_status(m.run_dir)["state"] for m in models.values()]
        state = "live" if "live" in states else ("stopping" if "stopping" in states else "finished")
        finished = sum(s == "finished" for s in states)
        body = {"version": _version(models), "experiments": sum(m.state().latest.num_rows for m in models.values()),
                "run": {"state": state, "reason": f"{finished} of {len(states)} runs finished", "known": True}}
        return Response(to_json(body), mimetype="application/json")

    return DispatcherMiddleware(index, {f"/r/{name}": app for name, app in apps.items()})


def _version(models: dict[str, RunModel]) -> int:
    """One number that moves when any run's ledger changes (each run's version only grows)."""
    return sum(m.state().version for m in models.values())


def _common_parent(paths: list[Path]) -> str:
    """A title for the list: the directory the runs share (their project), else how many there are."""
    parents = {p.resolve().parent for p in paths}
    return parents.pop().name if len(parents) == 1 else f"{len(paths)} runs"
