"""The tournament applied to the farm's state: judge a candidate, pick a parent.

cluster.tournament is pure decision logic; this is the thin layer that feeds
it from the driver's state and the research repo.
"""

from __future__ import annotations

import random

from cluster.repo import ResearchRepo
from cluster.state import FarmState, Work
from cluster.state import sha as file_sha
from cluster.tournament import (
    Comparison,
    Incumbent,
    NoiseModel,
    PoolEntry,
    TournamentSettings,
    Verdict,
    compare,
    count_lines,
    judge,
    noise_models,
    seed_noise,
    select_parent,
)
from cluster.vocabulary import ON_MAIN_VERDICTS


def incumbent(state: FarmState, repo: ResearchRepo) -> Incumbent:
    """Main as the tournament sees it: its replicates only (a promoted candidate's first run is biased low)."""
    classes = {gpu for (sha, gpu) in state.measurements if sha == state.main_sha}
    return Incumbent(
        commit=state.main_commit,
        line_count=count_lines(repo.train_py_at(state.main_commit)),
        measurements={gpu: state.values(state.main_sha, gpu, screening=False) for gpu in classes},
        screening={gpu: [m.val_bpb for m in state.measurements.get((state.main_sha, gpu), []) if m.screening]
                   for gpu in classes},
    )


def noise_for(state: FarmState, gpu_class: str, settings: TournamentSettings | None = None) -> NoiseModel:
    """The pooled noise on ``gpu_class``, with the settings' prior (noise_prior_sd, noise_prior_df) if any."""
    models = noise_models(m for ms in state.measurements.values() for m in ms)
    model = models.get(gpu_class) or NoiseModel.from_groups(gpu_class, [])
    return model.with_prior(settings.noise_prior_sd, settings.noise_prior_df) if settings else model


def seeded(state: FarmState, train_sha: str, gpu_class: str, screening: bool = True) -> list[tuple[int, float]]:
    """A file's ok runs on a GPU class as (seed, val_bpb), first runs of candidates left out if not ``screening``."""
    return [(m.seed, m.val_bpb) for m in state.measurements.get((train_sha, gpu_class), [])
            if screening or not m.screening]


def paired_comparison(state: FarmState, candidate: Work, reference_sha: str, gpu_class: str,
                      settings: TournamentSettings) -> Comparison | None:
    """The candidate against a reference file on their common seeds, weighted by how much of the noise the farm
    has seen shared per seed (tournament.compare); None without pairing."""
    if settings.pairing != "auto":
        return None
    noise = noise_for(state, gpu_class, settings)
    if not noise.known:
        return None
    parts = seed_noise((m for ms in state.measurements.values() for m in ms), noise, settings.noise_prior_df,
                       settings.noise_prior_shared or 0.0)
    return compare(seeded(state, candidate.train_sha, gpu_class),
                   seeded(state, reference_sha, gpu_class, screening=False), parts, noise.df)


def former_main(state: FarmState, candidate: Work, gpu_class: str, repo: ResearchRepo,
                settings: TournamentSettings) -> Incumbent | None:
    """A candidate's parent when main has moved on from it and it was measured as main: what its change is
    judged against with ``judge_against: parent``; None otherwise."""
    if candidate.kind != "candidate" or candidate.parent_commit == state.main_commit:
        return None
    parent_py = repo.train_py_at(candidate.parent_commit)
    parent_sha = file_sha(parent_py)
    values = state.values(parent_sha, gpu_class, screening=False)
    greedy = settings.policy == "greedy"  # keep if lower than the parent's runs (its kept run counts)
    if greedy:
        values = state.values(parent_sha, gpu_class)
    if parent_sha == state.main_sha or len(values) < (1 if greedy else settings.baseline_replicates):
        return None
    main_py = repo.train_py_at(state.main_commit)
    merged, conflict = repo._merge_train_py(parent_py, main_py, repo.train_py_at(candidate.commit))
    if not conflict and merged == repo.train_py_at(candidate.commit):
        return None  # it already has what main gained since (promote would fast-forward it): judge it against main
    if greedy:
        return Incumbent(commit=candidate.parent_commit, line_count=count_lines(parent_py),
                         screening={gpu_class: values})
    return Incumbent(commit=candidate.parent_commit, line_count=count_lines(parent_py),
                     measurements={gpu_class: values})


def judge_candidate(
    state: FarmState, candidate: Work, gpu_class: str, repo: ResearchRepo, settings: TournamentSettings
) -> Verdict:
    parent = former_main(state, candidate, gpu_class, repo, settings) if settings.judge_against == "parent" else None
    reference = file_sha(repo.train_py_at(parent.commit)) if parent else state.main_sha
    return judge(
        state.values(candidate.train_sha, gpu_class),
        count_lines(repo.train_py_at(candidate.commit)),
        parent or incumbent(state, repo),
        noise_for(state, gpu_class, settings),
        settings,
        gpu_class,
        commit=candidate.commit,
        comparison=paired_comparison(state, candidate, reference, gpu_class, settings),
    )


def reference_of(state: FarmState, candidate: Work, repo: ResearchRepo, settings: TournamentSettings) -> str:
    """The file a candidate will be judged against: its former-main parent (judge_against: parent) or main."""
    gpu_classes = {gpu for (sha, gpu) in state.measurements if sha == state.main_sha} or {"cpu"}
    for gpu in sorted(gpu_classes):
        if settings.judge_against == "parent" and (parent := former_main(state, candidate, gpu, repo, settings)):
            return file_sha(repo.train_py_at(parent.commit))
    return state.main_sha


def pick_parent(state: FarmState, rng: random.Random, settings: TournamentSettings) -> tuple[str, str]:
    """Mostly main; sometimes a promising near-miss, so good ideas can be combined.

    One pass over the measurements: this runs for every proposal, on the driver's hot path.
    """
    main = {gpu: state.main_mean(gpu) for (_, gpu) in state.measurements}
    means: dict[str, list[tuple[float, str]]] = {}
    for (sha, gpu), ms in state.measurements.items():
        if ms and main.get(gpu) is not None:
            means.setdefault(sha, []).append((sum(m.val_bpb for m in ms) / len(ms), gpu))
    pool = []
    for eid, decision in state.verdicts.items():
        work = state.work.get(eid)
        if work is None or work.kind != "candidate" or decision in ON_MAIN_VERDICTS:
            continue
        for mean, gpu in means.get(work.train_sha, []):
            pool.append(PoolEntry(commit=work.commit, val_bpb=mean, delta=mean - main[gpu],
                                  near_miss=decision in ("discard", "confirm", "wait")))
    return select_parent(state.main_commit, pool, rng, settings)
