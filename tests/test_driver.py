"""The driver on the in-process executor: no Ray, no root, a virtual clock, each test in about a second.

The loop, the tournament, the git research repo and the Parquet ledger are the real ones; only the trainer
(``bench.surrogate``: val_bpb is a known function of train.py's constants plus noise, or a scripted fault) and
Ray (``cluster.execution.executor.InProcessExecutor``) are stood in.

The property at the heart of it: the state a farm holds while it runs is exactly the state ``--resume`` rebuilds
from its ledger and repo (one writer: ``FarmState.apply``), whatever happened in the run.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from agent.protocol import Context, Proposal, ProposalError, Spend
from bench import surrogate
from cluster.config import FarmConfig
from cluster.execution.executor import InProcessExecutor, unit_duration
from cluster.execution.spec import ExperimentSpec, GpuAssignment
from cluster.loop.driver import Farm
from cluster.records.ledger import Ledger
from cluster.records.repo import ResearchRepo
from cluster.records.state import FarmState
from cluster.sandbox.base import no_result
from trainer.profiles import get_profile
from trainer.result import ExperimentResult, Status
from trainer.seed import seed_source

SEED = seed_source(get_profile("cpu-tiny"))
FAULTY = f"{__name__}:FaultySurrogate"


class FaultySurrogate(surrogate.SurrogateSandbox):
    """The surrogate trainer, with a random share of runs ending in a fault (the same fault for the same run)."""

    fault_rate = 0.0

    def __init__(self) -> None:
        super().__init__()
        self.write_files = False  # nothing reads the run dirs here: keep the test fast

    def run(self, spec: ExperimentSpec, gpu: GpuAssignment) -> ExperimentResult:
        draw = random.Random(f"{spec.experiment_id}:{spec.train_py}")
        if draw.random() < self.fault_rate:
            status = draw.choice([Status.CRASH, Status.OOM, Status.ERROR, Status.TIMEOUT, Status.INVALID])
            return no_result(spec, 0.0, status, f"scripted {status.value}")
        return super().run(spec, gpu)


class Flaky:
    """A mutate agent whose requests sometimes fail (an API error, some of them after spending tokens)."""

    def __init__(self, name: str, seed: int, fail_rate: float) -> None:
        from agent.mutate import MutateProposer

        self.inner = MutateProposer(name=name)
        self.rng, self.fail_rate = random.Random(f"{seed}:{name}"), fail_rate

    def propose(self, context: Context) -> Proposal:
        if self.rng.random() < self.fail_rate:
            paid = self.rng.random() < 0.5
            raise ProposalError("server", "scripted API failure",
                                spend=Spend(tokens_in=100, tokens_out=10, cost_usd=0.001) if paid else None)
        proposal = self.inner.propose(context)
        return proposal.model_copy(update={"tokens_in": 50, "cost_usd": 0.0005})


@pytest.fixture(autouse=True)
def surrogate_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FARM_SURROGATE_SIGMA", "0.01")
    monkeypatch.setenv("FARM_SURROGATE_NOISE_SEED", "0")
    FaultySurrogate.fault_rate = 0.0


def make_farm(tmp_path: Path, seed: int = 0, proposer=None, **config) -> Farm:
    run_dir = tmp_path / "run"
    settings = {"gpus": 2, "profile": "cpu-tiny", "sandbox": "process", "metrics_port": None, "run_dir": run_dir,
                "agents": {"count": 2, "kind": "mutate"}, "max_experiments": 30, "seed": seed,
                "tournament": {"baseline_replicates": 2, "min_noise_df": 2}, **config}
    if not (run_dir / "repo").exists():
        ResearchRepo.create(run_dir / "repo", SEED, "program")
    factory = (lambda kind, name, opts: proposer(name)) if proposer else None
    return Farm(FarmConfig(**settings), run_dir, InProcessExecutor(FAULTY, unit_duration(seed)),
                proposer_factory=factory)


def comparable(state: FarmState) -> dict:
    """Everything the state holds, in a form two states can be compared by."""
    return {
        "next_id": state.next_id, "main": (state.main_commit, state.main_sha),
        "work": {eid: vars(w) for eid, w in state.work.items()},
        "finished": {eid: row.model_dump() for eid, row in state.finished.items()},
        "verdicts": dict(state.verdicts),
        "measurements": {key: [m.model_dump() for m in ms] for key, ms in state.measurements.items() if ms},
        "queue": list(state.queue), "promotions": state.promotions, "rejected": state.rejected,
        "cost_usd": round(state.cost_usd, 9), "spend": {a: vars(s) for a, s in state.spend.items()},
        "rejections": list(state.rejections), "stages": dict(state.stages),
    }  # fmt: skip


def rebuilt(farm: Farm) -> FarmState:
    main = farm.repo.main_head()
    return FarmState.rebuild(Ledger(farm.run_dir / "ledger").read(), main, farm.repo.train_py_at(main))


def test_the_farm_promotes_a_real_gain_without_ray(tmp_path: Path) -> None:
    """The whole loop on the in-process executor: main is measured, candidates judged, a gain lands on main."""
    farm = make_farm(tmp_path, max_experiments=40)
    seed_commit = farm.state.main_commit
    assert farm.run() == 0
    state = farm.state
    assert state.promotions >= 1 and state.main_commit != seed_commit
    assert surrogate.true_bpb(farm.repo.train_py_at(state.main_commit)) < surrogate.true_bpb(SEED)
    assert len(state.finished) == 40 and not farm.inflight and not farm.pool.asking
    assert farm.executor.now() < 40  # two slots: well under one experiment duration per experiment
    kinds = {w.kind for w in state.work.values()}
    assert {"baseline", "candidate", "confirm"} <= kinds


@pytest.mark.parametrize("seed", range(6))
def test_the_live_state_is_the_state_a_resume_rebuilds(tmp_path: Path, seed: int) -> None:
    """Random runs (faults of every status, agents that fail, some after spending, greedy or tournament, one or
    three slots): at the end, the state rebuilt from the ledger and git equals the live one, field by field."""
    rng = random.Random(seed)
    FaultySurrogate.fault_rate = rng.choice([0.0, 0.2, 0.4])
    policy = rng.choice([{"baseline_replicates": 2, "min_noise_df": 2}, {"policy": "greedy"},
                         {"baseline_replicates": 2, "min_noise_df": 1, "judge_against": "parent"},
                         {"policy": "paired"}, {"policy": "stack"}])
    fail_rate = rng.choice([0.0, 0.3])
    farm = make_farm(tmp_path, seed, proposer=lambda name: Flaky(name, seed, fail_rate), gpus=rng.choice([1, 3]),
                     max_experiments=rng.randint(8, 30), tournament=policy, max_consecutive_errors=0)
    farm.run()
    assert farm.state.finished  # something happened
    assert comparable(rebuilt(farm)) == comparable(farm.state)


def test_a_resumed_farm_goes_on_from_where_it_stopped(tmp_path: Path) -> None:
    """Stopped after 12 experiments and resumed to 24: the same ids go on, nothing finished runs again, and the
    rebuilt state after the second part equals the live one."""
    first = make_farm(tmp_path, max_experiments=12)
    first.run()
    done = set(first.state.finished)
    second = make_farm(tmp_path, max_experiments=24)
    assert comparable(second.state) == comparable(rebuilt(first))
    second.run()
    assert done < set(second.state.finished) and len(second.state.finished) == 24
    runs = [r for r in Ledger(second.run_dir / "ledger").read() if r.event == "finished"]
    assert len(runs) == len({r.experiment_id for r in runs}) == 24  # nothing ran twice
    assert comparable(rebuilt(second)) == comparable(second.state)


def test_a_failed_proposal_that_spent_is_booked_and_the_farm_goes_on(tmp_path: Path) -> None:
    farm = make_farm(tmp_path, proposer=lambda name: Flaky(name, 1, 0.5), max_experiments=16)
    assert farm.run() == 0
    failed = [r for r in Ledger(farm.run_dir / "ledger").read() if r.event == "proposal_failed"]
    assert failed and all(r.cost_usd == pytest.approx(0.001) for r in failed)
    assert sum(s.failed for s in farm.state.spend.values()) == len(failed)
    assert len(farm.state.finished) == 16


def test_an_agent_is_rebuilt_after_repeated_faults_but_never_after_a_fatal_one() -> None:
    """AgentActor's rules (its class without Ray), which share propose_once with the in-process executor."""
    from cluster.execution.agents import RESTART_AFTER_FAILURES, AgentActor

    built = []

    class Bad:
        fatal = False

        def __init__(self) -> None:
            built.append(self)

        def propose(self, context: Context) -> Proposal:
            if Bad.fatal:
                raise ProposalError("auth", "the API key was rejected", fatal=True)
            raise RuntimeError("boom")  # a fault the agent did not type: kind other, with its traceback

    actor = AgentActor.__ray_actor_class__("mutate", "mutate-0", {}, lambda kind, name, options: Bad())
    outcomes = [actor.propose(None) for _ in range(RESTART_AFTER_FAILURES)]
    assert all(o.proposal is None and o.failure.kind == "other" and not o.failure.fatal for o in outcomes)
    assert all(o.failure.message.startswith("RuntimeError: boom") and "Traceback" in o.failure.message
               for o in outcomes)
    assert len(built) == 2  # rebuilt once, after the third fault
    Bad.fatal = True
    assert all(actor.propose(None).failure.fatal for _ in range(RESTART_AFTER_FAILURES)) and len(built) == 2


def test_agents_are_shown_the_noise_the_judge_weighs(tmp_path: Path) -> None:
    """One function gives both (cluster/decisions/view.py noise): before any run, the paired policy's prior (cpu-tiny's
    documented sd), which an agent was once shown as unknown while its candidate was judged with it."""
    farm = make_farm(tmp_path, tournament={"policy": "paired"})
    judged = farm.view_of_state.noise(farm.view_of_state.main_class())
    assert farm._context(0).noise_sd == judged.sd == pytest.approx(get_profile("cpu-tiny").noise_sd)
