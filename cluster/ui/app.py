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
import math
import re
import threading
from pathlib import Path

from flask import Flask, Response, abort, render_template, request
from werkzeug.exceptions import HTTPException

from cluster.ui import lineage
from cluster.ui.assets import IMMUTABLE, Assets, accepts_gzip
from cluster.ui.model import FILTERABLE, TABLE_FIELDS, RunModel, RunState, run_status, to_json
from cluster.untrusted import UnsafeFile, read_beneath

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


def show_value(value: object) -> str:
    """A ledger value as a cell shows it: floats to 6 digits, nothing for null (the template escapes the text)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}" if abs(value) >= 1e4 or value != value else f"{value:.6f}".rstrip("0").rstrip(".")
    return str(value)


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


def create_app(run_dir: Path, grafana_url: str | None = None, loopback_only: bool = True) -> Flask:
    """The app for one run directory; ``loopback_only``: refuse requests whose Host is not a loopback name."""
    app = Flask("cluster.ui", root_path=str(PACKAGE), static_folder=None, template_folder="templates")
    app.config.update(JSON_SORT_KEYS=False)
    model = RunModel(Path(run_dir))
    grafana = safe_url(grafana_url)
    assets = Assets(PACKAGE / "static")
    compressed = _GzipCache()
    app.extensions["farm_ui_model"] = model
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
        what = exc.description if exc.code == 404 and exc.description != _WERKZEUG_404 else None
        if request.path.startswith("/api/"):
            response = _json(to_json({"error": exc.name, "status": exc.code, "detail": what or exc.description}))
        else:
            response = Response(page("error.html", active="", code=exc.code, title=exc.name, detail=what,
                                     path=request.path), mimetype="text/html")
        response.status_code = exc.code or 500
        return response

    def page(template: str, **context: object) -> str:
        return render_template(template, run_name=model.run_dir.resolve().name, grafana_url=grafana, **context)

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
        return page("compare.html", active="compare", a=a, b=b, diff=diff_lines(diff), no_diff=why,
                    table=compare_rows(state, rows["a"], rows["b"]) if len(rows) == 2 else [])

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
                                        _int(args.get("limit"), 100)))

    @app.get("/api/runs.csv")
    def api_runs_csv() -> Response:
        """Every row the table's filters and sort select (not one page), for a spreadsheet or pandas."""
        args = request.args
        table = model.state().select({name: args.get(name, "") for name in FILTERABLE}, args.get("q", "")[:200],
                                     args.get("sort", "queued_ts"), args.get("order", "desc") == "desc")
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(TABLE_FIELDS)
        for row in table.select(list(TABLE_FIELDS)).to_pylist():
            writer.writerow([csv_cell(row[name]) for name in TABLE_FIELDS])
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

    return app


_WERKZEUG_404 = "The requested URL was not found on the server. If you entered the URL manually please check " \
    "your spelling and try again."
# (field, label, decimals: None for text) of the compare table, in reading order
COMPARE_FIELDS: tuple[tuple[str, str, int | None], ...] = (
    ("kind", "kind", None), ("status", "status", None), ("verdict", "verdict", None), ("agent", "agent", None),
    ("description", "description", None), ("training_seconds", "training time (s)", 1),
    ("total_seconds", "total time (s)", 1), ("peak_memory_mb", "peak memory (MB)", 0), ("num_steps", "steps", 0),
    ("num_params_M", "parameters (M)", 2), ("mfu_percent", "MFU (%)", 1), ("gpu_class", "GPU class", None),
    ("seed", "seed", None), ("cost_usd", "LLM cost (USD)", 4), ("commit", "commit", None),
    ("parent_commit", "parent commit", None), ("reason", "reason", None),
)


def _fixed(value: float | None, digits: int) -> str:
    return "" if value is None or value != value else f"{value:,.{digits}f}"


def compare_rows(state: RunState, a: dict, b: dict) -> list[dict]:
    """The compare table, as a reader wants it: labels, rounded numbers, each experiment's replicate mean (the
    number its verdict weighs, not its screening run) and the difference b - a where both are numbers."""
    out = []
    runs = {}
    for name, row in (("a", a), ("b", b)):
        values = [r["val_bpb"] for r in state.replicates_of(row["experiment_id"])
                  if r and r["status"] == "ok" and r["val_bpb"] is not None]
        runs[name] = values
    means = {k: sum(v) / len(v) if v else None for k, v in runs.items()}
    out.append({"label": "val_bpb, mean of its runs", "a": _fixed(means["a"], 4), "b": _fixed(means["b"], 4),
                "delta": _signed(means["a"], means["b"], 4), "key": "mean"})
    out.append({"label": "runs (ok)", "a": str(len(runs["a"])), "b": str(len(runs["b"])), "delta": "",
                "key": "runs"})
    gpu_a, gpu_b = a.get("gpu_class") or "cpu", b.get("gpu_class") or "cpu"
    noise = state.noise.get(gpu_a) if gpu_a == gpu_b else None
    if noise and runs["a"] and runs["b"] and means["a"] is not None and means["b"] is not None:
        sd, df = noise  # the judge's standard error of a difference of two means: sd * sqrt(1/n_a + 1/n_b)
        se = sd * math.sqrt(1 / len(runs["a"]) + 1 / len(runs["b"]))
        out.append({"label": "difference in standard errors", "a": "", "b": "", "key": "z",
                    "delta": f"{(means['b'] - means['a']) / se:+.1f} se (se {se:.4f}: noise sd {sd:.4f}, df {df}, "
                             f"pooled on {gpu_a})" if se > 0 else ""})
    elif gpu_a != gpu_b:
        out.append({"label": "difference in standard errors", "a": "", "b": "", "key": "z",
                    "delta": f"not compared: measured on {gpu_a} and {gpu_b}"})
    out.append({"label": "val_bpb, its first run", "a": _fixed(a.get("val_bpb"), 4), "b": _fixed(b.get("val_bpb"), 4),
                "delta": _signed(a.get("val_bpb"), b.get("val_bpb"), 4), "key": "val_bpb"})
    for key, label, digits in COMPARE_FIELDS:
        va, vb = a.get(key), b.get(key)
        if digits is None:
            out.append({"label": label, "a": show_value(va), "b": show_value(vb), "delta": "", "key": key})
        else:
            out.append({"label": label, "a": _fixed(va, digits), "b": _fixed(vb, digits),
                        "delta": _signed(va, vb, digits), "key": key})
    out = [r for r in out if r["a"] or r["b"] or r["delta"]]  # a field neither experiment has says nothing
    for r in out:
        r["differs"] = r["a"] != r["b"]
    return out


def _signed(a: float | None, b: float | None, digits: int) -> str:
    """b - a with its sign, or nothing when either is missing."""
    if a is None or b is None or a != a or b != b:
        return ""
    return f"{b - a:+,.{digits}f}"


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
