"""The run browser's web app (Flask): pages, a JSON API the pages poll, and the static files. GET only.

Everything a run holds was written or chosen by an agent (descriptions,
diffs, logs, agent names) and is treated as hostile: templates autoescape,
the scripts set text with ``textContent`` only, and a strict
Content-Security-Policy allows scripts from this server's own files and
nothing inline, so even a missed escape cannot run code. No endpoint
changes the run: any method but GET/HEAD is answered 405. A server bound to
loopback answers only to loopback host names (a web page cannot reach it
through DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

from flask import Flask, Response, abort, render_template, request, send_file

from cluster.ui import lineage
from cluster.ui.model import FILTERABLE, RunModel, RunState, to_json
from cluster.ui.safe_files import UnsafeFile, read_tail

# plotly.js and cytoscape.js each add a <style> element of their own (fixed text); those exact texts are allowed
# by hash, nothing else inline. A new version of either changes them: tests/test_ui.py fails on any CSP report.
LIBRARY_STYLE_HASHES = (
    "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",  # the empty <style> plotly.js fills through CSSOM
    "sha256-ji27qzEtxXZW+7dun6UwjHXJ18e6WAin1VvNtkzIE/o=",  # plotly.js 4.1.1
    "sha256-pgvDUBa4IjFA2yuSJ2cqcyxmNYJMborsd0ORcRv9vw8=",  # cytoscape.js 3.34.4
)
CSP = ("default-src 'none'; script-src 'self'; "
       "style-src 'self' " + " ".join(f"'{h}'" for h in LIBRARY_STYLE_HASHES) + "; "
       "img-src 'self' data:; connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")  # the repo's rule for experiment ids
PACKAGE = Path(__file__).resolve().parent


def plotly_js() -> Path:
    """plotly.min.js as the pinned ``plotly`` package ships it (no CDN: the farm runs offline)."""
    import plotly

    return Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"


def diff_lines(diff: str) -> list[tuple[str, str]]:
    """(css class, text) per line of a unified diff, for the template to escape and colour."""
    out = []
    for line in diff.splitlines():
        if line.startswith(("+++", "---", "diff ", "index ")):
            kind = "meta"
        elif line.startswith("@@"):
            kind = "hunk"
        elif line.startswith("+"):
            kind = "add"
        elif line.startswith("-"):
            kind = "del"
        else:
            kind = "ctx"
        out.append((kind, line))
    return out


def show_value(value: object) -> str:
    """A ledger value as a cell shows it: floats to 6 digits, nothing for null (the template escapes the text)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}" if abs(value) >= 1e4 or value != value else f"{value:.6f}".rstrip("0").rstrip(".")
    return str(value)


def safe_url(url: str | None) -> str | None:
    """An http(s) URL or None: a configured link must not become ``javascript:``."""
    return url if url and re.match(r"^https?://[^\s\"'<>]+$", url) else None


def host_name(host: str) -> str:
    """The name part of a Host header: ``[::1]:8090`` -> ``::1``, ``localhost:8090`` -> ``localhost``."""
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def create_app(run_dir: Path, grafana_url: str | None = None, loopback_only: bool = True) -> Flask:
    """The app for one run directory; ``loopback_only``: refuse requests whose Host is not a loopback name."""
    app = Flask("cluster.ui", root_path=str(PACKAGE), static_folder="static", template_folder="templates")
    app.config.update(JSON_SORT_KEYS=False, SEND_FILE_MAX_AGE_DEFAULT=3600)
    model = RunModel(Path(run_dir))
    grafana = safe_url(grafana_url)
    app.extensions["farm_ui_model"] = model
    app.add_template_filter(show_value, "show")

    @app.before_request
    def guard() -> None:
        if request.method not in ("GET", "HEAD"):
            abort(405)
        if loopback_only:
            if host_name(request.host) not in LOOPBACK_NAMES:
                abort(403)

    @app.after_request
    def headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
        if request.path.startswith("/api/"):
            response.headers["Cache-Control"] = "no-store"
        if response.status_code == 405:
            response.headers["Allow"] = "GET, HEAD"
        return response

    def page(template: str, **context: object) -> str:
        return render_template(template, run_name=model.run_dir.resolve().name, grafana_url=grafana, **context)

    def experiment_id(eid: str, state: RunState) -> str:
        if not _ID_RE.match(eid) or eid not in state.index:
            abort(404)
        return eid

    @app.get("/")
    def overview() -> str:
        return page("overview.html", active="overview")

    @app.get("/lineage")
    def lineage_page() -> str:
        return page("lineage.html", active="lineage")

    @app.get("/experiment/<eid>")
    def experiment_page(eid: str) -> str:
        state = model.state()
        eid = experiment_id(eid, state)
        row = state.row(eid)
        diff, why = model.repo.diff(row["commit"]) if row["kind"] != "baseline" else ("", "a baseline runs main as is")
        return page("experiment.html", active="experiment", row=row, diff=diff_lines(diff), no_diff=why,
                    children=state.children_of(row["commit"]) if row["kind"] in lineage.NODE_KINDS else [],
                    merged_from=state.merged_from(row), on_main=eid in state.promoted,
                    parent_node=_parent_node(state, row))

    @app.get("/compare")
    def compare_page() -> str:
        state = model.state()
        a, b = request.args.get("a", ""), request.args.get("b", "")
        rows = {}
        for name, eid in (("a", a), ("b", b)):
            if eid:
                experiment_id(eid, state)
                rows[name] = state.row(eid)
        diff, why = ("", "pick two experiments")
        if len(rows) == 2:
            diff, why = model.repo.diff(rows["b"]["commit"], rows["a"]["commit"] or None)
            if not rows["a"]["commit"]:
                diff, why = "", f"{a} has no commit recorded"
        return page("compare.html", active="compare", a=a, b=b, rows=rows, diff=diff_lines(diff), no_diff=why,
                    fields=COMPARE_FIELDS)

    @app.get("/api/version")
    def api_version() -> Response:
        state = model.state()
        return _json(to_json({"version": state.version, "experiments": state.latest.num_rows}))

    @app.get("/api/overview")
    def api_overview() -> Response:
        return _json(model.state().overview)

    @app.get("/api/runs")
    def api_runs() -> Response:
        args = request.args
        filters = {name: args.get(name, "") for name in FILTERABLE}
        return _json(model.state().runs(filters, args.get("q", "")[:200], args.get("sort", "queued_ts"),
                                        args.get("order", "desc") == "desc", _int(args.get("offset"), 0),
                                        _int(args.get("limit"), 100)))

    @app.get("/api/lineage")
    def api_lineage() -> Response:
        args = request.args
        query = lineage.LineageQuery(last=_int(args.get("last"), lineage.DEFAULT_LAST), agent=args.get("agent", ""),
                                     status=args.get("status", "all"), hide_discarded=args.get("hide") == "1")
        state = model.state()
        return _json(state.lineage(query.key(), lambda: lineage.build(state, query)))

    @app.get("/api/experiment/<eid>")
    def api_experiment(eid: str) -> Response:
        state = model.state()
        eid = experiment_id(eid, state)
        events = state.events_of(eid)
        verdicts = [e for e in events if e["event"] == "verdict"]
        try:
            log, cut = read_tail(model.run_dir, ["experiments", eid, "out", "run.log"])
            log_note = "(the last 64 KB)" if cut else ""
        except UnsafeFile as exc:
            log, log_note = "", f"no log shown: {exc}"
        return _json(to_json({"version": state.version, "row": state.row(eid), "events": events,
                              "verdicts": verdicts, "replicates": state.replicates_of(eid),
                              "decision": state.decision(eid, verdicts), "log": log, "log_note": log_note}))

    @app.get("/vendor/plotly.min.js")
    def vendor_plotly() -> Response:
        return send_file(plotly_js(), mimetype="text/javascript", max_age=86400)

    return app


COMPARE_FIELDS = ("kind", "status", "val_bpb", "verdict", "reason", "agent", "description", "training_seconds",
                  "total_seconds", "peak_memory_mb", "num_steps", "num_params_M", "mfu_percent", "gpu_class", "seed",
                  "commit", "parent_commit")


def _parent_node(state: RunState, row: dict) -> str | None:
    """The experiment whose commit this one was proposed from, if it is one (else it came from main)."""
    parent = row.get("parent_commit")
    if not parent:
        return None
    c = state.cols
    for eid, commit, kind in zip(c["experiment_id"], c["commit"], c["kind"], strict=True):
        if commit == parent and kind in lineage.NODE_KINDS and eid != row["experiment_id"]:
            return eid
    return None


def _json(body: bytes) -> Response:
    return Response(body, mimetype="application/json")


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default
