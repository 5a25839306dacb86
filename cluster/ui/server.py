"""Serving the run browser: in the foreground (`farm ui`) or on a background thread beside a running farm."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from cluster.ui.app import create_app, is_loopback
from cluster.ui.model import RunModel
from cluster.ui.runs import create_runs_app, mount_names

DEFAULT_PORT = 8090
DEFAULT_ADDRESS = "127.0.0.1"


class _QuietHandler(WSGIRequestHandler):
    """No access log: the pages poll every 2 s, which would bury the farm's own output."""

    def log_request(self, *args: object, **kwargs: object) -> None:
        pass


@dataclass
class UiHandle:
    """A running run browser: its URL, and ``close()`` to stop it (idempotent)."""

    url: str  # where to open it from this machine
    server: BaseWSGIServer
    thread: threading.Thread | None = None
    bound: str = ""  # the address and port actually bound (0.0.0.0: every interface)

    @property
    def exposed(self) -> bool:
        """Whether it listens beyond loopback: anyone who can reach the port can read the run (no login)."""
        return not is_loopback(self.server.server_address[0])

    def close(self) -> None:
        if self.thread is not None and self.thread.is_alive():
            self.server.shutdown()
            self.thread.join(timeout=10)
        self.server.server_close()


def make_ui_server(run_dir: Path | list[Path], address: str = DEFAULT_ADDRESS, port: int = DEFAULT_PORT,
                   grafana_url: str | None = None) -> UiHandle:
    """Bind the browser's server (port 0: any free port); raises OSError when the port is taken.

    One run directory, or a list of runs: then the list of runs is at ``/`` and each run's pages at ``/r/<name>/``
    (:mod:`cluster.ui.runs`). Werkzeug's threaded server: one thread per request, so a slow page never
    holds up the poll of another tab. A server bound to loopback answers only loopback host names; one bound
    elsewhere (a pod behind a port-forward) answers any.
    """
    runs = [Path(run_dir)] if isinstance(run_dir, str | Path) else [Path(p) for p in run_dir]
    loopback_only = is_loopback(address)
    if len(runs) == 1:
        app = create_app(runs[0], grafana_url=grafana_url, loopback_only=loopback_only)
        models = [app.extensions["farm_ui_model"]]
    else:
        app = create_runs_app(mount_names(runs), grafana_url, loopback_only)
        models = list(app.app.extensions["farm_ui_models"].values())
    server = make_server(address, port, app, threaded=True, request_handler=_QuietHandler)
    for model in models:
        warm(model)
    bound_host = str(server.server_address[0])
    bound = f"http://{_bracketed(bound_host)}:{server.server_port}/"
    host = "127.0.0.1" if bound_host in ("0.0.0.0", "::") else bound_host
    return UiHandle(url=f"http://{_bracketed(host)}:{server.server_port}/", server=server, bound=bound)


def warm(model: RunModel) -> None:
    """Read the run now, on a background thread, not on the first page view: the ledger (an uncompacted ledger of
    a long run is one file per event, ~1 ms each to open, so 10,000 experiments take ~10 s once; appends later are
    read incrementally), then the overview (the first page), then every change's train.py for the constants page
    (one batched git read: ~0.7 s at 10,000 changes; later only new commits are read)."""
    def read() -> None:
        _ = model.state().overview, model.state().constants  # cached properties: computed once, kept

    threading.Thread(target=read, name="farm-ui-warm", daemon=True).start()


def _bracketed(host: str) -> str:
    """An IPv6 address as a URL writes it."""
    return f"[{host}]" if ":" in host else host


def serve_ui(run_dir: Path | list[Path], address: str = DEFAULT_ADDRESS, port: int = DEFAULT_PORT,
             grafana_url: str | None = None) -> UiHandle:
    """The run browser on a daemon thread (for `farm run --ui-port`): returns once it accepts connections."""
    handle = make_ui_server(run_dir, address, port, grafana_url)
    handle.thread = threading.Thread(target=handle.server.serve_forever, name="farm-ui", daemon=True)
    handle.thread.start()
    return handle
