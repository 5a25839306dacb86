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

import csv
import gzip
import io
import ipaddress
import re
import threading
from collections.abc import Callable
from pathlib import Path

from flask import Flask, Response, abort, render_template, request
from werkzeug.exceptions import HTTPException

from cluster.sandbox.untrusted import UnsafeFile, read_beneath
from cluster.ui import compare, curves, lineage
from cluster.ui.assets import IMMUTABLE, Assets, accepts_gzip
from cluster.ui.model import (
    CONSTANT_PREFIX,
    FILTERABLE,
    LAZY_FIELDS,
    NOT_DONE,
    TABLE_FIELDS,
    RunModel,
    RunState,
    run_status,
    show_value,
    to_json,
)

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
COMPRESS_ABOVE = 1024  # bytes: smaller answers are not worth a gzip header
_COMPRESSIBLE = ("application/json", "text/html", "text/csv")


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


def csv_cell(value: object) -> object:
    """A CSV cell that a spreadsheet will not run: agent-written text starting with ``= + - @`` (or a tab or CR)
    would be read as a formula (CSV injection), so it gets a leading apostrophe. Numbers are left as they are."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value


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


def harden(app: Flask, loopback_only: bool, assets: Assets, error_page: Callable[[HTTPException], str]) -> None:
    """What every app of the browser does (one run's, and the list of several runs): GET only, loopback names
    only when bound to loopback, the strict CSP and headers, gzip, the site's own errors, the versioned assets."""
    compressed = _GzipCache()
    app.add_template_filter(show_value, "show")
    app.add_template_global(assets.url, "asset")

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
        if (response.mimetype in _COMPRESSIBLE and not response.direct_passthrough
                and "Content-Encoding" not in response.headers):
            response.vary.add("Accept-Encoding")
            body = response.get_data()
            if len(body) > COMPRESS_ABOVE and accepts_gzip(request.headers.get("Accept-Encoding", "")):
                response.set_data(compressed.get(body))
                response.headers["Content-Encoding"] = "gzip"
        return response

    @app.errorhandler(HTTPException)
    def error(exc: HTTPException) -> Response:
        """The site's own error page (its header, the id asked for), and JSON for the API the scripts call."""
        if request.path.startswith("/api/"):
            detail = error_detail(exc) or exc.description
            response = _json(to_json({"error": exc.name, "status": exc.code, "detail": detail}))
        else:
            response = Response(error_page(exc), mimetype="text/html")
        response.status_code = exc.code or 500
        return response

    @app.get("/assets/<digest>/<path:name>")
    def asset(digest: str, name: str) -> Response:
        found = assets.get(digest, name)
        if found is None:
            abort(404, description=f"No file {name[:80]!r} of version {digest[:20]!r}.")
        response = Response(found.body, mimetype=found.mimetype)
        if accepts_gzip(request.headers.get("Accept-Encoding", "")):
            response.set_data(assets.gzipped(name))
            response.headers["Content-Encoding"] = "gzip"
        response.vary.add("Accept-Encoding")
        response.headers["Cache-Control"] = IMMUTABLE
        response.headers["ETag"] = f'"{digest}"'
        return response


def error_detail(exc: HTTPException) -> str | None:
    """What a 404 page says was not found (the id or file asked for); None for Werkzeug's generic text."""
    return exc.description if exc.code == 404 and exc.description != _WERKZEUG_404 else None


def create_app(run_dir: Path, grafana_url: str | None = None, loopback_only: bool = True,
               assets: Assets | None = None) -> Flask:
    """The app for one run directory; ``loopback_only``: refuse requests whose Host is not a loopback name.

    Served alone at ``/``, or mounted under ``/r/<name>`` beside other runs (:mod:`cluster.ui.runs`): its pages
    and scripts build every URL from the mount point (``request.script_root``, ``body[data-base]``), the static
    files' URLs are the server root's (one shared ``assets``), so a browser caches them once for every run.
    """
    app = Flask("cluster.ui", root_path=str(PACKAGE), static_folder=None, template_folder="templates")
    app.config.update(JSON_SORT_KEYS=False)
    model = RunModel(Path(run_dir))
    grafana = safe_url(grafana_url)
    curve_cache = curves.CurveCache(model.run_dir)
    app.extensions["farm_ui_model"] = model

    def page(template: str, **context: object) -> str:
        return render_template(template, run_name=model.run_dir.resolve().name, grafana_url=grafana, **context)

    harden(app, loopback_only, assets or Assets(PACKAGE / "static"),
           lambda exc: page("error.html", active="", code=exc.code, title=exc.name, detail=error_detail(exc),
                            path=request.path))

    def experiment_id(eid: str, state: RunState) -> str:
        if not _ID_RE.match(eid) or eid not in state.index:
            abort(404, description=f"No experiment {eid[:80]!r} in this run ({state.latest.num_rows} experiments).")
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
                    merged_from=state.merged_from(row), fate=state.fate(eid), parent_node=_parent_node(state, row))

    @app.get("/constants")
    def constants_page() -> str:
        return page("constants.html", active="constants")

    @app.get("/api/constants")
    def api_constants() -> Response:
        return _json(model.state().constants)

    @app.get("/compare")
    def compare_page() -> str:
        """Two or more experiments (``?ids=e1,e2,e3``, picked in the runs table; ``?a=&b=`` for two): the table,
        every pair's judged difference, each one's diff against their common ancestor (for two, also a to b) and
        their training curves."""
        state = model.state()
        ids = picked(request.args)
        for eid in ids:
            experiment_id(eid, state)
        rows = [state.row(eid) for eid in ids]
        diff, why = ("", "pick two or more experiments (in the runs table, or here)")
        ancestor, diffs = None, []
        if len(rows) >= 2:
            commits = [r["commit"] for r in rows]
            if len(rows) == 2:
                diff, why = model.repo.diff(commits[1], commits[0] or None)
                if not commits[0]:
                    diff, why = "", f"{ids[0]} has no commit recorded"
            ancestor = model.repo.common_ancestor(commits)
            for eid, commit in zip(ids, commits, strict=True):
                text, no = model.repo.diff(commit, ancestor) if ancestor else ("", "no common ancestor found")
                diffs.append({"id": eid, "diff": diff_lines(text), "why": no})
        return page("compare.html", active="compare", ids=ids, diff=diff_lines(diff), no_diff=why,
                    table=compare.compare_rows(state, rows) if len(rows) >= 2 else [],
                    pairs=compare.pairwise(state, ids) if len(rows) >= 2 else [], ancestor=ancestor,
                    ancestor_node=_node_of_commit(state, ancestor), diffs=diffs, limit=compare.MAX_COMPARED,
                    claim=curves.CLAIM)

    @app.get("/api/curves")
    def api_curves() -> Response:
        """The training curves (per-step loss and tokens/s) the experiments' train.py printed: the candidate's claim,
        not a verdict; at most MAX_COMPARED ids (``?ids=e1,e2``), each curve thinned to curves.MAX_POINTS."""
        state = model.state()
        out = []
        for eid in picked(request.args, more=4):
            experiment_id(eid, state)
            r = state.row(eid)
            key = (r.get("started_ts"), r.get("finished_at"), r.get("status"))
            out.append(curve_cache.get(eid, key, final=r.get("status") not in NOT_DONE).model_dump())
        return _json(to_json({"version": state.version, "claim": curves.CLAIM, "curves": out}))

    @app.get("/api/version")
    def api_version() -> Response:
        state = model.state()
        return _json(to_json({"version": state.version, "experiments": state.latest.num_rows,
                              "run": run_status(model.run_dir)}))

    @app.get("/api/overview")
    def api_overview() -> Response:
        return _json(model.state().overview)

    @app.get("/api/runs")
    def api_runs() -> Response:
        args = request.args
        filters = {name: args.get(name, "") for name in FILTERABLE}
        return _json(model.state().runs(filters, args.get("q", "")[:200], args.get("sort", "queued_ts"),
                                        args.get("order", "desc") == "desc", _int(args.get("offset"), 0),
                                        _int(args.get("limit"), 100), args.get("cols", "")[:4000].split(",")))

    @app.get("/api/runs/columns")
    def api_runs_columns() -> Response:
        """The runs table's optional columns that depend on the run: one per constant a change changed (asked for
        when the column chooser opens or the URL names one, not on the first load)."""
        state = model.state()
        names, _, changed = state.constant_values
        return _json(to_json({"version": state.version, "constants": [{"name": n, "changed": changed[n]}
                                                                      for n in names]}))

    @app.get("/api/runs.csv")
    def api_runs_csv() -> Response:
        """Every row the table's filters and sort select (not one page), for a spreadsheet or pandas."""
        args = request.args
        state = model.state()
        fields = [*TABLE_FIELDS, *LAZY_FIELDS, *(CONSTANT_PREFIX + n for n in state.constant_values[0])]
        table = state.select({name: args.get(name, "") for name in FILTERABLE}, args.get("q", "")[:200],
                             args.get("sort", "queued_ts"), args.get("order", "desc") == "desc", fields)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(fields)  # the constants' names are [A-Z][A-Z0-9_]* (the parse's regex): no formula
        for row in table.select(fields).to_pylist():
            writer.writerow([csv_cell(row[name]) for name in fields])
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", model.run_dir.resolve().name)[:80] or "run"
        return Response(out.getvalue(), mimetype="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{name}-runs.csv"'})

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
        verdicts = state.verdicts_of(eid)
        try:
            log, cut = read_beneath(model.run_dir, ["experiments", eid, "out", "run.log"])
            log_note = "(the last 64 KB)" if cut else ""
        except UnsafeFile as exc:
            log, log_note = "", f"no log shown: {exc}"
        return _json(to_json({"version": state.version, "row": state.row(eid), "events": events,
                              "verdicts": verdicts, "replicates": state.replicates_of(eid),
                              "decision": state.decision(eid, verdicts), "fate": state.fate(eid),
                              "run": run_status(model.run_dir), "log": log, "log_note": log_note}))

    return app


_WERKZEUG_404 = "The requested URL was not found on the server. If you entered the URL manually please check " \
    "your spelling and try again."
class _GzipCache:
    """Compressed answers by content: the overview and lineage JSON (up to MBs at 10,000 experiments) are the same
    bytes until the ledger changes, so each is compressed once, not on every poll of every tab."""

    def __init__(self, size: int = 32) -> None:
        self._size, self._items, self._lock = size, {}, threading.Lock()

    def get(self, body: bytes) -> bytes:
        key = (len(body), hash(body))
        with self._lock:
            hit = self._items.get(key)
        if hit is not None:
            return hit
        packed = gzip.compress(body, compresslevel=6, mtime=0)
        with self._lock:
            if len(self._items) >= self._size:
                self._items.pop(next(iter(self._items)))
            self._items[key] = packed
        return packed


def picked(args: dict, more: int = 0) -> list[str]:
    """The experiments a compare asks for, in order, once each: ``ids`` (comma- or space-separated), then ``a`` and
    ``b``; at most compare.MAX_COMPARED (+ ``more``: an experiment page asks for its confirmations' curves too)."""
    names = re.split(r"[,\s]+", args.get("ids", "")[:2000]) + [args.get("a", ""), args.get("b", "")]
    return list(dict.fromkeys(n for n in names if n))[: compare.MAX_COMPARED + more]


def _node_of_commit(state: RunState, commit: str | None, other_than: str | None = None) -> str | None:
    """The experiment (candidate or merge, not ``other_than``) whose commit this is, if one is (else it is main's)."""
    if not commit:
        return None
    c = state.cols
    return next((e for e, k, kind in zip(c["experiment_id"], c["commit"], c["kind"], strict=True)
                 if k == commit and kind in lineage.NODE_KINDS and e != other_than), None)


def _parent_node(state: RunState, row: dict) -> str | None:
    """The experiment whose commit this one was proposed from, if it is one (else it came from main)."""
    return _node_of_commit(state, row.get("parent_commit"), row["experiment_id"])


def _json(body: bytes) -> Response:
    return Response(body, mimetype="application/json")


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default
