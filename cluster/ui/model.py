"""What the pages show, computed from one ledger snapshot (and the repo): built once per ledger change.

Every number here is derived from the run directory alone, the way the
driver derives it (cluster/state.py): main's level is the mean of the runs
of main's train.py that were not a candidate's screening run, a promotion
is a ``promote`` verdict, the LLM spend is what queued candidates, refused
proposals and failed requests were charged. Nothing here writes.
"""

from __future__ import annotations

import json
import math
import re
import threading
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cluster.ui.ledger_view import LedgerView, Snapshot
from cluster.ui.repo_view import RepoView
from cluster.vocabulary import CHANGE_KINDS, SPEND_ONLY_EVENTS

NOT_DONE = ("queued", "running")
SORTABLE = ("experiment_id", "kind", "status", "agent", "verdict", "val_bpb", "queued_ts", "finished_at", "cost_usd")
FILTERABLE = ("status", "kind", "agent", "verdict")
MAX_PAGE = 500
_MARGIN_RE = re.compile(r"margin (-?\d+(?:\.\d+)?)")
_MAIN_RE = re.compile(r"vs main (-?\d+(?:\.\d+)?) \(n=(\d+)\)")
_MERGE_OF_RE = re.compile(r"^merge of ([A-Za-z0-9][A-Za-z0-9_.-]{0,62}):")
_ROW_FIELDS = (
    "experiment_id", "kind", "status", "agent", "description", "val_bpb", "verdict", "reason", "commit",
    "parent_commit", "branch", "train_sha", "gpu_class", "node", "seed", "replicate_of", "attempt",
    "training_seconds", "total_seconds", "startup_seconds", "eval_seconds", "peak_memory_mb", "mfu_percent",
    "num_steps", "num_params_M", "profile", "tokens_in", "tokens_out", "cost_usd", "queued_ts", "started_ts",
    "finished_at", "events",
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
            "best": {"t": xs, "val_bpb": best},
            "main": {"t": [p["t"] for p in main_level], "mean": [p["mean"] for p in main_level],
                     "sd": [p["sd"] for p in main_level], "n": [p["n"] for p in main_level]},
            "by_status": dict(sorted(counts.items())),
            "by_kind": dict(sorted(kinds.items())),
            "promotions": len(self.promoted),
            "best_val_bpb": best_val,
            "main_val_bpb": main_level[-1]["mean"] if main_level else None,
            "noise_sd": main_level[-1]["sd"] if main_level else None,
            "gpu": self.gpu_duty,
            "spend": self.spend,
            "filters": self.filter_values,
        })  # fmt: skip

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

    def runs(self, filters: dict[str, str], q: str, sort: str, descending: bool, offset: int, limit: int) -> bytes:
        """One page of the runs table, filtered and sorted on the whole run (not only the page)."""
        table = self.latest
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
        sort = sort if sort in SORTABLE else "queued_ts"
        order = "descending" if descending else "ascending"
        table = table.sort_by([(sort, order), ("queued_ts", order)])  # nulls last either way
        limit = max(1, min(limit, MAX_PAGE))
        page = table.slice(max(0, offset), limit)
        fields = ["experiment_id", "kind", "status", "agent", "description", "val_bpb", "verdict", "queued_ts",
                  "finished_at", "cost_usd", "replicate_of"]
        rows = page.select(fields).to_pylist()
        for r in rows:
            r["description"] = (r["description"] or "")[:300]
        return to_json({"version": self.version, "total": table.num_rows, "offset": offset, "rows": rows})

    # -- one experiment --------------------------------------------------------------------

    def events_of(self, eid: str) -> list[dict]:
        ev = self.snapshot.events
        mine = ev.filter(pc.equal(ev.column("experiment_id"), eid))
        return mine.select(["event", "ts", "status", "verdict", "reason", "val_bpb"]).to_pylist()

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

    def decision(self, eid: str, verdicts: list[dict]) -> dict:
        """What decided: main's baselines at the time, the margin and main's mean read from the verdict's reason."""
        row = self.row(eid) or {}
        decisive = next((v for v in reversed(verdicts) if v["reason"] and _MARGIN_RE.search(v["reason"])), None)
        at = decisive["ts"] if decisive else (row.get("finished_at") or math.inf)
        sha_of = dict(zip(self.cols["experiment_id"], self.cols["train_sha"], strict=True))
        # judged against main as it was before this experiment's own promotion (which its later verdicts follow)
        promoted_at = min((v["ts"] for v in verdicts if v["verdict"] == "promote"), default=math.inf)
        main_sha = self.main_line.sha_at(min(at, promoted_at), sha_of)
        if row.get("kind") == "baseline":
            main_sha = row.get("train_sha")
        gpu = row.get("gpu_class")
        baselines = []
        for t, v, e in self.main_line.values_by_sha.get(main_sha or "", []):
            if t <= at and (gpu is None or self.cols["gpu_class"][self.index[e]] in (gpu, None)):
                baselines.append({"experiment_id": e, "val_bpb": v, "t": t,
                                  "kind": self.cols["kind"][self.index[e]]})
        margin = main_mean = None
        if decisive:
            m = _MARGIN_RE.search(decisive["reason"])
            margin = float(m.group(1)) if m else None
            m = _MAIN_RE.search(decisive["reason"])
            main_mean = float(m.group(1)) if m else None
        if main_mean is None and baselines:
            main_mean = sum(b["val_bpb"] for b in baselines) / len(baselines)
        return {"main_sha": main_sha, "baselines": baselines, "margin": margin, "main_mean": main_mean,
                "verdict": decisive["verdict"] if decisive else row.get("verdict"),
                "reason": decisive["reason"] if decisive else None}

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
