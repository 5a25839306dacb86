"""Reading a run directory: leaderboard rows and the progress plot.

Everything here reads only the ledger, so it works on a running farm, a
finished one, or one whose driver died.
"""

from __future__ import annotations

from pathlib import Path

from cluster.records.ledger import Ledger, LedgerRow


def finished_rows(run_dir: Path) -> list[LedgerRow]:
    """Finished experiments in finish order, each with its last verdict merged in."""
    latest = Ledger(run_dir / "ledger").latest()
    rows = [r for r in latest.values() if r.status not in (None, "queued", "running")]
    return sorted(rows, key=lambda r: r.finished_at or r.ts or 0.0)


def leaderboard(run_dir: Path, limit: int = 20) -> list[LedgerRow]:
    """Ok experiments, best val_bpb first (replicates shown individually)."""
    ok = [r for r in finished_rows(run_dir) if r.status == "ok" and r.val_bpb is not None]
    return sorted(ok, key=lambda r: r.val_bpb)[:limit]


def progress_plot(run_dir: Path, path: Path | None = None) -> Path:
    """Every experiment as a dot, promotions on main's running line, labelled (like upstream's progress.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = finished_rows(run_dir)
    path = path or run_dir / "progress.png"
    fig, ax = plt.subplots(figsize=(11, 5.5))
    colors = {"baseline": "0.6", "candidate": "tab:blue", "confirm": "tab:purple", "merge": "tab:orange"}
    main_x, main_y = [], []  # main's level: the mean of its baselines, stepping down at each promotion
    baselines: dict[str, list[float]] = {}
    for i, row in enumerate(rows):
        if row.status != "ok" or row.val_bpb is None:
            continue
        ax.scatter([i], [row.val_bpb], s=18, color=colors.get(row.kind or "candidate", "tab:blue"), alpha=0.7)
        if row.kind == "baseline":
            values = baselines.setdefault(row.train_sha or "", [])
            values.append(row.val_bpb)
            level = sum(values) / len(values)
        elif row.verdict == "promote":
            level = row.val_bpb
            ax.annotate((row.description or row.experiment_id)[:40], (i, row.val_bpb), fontsize=7,
                        xytext=(4, -10), textcoords="offset points")
        else:
            continue
        main_x.append(i)
        main_y.append(level)
    if main_y:
        main_x.append(max(len(rows) - 1, main_x[-1]))
        main_y.append(main_y[-1])
        ax.step(main_x, main_y, where="post", color="tab:green", linewidth=2, label="main (mean of its runs)")
        ax.legend(loc="upper right")
    crashes = sum(1 for r in rows if r.status != "ok")
    ax.set_xlabel(f"experiment (finish order); {crashes} not ok, not shown")
    ax.set_ylabel("val_bpb (lower is better)")
    ax.set_title(f"{run_dir.name}: {len(rows)} experiments")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
