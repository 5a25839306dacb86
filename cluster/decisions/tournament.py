"""The tournament: which commit a proposal starts from, and what enters main. Pure logic: no git, I/O or Ray.

Why noise-aware: with a run-to-run sd of ~0.04 (cpu-tiny) or ~0.002 (H100), "keep if lower" keeps half of all
useless changes, and published runs kept gains that did not reproduce. So main is measured several times, the
noise is pooled per GPU class, a candidate must beat main's mean by a margin from a test of the difference of
two means and hold up on a replicate with another seed, and GPU classes are never compared with each other.

The driver's loop: measure main as ``baseline_request`` asks; ``judge`` each result (a candidate's first run is
a ``screening`` Measurement); on "confirm"/"wait" run ``verdict.measure`` (seeds from ``next_seeds``) and judge
again with all values; on "promote"/"simpler" merge, start a fresh ``Incumbent`` and measure it; record every
``verdict.reason``; offer near-misses to ``select_parent`` as ``PoolEntry``. The policies that run this loop over
the farm's state are cluster/decisions/policies/; this module is only the statistics they call.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from cluster.vocabulary import Decision


class JudgeKnobs(Protocol):
    """The settings judging reads (cluster/decisions/policies/tournament.py's TournamentSettings has them): margins in
    standard errors, the runs a decision needs. Defaults are sized by tests/test_tournament.py's simulation."""

    baseline_replicates: int
    margin_sigmas: float
    promising_sigmas: float
    min_margin: float
    confirm_replicates: int
    small_sample_correction: bool
    simplicity_tolerance: float
    near_miss_margins: float
    max_replicates: int
    fast_track_sigmas: float
    min_noise_df: int


class ParentKnobs(Protocol):
    """The settings parent selection reads (cluster/decisions/policies/core.py's CoreSettings has them)."""

    parent_main_prob: float
    tournament_size: int
    pool_recent: int


@lru_cache(maxsize=4096)
def t_quantile(z: float, df: int) -> float:
    """Student-t quantile at the normal level of ``z`` sigmas (exact for integer df, A&S 26.7.3-4)."""
    if df >= 300 or z <= 0:
        return z
    target = math.erf(z / math.sqrt(2))  # P(|T| < t) wanted

    def inside(t: float) -> float:  # P(|T| < t)
        theta = math.atan(t / math.sqrt(df))
        s, c2 = math.sin(theta), math.cos(theta) ** 2
        term = math.cos(theta) if df % 2 else 1.0
        total = term if df != 1 else 0.0
        for e in range(df % 2, df - 2, 2):
            term *= (e + 1) / (e + 2) * c2
            total += term
        return 2 / math.pi * (theta + s * total) if df % 2 else s * total

    lo, hi = z, 2 * z
    while inside(hi) < target:
        lo, hi = hi, 2 * hi
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if inside(mid) < target else (lo, mid)
    return hi


class NoiseModel(BaseModel):
    """Run-to-run spread on one GPU class: pooled within-commit sd over every commit measured at least twice.

    Replicates of main and confirmations of candidates count, so the estimate sharpens as the run goes; a
    candidate's screening run does not (see ``Measurement.screening``).
    """

    model_config = ConfigDict(frozen=True)

    gpu_class: str
    ss: float = Field(0.0, description="sum over commits of squared deviations from that commit's mean")
    df: int = Field(0, description="degrees of freedom: sum over commits of (ok measurements - 1)")

    @classmethod
    def from_groups(cls, gpu_class: str, groups: Iterable[Sequence[float]]) -> NoiseModel:
        """Pool the given per-commit lists of ok val_bpb (lists with one value add nothing)."""
        model = cls(gpu_class=gpu_class)
        for values in groups:
            model = model.with_group(values)
        return model

    def with_group(self, values: Sequence[float]) -> NoiseModel:
        """This model plus one more commit's measurements (cheap: the driver can add as results arrive)."""
        values = ok_values(values)
        if len(values) < 2:
            return self
        mean = sum(values) / len(values)
        ss = sum((v - mean) ** 2 for v in values)
        return NoiseModel(gpu_class=self.gpu_class, ss=self.ss + ss, df=self.df + len(values) - 1)

    def with_prior(self, sd: float | None, df: int) -> NoiseModel:
        """This model plus a prior: ``df`` degrees of freedom of a documented ``sd`` (none when either is unset).
        Judging can start at once; the farm's own measurements outweigh the prior as they come."""
        if not sd or df <= 0:
            return self
        return NoiseModel(gpu_class=self.gpu_class, ss=self.ss + df * sd * sd, df=self.df + df)

    @property
    def known(self) -> bool:
        """Nothing is promoted before some commit was measured twice on this class (with different values:
        identical replicates mean one seed was reused, not that the noise is zero)."""
        return self.df >= 1 and self.ss > 0

    @property
    def sd(self) -> float | None:
        return math.sqrt(self.ss / self.df) if self.df else None

    def sigmas(self, sigmas: float, settings: JudgeKnobs) -> float:
        """The multiplier of the standard error: ``sigmas`` itself or its t quantile for ``df``."""
        return t_quantile(sigmas, self.df) if settings.small_sample_correction and self.known else sigmas

    def margin(self, n_candidate: int, n_incumbent: int, settings: JudgeKnobs,
               sigmas: float | None = None) -> float:
        """How much lower a mean of ``n_candidate`` must be than a mean of ``n_incumbent`` to count."""
        if not self.known:
            return math.inf
        k = self.sigmas(settings.margin_sigmas if sigmas is None else sigmas, settings)
        return max(settings.min_margin, k * self.sd * math.sqrt(1 / n_candidate + 1 / n_incumbent))


class SeedNoise(BaseModel):
    """The noise on one GPU class in two parts: ``shared`` by every file run on the same seed (initialisation, data
    order) and a run's ``own``, as variances. Where the shared part is large, comparing two files on the same seeds
    cancels it (common random numbers); where it is zero, pairing only costs (bench/pairing.py measures it)."""

    gpu_class: str
    shared: float = 0.0
    own: float = 0.0
    df: int = 0  # of the own part's estimate (prior included)

    @property
    def total(self) -> float:
        return self.shared + self.own


def seed_noise(measurements: Iterable[Measurement], noise: NoiseModel, prior_df: int = 0,
               prior_shared: float = 0.0) -> SeedNoise:
    """Split ``noise`` (the total, on its GPU class) into a shared and an own part from an additive fit.

    Fits value = file effect + seed effect over the runs of files measured at least twice; the residual variance is
    the own part. A candidate's first run counts although it was selected for beating main on its seed: the
    selection can only make the own part look larger (its next run regresses), so pairing less, never more. A
    prior of ``prior_df`` degrees of freedom says that ``prior_shared`` of the variance is shared (by default
    nothing: own = total, so pairing is used only once the farm's own measurements show it helps).
    """
    rows = [(m.commit, m.seed, m.val_bpb) for m in measurements if m.ok and m.val_bpb is not None
            and math.isfinite(m.val_bpb) and m.gpu_class == noise.gpu_class]
    per_file: dict[str, int] = {}
    for f, _, _ in rows:
        per_file[f] = per_file.get(f, 0) + 1
    rows = [r for r in rows if per_file[r[0]] >= 2]
    total = noise.sd**2 if noise.known and noise.sd is not None else 0.0
    if not total:
        return SeedNoise(gpu_class=noise.gpu_class)
    files = sorted({f for f, _, _ in rows})
    seeds = sorted({s for _, s, _ in rows})
    file_fx = dict.fromkeys(files, 0.0)
    seed_fx = dict.fromkeys(seeds, 0.0)
    for _ in range(50 if rows else 0):  # alternating means: converges for any connected design
        sums: dict = {}
        for f, s, v in rows:
            acc = sums.setdefault(f, [0.0, 0])
            acc[0], acc[1] = acc[0] + v - seed_fx[s], acc[1] + 1
        file_fx = {f: a / n for f, (a, n) in sums.items()}
        sums = {}
        for f, s, v in rows:
            acc = sums.setdefault(s, [0.0, 0])
            acc[0], acc[1] = acc[0] + v - file_fx[f], acc[1] + 1
        seed_fx = {s: a / n for s, (a, n) in sums.items()}
    rss = sum((v - file_fx[f] - seed_fx[s]) ** 2 for f, s, v in rows)
    df = len(rows) - len(files) - len(seeds) + _components(rows)
    own = (prior_df * total * (1 - prior_shared) + rss) / (prior_df + df) if prior_df + df > 0 else total
    own = min(own, total)
    return SeedNoise(gpu_class=noise.gpu_class, shared=total - own, own=own, df=prior_df + max(df, 0))


def _components(rows: Sequence[tuple[str, int, float]]) -> int:
    """Connected groups of files and seeds (a file and a seed are linked when the file ran on the seed)."""
    parent: dict = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for f, s, _ in rows:
        parent[find(("f", f))] = find(("s", s))
    return len({find(x) for x in list(parent)})


class Comparison(BaseModel):
    """A candidate's mean minus a reference's, from runs on (partly) the same seeds, with its standard error."""

    delta: float
    se: float
    paired: float = Field(0.0, description="weight of the same-seed reference (0: unpaired, 1: fully paired)")
    df: int


def compare(candidate: Sequence[tuple[int, float]], reference: Sequence[tuple[int, float]], noise: SeedNoise,
            df: int) -> Comparison | None:
    """The least-variance mix of two unbiased estimates of candidate - reference, from (seed, value) runs.

    Unpaired: mean(candidate) - mean(reference). Paired: mean(candidate) - the reference's mean on each of the
    candidate's seeds. Both are linear in the runs, so their variances follow from the noise's two parts (shared
    per seed, own per run); the mix weight that minimises the variance is a ratio of two such sums. With no shared
    noise it is 0 (pairing would add the reference's own noise twice); with mostly shared noise, near 1.
    """
    cand, ref = [(s, v) for s, v in candidate], [(s, v) for s, v in reference]
    if not cand or not ref:
        return None
    n_c, n_r = len(cand), len(ref)
    on_seed: dict[int, list[int]] = {}
    for j, (s, _) in enumerate(ref):
        on_seed.setdefault(s, []).append(j)
    # weights over the runs: candidate's first, then the reference's
    a = [1 / n_c] * n_c + [0.0] * n_r  # mean(candidate)
    c = [0.0] * n_c + [1 / n_r] * n_r  # mean(reference)
    b = [0.0] * (n_c + n_r)  # the reference on the candidate's seeds (its mean where it has no run on one)
    for s, _ in cand:
        same = on_seed.get(s)
        for j in same or range(n_r):
            b[n_c + j] += 1 / n_c / len(same or range(n_r))
    seeds = [s for s, _ in cand] + [s for s, _ in ref]
    values = [v for _, v in cand] + [v for _, v in ref]

    def cov(u: list[float], w: list[float]) -> float:
        by_seed_u: dict[int, float] = {}
        by_seed_w: dict[int, float] = {}
        for s, x, y in zip(seeds, u, w, strict=True):
            by_seed_u[s] = by_seed_u.get(s, 0.0) + x
            by_seed_w[s] = by_seed_w.get(s, 0.0) + y
        shared = sum(by_seed_u[s] * by_seed_w[s] for s in by_seed_u)
        return noise.shared * shared + noise.own * sum(x * y for x, y in zip(u, w, strict=True))

    unpaired = [x - y for x, y in zip(a, c, strict=True)]
    shift = [x - y for x, y in zip(b, c, strict=True)]  # paired = unpaired - shift
    var_shift = cov(shift, shift)
    weight = min(1.0, max(0.0, cov(unpaired, shift) / var_shift)) if var_shift > 1e-18 else 0.0
    w = [x - weight * y for x, y in zip(unpaired, shift, strict=True)]
    delta = sum(x * v for x, v in zip(w, values, strict=True))
    return Comparison(delta=delta, se=math.sqrt(max(cov(w, w), 0.0)), paired=weight,
                      df=df if weight < 0.5 else noise.df)  # the estimate whose noise dominates


class Measurement(BaseModel):
    """One finished experiment as the tournament needs it; not ok → ``val_bpb`` ignored.

    ``commit`` may be any id of the measured code: a train.py hash pools identical files across commits.
    """

    commit: str
    gpu_class: str
    val_bpb: float | None = None
    ok: bool = True
    seed: int = 0
    screening: bool = Field(False, description="a candidate's first run, whose low value earned its replicates: "
                            "left out of the noise (selected values inflate the spread ~2x in simulation)")


def noise_models(measurements: Iterable[Measurement]) -> dict[str, NoiseModel]:
    """One pooled NoiseModel per GPU class from main's replicates and candidates' confirmations."""
    groups: dict[str, dict[str, list[float]]] = {}
    for m in measurements:
        if m.ok and not m.screening and m.val_bpb is not None and math.isfinite(m.val_bpb):
            groups.setdefault(m.gpu_class, {}).setdefault(m.commit, []).append(m.val_bpb)
    return {gpu: NoiseModel.from_groups(gpu, by_commit.values()) for gpu, by_commit in groups.items()}


class Incumbent(BaseModel):
    """Main's head: its commit, its ok val_bpb per GPU class, and its line count (for the simplicity rule).

    After a promotion start a new Incumbent with no measurements and measure it afresh: the candidate's own
    values were selected for being low (winner's curse) and would make main look better than it is.
    """

    commit: str
    line_count: int
    measurements: dict[str, list[float]] = Field(default_factory=dict)
    screening: dict[str, list[float]] = Field(default_factory=dict, description="main's first runs as a candidate "
                                              "(biased low): only the greedy policy compares against them")

    def values(self, gpu_class: str) -> list[float]:
        return ok_values(self.measurements.get(gpu_class, []))


class MeasureRequest(BaseModel):
    """What the driver should run next: ``replicates`` more runs of ``commit`` on ``gpu_class``, on new seeds."""

    commit: str
    gpu_class: str
    replicates: int
    why: str


def baseline_request(incumbent: Incumbent, gpu_class: str, settings: JudgeKnobs,
                     noise: NoiseModel | None = None) -> MeasureRequest | None:
    """Main's missing replicates on ``gpu_class`` (baseline, then up to ``min_noise_df``), or None."""
    have = len(incumbent.values(gpu_class))
    missing = settings.baseline_replicates - have
    if noise is not None:
        missing = max(missing, settings.min_noise_df - noise.df + (have == 0))
    if missing <= 0:
        return None
    why = f"main {incumbent.commit[:12]} has {have} measurements on {gpu_class}; baseline " \
          f"{settings.baseline_replicates}, noise df {noise.df if noise else '?'} of {settings.min_noise_df}"
    return MeasureRequest(commit=incumbent.commit, gpu_class=gpu_class, replicates=missing, why=why)


def next_seeds(used: Iterable[int], count: int) -> list[int]:
    """The ``count`` smallest seeds not used yet for a commit: a confirmation must use another seed."""
    used = set(used)
    return [s for s in range(len(used) + count) if s not in used][:count]


class Verdict(BaseModel):
    """The tournament's decision on one candidate, with the numbers behind it."""

    decision: Decision
    reason: str
    gpu_class: str
    candidate_mean: float | None = None
    incumbent_mean: float | None = None
    delta: float | None = Field(None, description="candidate mean - main mean (negative is better)")
    margin: float | None = None
    n_candidate: int = 0
    n_incumbent: int = 0
    near_miss: bool = Field(False, description="at most near_miss_margins margins worse than main: if it is "
                            "not promoted, a possible parent (PoolEntry)")
    measure: MeasureRequest | None = Field(None, description="for confirm and wait: what to run next")

    @property
    def replicates_needed(self) -> int:
        """Confirmation runs of the candidate to schedule now (0 unless the decision is confirm)."""
        return self.measure.replicates if self.decision == "confirm" and self.measure else 0


def judge(candidate: Sequence[float], candidate_lines: int, incumbent: Incumbent, noise: NoiseModel,
          settings: JudgeKnobs, gpu_class: str, commit: str = "",
          comparison: Comparison | None = None) -> Verdict:
    """Decide on a candidate from its ok val_bpb on ``gpu_class`` (all its measurements, first one first).

    Call again with all measurements after the requested confirmation replicates have run: the decision
    then uses the mean of all of them against main's mean, with the margin for those counts. ``comparison``
    (pairing): the difference and its standard error from runs on the same seeds, instead of the two means.
    """
    if noise.gpu_class != gpu_class:
        raise ValueError(f"noise model is for {noise.gpu_class}, candidate was measured on {gpu_class}")
    cand, inc = ok_values(candidate), incumbent.values(gpu_class)
    base = {"gpu_class": gpu_class, "n_candidate": len(cand), "n_incumbent": len(inc)}
    if not cand:
        return Verdict(decision="discard", reason="no ok measurement", **base)
    if not inc or not noise.known:
        request = baseline_request(incumbent, gpu_class, settings, noise) or MeasureRequest(
            commit=incumbent.commit, gpu_class=gpu_class, replicates=1, why="noise unknown")
        what = f"main not measured on {gpu_class} (never compared across GPU classes)" if not inc else \
            f"noise on {gpu_class} not known yet (no commit measured twice on different seeds)"
        return Verdict(decision="wait", reason=f"{what}: measure {incumbent.commit[:12]} on {gpu_class} "
                       f"x{request.replicates}", measure=request, **base)
    n_c, n_i = len(cand), len(inc)
    c_mean, i_mean = sum(cand) / n_c, sum(inc) / n_i
    delta, margin = c_mean - i_mean, noise.margin(n_c, n_i, settings)
    screen = noise.margin(n_c, n_i, settings, settings.promising_sigmas)
    fast = noise.margin(n_c, n_i, settings, settings.fast_track_sigmas) if settings.fast_track_sigmas else 0.0
    if comparison is not None and comparison.se > 0:
        k = (lambda z: t_quantile(z, comparison.df)) if settings.small_sample_correction else (lambda z: z)
        delta, i_mean = comparison.delta, c_mean - comparison.delta
        margin = max(settings.min_margin, k(settings.margin_sigmas) * comparison.se)
        screen = max(settings.min_margin, k(settings.promising_sigmas) * comparison.se)
        if settings.fast_track_sigmas:
            fast = max(settings.min_margin, k(settings.fast_track_sigmas) * comparison.se)
    fewer = candidate_lines < incumbent.line_count
    tie = fewer and abs(delta) <= settings.simplicity_tolerance * margin
    numbers = f"{c_mean:.4f} (n={n_c}) vs main {i_mean:.4f} (n={n_i}) on {gpu_class}: {delta:+.4f}"
    noise_s = f"sd {noise.sd:.4f}, df {noise.df}"
    if comparison is not None and comparison.se > 0:
        noise_s += f"; paired {comparison.paired:.2f}, se {comparison.se:.4f}"
    lines = f"{candidate_lines} vs {incumbent.line_count} lines"
    base |= {"candidate_mean": c_mean, "incumbent_mean": i_mean, "delta": delta, "margin": margin,
             "near_miss": delta <= settings.near_miss_margins * margin}
    confirmed = n_c >= 1 + settings.confirm_replicates
    if not confirmed and fast and delta < -fast:
        why = f"{numbers} beats the fast track {fast:.4f} ({settings.fast_track_sigmas} sigma, {noise_s}) at once"
        return Verdict(decision="promote", reason=why, **base)
    if confirmed and delta < -margin:
        why = f"{numbers} beats margin {margin:.4f} ({settings.margin_sigmas} sigma, {noise_s})"
        return Verdict(decision="promote", reason=why, **base)
    if confirmed and tie:
        why = f"{numbers} equal within {settings.simplicity_tolerance} x margin {margin:.4f} ({noise_s}); {lines}"
        return Verdict(decision="simpler", reason=why, **base)
    if confirmed and n_c < settings.max_replicates and delta < -screen:
        request = MeasureRequest(commit=commit, gpu_class=gpu_class, replicates=1, why="still promising")
        return Verdict(decision="confirm", reason=f"{numbers} beats screen {screen:.4f}, not yet margin {margin:.4f} "
                       f"({noise_s}): one more replicate ({n_c + 1} of at most {settings.max_replicates})",
                       measure=request, **base)
    if not confirmed and (delta < -screen or tie):
        need = 1 + settings.confirm_replicates - n_c
        kind = f"beats screen {screen:.4f} ({settings.promising_sigmas} sigma" if delta < -screen else \
            f"equal with fewer lines ({lines}; tolerance {settings.simplicity_tolerance * margin:.4f}"
        request = MeasureRequest(commit=commit, gpu_class=gpu_class, replicates=need, why="confirmation")
        return Verdict(decision="confirm", reason=f"{numbers} {kind}, {noise_s}): confirm x{need} on other seeds",
                       measure=request, **base)
    why = f"{'did not reproduce: ' if n_c > 1 else ''}{numbers} does not beat margin {margin:.4f} " \
          f"({settings.margin_sigmas} sigma, {noise_s})"
    equal = abs(delta) <= settings.simplicity_tolerance * margin
    return Verdict(decision="discard", reason=why + (f"; equal but not simpler ({lines})" if equal else ""), **base)


class PoolEntry(BaseModel):
    """A finished, not promoted experiment the driver offers as a possible parent (oldest first in the pool)."""

    commit: str
    val_bpb: float
    delta: float = Field(description="its mean minus main's on its GPU class when judged: ranks across classes")
    ok: bool = True
    near_miss: bool = True
    promoted: bool = False
    reachable: bool = True


def select_parent(main_commit: str, pool: Sequence[PoolEntry], rng: random.Random,
                  settings: ParentKnobs) -> tuple[str, str]:
    """Main's head with probability ``parent_main_prob``, else the best of a random draw of recent near-misses.

    Mostly main, because that is where gains compound; sometimes a near-miss, because two near-misses can
    combine into a win that neither is alone. Deterministic given ``rng``.
    """
    if rng.random() < settings.parent_main_prob:
        return main_commit, f"main (p={settings.parent_main_prob})"
    eligible = [e for e in pool if e.ok and e.near_miss and not e.promoted and e.reachable
                and math.isfinite(e.delta) and e.commit != main_commit][-settings.pool_recent:]
    if not eligible:
        return main_commit, "main (no near-miss to draw from)"
    drawn = rng.sample(eligible, min(settings.tournament_size, len(eligible)))
    best = min(drawn, key=lambda e: e.delta)
    return best.commit, f"best of {len(drawn)} near-misses drawn from {len(eligible)}: {best.val_bpb:.4f} " \
                        f"({best.delta:+.4f} vs main)"


def ok_values(values: Sequence[float]) -> list[float]:
    """The values a judgement may use: measured and finite."""
    return [v for v in values if v is not None and math.isfinite(v)]
