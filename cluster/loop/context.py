"""What an agent is shown: the ``Context`` of one proposal, built from the farm's records.

The loop asks; this module decides what the asking agent sees: main's program and value, the parent the policy
draws, the leaderboard, recent and own results with their diffs and failure logs, what is being tried now, the
shared notes, and (for an optimiser) every file's constants with its result. The noise it shows is the view's,
the very figure the judge weighs, prior included: an agent must never be told a noise the judge does not use.
"""

from __future__ import annotations

import random
from pathlib import Path

from agent.mutate import parse_constants
from agent.protocol import Context, ExperimentSummary, Measured
from cluster.decisions.policy import Policy
from cluster.decisions.view import FarmView
from cluster.records.store import FarmStore
from cluster.sandbox.untrusted import log_tail


class ContextBuilder:
    """Builds each agent's Context; caches what does not change once an experiment finished (diffs, constants)."""

    def __init__(self, store: FarmStore, view: FarmView, policy: Policy, profile: str, run_dir: Path,
                 rng: random.Random) -> None:
        self.store, self.state, self.view, self.policy = store, store.state, view, policy
        self.profile, self.run_dir, self.rng = profile, run_dir, rng
        self._measured: dict[str, Measured] = {}  # finished experiment -> what optimiser agents see
        self._constants: dict[str, dict[str, float]] = {}  # train.py sha -> its constants block
        self._details: dict[str, tuple[str, str]] = {}  # finished experiment -> (diff, log tail) shown to agents

    def build(self, agent: str, running: set[str], optimiser: bool = False) -> Context:
        """The Context for ``agent``'s next proposal; ``running``: the experiments in flight now."""
        finished = [self.summary(eid) for eid in self.state.finished]
        ok = sorted((s for s in finished if s.val_bpb is not None), key=lambda s: s.val_bpb)
        parent, _why = self.policy.parent(self.view, self.rng)
        leaderboard, recent = ok[:10], finished[-10:]
        own = [s for s in finished if s.agent == agent][-5:]
        for summary in {id(s): s for s in (*leaderboard, *recent, *own)}.values():  # what agents look up
            summary.diff, summary.log_tail = self._detail(summary)
        main_class = self.view.main_class()
        return Context(
            program=self.store.program_md(self.state.main_commit),
            profile=self.profile,
            parent_commit=parent,
            parent_train_py=self.store.train_py(parent),
            main_val_bpb=self.state.main_mean(main_class),
            noise_sd=self.view.noise(main_class).sd,  # the judge's noise, prior included
            leaderboard=leaderboard,
            recent=recent,
            own_recent=own,
            own_rejected=[why for name, why in self.state.rejections if name == agent][-5:],
            in_flight=self.in_flight(running),
            notes=self.notes(),
            seed=self.rng.randrange(2**31),
            measured=self.measured() if optimiser else [],
        )

    def summary(self, eid: str) -> ExperimentSummary:
        """A finished experiment as agents (and the closing summaries) see it."""
        row, work = self.state.finished[eid], self.state.work.get(eid)
        return ExperimentSummary(
            experiment_id=eid, parent_commit=work.parent_commit if work else "", commit=work.commit if work else "",
            agent=work.agent if work else "", description=work.description if work else "",
            status=row.status or "", val_bpb=row.val_bpb, verdict=self.state.verdicts.get(eid, ""),
            reason=row.reason or "",
        )

    def in_flight(self, running: set[str], limit: int = 32) -> list[ExperimentSummary]:
        """Candidates queued or running, newest last: N agents proposing from one main at once would otherwise spend
        proposals (an LLM's tokens) on an idea already being tried, which screening then refuses."""
        state = self.state
        out = [ExperimentSummary(experiment_id=eid, parent_commit=w.parent_commit, commit=w.commit, agent=w.agent,
                                 description=w.description, status="running" if eid in running else "queued")
               for eid, w in state.work.items() if w.kind == "candidate" and eid not in state.finished]
        return out[-limit:]

    def measured(self) -> list[Measured]:
        """Every finished experiment with its file's constants (what an optimiser agent learns from), cached."""
        for eid, row in self.state.finished.items():
            work = self.state.work.get(eid)
            if eid in self._measured or work is None:
                continue
            if work.train_sha not in self._constants:
                try:
                    parsed = parse_constants(self.store.train_py(work.commit))
                    self._constants[work.train_sha] = {n: float(c.value) for n, c in parsed.items()}
                except ValueError:  # no constants block (an LLM rewrote the file): nothing to learn from
                    self._constants[work.train_sha] = {}
            self._measured[eid] = Measured(experiment_id=eid, constants=self._constants[work.train_sha],
                                           val_bpb=row.val_bpb if row.status == "ok" else None)
        return list(self._measured.values())

    def notes(self) -> list[str]:
        """The last lines of the shared notes file the agents write to (the loop appends them)."""
        path = self.run_dir / "notes.md"
        return path.read_text().splitlines()[-50:] if path.exists() else []

    def _detail(self, summary: ExperimentSummary) -> tuple[str, str]:
        """(diff vs parent for candidates and merges, log tail for failures) of a finished experiment, cached."""
        if summary.experiment_id not in self._details:
            work = self.state.work.get(summary.experiment_id)
            diff = self.store.diff(work.commit) if work and work.kind in ("candidate", "merge") else ""
            log = self.run_dir / "experiments" / summary.experiment_id / "out" / "run.log"
            tail = log_tail(log, 15) if summary.status != "ok" else ""  # written by the candidate: no links
            self._details[summary.experiment_id] = (diff[:6000], tail[-2000:])
        return self._details[summary.experiment_id]
