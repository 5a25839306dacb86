"""The search benchmark's headline statistics (issue 27): every figure seed-paired, every difference with an interval.

Why a module of its own: bench/search.py runs the farm; this reads its records (each strategy on the same seeds)
and answers the two questions a user with N GPUs asks, at equal GPU-hours and at equal wall-clock:

- *equal GPU-hours*: main's true gain from the seed after G experiments (G GPU-units: one experiment = one GPU for
  one duration), against sequential's after G on the same seeds;
- *wall-clock*: the time (experiment durations) a strategy's mean curve needs to reach sequential's mean value
  after 80 experiments, and the efficiency (sequential's time / its time / N);
- the anchor "best of N independent loops" (what a user with N GPUs does today): N sequential loops, the one with
  the best *reported* value picked, its *true* value counted. It is estimated from the sequential runs themselves
  as the average over every N-subset of them (a U-statistic, exact from the loops' ranks), so it costs no runs.

Intervals: 90 % percentile bootstrap over seeds, resampling the seed indices once for every strategy (and for the
loops of best-of-N), so differences keep their pairing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

BOOTSTRAP, LEVEL = 1000, 0.90
GPU_HOURS = (40, 80, 160)
WALL_TARGET_RUNS, WALL_T = 80, 20.0  # sequential's value after 80 runs; equal wall-clock at 20 durations
Interval = tuple[float, float, float]  # (point, lo, hi)


def values_at(record: dict, xs: np.ndarray, axis: str, key: str = "true") -> np.ndarray:
    """Main's ``key`` (true or reported) at each x of ``xs`` on ``axis`` (t: time, n: experiments finished)."""
    mains = record["mains"]
    marks = np.array([m[axis] for m in mains], dtype=float)
    values = np.array([np.nan if m.get(key) is None else m[key] for m in mains], dtype=float)
    return values[np.searchsorted(marks, xs, side="right") - 1]


def best_of_weights(m: int, n: int) -> np.ndarray:
    """P(the loop ranked r-th best of ``m`` is the best of a random ``n``-subset), for r = 0..m-1."""
    total = math.comb(m, n)
    return np.array([math.comb(m - 1 - r, n - 1) / total for r in range(m)])


def best_of(true: np.ndarray, reported: np.ndarray, n: int) -> np.ndarray:
    """Expected true value of the loop with the best reported value among ``n`` drawn from the rows (loops), at
    each column (x); ``true``/``reported``: loops x points."""
    order = np.argsort(reported, axis=0, kind="stable")
    weights = best_of_weights(true.shape[0], min(n, true.shape[0]))
    return (np.take_along_axis(true, order, axis=0) * weights[:, None]).sum(axis=0)


def bootstrap(stat: Callable[[np.ndarray], float], n_seeds: int, draws: int | None = None, seed: int = 0) -> Interval:
    """The statistic on all seeds, and its percentile interval over resampled seed indices (nan draws dropped)."""
    rng = np.random.default_rng(seed)
    draws = BOOTSTRAP if draws is None else draws
    point = stat(np.arange(n_seeds))
    samples = np.array([stat(rng.integers(0, n_seeds, n_seeds)) for _ in range(draws)])
    samples = samples[np.isfinite(samples)] if np.isfinite(samples).any() else samples
    tail = (1 - LEVEL) / 2
    return point, float(np.quantile(samples, tail)), float(np.quantile(samples, 1 - tail))


def first_reach(curve: np.ndarray, grid: np.ndarray, target: float) -> float:
    """The first grid time the curve is at or below ``target`` (inf: never)."""
    hit = np.nonzero(curve <= target + 1e-12)[0]
    return float(grid[hit[0]]) if hit.size else math.inf


class Headline:
    """The records of one landscape, arranged by strategy and seed, and the headline figures from them."""

    def __init__(self, records: Sequence[dict], loops_n: int = 8) -> None:
        groups: dict[tuple[str, int], dict[int, dict]] = {}
        for r in records:
            groups.setdefault((r["strategy"], r["n"]), {})[r["seed"]] = r
        self.seq = groups.pop(("sequential", 1))
        self.seeds = sorted(self.seq)
        for key, by_seed in groups.items():
            if sorted(by_seed) != self.seeds:
                raise ValueError(f"{key} ran on seeds {sorted(by_seed)}, sequential on {self.seeds}: not paired")
        self.groups = groups
        self.loops_n = loops_n
        self.start = self.seq[self.seeds[0]]["mains"][0]["true"]
        end = max(r["end"] for r in records)
        self.grid = np.arange(0.0, end + 0.1, 0.1)

    # ---- per seed arrays --------------------------------------------------------------------------------------

    def _at(self, by_seed: dict[int, dict], xs: np.ndarray, axis: str, key: str = "true") -> np.ndarray:
        """Seeds x points; nan past a run's budget on the experiments axis (it never got that far)."""
        out = np.array([values_at(by_seed[s], xs, axis, key) for s in self.seeds])
        if axis == "n":
            out[:, xs > min(by_seed[s]["finished"] for s in self.seeds)] = np.nan
        return out

    def rows(self) -> list[tuple[str, int]]:
        """Strategies in table order: sequential, best-of-N, then by N and name."""
        order = {"oracle": 0, "naive": 1}
        return sorted(self.groups, key=lambda k: (k[1] != 1, k[1], order.get(k[0], 2), k[0]))

    # ---- equal GPU-hours --------------------------------------------------------------------------------------

    def gain_at_gpu(self, key: tuple[str, int] | str, g: int) -> np.ndarray:
        """Per seed: main's true gain from the seed after ``g`` GPU-units (best-of-N: per loop, after g / N)."""
        if key == "sequential":
            return self.start - self._at(self.seq, np.array([g]), "n")[:, 0]
        if key == "best-of":
            return self.start - self._at(self.seq, np.array([g / self.loops_n]), "n")[:, 0]
        return self.start - self._at(self.groups[key], np.array([g]), "n")[:, 0]

    def best_of_gpu(self, g: int) -> Callable[[np.ndarray], float]:
        """Best-of-N's expected gain after ``g`` GPU-units, over the loops ``idx``."""
        x = np.array([g / self.loops_n])
        true, reported = self._at(self.seq, x, "n"), self._at(self.seq, x, "n", "reported")
        return lambda idx: float(self.start - best_of(true[idx], reported[idx], self.loops_n)[0])

    def gpu_table(self) -> dict[str, dict[int, dict[str, Interval]]]:
        """Row -> G -> {gain, diff (vs sequential), ratio}: each with its seed-paired interval."""
        out: dict[str, dict[int, dict[str, Interval]]] = {}
        for g in GPU_HOURS:
            seq = self.gain_at_gpu("sequential", g)
            stats: dict[str, Callable[[np.ndarray], float]] = {"sequential": lambda i, s=seq: float(s[i].mean())}
            stats[f"best of {self.loops_n} loops"] = self.best_of_gpu(g)
            for key in self.rows():
                gains = self.gain_at_gpu(key, g)
                stats[f"{key[0]}@{key[1]}"] = lambda i, a=gains: float(a[i].mean())
            for name, stat in stats.items():
                out.setdefault(name, {})[g] = {
                    "gain": bootstrap(stat, len(self.seeds)),
                    "diff": bootstrap(lambda i, f=stat, s=seq: f(i) - float(s[i].mean()), len(self.seeds)),
                    "ratio": bootstrap(lambda i, f=stat, s=seq: f(i) / float(s[i].mean()), len(self.seeds)),
                }
        return out

    # ---- wall-clock -------------------------------------------------------------------------------------------

    def _curves(self) -> dict[str, tuple[np.ndarray, int]]:
        """Row -> (seeds x grid true values on the time axis, N)."""
        curves = {"sequential": (self._at(self.seq, self.grid, "t"), 1)}
        for key in self.rows():
            curves[f"{key[0]}@{key[1]}"] = (self._at(self.groups[key], self.grid, "t"), key[1])
        return curves

    def wall_table(self) -> dict[str, dict[str, Interval]]:
        """Row -> {time to sequential's 80-run value, efficiency, gain at t = 20, that minus best-of-N's}."""
        at80 = self._at(self.seq, np.array([WALL_TARGET_RUNS]), "n")[:, 0]
        seq_curve = self._at(self.seq, self.grid, "t")
        seq_reported = self._at(self.seq, self.grid, "t", "reported")
        i20 = int(np.searchsorted(self.grid, WALL_T, side="right") - 1)
        n = len(self.seeds)

        def best20(idx: np.ndarray) -> float:
            return float(self.start - best_of(seq_curve[idx, i20:i20 + 1], seq_reported[idx, i20:i20 + 1],
                                              self.loops_n)[0])

        def t_seq(idx: np.ndarray) -> float:
            return first_reach(seq_curve[idx].mean(axis=0), self.grid, float(at80[idx].mean()))

        out: dict[str, dict[str, Interval]] = {}
        out[f"best of {self.loops_n} loops"] = {"gain20": bootstrap(best20, n)}
        for name, (curve, gpus) in self._curves().items():
            def reach(idx: np.ndarray, c=curve) -> float:
                return first_reach(c[idx].mean(axis=0), self.grid, float(at80[idx].mean()))

            def efficiency(idx: np.ndarray, c=curve, g=gpus) -> float:
                t = reach(idx, c)
                return t_seq(idx) / t / g if 0 < t < math.inf else (0.0 if t == math.inf else math.inf)

            def gain20(idx: np.ndarray, c=curve) -> float:
                return float(self.start - c[idx, i20].mean())

            out[name] = {"time": bootstrap(reach, n), "efficiency": bootstrap(efficiency, n),
                         "gain20": bootstrap(gain20, n),
                         "vs_best20": bootstrap(lambda i, f=gain20: f(i) - best20(i), n)}
        return out

    # ---- false promotions -------------------------------------------------------------------------------------

    def harm(self) -> dict[str, tuple[int, float, int]]:
        """Row -> (false promotions over all seeds, their total true harm, seeds with any)."""
        out = {"sequential": _harm(self.seq.values())}
        for key in self.rows():
            out[f"{key[0]}@{key[1]}"] = _harm(self.groups[key].values())
        return out


def _harm(records) -> tuple[int, float, int]:
    count, total, seeds = 0, 0.0, 0
    for r in records:
        steps = [b["true"] - a["true"] for a, b in zip(r["mains"], r["mains"][1:], strict=False)]
        bad = [d for d in steps if d >= -1e-12]
        count, total, seeds = count + len(bad), total + sum(bad), seeds + bool(bad)
    return count, total, seeds


def fmt(iv: Interval, digits: int = 3) -> str:
    """'point (lo to hi)'; never for infinite points."""
    point, lo, hi = iv
    if math.isnan(point):
        return "-"
    if math.isinf(point):
        return "never"
    f = f"{{:.{digits}f}}"
    hi_s = "never" if math.isinf(hi) else f.format(hi)
    return f"{f.format(point)} ({f.format(lo)} to {hi_s})"


# ---- the report ---------------------------------------------------------------------------------------------------

GOAL_RATIO, GOAL_TIME = 0.9, 12.0  # issue 27: >= 0.9x sequential's gain at 80 GPU-units; its 80-run value by t = 12


def headline_markdown(records: Sequence[dict], loops_n: int = 8) -> str:
    """The equal-GPU-hours table, the wall-clock table, false promotions and issue 27's goals, as markdown."""
    h = Headline(records, loops_n)
    gpu, wall, harm = h.gpu_table(), h.wall_table(), h.harm()
    best = f"best of {loops_n} loops"
    lines = [
        f"**At equal GPU-hours**: main's true gain from the seed ({h.start:.4f}) after G experiments (GPU-units), "
        f"mean over the same {len(h.seeds)} seeds; beside it, minus sequential's on the same seeds; 90 % "
        f"seed-paired bootstrap intervals in brackets. *{best}*: {loops_n} sequential loops of G / {loops_n} "
        "experiments each, the one with the best reported value kept, its true value counted.", "",
        "| strategy | " + " | ".join(f"gain at {g} | minus sequential's" for g in GPU_HOURS) + " |",
        "|---|" + "---|---|" * len(GPU_HOURS)]
    for name, by_g in gpu.items():
        cells = []
        for g in GPU_HOURS:
            cell = by_g[g]
            cells += [fmt(cell["gain"]), "-" if name == "sequential" else fmt(cell["diff"])]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"**Wall-clock**: time (experiment durations) until the mean curve reaches sequential's mean "
              f"value after {WALL_TARGET_RUNS} experiments; efficiency = sequential's time / that / N; the true "
              f"gain at t = {WALL_T:g} and its difference to {best}'s at t = {WALL_T:g} (each loop then has ~"
              f"{WALL_T:g} experiments). False promotions: main changes whose true effect is >= 0, summed over "
              "seeds, with their total true harm (val_bpb) and the seeds with any.", "",
              f"| strategy | time to sequential's {WALL_TARGET_RUNS}-run value | efficiency | gain at t = {WALL_T:g} "
              f"| minus {best}'s | false promotions | their total harm | seeds with any |",
              "|---|---|---|---|---|---|---|---|"]
    for name, cell in wall.items():
        count, total, seeds = harm.get(name, (None, None, None))
        lines.append(f"| {name} | {fmt(cell['time'], 1) if 'time' in cell else '-'} | "
                     f"{fmt(cell['efficiency'], 2) if 'efficiency' in cell else '-'} | {fmt(cell['gain20'])} | "
                     f"{fmt(cell['vs_best20']) if 'vs_best20' in cell else '-'} | "
                     f"{'-' if count is None else count} | {'-' if total is None else f'{total:.4f}'} | "
                     f"{'-' if seeds is None else seeds} |")
    lines += ["", "**Issue 27's goals** at N = 8 (met or not; the figure and its 90 % interval):", ""]
    for key in h.rows():
        if key[1] != loops_n or key[0] in ("naive", "oracle"):
            continue
        name = f"{key[0]}@{key[1]}"
        ratio, t, vs, (count, total, _) = gpu[name][80]["ratio"], wall[name]["time"], wall[name]["vs_best20"], \
            harm[name]
        goals = [
            (f"true gain at 80 GPU-units >= {GOAL_RATIO}x sequential's", ratio[0] >= GOAL_RATIO,
             f"{fmt(ratio, 2)}x"),
            (f"reaches sequential's {WALL_TARGET_RUNS}-run value within {GOAL_TIME:g} durations", t[0] <= GOAL_TIME,
             fmt(t, 1)),
            (f"at t = {WALL_T:g}, beats {best} by more than the interval", vs[1] > 0, fmt(vs)),
            ("false promotions <= 1 over all seeds", count <= 1, f"{count} (harm {total:.4f}; sequential "
             f"{harm['sequential'][0]} / {harm['sequential'][1]:.4f}"
             + (f", naive {harm[f'naive@{loops_n}'][0]} / {harm[f'naive@{loops_n}'][1]:.4f}"
                if f"naive@{loops_n}" in harm else "") + ")"),
        ]
        lines += [f"- {name}: " + "; ".join(f"{goal}: {'**met**' if met else 'not met'} ({fig})"
                                             for goal, met, fig in goals)]
    return "\n".join(lines)
