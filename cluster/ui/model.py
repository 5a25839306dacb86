"""What the pages show, computed from one ledger snapshot (and the repo): built once per ledger change.

Every number here is derived from the run directory alone, the way the
driver derives it (cluster/records/state.py): main's level is the mean of the runs
of main's train.py that were not a candidate's screening run, a promotion
is a ``promote`` verdict, the LLM spend is what queued candidates, refused
proposals and failed requests were charged. Nothing here writes.
"""

from __future__ import annotations

import ast
import functools
import json
import math
import operator
import os
import re
import threading
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cluster.sandbox.untrusted import UnsafeFile, read_beneath
from cluster.ui.ledger_view import LedgerView, Snapshot
from cluster.ui.repo_view import RepoView
from cluster.vocabulary import CHANGE_KINDS, KEEP_VERDICTS, SPEND_ONLY_EVENTS

NOT_DONE = ("queued", "running")
STATUS_FILE = "status.json"
# The driver rewrites status.json at least every ~5 s while its loop runs (cluster/loop/driver.py): one this old, with
# a stop reason but work still in flight, is the last word of a driver that was stopped hard.
STATUS_STALE_SECONDS = 60.0
SORTABLE = ("experiment_id", "kind", "status", "agent", "verdict", "val_bpb", "queued_ts", "finished_at", "cost_usd",
            "mean_val_bpb", "n_runs", "delta", "seed", "gpu_class", "sigmas", "seeds", "gpu_seconds")
# The runs table's columns (the page picks which to show; the CSV has them all), in order
TABLE_FIELDS = ("experiment_id", "kind", "status", "agent", "description", "val_bpb", "mean_val_bpb", "n_runs",
                "delta", "verdict", "seed", "gpu_class", "queued_ts", "finished_at", "cost_usd", "replicate_of")
# A top-level constant of train.py: NAME = a number, or simple arithmetic of numbers (2**19, 6e-4 * 2). Matched
# from the newline before it (a literal first character lets the regex engine skip ahead: 6x faster than ``^`` with
# re.M, which mattered at 10,000 files); constants_of puts a newline at both ends of the text. The value is taken
# greedily and stripped after: a lazy value followed by optional blanks could match a long run of blanks in n^2
# ways, and train.py is agent-written (a line of 5,000 spaces took 1.8 s).
_CONSTANT_RE = re.compile(r"\n([A-Z][A-Z0-9_]*)[ \t]*(?::[ \t]*(?:int|float)[ \t]*)?="
                          r"[ \t]*([0-9.eE+\-*/() \t_]+)(?:#[^\n]*)?(?=\n)")
_ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
               ast.Pow: operator.pow, ast.USub: operator.neg, ast.UAdd: operator.pos}
_DELTA_RE = re.compile(r"vs main -?\d+(?:\.\d+)? \(n=\d+\)(?: on \S+?)?: ([+-]\d+(?:\.\d+)?)")
FILTERABLE = ("status", "kind", "agent", "verdict")
# Columns of the runs table computed only when a page asks for them (chosen, sorted by, or the CSV): the judge's
# sigmas, the seeds a file ran on, GPU-seconds; and one per constant a change changed (``const:NAME``). The first
# load asks for none of them.
LAZY_FIELDS = ("sigmas", "seeds", "gpu_seconds")
CONSTANT_PREFIX = "const:"
MAX_SEEDS_SHOWN = 32
MAX_PAGE = 500
_MARGIN_RE = re.compile(r"margin (-?\d+(?:\.\d+)?)")
MAIN_RE = re.compile(r"vs main (-?\d+(?:\.\d+)?) \(n=(\d+)\)(?: on (\S+?):)?")
_MERGE_OF_RE = re.compile(r"^merge of ([A-Za-z0-9][A-Za-z0-9_.-]{0,62}):")
_ROW_FIELDS = (
    "experiment_id", "kind", "status", "agent", "description", "val_bpb", "verdict", "reason", "commit",
    "parent_commit", "branch", "train_sha", "gpu_class", "node", "seed", "replicate_of", "attempt",
    "training_seconds", "total_seconds", "startup_seconds", "eval_seconds", "peak_memory_mb", "mfu_percent",
    "num_steps", "num_params_M", "profile", "tokens_in", "tokens_out", "cost_usd", "queued_ts", "started_ts",
    "finished_at", "events", "stage",
)  # fmt: skip


def clean(value: object) -> object:
    """JSON-safe: NaN and infinities become null (json.dumps would write invalid JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def show_value(value: object) -> str:
    """A ledger value as a cell shows it: floats to 6 digits, nothing for null (the template escapes the text)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}" if abs(value) >= 1e4 or value != value else f"{value:.6f}".rstrip("0").rstrip(".")
    return str(value)


def to_json(value: object) -> bytes:
    return json.dumps(clean(value), separators=(",", ":")).encode()


def column(table: pa.Table, name: str) -> list:
    return table.column(name).to_pylist()


@dataclass
class MainLine:
    """Main over time: which train.py it held, which experiments put it there, its level and noise."""

    promotions: list[tuple[float, str]]  # (verdict time, experiment id), in order
    main_sha_at_start: str | None
    level: list[dict]  # {t, mean, sd, n, sha}: main's mean after each change to it
    values_by_sha: dict[str, list[tuple[float, float, str]]] = field(default_factory=dict)  # sha -> (t, val, id)

    def sha_at(self, t: float, sha_of: dict[str, str | None]) -> str | None:
        """main's train.py sha just before ``t`` (a promotion at ``t`` is the decision itself, not its reference)."""
        sha = self.main_sha_at_start
        for when, eid in self.promotions:
            if when >= t:
                break
            sha = sha_of.get(eid) or sha
        return sha


class RunState:
    """Everything the pages need from one snapshot; each part computed on first use and kept."""

    def __init__(self, snapshot: Snapshot, repo: RepoView, run_dir: Path) -> None:
        self.snapshot, self.repo, self.run_dir = snapshot, repo, run_dir
        self.latest = snapshot.latest
        self._lock = threading.Lock()
        self._lineage: dict[tuple, bytes] = {}
        self._lazy: dict[str, pa.Array] = {}

    @property
    def version(self) -> int:
        return self.snapshot.version

    @cached_property
    def index(self) -> dict[str, int]:
        return {eid: i for i, eid in enumerate(column(self.latest, "experiment_id"))}

    @cached_property
    def cols(self) -> dict[str, list]:
        """The latest table as Python lists, per column (one conversion, shared by every page)."""
        return {name: column(self.latest, name) for name in self.latest.column_names}

    def row(self, eid: str) -> dict | None:
        i = self.index.get(eid)
        if i is None:
            return None
        return {name: self.cols[name][i] for name in _ROW_FIELDS if name in self.cols}

    # -- main, promotions, noise ---------------------------------------------------------

    @cached_property
    def main_line(self) -> MainLine:
        ev = self.snapshot.events
        promote = pc.and_(pc.equal(ev.column("event"), "verdict"), pc.equal(ev.column("verdict"), "promote"))
        verdicts = ev.filter(pc.fill_null(promote, False))
        moved = pc.is_valid(verdicts.column("commit"))  # the promotions that moved main carry its new commit; the
        if pc.any(moved).as_py():  # parts of a stage (policy stack) land without one. Older ledgers: none has it
            verdicts = verdicts.filter(moved)
        # the tournament's "promote" decision, then the promotion that moved main: one promotion, at the decision
        promotions, once = [], set()
        for t, eid in zip(column(verdicts, "ts"), column(verdicts, "experiment_id"), strict=True):
            if eid not in once:
                once.add(eid)
                promotions.append((t, eid))
        c = self.cols
        sha_of = dict(zip(c["experiment_id"], c["train_sha"], strict=True))
        first_baseline = next((s for k, s in zip(c["kind"], c["train_sha"], strict=True) if k == "baseline"), None)
        # every ok, non-screening run, in finish order: main's values come from these
        runs = sorted(
            (t, v, s, e) for t, v, s, e, k, st in
            zip(c["finished_at"], c["val_bpb"], c["train_sha"], c["experiment_id"], c["kind"], c["status"], strict=True)
            if st == "ok" and v is not None and t is not None and k not in CHANGE_KINDS
        )  # fmt: skip
        values: dict[str, list[tuple[float, float, str]]] = {}
        for t, v, s, e in runs:
            values.setdefault(s, []).append((t, v, e))
        # a promoted candidate's own runs (its screening run included): main's level until main is re-measured,
        # as the promotion's Farm-Val-Bpb trailer records it
        every_run: dict[str, list[float]] = {}
        for v, s, st in zip(c["val_bpb"], c["train_sha"], c["status"], strict=True):
            if st == "ok" and v is not None:
                every_run.setdefault(s, []).append(v)
        timeline = sorted([(t, 0, s, v) for t, v, s, _ in runs] + [(t, 1, sha_of.get(e), None) for t, e in promotions],
                          key=lambda x: (x[0], x[1]))
        sha, seen, level, sd = first_baseline, {}, [], None
        for t, is_promotion, s, v in timeline:
            if is_promotion:
                sha = s or sha
            else:
                seen.setdefault(s, []).append(v)
                if s != sha:
                    continue
            mine = seen.get(sha, []) or every_run.get(sha or "", [])
            if not mine:
                continue
            mean = sum(mine) / len(mine)
            if len(mine) >= 2 and seen.get(sha):
                sd = float(np.std(mine, ddof=1))
            level.append({"t": t, "mean": mean, "sd": sd, "n": len(seen.get(sha, [])), "sha": sha})
        ts = self.snapshot.events.column("ts")
        end = pc.max(ts).as_py() if len(ts) else None
        if level and end is not None and end > level[-1]["t"]:  # main holds until now
            level.append({**level[-1], "t": end})
        return MainLine(promotions, first_baseline, level, values)

    @cached_property
    def promoted(self) -> list[str]:
        return [eid for _, eid in self.main_line.promotions]

    # -- overview -------------------------------------------------------------------------

    @cached_property
    def overview(self) -> bytes:
        c = self.cols
        ok = [i for i, (s, v, t) in enumerate(zip(c["status"], c["val_bpb"], c["finished_at"], strict=True))
              if s == "ok" and v is not None and t is not None]
        ok.sort(key=lambda i: c["finished_at"][i])
        xs = [c["finished_at"][i] for i in ok]
        ys = [c["val_bpb"][i] for i in ok]
        best = np.minimum.accumulate(np.array(ys, dtype=float)).tolist() if ys else []
        counts: dict[str, int] = {}
        for s in c["status"]:
            counts[s or "?"] = counts.get(s or "?", 0) + 1
        kinds: dict[str, int] = {}
        for k in c["kind"]:
            kinds[k or "?"] = kinds.get(k or "?", 0) + 1
        main_level = self.main_line.level
        best_val = min(ys) if ys else None
        return to_json({
            "version": self.version,
            "experiments": self.latest.num_rows,
            "points": {"t": xs, "val_bpb": ys, "id": [c["experiment_id"][i] for i in ok],
                       "kind": [c["kind"][i] for i in ok]},
            "best": _steps(xs, best),
            "main": {"t": [p["t"] for p in main_level], "mean": [p["mean"] for p in main_level],
                     "sd": [p["sd"] for p in main_level], "n": [p["n"] for p in main_level]},
            "by_status": dict(sorted(counts.items())),
            "by_kind": dict(sorted(kinds.items())),
            "promotions": len(self.promoted),
            "promoted": self.promotion_marks,
            "best_val_bpb": best_val,
            "main_val_bpb": main_level[-1]["mean"] if main_level else None,
            "noise_sd": main_level[-1]["sd"] if main_level else None,
            "gpu": self.gpu_duty,
            "spend": self.spend,
            "filters": self.filter_values,
        })  # fmt: skip

    @cached_property
    def promotion_marks(self) -> dict:
        """Where main moved, for markers on the progress chart: each promotion's time, id and main's level just
        after it (the mean the chart's main line steps to)."""
        level = self.main_line.level
        out: dict[str, list] = {"t": [], "id": [], "val_bpb": []}
        for t, eid in self.main_line.promotions:
            after = next((p["mean"] for p in level if p["t"] >= t), level[-1]["mean"] if level else None)
            out["t"].append(t)
            out["id"].append(eid)
            out["val_bpb"].append(after)
        return out

    @cached_property
    def gpu_duty(self) -> dict:
        """Busy GPU seconds (dispatch to result, as farm_gpu_busy_seconds_total counts) over slots x wall."""
        c = self.cols
        busy = sum(f - s for s, f in zip(c["started_ts"], c["finished_ts"], strict=True)
                   if s is not None and f is not None and f >= s)
        ts = self.snapshot.events.column("ts")
        wall = (pc.max(ts).as_py() - pc.min(ts).as_py()) if len(ts) else 0.0
        slots = _configured_gpus(self.run_dir) or _peak_concurrency(c["started_ts"], c["finished_ts"])
        duty = busy / (wall * slots) if wall > 0 and slots else None
        running = sum(1 for s in c["status"] if s == "running")
        return {"busy_seconds": busy, "wall_seconds": wall, "slots": slots, "duty": duty, "running": running}

    @cached_property
    def spend(self) -> dict:
        """LLM tokens and USD: queued candidates, refused proposals and failed requests (FarmState.rebuild's rule)."""
        ev = self.snapshot.events
        queued = pc.and_kleene(pc.equal(ev.column("event"), "queued"), pc.equal(ev.column("kind"), "candidate"))
        charged = pc.or_kleene(queued, pc.is_in(ev.column("event"), pa.array(SPEND_ONLY_EVENTS)))
        rows = ev.filter(pc.fill_null(charged, False)).select(["agent", "tokens_in", "tokens_out", "cost_usd"])
        rows = rows.set_column(0, "agent", pc.fill_null(rows.column("agent"), "?"))
        grouped = rows.group_by("agent").aggregate([("tokens_in", "sum"), ("tokens_out", "sum"), ("cost_usd", "sum"),
                                                    ("agent", "count")])
        agents = {r["agent"]: {"tokens_in": r["tokens_in_sum"] or 0, "tokens_out": r["tokens_out_sum"] or 0,
                               "cost_usd": r["cost_usd_sum"] or 0.0, "proposals": r["agent_count"]}
                  for r in grouped.to_pylist()}
        total = {k: sum(a[k] for a in agents.values()) for k in ("tokens_in", "tokens_out", "cost_usd", "proposals")}
        return {**total, "agents": dict(sorted(agents.items()))}

    @cached_property
    def filter_values(self) -> dict[str, list[str]]:
        return {name: sorted({v for v in self.cols[name] if v}) for name in FILTERABLE}

    # -- the runs table ----------------------------------------------------------------------

    @cached_property
    def table(self) -> pa.Table:
        """The latest table plus what a researcher sorts by: each change's replicate mean and run count (its own
        run and its confirmations: what its verdict weighs) and the difference from main its verdict judged."""
        c = self.cols
        runs: dict[str, list[float]] = {}
        for e, r, st, v in zip(c["experiment_id"], c["replicate_of"], c["status"], c["val_bpb"], strict=True):
            if st == "ok" and v is not None:
                runs.setdefault(r or e, []).append(v)
        means = [sum(runs[e]) / len(runs[e]) if e in runs else None for e in c["experiment_id"]]
        counts = [len(runs.get(e, ())) for e in c["experiment_id"]]
        deltas = []
        for reason, verdict in zip(c["reason"], c["verdict"], strict=True):
            m = _DELTA_RE.search(reason or "") if verdict else None
            deltas.append(float(m.group(1)) if m else None)
        return (self.latest.append_column("mean_val_bpb", pa.array(means, pa.float64()))
                .append_column("n_runs", pa.array(counts, pa.int64()))
                .append_column("delta", pa.array(deltas, pa.float64())))

    def lazy_column(self, name: str) -> pa.Array | None:
        """One of the columns computed on demand (LAZY_FIELDS, or ``const:NAME``), aligned with the table's rows;
        None for an unknown name. Each is computed once per ledger version."""
        with self._lock:
            if name in self._lazy:
                return self._lazy[name]
        if name == "sigmas":
            from cluster.ui.compare import sigmas  # compare builds on this module

            array = pa.array(sigmas(self), pa.float64())
        elif name == "seeds":
            array = pa.array(self._seeds_of_files, pa.string())
        elif name == "gpu_seconds":
            c = self.cols
            array = pa.array([f - s if s is not None and f is not None and f >= s else None
                              for s, f in zip(c["started_ts"], c["finished_ts"], strict=True)], pa.float64())
        elif name.startswith(CONSTANT_PREFIX) and name[len(CONSTANT_PREFIX):] in self.constant_values[0]:
            key = name[len(CONSTANT_PREFIX):]
            values = self.constant_values[1]
            array = pa.array([values.get(e, ({}, []))[0].get(key) for e in self.cols["experiment_id"]], pa.float64())
        else:
            return None
        with self._lock:
            self._lazy[name] = array
        return array

    def lazy_names(self, names: list[str]) -> list[str]:
        """The names among ``names`` that are columns computed on demand (unknown ones left out), each once."""
        out = []
        for name in names:
            known = name in LAZY_FIELDS or (name.startswith(CONSTANT_PREFIX)
                                            and name[len(CONSTANT_PREFIX):] in self.constant_values[0])
            if known and name not in out:
                out.append(name)
        return out

    def select(self, filters: dict[str, str], q: str, sort: str, descending: bool,
               extra: tuple[str, ...] | list[str] = ()) -> pa.Table:
        """The runs table filtered (exact values, ``-`` for none; text in id or description) and sorted, whole;
        with the on-demand columns ``extra`` (and the one sorted by) appended."""
        table = self.table
        wanted = list(extra) + ([sort] if sort in LAZY_FIELDS or sort.startswith(CONSTANT_PREFIX) else [])
        for name in self.lazy_names(wanted):
            array = self.lazy_column(name)
            if array is not None:
                table = table.append_column(name, array)
        mask = None
        for name, value in filters.items():
            if name in FILTERABLE and value:
                term = pc.equal(table.column(name), value) if value != "-" else pc.is_null(table.column(name))
                mask = term if mask is None else pc.and_(mask, term)
        if q:
            found = pc.or_(pc.match_substring(table.column("experiment_id"), q, ignore_case=True),
                           pc.match_substring(pc.fill_null(table.column("description"), ""), q, ignore_case=True))
            mask = found if mask is None else pc.and_(mask, found)
        if mask is not None:
            table = table.filter(pc.fill_null(mask, False))
        sort = sort if sort in SORTABLE or sort in table.column_names and sort.startswith(CONSTANT_PREFIX) \
            else "queued_ts"
        order = "descending" if descending else "ascending"
        return table.sort_by([(sort, order), ("queued_ts", order)])  # nulls last either way

    def runs(self, filters: dict[str, str], q: str, sort: str, descending: bool, offset: int, limit: int,
             extra: list[str] | tuple[str, ...] = ()) -> bytes:
        """One page of the runs table, filtered and sorted on the whole run (not only the page), with the
        on-demand columns the page shows (``extra``)."""
        extra = self.lazy_names(list(extra))
        table = self.select(filters, q, sort, descending, extra)
        limit = max(1, min(limit, MAX_PAGE))
        page = table.slice(max(0, offset), limit)
        rows = page.select(list(TABLE_FIELDS) + extra).to_pylist()
        for r in rows:
            r["description"] = (r["description"] or "")[:300]
        if any(name.startswith(CONSTANT_PREFIX) for name in extra):  # which constants each change set differently
            values = self.constant_values[1]
            for r in rows:
                r["const_changed"] = values.get(r["experiment_id"], ({}, []))[1]
        return to_json({"version": self.version, "total": table.num_rows, "offset": offset, "rows": rows})

    @cached_property
    def _seeds_of_files(self) -> list[str | None]:
        """Each row's "seeds": the seeds its train.py (the file, by sha) ran on in ok runs, in any experiment
        (its own run, its confirmations, main's baselines of it), ascending; at most MAX_SEEDS_SHOWN named."""
        c = self.cols
        seeds: dict[str, set[int]] = {}
        for sha, seed, st in zip(c["train_sha"], c["seed"], c["status"], strict=True):
            if sha and seed is not None and st == "ok":
                seeds.setdefault(sha, set()).add(seed)
        text: dict[str, str] = {}
        for sha, found in seeds.items():
            ordered = sorted(found)
            shown = " ".join(str(s) for s in ordered[:MAX_SEEDS_SHOWN])
            text[sha] = shown + (f" (+{len(ordered) - MAX_SEEDS_SHOWN} more)" if len(ordered) > MAX_SEEDS_SHOWN else "")
        return [text.get(sha) if sha else None for sha in c["train_sha"]]

    # -- constants as data ------------------------------------------------------------------

    @cached_property
    def constant_values(self) -> tuple[list[str], dict[str, tuple[dict[str, float], list[str]]], dict[str, int]]:
        """The constants of every change's train.py that experiments set to more than one value, most often
        changed first; per change (id, in table order) its values of them and those it set differently from the
        file it was proposed from; and how many changes changed each. Shared by /constants and the runs table."""
        c = self.cols
        rows = [i for i, k in enumerate(c["kind"]) if k in CHANGE_KINDS and c["commit"][i]]
        commits = [c["commit"][i] for i in rows] + [c["parent_commit"][i] for i in rows if c["parent_commit"][i]]
        parsed = self.repo.parse_train_files(commits, constants_of)
        seen: dict[str, set[float]] = {}
        for commit in {c["commit"][i] for i in rows}:
            for name, v in parsed.get(commit, {}).items():
                seen.setdefault(name, set()).add(v)
        names = [n for n, found in seen.items() if len(found) > 1]
        changed_count = dict.fromkeys(names, 0)
        values: dict[str, tuple[dict[str, float], list[str]]] = {}
        for i in rows:
            mine, parent = parsed.get(c["commit"][i], {}), parsed.get(c["parent_commit"][i] or "", {})
            changed = [n for n in names if n in mine and parent and mine.get(n) != parent.get(n)]
            for n in changed:
                changed_count[n] += 1
            values[c["experiment_id"][i]] = ({n: mine[n] for n in names if n in mine}, changed)
        names.sort(key=lambda n: (-changed_count[n], n))
        return names, values, changed_count

    @cached_property
    def constants(self) -> bytes:
        """Each change's numeric train.py constants, for a per-constant slice (value against the mean of its runs,
        with its runs' sd) and a table with one column per constant: Optuna Dashboard's view of a search.

        A constant is listed when experiments set it to more than one value; ``changed`` names those a change
        set differently from the file it was proposed from. Read from the repo with one batched git call (only
        commits not read before), parsed with a regex and a literal-only arithmetic evaluator: nothing is run.
        """
        c, table = self.cols, self.table
        mean, count = column(table, "mean_val_bpb"), column(table, "n_runs")
        names, values, changed_count = self.constant_values
        runs: dict[str, list[float]] = {}
        for e, r, st, v in zip(c["experiment_id"], c["replicate_of"], c["status"], c["val_bpb"], strict=True):
            if st == "ok" and v is not None:
                runs.setdefault(r or e, []).append(v)
        out = []
        for i in (self.index[eid] for eid in values):
            eid = c["experiment_id"][i]
            mine, changed = values[eid]
            values_run = runs.get(eid, [])
            noise = self.noise.get(c["gpu_class"][i] or "cpu")
            out.append({"id": eid, "kind": c["kind"][i], "verdict": c["verdict"][i], "status": c["status"][i],
                        "mean": mean[i], "n": count[i],
                        "sd": float(np.std(values_run, ddof=1)) if len(values_run) >= 2 else None,
                        # the standard error of its mean as the judge sees it: the noise sd pooled on its GPU
                        # class over the square root of its run count (a sample sd of two runs says little)
                        "se": noise[0] / math.sqrt(count[i]) if noise and count[i] else None,
                        "values": mine, "changed": changed})
        level = self.main_line.level
        return to_json({"version": self.version, "names": names, "changed": changed_count, "rows": out,
                        "noise_sd": level[-1]["sd"] if level else None, "promoted": self.promoted,
                        "main_mean": level[-1]["mean"] if level else None,
                        "repo": self.repo.available})

    # -- one experiment --------------------------------------------------------------------

    def events_of(self, eid: str) -> list[dict]:
        ev = self.snapshot.events
        mine = ev.filter(pc.equal(ev.column("experiment_id"), eid))
        return mine.select(["event", "ts", "status", "verdict", "reason", "val_bpb", "seq"]).to_pylist()

    def replicates_of(self, eid: str) -> list[dict]:
        """The candidate's own run first, then every confirmation run of it (replicate_of == eid)."""
        c = self.cols
        out = []
        own = self.row(eid)
        if own:
            out.append(own)
        for i, r in enumerate(c["replicate_of"]):
            if r == eid:
                out.append(self.row(c["experiment_id"][i]))
        return out

    def verdicts_of(self, eid: str) -> list[dict]:
        """The experiment's verdicts as a reader should see them: one promotion listed once.

        The driver books a promotion twice: the tournament's ``promote`` decision (reason R), then the move of main
        (``main <- abc1234: R``). The second says all the first does, so the first is left out.
        """
        verdicts = [e for e in self.events_of(eid) if e["event"] == "verdict"]
        out = []
        for i, v in enumerate(verdicts):
            after = verdicts[i + 1] if i + 1 < len(verdicts) else None
            if (after and after["verdict"] == v["verdict"] and v["reason"] and after["reason"]
                    and after["reason"].endswith(v["reason"])):
                continue
            out.append(v)
        return out

    @cached_property
    def _history(self) -> tuple[list[tuple[int, float, str]], list[tuple[int, str, str, str, float, float]]]:
        """The ledger replayed as the driver applied it (FarmState.apply), in append order: (seq, time, main's new
        train.py sha) at every promotion that moved main, and (seq, id, sha, gpu class, finish time, val_bpb) of
        every ok run that is not a change's screening run (a baseline or a confirmation: what main's mean is of)."""
        ev = self.snapshot.events
        c = self.cols
        sha_of = dict(zip(c["experiment_id"], c["train_sha"], strict=True))
        kind_of = dict(zip(c["experiment_id"], c["kind"], strict=True))
        is_promote = pc.fill_null(pc.and_(pc.equal(ev.column("event"), "verdict"),
                                          pc.equal(ev.column("verdict"), "promote")), False)
        promote = ev.filter(is_promote).select(["seq", "ts", "experiment_id", "commit", "train_sha"]).to_pylist()
        if any(p["commit"] for p in promote):  # a ledger whose promotions carry main's new commit: only those moved
            promote = [p for p in promote if p["commit"]]
        moves, once = [], set()
        for p in promote:
            if p["experiment_id"] not in once:
                once.add(p["experiment_id"])
                moves.append((p["seq"], p["ts"], p["train_sha"] or sha_of.get(p["experiment_id"]) or ""))
        done = pc.fill_null(pc.and_(pc.equal(ev.column("event"), "finished"), pc.equal(ev.column("status"), "ok")),
                            False)
        finished = ev.filter(done).select(["seq", "experiment_id", "gpu_class", "ts", "val_bpb"]).to_pylist()
        runs = [(f["seq"], f["experiment_id"], sha_of.get(f["experiment_id"]) or "", f["gpu_class"] or "cpu",
                 f["ts"], f["val_bpb"]) for f in finished
                if f["val_bpb"] is not None and kind_of.get(f["experiment_id"]) not in CHANGE_KINDS]
        return moves, runs

    @cached_property
    def noise(self) -> dict[str, tuple[float, int]]:
        """GPU class -> (pooled sd, degrees of freedom) of repeated runs of one file, the judge's noise model
        (cluster/decisions/tournament.py noise_models): the non-screening ok runs grouped by train.py, each group's
        squared deviations from its mean pooled; a class with no file run twice is absent."""
        groups: dict[tuple[str, str], list[float]] = {}
        for _, _, sha, gpu, _, v in self._history[1]:
            groups.setdefault((gpu, sha), []).append(v)
        pooled: dict[str, list[float]] = {}
        for (gpu, _), values in groups.items():
            if len(values) >= 2:
                mean = sum(values) / len(values)
                ss, df = pooled.setdefault(gpu, [0.0, 0])
                pooled[gpu] = [ss + sum((v - mean) ** 2 for v in values), df + len(values) - 1]
        return {gpu: (math.sqrt(ss / df), int(df)) for gpu, (ss, df) in pooled.items() if df > 0}

    def _main_sha_before(self, seq: int, ts: float) -> str | None:
        """main's train.py sha as the driver held it just before ledger row ``seq`` (written at ``ts``)."""
        sha = self.main_line.main_sha_at_start
        for at, when, moved_to in self._history[0]:
            if at < seq and when <= ts:
                sha = moved_to or sha
        return sha

    def _runs_of(self, sha: str | None, gpu: str, before: int, ts: float) -> list[dict]:
        """The non-screening ok runs of ``sha`` on ``gpu`` booked before ledger row ``before`` and time ``ts`` (the
        driver appends as things happen, so both hold; a ledger written out of order, like the bench's, is
        still read right)."""
        c = self.cols
        return [{"experiment_id": e, "val_bpb": v, "t": t, "seed": c["seed"][self.index[e]],
                 "kind": c["kind"][self.index[e]]}
                for seq, e, s, g, t, v in self._history[1] if seq < before and t <= ts and s == sha and g == gpu]

    def decision(self, eid: str, verdicts: list[dict]) -> dict:
        """What decided and against what: the runs the judgement compared this experiment with, as of it.

        The reference's runs are found by replaying the ledger up to the deciding verdict (main then, not main
        now); the reason's ``vs main M (n=N) on GPU`` names the count and class, which tells main from the
        candidate's former-main parent (``judge_against: parent``). Its own runs are those booked before it.
        """
        row = self.row(eid) or {}
        events = [e for e in self.events_of(eid) if e["event"] == "verdict"]
        decisive = next((v for v in reversed(events) if v["reason"] and MAIN_RE.search(v["reason"])), None)
        decisive = decisive or next((v for v in reversed(events) if v["reason"] and _MARGIN_RE.search(v["reason"])),
                                    None)
        at = decisive["seq"] if decisive else self.snapshot.events.num_rows
        at_ts = decisive["ts"] if decisive else math.inf
        gpu = row.get("gpu_class") or "cpu"
        margin = main_mean = n_main = None
        if decisive:
            m = _MARGIN_RE.search(decisive["reason"])
            margin = float(m.group(1)) if m else None
            m = MAIN_RE.search(decisive["reason"])
            if m:
                main_mean, n_main, gpu = float(m.group(1)), int(m.group(2)), m.group(3) or gpu
        main_sha = row.get("train_sha") if row.get("kind") == "baseline" else self._main_sha_before(at, at_ts)
        choices = [("main", main_sha, self._runs_of(main_sha, gpu, at, at_ts))]
        parent_sha = self._sha_of_commit(row.get("parent_commit")) if row.get("kind") in CHANGE_KINDS else None
        if parent_sha and parent_sha != main_sha:
            choices.append(("parent", parent_sha, self._runs_of(parent_sha, gpu, at, at_ts)))

        def fits(choice: tuple[str, str | None, list[dict]]) -> int:
            """How well a reference's runs fit the reason: its count (2), its mean to the reason's 4 decimals (1);
            a paired comparison's 'main' is implied by the pairs, so only the count can fit."""
            runs = choice[2]
            if n_main is None or not runs:
                return 0
            mean = sum(r["val_bpb"] for r in runs) / len(runs)
            return 2 * (len(runs) == n_main) + (main_mean is not None and abs(mean - main_mean) < 6e-5)

        reference, main_sha, baselines = max(choices, key=fits)  # the first (main) on a tie
        if main_mean is None and baselines:
            main_mean = sum(b["val_bpb"] for b in baselines) / len(baselines)
        return {"main_sha": main_sha, "reference": reference, "baselines": baselines, "margin": margin,
                "main_mean": main_mean, "gpu_class": gpu,
                "verdict": decisive["verdict"] if decisive else row.get("verdict"),
                "reason": decisive["reason"] if decisive else None}

    def _sha_of_commit(self, commit: str | None) -> str | None:
        """The train.py sha of a commit some experiment ran (a candidate's, or main's through its baselines)."""
        if not commit:
            return None
        c = self.cols
        return next((s for k, s in zip(c["commit"], c["train_sha"], strict=True) if k == commit and s), None)

    def fate(self, eid: str) -> dict:
        """Where an experiment's change ended up, following merges: ``on_main`` (and ``via``, the merge or stage
        that carried it there), or what it waits for; for a replicate, the decision it fed.

        A candidate main had moved on from is merged as a new experiment (``merging``; the policy stack's
        ``staged``): its change reaches main when that merge is promoted, which its own verdicts never say.
        """
        row = self.row(eid) or {}
        if row.get("replicate_of"):
            fed = self.row(row["replicate_of"]) or {}
            return {"fed": row["replicate_of"], "fed_verdict": fed.get("verdict")}
        promoted = set(self.promoted)
        seen: set[str] = set()
        current, via = eid, None
        while current not in seen:
            seen.add(current)
            r = self.row(current) or {}
            verdict = r.get("verdict")
            if current in promoted or verdict in KEEP_VERDICTS:
                return {"on_main": True, "via": via}
            nxt = self._carried_by(current, r)
            if nxt is None:
                return {"on_main": False, "via": via, "waits": verdict in ("merging", "staged"),
                        "last": verdict}
            current = via = nxt
        return {"on_main": False, "via": via}

    def _carried_by(self, eid: str, row: dict) -> str | None:
        """The merge (or the stack's stage) that carries ``eid``'s change towards main, if any."""
        if row.get("verdict") == "staged" and row.get("stage") in self.index:
            return row["stage"]
        if row.get("verdict") != "merging":
            return None
        return self._merges.get(eid)

    @cached_property
    def _merges(self) -> dict[str, str]:
        """candidate id -> its last merge experiment (from the farm-written ``merge of <id>:`` description)."""
        c, out = self.cols, {}
        for e, k, d in zip(c["experiment_id"], c["kind"], c["description"], strict=True):
            m = _MERGE_OF_RE.match(d or "") if k == "merge" else None
            if m:
                out[m.group(1)] = e
        return out

    def children_of(self, commit: str | None) -> list[str]:
        if not commit:
            return []
        c = self.cols
        return [e for e, p, k in zip(c["experiment_id"], c["parent_commit"], c["kind"], strict=True)
                if p == commit and k in ("candidate", "merge")]

    def merged_from(self, row: dict) -> str | None:
        """For a merge experiment: the candidate it merges onto main (from the farm-written description)."""
        m = _MERGE_OF_RE.match(row.get("description") or "") if row.get("kind") == "merge" else None
        return m.group(1) if m and m.group(1) in self.index else None

    def lineage(self, key: tuple, build) -> bytes:
        with self._lock:
            if key not in self._lineage:
                if len(self._lineage) > 16:
                    self._lineage.clear()
                self._lineage[key] = build()
            return self._lineage[key]


def run_status(run_dir: Path, now: float | None = None) -> dict:
    """Whether the run is live, stopping or finished, from the driver's RUN/status.json (not the ledger, which
    cannot say that no more rows will come): a stop reason with nothing in flight is a finished run."""
    try:
        text, cut = read_beneath(run_dir, [STATUS_FILE])
        status = json.loads(text) if not cut else {}
        mtime = os.stat(run_dir / STATUS_FILE, follow_symlinks=False).st_mtime
    except (UnsafeFile, OSError, ValueError):
        return {"state": "live", "reason": "", "known": False}
    if not isinstance(status, dict):
        return {"state": "live", "reason": "", "known": False}
    stopping = str(status.get("stopping") or "")
    failure = str(status.get("failure") or "")
    stale = (time.time() if now is None else now) - mtime > STATUS_STALE_SECONDS
    if stopping and (not status.get("gpus_busy") or stale):
        state = "finished"
    elif stopping:
        state = "stopping"
    else:
        state = "quiet" if stale else "live"
    return {"state": state, "reason": stopping, "failure": failure, "known": True, "updated": mtime}


@functools.lru_cache(maxsize=65536)
def _number(text: str) -> float | None:
    """The value of a numeric literal or simple arithmetic of literals (no names, no calls: agent-written code is
    parsed, never run); None otherwise or when it is huge. Cached: the same few literals recur in every file (at
    10,000 files, 200,000 parses were most of the first read of the constants)."""
    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
            return float(node.value)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _ARITHMETIC:
            return _ARITHMETIC[type(node.op)](value(node.operand))
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Pow) and (abs(right) > 64 or abs(left) > 1e6):
                raise ValueError("too large")
            return _ARITHMETIC[type(node.op)](left, right)
        raise ValueError("not arithmetic of numbers")

    if len(text) > 60:
        return None
    try:
        result = value(ast.parse(text.strip(), mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, TypeError, RecursionError):
        return None
    return result if math.isfinite(result) else None


def constants_of(source: str) -> dict[str, float]:
    """The numeric top-level constants of a train.py (``DEPTH = 8``, ``LR: float = 6e-4``), the last assignment
    of a name winning, as Python would leave it."""
    out = {}
    for name, text in _CONSTANT_RE.findall("\n" + source + "\n"):
        number = _number(text.strip())
        if number is not None:
            out[name] = number
    return out


def _steps(ts: list[float], best: list[float]) -> dict:
    """A running minimum as its steps only (each improvement, and the last time): drawn as a step line it is the
    same line, in a few dozen points instead of one per run (at 10,000 runs the page draws it 10x faster)."""
    keep = [i for i in range(len(best)) if i == 0 or best[i] < best[i - 1] or i == len(best) - 1]
    return {"t": [ts[i] for i in keep], "val_bpb": [best[i] for i in keep]}


def _configured_gpus(run_dir: Path) -> int | None:
    """The run's GPU slots from RUN/farm-config.json (written by `farm run`), if it says."""
    try:
        value = json.loads((run_dir / "farm-config.json").read_text()).get("gpus")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and value > 0 else None


def _peak_concurrency(starts: list, ends: list) -> int:
    marks = sorted([(s, 1) for s in starts if s is not None] + [(e, -1) for e in ends if e is not None])
    peak = now = 0
    for _, step in marks:
        now += step
        peak = max(peak, now)
    return peak


class RunModel:
    """The run directory, read for the browser: :meth:`state` is rebuilt only when the ledger changed."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.ledger = LedgerView(self.run_dir / "ledger")
        self.repo = RepoView(self.run_dir / "repo")
        self._lock = threading.Lock()
        self._state: RunState | None = None

    def state(self) -> RunState:
        snapshot = self.ledger.snapshot()
        with self._lock:
            if self._state is None or self._state.version != snapshot.version:
                self._state = RunState(snapshot, self.repo, self.run_dir)
            return self._state
