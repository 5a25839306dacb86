"""Benchmark of the run browser (`farm ui`): page and API latency on a generated 10,000-experiment run.

    .venv/bin/python -m bench.ui                       # 10,000 experiments, every layout, markdown table
    .venv/bin/python -m bench.ui --experiments 2000 --layouts compacted
    .venv/bin/python -m bench.ui --first-load 30 10000  # the overview's first load in a fresh headless Chromium

The run is generated, not trained: a farm-like history (main measured 4x,
candidates from main or a near-miss, confirmations, promotions, a few
merges and crashes, 8 LLM agents with token costs) written through the
real Ledger, and a real research repo whose experiment commits and main's
promotions are made with `git fast-import` (a commit per experiment through
ResearchRepo would take many minutes). Layouts of the ledger:
``compacted`` (one part: a resumed run), ``per-experiment`` (one part per
experiment), ``per-event`` (one part per event: a live run, ~4 per
experiment). Each layout is timed: the cold first request (ledger read and
folded), then warm requests (median and max of --repeat), then the refresh
after one more experiment is appended while the server runs.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from cluster.records.ledger import Ledger, LedgerRow
from cluster.records.repo import ResearchRepo
from trainer.profiles import get_profile
from trainer.seed import seed_source, set_constants

AGENTS = [f"claude-{i}" for i in range(8)]
KNOBS = {"DEPTH": [2, 3, 4, 5, 6], "MLP_RATIO": [2, 3, 4, 5], "HEAD_DIM": [16, 32, 64],
         "ASPECT_RATIO": [16, 24, 32, 48], "ROPE_BASE": [5000.0, 10000.0, 50000.0]}  # fmt: skip
NOISE = 0.02


def _plan(n: int, rng: random.Random) -> list[dict]:
    """A farm-like history: a list of experiments (dicts) and, per candidate, its verdict events."""
    base = seed_source(get_profile("cpu-tiny"))
    out: list[dict] = []
    main = {"text": base, "ref": "seed", "true": 2.70}
    near: list[dict] = []
    t, slots = 1_800_000_000.0, [1_800_000_000.0] * 8

    def run(exp: dict, true: float) -> None:
        nonlocal t
        t += rng.uniform(5, 40)
        slot = min(range(len(slots)), key=slots.__getitem__)
        start = max(t, slots[slot]) + rng.uniform(0.2, 2)
        duration = rng.uniform(290, 330)
        slots[slot] = start + duration
        crash = exp["kind"] == "candidate" and rng.random() < 0.08
        exp.update(queued=t, started=start, finished=start + duration, status="crash" if crash else "ok",
                   val=None if crash else true + rng.gauss(0, NOISE), seed=rng.randrange(1000))
        out.append(exp)

    def baselines() -> list[float]:
        values = []
        for _ in range(4):
            e = {"kind": "baseline", "ref": main["ref"], "parent": main["ref"], "text": main["text"],
                 "agent": "farm", "description": "baseline: main", "verdicts": []}
            run(e, main["true"])
            values.append(e["val"])
        return values

    main_values = baselines()
    while len(out) < n:
        mean = sum(main_values) / len(main_values)
        parent = main if rng.random() < 0.7 or not near else rng.choice(near[-16:])
        knob = rng.choice(list(KNOBS))
        value = rng.choice(KNOBS[knob])
        text = set_constants(parent["text"], {knob: value})
        if text == parent["text"]:
            continue
        eid_n = len(out) + 1
        cand = {"kind": "candidate", "ref": f"e{eid_n:05d}", "parent": parent["ref"], "text": text,
                "agent": rng.choice(AGENTS), "description": f"{knob} = {value!r}: try {knob.lower()}",
                "verdicts": [], "tokens": (rng.randrange(2000, 20000), rng.randrange(300, 3000))}
        true = parent["true"] + rng.gauss(0.012, 0.02)
        cand["true"] = true
        run(cand, true)
        if cand["status"] != "ok":
            continue
        margin = 2.3 * NOISE * (1 / 2 + 1 / len(main_values)) ** 0.5
        delta = cand["val"] - mean
        if delta > -1.5 * NOISE:
            cand["verdicts"].append(("discard", f"{cand['val']:.4f} (n=1) vs main {mean:.4f} (n={len(main_values)}) "
                                     f"on cpu: {delta:+.4f} does not beat margin {margin:.4f} (2.3 sigma, sd {NOISE})"))
            if delta < margin:
                near.append(cand)
            continue
        cand["verdicts"].append(("confirm", f"{cand['val']:.4f} (n=1) vs main {mean:.4f}: confirm x1 on other seeds"))
        conf = {"kind": "confirm", "ref": cand["ref"], "parent": cand["parent"], "text": text, "agent": cand["agent"],
                "description": f"confirm {cand['ref']}: {cand['description']}", "verdicts": [],
                "replicate_of": cand["ref"]}
        run(conf, true)
        both = (cand["val"] + conf["val"]) / 2
        delta = both - mean
        numbers = f"{both:.4f} (n=2) vs main {mean:.4f} (n={len(main_values)}) on cpu: {delta:+.4f}"
        if delta < -margin and parent is main:
            cand["verdicts"].append(("promote", f"main <- x: {numbers} beats margin {margin:.4f} (2.3 sigma)"))
            cand["promote"] = True
            main = {"text": text, "ref": f"main-after-{cand['ref']}", "true": true, "promoted": cand["ref"]}
            near.clear()
            main_values = baselines()
        else:
            cand["verdicts"].append(("discard", f"did not reproduce: {numbers} does not beat margin {margin:.4f}"))
    return out[:n]


def _ids(plan: list[dict]) -> None:
    for i, e in enumerate(plan, 1):
        e["id"] = f"e{i:05d}"


def _write_repo(run_dir: Path, plan: list[dict]) -> dict[str, str]:
    """The research repo: seed + one commit per candidate (exp/<id>) + main's promotions; ref -> sha."""
    base = seed_source(get_profile("cpu-tiny"))
    repo = ResearchRepo.create(run_dir / "repo", base, "# program\n")
    seed = repo.main_head()
    marks_file = run_dir / "marks"
    stream: list[bytes] = []
    mark_of: dict[str, int] = {}
    next_mark = 1

    def data(text: str) -> bytes:
        raw = text.encode()
        return b"data %d\n" % len(raw) + raw + b"\n"

    def commit(ref: str, parent: str, text: str, message: str, key: str) -> None:
        nonlocal next_mark
        mark_of[key] = next_mark
        src = f":{mark_of[parent]}" if parent in mark_of else seed
        stream.append(f"commit {ref}\nmark :{next_mark}\ncommitter farm <farm@x.invalid> 1800000000 +0000\n".encode()
                      + data(message) + f"from {src}\nM 100644 inline train.py\n".encode() + data(text)
                      + b"M 100644 inline program.md\n" + data("# program\n"))
        next_mark += 1

    main_tip = "seed"
    for e in plan:
        if e["kind"] not in ("candidate", "merge"):
            continue
        message = f"{e['description']}\n\nFarm-Experiment: {e['id']}\n"
        commit(f"refs/heads/exp/{e['id']}", e["parent"], e["text"], message, e["ref"])
        if e.get("promote"):
            key = f"main-after-{e['ref']}"
            val = (e["val"] or 0)
            commit("refs/heads/main", main_tip, e["text"],
                   f"{e['description']}\n\nFarm-Experiment: {e['id']}\nFarm-Val-Bpb: {val:.6f}\n", key)
            main_tip = key
    subprocess.run(["git", f"--git-dir={run_dir / 'repo'}", "fast-import", "--quiet", "--force",
                    f"--export-marks={marks_file}"], input=b"".join(stream), check=True)
    by_mark = dict(line.split() for line in marks_file.read_text().splitlines())
    marks_file.unlink()
    out = {"seed": seed}
    for key, mark in mark_of.items():
        out[key] = by_mark[f":{mark}"]
    return out


def _rows(e: dict, sha: dict[str, str]) -> list[list[LedgerRow]]:
    """(queued, started, finished, verdicts...) as separate appends."""
    commit, parent = sha.get(e["ref"]), sha.get(e["parent"])
    tokens = e.get("tokens", (None, None))
    cost = (tokens[0] * 3e-6 + tokens[1] * 15e-6) if tokens[0] else None
    rows = [[LedgerRow(experiment_id=e["id"], event="queued", ts=e["queued"], kind=e["kind"], commit=commit,
                       parent_commit=parent, branch=f"exp/{e['id']}", train_sha=str(hash(e["text"])),
                       agent=e["agent"], description=e["description"], status="queued", seed=e["seed"],
                       replicate_of=e.get("replicate_of"), tokens_in=tokens[0], tokens_out=tokens[1],
                       cost_usd=cost)],
            [LedgerRow(experiment_id=e["id"], event="started", ts=e["started"], status="running")],
            [LedgerRow(experiment_id=e["id"], event="finished", ts=e["finished"], status=e["status"], val_bpb=e["val"],
                       kind=e["kind"], gpu_class="cpu", training_seconds=300.0,
                       total_seconds=e["finished"] - e["started"], peak_memory_mb=20000.0, num_steps=950,
                       finished_at=e["finished"])]]
    rows += [[LedgerRow(experiment_id=e["id"], event="verdict", ts=e["finished"] + 1 + i, verdict=v, reason=r)]
             for i, (v, r) in enumerate(e["verdicts"])]
    return rows


def generate(run_dir: Path, n: int, layout: str, seed: int = 0) -> dict:
    """A run directory with ``n`` experiments; returns a few ids worth timing."""
    rng = random.Random(seed)
    plan = _plan(n, rng)
    _ids(plan)
    ref_to_id = {e["ref"]: e["id"] for e in plan if e["kind"] == "candidate"}
    for e in plan:  # plan refs named candidates by a provisional id: rename to the final ids
        e["ref"] = ref_to_id.get(e["ref"], e["ref"])
        e["parent"] = ref_to_id.get(e["parent"], e["parent"])
        if e.get("replicate_of"):
            e["replicate_of"] = ref_to_id.get(e["replicate_of"], e["replicate_of"])
        if e["parent"].startswith("main-after-"):
            e["parent"] = "main-after-" + ref_to_id.get(e["parent"][11:], e["parent"][11:])
        if e["ref"].startswith("main-after-"):
            e["ref"] = "main-after-" + ref_to_id.get(e["ref"][11:], e["ref"][11:])
    run_dir.mkdir(parents=True)
    (run_dir / "farm-config.json").write_text(json.dumps({  # what the list of several runs shows of each
        "gpus": 8, "profile": "h100", "agents": {"count": len(AGENTS), "kind": "claude"},
        "tournament": {"policy": ("tournament", "paired", "stack")[seed % 3]}}))
    sha = _write_repo(run_dir, plan)
    ledger = Ledger(run_dir / "ledger")
    batches = [batch for e in plan for batch in _rows(e, sha)]
    if layout == "compacted":
        ledger.append([r for b in batches for r in b])
    elif layout == "per-experiment":
        for e in plan:
            ledger.append([r for b in _rows(e, sha) for r in b])
    else:
        for batch in batches:
            ledger.append(batch)
    ledger.close()
    promoted = [e["id"] for e in plan if e.get("promote")]
    confirmed = [e["replicate_of"] for e in plan if e["kind"] == "confirm"]
    other = confirmed[0] if confirmed else "e00005"
    logged = set(promoted) | {other}
    _write_logs(run_dir, [e for e in plan if e["status"] == "ok" and (e["id"] in logged or
                                                                      e.get("replicate_of") in logged)], rng)
    return {"experiment": promoted[-1] if promoted else plan[-1]["id"], "other": other, "promotions": len(promoted),
            "compare": list(dict.fromkeys([*promoted[-2:], other]))}


def _write_logs(run_dir: Path, runs: list[dict], rng: random.Random, steps: int = 950) -> None:
    """run.log of some runs (the promoted changes, the compared one and their confirmations), with a step line per
    step in the seed trainer's format: a loss that falls towards the run's val_bpb-ish level, and tokens/s."""
    for e in runs:
        out = run_dir / "experiments" / e["id"] / "out"
        out.mkdir(parents=True, exist_ok=True)
        end, speed = 1.25 * (e["val"] or 3.0), rng.uniform(0.9, 1.1) * 520_000
        lines = [f"step {s:05d} | loss {end + 7.0 * 0.99 ** s + rng.gauss(0, 0.02):.4f} | lrm 1.00 | dt 316ms | "
                 f"tok/s {speed * rng.uniform(0.97, 1.03):,.0f} | epoch 1 | {100 * s / steps:.1f}%"
                 for s in range(steps)]
        (out / "run.log").write_text("\n".join(lines) + f"\n---\nval_bpb:          {e['val']:.6f}\n")


def _get(url: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as response:
        body = response.read()
    return time.perf_counter() - t0, len(body)


def measure(run_dir: Path, ids: dict, repeat: int) -> list[dict]:
    from cluster.ui.server import serve_ui

    handle = serve_ui(run_dir, "127.0.0.1", 0)
    base = handle.url.rstrip("/")
    e, o = ids["experiment"], ids["other"]
    targets = [
        ("/api/version", "poll (every 2 s from each page)"), ("/api/overview", "overview data"),
        ("/api/runs?sort=val_bpb&order=asc&limit=100", "runs table, sorted by val_bpb"),
        ("/api/runs?status=ok&kind=candidate&agent=claude-3&q=depth&sort=finished_at", "runs table, 4 filters"),
        ("/api/runs?sort=sigmas&order=asc&cols=sigmas,seeds,gpu_seconds", "runs table, + sigmas, seeds, GPU-s"),
        ("/api/runs?sort=const:DEPTH&cols=const:DEPTH,const:MLP_RATIO", "runs table, + 2 constants' columns"),
        ("/api/runs.csv", "CSV of every row (every column, constants too)"),
        ("/api/lineage", "lineage (last 1500)"), ("/api/lineage?last=0", "lineage (all)"),
        ("/api/constants", "constants of every change (slice, table)"),
        (f"/api/experiment/{e}", "experiment data"), ("/", "overview page"), ("/lineage", "lineage page"),
        (f"/experiment/{e}", "experiment page (diff)"), (f"/compare?a={o}&b={e}", "compare page (diff)"),
        (f"/compare?ids={','.join(ids['compare'])}", f"compare page of {len(ids['compare'])} (diffs to the ancestor)"),
        (f"/api/curves?ids={','.join(ids['compare'])}", f"training curves of {len(ids['compare'])} (950 steps each)"),
    ]
    results = []
    try:
        for path, what in targets:
            cold, size = _get(base + path)
            warm = [_get(base + path)[0] for _ in range(repeat)]
            results.append({"path": path, "what": what, "cold_ms": cold * 1000, "warm_median_ms":
                            statistics.median(warm) * 1000, "warm_max_ms": max(warm) * 1000, "bytes": size})
        # the live case: one more experiment appended while the server runs
        ledger = Ledger(run_dir / "ledger")
        ledger.append([LedgerRow(experiment_id="e99999", event="queued", ts=time.time(), kind="candidate",
                                 agent="claude-0", description="appended while serving", status="queued")])
        ledger.close()
        t0 = time.perf_counter()
        _get(base + "/api/version")
        _get(base + "/api/overview")
        refresh = time.perf_counter() - t0
        results.append({"path": "append + /api/version + /api/overview", "what": "refresh after one append",
                        "cold_ms": refresh * 1000, "warm_median_ms": None, "warm_max_ms": None, "bytes": None})
    finally:
        handle.close()
    return results


def first_constants(run_dir: Path) -> float:
    """Seconds for the constants of every change on a fresh model (the ledger read first, not timed): what the
    server's warm-up thread spends at start, and what the first /api/constants used to wait for."""
    from cluster.ui.model import RunModel, _number

    _number.cache_clear()  # as in a fresh server
    state = RunModel(run_dir).state()
    _ = state.table
    t0 = time.perf_counter()
    _ = state.constants
    return time.perf_counter() - t0


# Set by Chromium before any page script (DevTools: not subject to the page's CSP): when the page's own script
# marks that it drew the run once (body[data-version]), and what the page loaded.
_DRAWN_PROBE = """
new MutationObserver((_, obs) => {
  if (document.body && document.body.dataset.version && !window.__drawnAt) { window.__drawnAt = performance.now();
    obs.disconnect(); }
}).observe(document, { subtree: true, attributes: true, attributeFilter: ["data-version"] });
"""


def first_load(run_dir: Path, tries: int) -> dict:
    """The overview's first load in a fresh headless Chromium (new profile: empty cache), against a server that has
    read the ledger already (started beside the farm): ms from navigation start until the page drew the run (its
    script set body[data-version] after the first /api/overview and /api/runs), then the same page reloaded with
    the browser's cache; and the bytes that crossed the wire on the first load."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    from cluster.ui.server import serve_ui

    handle = serve_ui(run_dir, "127.0.0.1", 0)
    base = handle.url.rstrip("/")
    urllib.request.urlopen(base + "/api/overview", timeout=600).read()  # the server's own cold read is not timed
    first, cached, wire = [], [], []
    try:
        for _ in range(tries):
            options = Options()
            options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
            profile = tempfile.mkdtemp(prefix="bench-ui-chromium-")
            for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
                        "--disable-background-networking", "--disable-component-update", "--disable-dev-shm-usage",
                        "--window-size=1400,1000", f"--user-data-dir={profile}"):
                options.add_argument(arg)
            driver = webdriver.Chrome(options=options, service=Service(
                executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver"))
            try:
                driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": _DRAWN_PROBE})
                for target in (first, cached):
                    driver.get(base + "/")
                    deadline = time.monotonic() + 120
                    while not driver.execute_script("return window.__drawnAt || 0") and time.monotonic() < deadline:
                        time.sleep(0.02)
                    target.append(driver.execute_script("return window.__drawnAt"))
                    if target is first:
                        wire.append(driver.execute_script(
                            "return performance.getEntriesByType('resource').concat("
                            "performance.getEntriesByType('navigation')).reduce((a, e) => a + e.transferSize, 0)"))
            finally:
                driver.quit()
                shutil.rmtree(profile, ignore_errors=True)
    finally:
        handle.close()
    return {"first_ms": statistics.median(first), "first_max_ms": max(first), "cached_ms": statistics.median(cached),
            "wire_kb": statistics.median(wire) / 1024, "tries": tries}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", type=int, default=10_000)
    parser.add_argument("--layouts", nargs="+", default=["compacted", "per-experiment", "per-event"],
                        choices=["compacted", "per-experiment", "per-event"])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--first-load", type=int, nargs="+", metavar="N",
                        help="instead: time the overview's first load in a fresh browser at N experiments (each N)")
    parser.add_argument("--tries", type=int, default=5, help="fresh browsers per N for --first-load")
    args = parser.parse_args(argv)
    if args.first_load:
        print("| experiments | first load, fresh browser: median ms | max ms | reloaded (cached) ms | wire KB |\n"
              "|---|---|---|---|---|", flush=True)
        loads = {}
        with tempfile.TemporaryDirectory(prefix="bench-ui-") as tmp:
            for n in args.first_load:
                generate(Path(tmp) / str(n), n, "compacted")
                r = loads[n] = first_load(Path(tmp) / str(n), args.tries)
                print(f"| {n:,} | {r['first_ms']:.0f} | {r['first_max_ms']:.0f} | {r['cached_ms']:.0f} | "
                      f"{r['wire_kb']:,.0f} |", flush=True)
        if args.json:
            args.json.write_text(json.dumps(loads, indent=2))
        return 0
    all_results = {}
    with tempfile.TemporaryDirectory(prefix="bench-ui-") as tmp:
        for layout in args.layouts:
            run_dir = Path(tmp) / layout
            t0 = time.perf_counter()
            ids = generate(run_dir, args.experiments, layout)
            parts = len(list((run_dir / "ledger").glob("part-*.parquet")))
            print(f"\n## {layout}: {args.experiments} experiments, {parts} ledger part(s), {ids['promotions']} "
                  f"promotions (generated in {time.perf_counter() - t0:.0f} s)\n", flush=True)
            constants_s = first_constants(run_dir)
            print(f"constants of every change, first computation (a fresh RunModel, no server): {constants_s:.2f} s "
                  "(the server does it on its warm-up thread at start)", flush=True)
            results = measure(run_dir, ids, args.repeat)
            all_results[layout] = {"parts": parts, **ids, "constants_first_s": constants_s, "results": results}
            print("| request | what | cold ms | warm median ms | warm max ms | KB |\n|---|---|---|---|---|---|")
            for r in results:
                fmt = lambda v: f"{v:.0f}" if v is not None else ""
                size = f"{r['bytes'] / 1024:.0f}" if r["bytes"] else ""
                print(f"| `{r['path']}` | {r['what']} | {fmt(r['cold_ms'])} | {fmt(r['warm_median_ms'])} | "
                      f"{fmt(r['warm_max_ms'])} | {size} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(all_results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
