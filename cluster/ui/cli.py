"""`farm ui RUN_DIR`: the run browser, read-only, from the run directory alone."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from cluster.ui.runs import find_runs, is_run
from cluster.ui.server import DEFAULT_ADDRESS, DEFAULT_PORT

GRAFANA_ENV = "FARM_UI_GRAFANA_URL"


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ui", help="browse a run (live): lineage, diffs, replicates, verdicts")
    p.add_argument("run_dir", type=Path, nargs="+",
                   help="the run directory (ledger/ and repo/ inside); several runs, or a directory holding runs, "
                        "are listed and compared side by side, each with its own pages")
    p.add_argument("--address", default=DEFAULT_ADDRESS,
                   help=f"address to bind (default {DEFAULT_ADDRESS}: this machine only; 0.0.0.0 in a pod)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free)")
    p.add_argument("--grafana-url", default=None,
                   help=f"a Grafana dashboard to link to (default ${GRAFANA_ENV}, else no link)")
    p.set_defaults(func=cmd_ui)


def cmd_ui(args: argparse.Namespace) -> int:
    named: list[Path] = args.run_dir
    if len(named) > 1 or (named[0].is_dir() and not is_run(named[0]) and find_runs(named)):  # several runs
        runs = find_runs(named)
        return _serve(runs, args, f"{len(runs)} runs")
    run_dir = named[0]
    if run_dir.exists() and not run_dir.is_dir():
        print(f"farm ui: {run_dir} is not a directory (give a run directory, e.g. runs/20261127-184749)",
              file=sys.stderr)
        return 2
    if not (run_dir / "ledger").is_dir():  # served anyway: beside a farm that is starting (the chart's sidecar)
        print(f"farm ui: note: {run_dir} has no ledger yet; the pages fill in when a farm writes one there",
              file=sys.stderr)
    return _serve(run_dir, args, str(run_dir.resolve()))


def _serve(runs: Path | list[Path], args: argparse.Namespace, what: str) -> int:
    """Serve one run or several until Ctrl-C or SIGTERM."""
    from cluster.ui.server import make_ui_server

    if isinstance(runs, list) and not runs:
        print(f"farm ui: no run directory (with a ledger/ or farm-config.json) in {' '.join(map(str, args.run_dir))}",
              file=sys.stderr)
        return 2
    try:
        handle = make_ui_server(runs, args.address, args.port, args.grafana_url or os.environ.get(GRAFANA_ENV))
    except OSError as exc:
        print(f"farm ui: cannot listen on {args.address}:{args.port}: {exc.strerror or exc} "
              "(pick another with --port)", file=sys.stderr)
        return 2
    if handle.exposed:  # the chart's sidecar does this on purpose (behind a ClusterIP Service); a laptop rarely should
        print(f"farm ui: WARNING: listening on {handle.bound} (every interface it names), without authentication: "
              "anyone who can reach this port can read the whole run (read-only). Bind 127.0.0.1 (the default) "
              "and use an SSH tunnel or kubectl port-forward unless this is what you want.", file=sys.stderr,
              flush=True)
    where = handle.bound if handle.bound == handle.url else f"{handle.bound} (from this machine: {handle.url})"
    print(f"farm ui: {what} at {where} (read-only; Ctrl-C stops)", flush=True)
    # Ctrl-C and SIGTERM stop it, also where it was started with SIGINT ignored (a background job of a script,
    # where Python installs no KeyboardInterrupt handler) and in a pod being stopped
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.default_int_handler)
    try:
        handle.server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        handle.server.server_close()
    return 0
