"""What a policy may read of the farm, in one place: the state's records and the research repo's files, read-only.

A policy judges from facts (main's runs, a file's seeds, the pooled noise, the near-misses a parent may be drawn
from); every one of them is a method here, so a judgement reads one object instead of walking the state, the repo
and the statistics. The records are shown as read-only mappings of frozen ``Work`` (the driver is the only writer:
cluster/records/store.py). The noise is computed by ``noise`` alone, with the run's prior, both for the judge and for
what agents are shown (cluster/loop/driver.py), so the two can never disagree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from pydantic import BaseModel, ConfigDict, Field

from cluster.decisions.tournament import (
    Incumbent,
    Measurement,
    NoiseModel,
    PoolEntry,
    SeedNoise,
    noise_models,
    seed_noise,
)
from cluster.records.ledger import LedgerRow
from cluster.records.repo import ResearchRepo, count_code_lines
from cluster.records.state import FarmState, Work, sha
from cluster.vocabulary import ON_MAIN_VERDICTS, REPLICATE_KINDS


class NoisePrior(BaseModel):
    """The noise judging starts from before the farm measured its own: ``df`` degrees of freedom of ``sd``, and the
    share of its variance common to every file run on one seed (none set: no prior)."""

    model_config = ConfigDict(frozen=True)

    sd: float | None = None
    df: int = 0
    shared: float | None = Field(None, description="None: nothing shared until the runs show it")


@dataclass(frozen=True)
class FarmView:
    """The farm as a policy reads it: the state and the research repo (it writes neither), and the noise prior."""

    state: FarmState
    repo: ResearchRepo
    prior: NoisePrior = NoisePrior()

    # ---- the records ------------------------------------------------------------------------------------------

    @property
    def main_commit(self) -> str:
        return self.state.main_commit

    @property
    def main_sha(self) -> str:
        return self.state.main_sha

    @property
    def work(self) -> Mapping[str, Work]:
        """Every experiment ever queued, by id."""
        return MappingProxyType(self.state.work)

    @property
    def finished(self) -> Mapping[str, LedgerRow]:
        """Each finished experiment's ``finished`` row, by id."""
        return MappingProxyType(self.state.finished)

    @property
    def verdicts(self) -> Mapping[str, str]:
        """Each judged experiment's last decision."""
        return MappingProxyType(self.state.verdicts)

    @property
    def stages(self) -> Mapping[str, list[str]]:
        """(policy stack) stage id -> the candidates merged in it."""
        return MappingProxyType(self.state.stages)

    def train_py(self, commit: str) -> str:
        return self.repo.train_py_at(commit)

    def finished_class(self, experiment_id: str, default: str = "cpu") -> str:
        """The GPU class a finished experiment ran on."""
        return self.state.finished[experiment_id].gpu_class or default

    # ---- measurements -----------------------------------------------------------------------------------------

    def main_class(self) -> str:
        """The GPU class main was measured on first (cpu before any measurement)."""
        classes = [c for (s, c) in self.state.measurements if s == self.state.main_sha]
        return classes[0] if classes else "cpu"

    def main_classes(self) -> list[str]:
        """Every GPU class main was measured on, sorted (cpu before any measurement)."""
        return sorted({gpu for (s, gpu) in self.state.measurements if s == self.state.main_sha} or {"cpu"})

    def values(self, train_sha: str, gpu_class: str, screening: bool = True) -> list[float]:
        """ok val_bpb of a file on a GPU class (without first runs of candidates if not ``screening``)."""
        return self.state.values(train_sha, gpu_class, screening)

    def seeded(self, train_sha: str, gpu_class: str, screening: bool = True) -> list[tuple[int, float]]:
        """A file's ok runs on a GPU class as (seed, val_bpb), first runs of candidates left out if not
        ``screening``."""
        return [(m.seed, m.val_bpb) for m in self.state.measurements.get((train_sha, gpu_class), [])
                if screening or not m.screening]

    def mean(self, train_sha: str) -> float:
        """A file's mean over every ok run on any class (nan: none)."""
        values = [m.val_bpb for (s, _), ms in self.state.measurements.items() if s == train_sha for m in ms]
        return sum(values) / len(values) if values else float("nan")

    def main_mean(self, gpu_class: str) -> float | None:
        return self.state.main_mean(gpu_class)

    def seeds_measured(self, train_sha: str, gpu_class: str) -> set[int]:
        """Seeds of a file's ok runs on a class, its first runs as a candidate included."""
        return {m.seed for m in self.state.measurements.get((train_sha, gpu_class), [])}

    def replicate_seeds_measured(self, train_sha: str, gpu_class: str) -> set[int]:
        """Seeds of a file's ok replicates on a class (its first runs as a candidate left out)."""
        return {m.seed for m in self.state.measurements.get((train_sha, gpu_class), []) if not m.screening}

    def every_seed_measured(self) -> list[int]:
        """The seed of every ok run of any file (a fresh baseline takes seeds none of them used)."""
        return [m.seed for ms in self.state.measurements.values() for m in ms]

    # ---- work in flight ---------------------------------------------------------------------------------------

    def pending_replicates(self, train_sha: str) -> int:
        """Replicates of a file that are queued or running."""
        return self.state.pending_replicates(train_sha)

    def pending_replicate_seeds(self, train_sha: str) -> set[int]:
        """Seeds of a file's replicates that are queued or running."""
        state = self.state
        return {w.seed for eid, w in state.work.items() if w.train_sha == train_sha and eid not in state.finished
                and w.kind in REPLICATE_KINDS}

    def runs_of(self, train_sha: str) -> list[str]:
        """Finished experiments of a file, in booking order."""
        return [e for e, w in self.state.work.items() if w.train_sha == train_sha and e in self.state.finished]

    def seeds_taken(self, train_sha: str, gpu_class: str | None = None) -> list[int]:
        """Seeds a file was measured on or is queued or running on: replicates must use others."""
        state = self.state
        pending = [w.seed for eid, w in state.work.items() if w.train_sha == train_sha and eid not in state.finished]
        measured = [m.seed for (s, c), ms in state.measurements.items() if s == train_sha and
                    gpu_class in (None, c) for m in ms]
        return pending + measured

    def reference_seeds(self, train_sha: str) -> list[int]:
        """Seeds a file's replicates ran or will run on (its first runs as a candidate left out: they were
        selected for being low), in order: what a candidate compared with it is paired on."""
        measured = [m.seed for (s, _), ms in self.state.measurements.items() if s == train_sha for m in ms
                    if not m.screening]
        return sorted(self.pending_replicate_seeds(train_sha) | set(measured))

    # ---- what judging reads -----------------------------------------------------------------------------------

    def incumbent(self) -> Incumbent:
        """Main as the tournament sees it: its replicates only (a promoted candidate's first run is biased low)."""
        state = self.state
        classes = {gpu for (s, gpu) in state.measurements if s == state.main_sha}
        return Incumbent(
            commit=state.main_commit,
            line_count=count_code_lines(self.train_py(state.main_commit)),
            measurements={gpu: state.values(state.main_sha, gpu, screening=False) for gpu in classes},
            screening={gpu: [m.val_bpb for m in state.measurements.get((state.main_sha, gpu), []) if m.screening]
                       for gpu in classes},
        )

    def noise(self, gpu_class: str) -> NoiseModel:
        """The pooled noise on ``gpu_class`` with the run's prior: what the judge weighs and agents are shown."""
        models = noise_models(self._measurements())
        model = models.get(gpu_class) or NoiseModel.from_groups(gpu_class, [])
        return model.with_prior(self.prior.sd, self.prior.df)

    def seed_noise(self, noise: NoiseModel) -> SeedNoise:
        """``noise`` split into the part shared per seed and each run's own (pairing's weights), with the prior."""
        return seed_noise(self._measurements(), noise, self.prior.df, self.prior.shared or 0.0)

    def near_misses(self) -> list[PoolEntry]:
        """Candidates not on main, with their mean against main's on each class: the pool a parent is drawn from.

        One pass over the measurements: this runs for every proposal, on the driver's hot path.
        """
        state = self.state
        main = {gpu: state.main_mean(gpu) for (_, gpu) in state.measurements}
        means: dict[str, list[tuple[float, str]]] = {}
        for (train_sha, gpu), ms in state.measurements.items():
            if ms and main.get(gpu) is not None:
                means.setdefault(train_sha, []).append((sum(m.val_bpb for m in ms) / len(ms), gpu))
        pool = []
        for eid, decision in state.verdicts.items():
            work = state.work.get(eid)
            if work is None or work.kind != "candidate" or decision in ON_MAIN_VERDICTS:
                continue
            for mean, gpu in means.get(work.train_sha, []):
                pool.append(PoolEntry(commit=work.commit, val_bpb=mean, delta=mean - main[gpu],
                                      near_miss=decision in ("discard", "confirm", "wait")))
        return pool

    def file_sha(self, commit: str) -> str:
        """The sha of train.py at ``commit`` (what measurements are keyed by)."""
        return sha(self.train_py(commit))

    def gain(self, work: Work) -> float:
        """How much an experiment's runs beat its parent's mean (0 where either is unmeasured)."""
        gain = self.mean(work.train_sha) - self.mean(self.file_sha(work.parent_commit))
        return 0.0 if math.isnan(gain) else gain

    def _measurements(self) -> list[Measurement]:
        return [m for ms in self.state.measurements.values() for m in ms]
