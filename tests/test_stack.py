"""Stack, then certify (issue 15; cluster/decisions/policies/stack.py): a round's winners are merged into one stage off
main, the stage is measured on main's seeds and certified against main as one promotion.

On the real driver with the in-process executor (no Ray), real git merges and the Parquet ledger, on the surrogate
landscapes of bench/ (their noiseless value tells a real gain from a lucky run).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.mutate import parse_constants
from agent.protocol import Context, Proposal
from bench import realistic
from cluster.decisions.policies.stack import StackSettings
from cluster.records.ledger import Ledger
from tests.test_driver import comparable, rebuilt
from tests.test_pairing import farm

STACK = {"policy": "stack"}


@pytest.fixture(autouse=True)
def surrogate_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FARM_SURROGATE_SIGMA", "0.037")
    monkeypatch.setenv("FARM_SURROGATE_NOISE_SEED", "0")


def test_the_stack_policy_is_the_paired_policy_with_its_own_defaults() -> None:
    stack = StackSettings(policy="stack")
    assert stack.pairing == "auto" and stack.promising_sigmas == 0.5 and stack.max_replicates == 6
    assert stack.margin_sigmas == 2.6  # certification is as strict as the paired policy's promotion
    assert StackSettings(policy="stack", promising_sigmas=1.0).promising_sigmas == 1.0


def test_winners_are_stacked_into_stages_certified_against_main_as_one(tmp_path: Path) -> None:
    f = farm(tmp_path, gpus=4, agents={"count": 4, "kind": "mutate"}, max_experiments=90, tournament=STACK)
    seed_commit = f.state.main_commit
    assert f.run() == 0
    state, rows = f.state, Ledger(f.run_dir / "ledger").read()
    assert state.stages, "no stage was built"
    # no candidate is ever confirmed or promoted on its own: only stages are
    confirmed = {w.replicate_of for w in state.work.values() if w.kind == "confirm"}
    assert confirmed <= set(state.stages)
    main_moves = [r for r in rows if r.event == "verdict" and r.verdict == "promote" and r.commit]
    assert main_moves and {r.experiment_id for r in main_moves} <= set(state.stages)
    assert len(main_moves) == state.promotions
    assert any(len(parts) >= 2 for parts in state.stages.values()), "no stage held two winners"
    for stage_id, parts in state.stages.items():
        stage = state.work[stage_id]
        runs = [w for w in state.work.values() if w.train_sha == stage.train_sha and w.kind in ("merge", "confirm")]
        assert len(runs) >= StackSettings(**STACK).stage_runs  # all at once
        main_seeds = {w.seed for w in state.work.values() if w.kind == "baseline" and w.commit == stage.parent_commit}
        assert {w.seed for w in runs} <= main_seeds | {w.seed for w in state.work.values()
                                                       if w.train_sha == stage.train_sha}
        stage_py = f.repo.train_py_at(stage.commit)
        for part in parts:  # every part's own change is in its stage, whatever main it was proposed from
            work = state.work[part]
            before, after = (parse_constants(f.repo.train_py_at(c)) for c in (work.parent_commit, work.commit))
            changed = {k for k in after if after[k].value != before[k].value}
            assert changed and all(parse_constants(stage_py)[k].value == after[k].value for k in changed)
            staged = [r for r in rows if r.experiment_id == part and r.event == "verdict" and r.verdict == "staged"]
            assert 1 <= len(staged) <= 1 + StackSettings(**STACK).stack_retries
        if state.verdicts.get(stage_id) == "promote":  # every part lands with its stage
            assert all(state.verdicts[p] == "promote" for p in parts)
    landed = [e for e, v in state.verdicts.items() if v == "promote" and state.work[e].kind == "candidate"]
    assert len(landed) > state.promotions  # several gains per promotion
    true = realistic.true_bpb
    assert true(f.repo.train_py_at(state.main_commit)) < true(f.repo.train_py_at(seed_commit)) - 0.05
    assert comparable(rebuilt(f)) == comparable(state)  # stages and parts rebuilt from the ledger alone
    # the run browser's main line moves with the stages, not with each part that landed with one
    from cluster.ui.ledger_view import LedgerView
    from cluster.ui.model import RunState
    from cluster.ui.repo_view import RepoView

    ui = RunState(LedgerView(f.run_dir / "ledger").snapshot(), RepoView(f.run_dir / "repo"), f.run_dir)
    assert ui.promoted == [r.experiment_id for r in main_moves]


class Useless:
    """An agent whose every proposal changes a comment only: a real diff, no effect on the landscape."""

    def __init__(self, name: str) -> None:
        self.name, self.count = name, 0

    def propose(self, context: Context) -> Proposal:
        self.count += 1
        note = f"# {self.name} note {self.count}\n"
        return Proposal(agent=self.name, parent_commit=context.parent_commit, description=f"comment {self.count}",
                        train_py=note + context.parent_train_py)


def test_stages_of_useless_changes_are_never_certified(tmp_path: Path) -> None:
    """Half of the useless changes beat the lenient screen by luck and are stacked; none of their stages may reach
    main (the certification's runs are fresh, on main's seeds, at the strict margin)."""
    f = farm(tmp_path, proposer=Useless, gpus=4, agents={"count": 4, "kind": "mutate"}, max_experiments=120,
             tournament=STACK)
    assert f.run() == 0
    assert len(f.state.stages) >= 5  # lucky runs were stacked and had their stages judged
    assert f.state.promotions == 0
    assert all(f.state.verdicts.get(s) != "promote" for s in f.state.stages)


def test_ablation_proposes_main_without_each_part_of_a_promoted_stage_but_the_strongest(tmp_path: Path) -> None:
    """``ablate``: a stage certified as a whole may carry a rider that hurts; after it lands, main without each of
    its parts but the strongest is proposed (agent farm), screened and judged like any candidate."""
    f = farm(tmp_path, gpus=4, agents={"count": 4, "kind": "mutate"}, max_experiments=90,
             tournament={**STACK, "ablate": True})
    assert f.run() == 0
    state, rows = f.state, Ledger(f.run_dir / "ledger").read()
    reverts = [w for w in state.work.values() if w.kind == "candidate" and w.agent == "farm"]
    promoted = {s: parts for s, parts in state.stages.items() if state.verdicts.get(s) == "promote"}
    assert any(len(parts) >= 2 for parts in promoted.values()), "no stage of several parts was promoted"
    assert reverts, "no part of a promoted stage was reverted"
    reverted: list[str] = []
    for work in reverts:
        part_id = work.description.split()[1]
        stage_id = next(s for s, parts in promoted.items() if part_id in parts)
        assert len(promoted[stage_id]) >= 2
        part = state.work[part_id]
        # the revert starts from the promoted stage (main then) and undoes exactly the part's own change
        main_py, reverted_py = f.repo.train_py_at(work.parent_commit), f.repo.train_py_at(work.commit)
        assert main_py == f.repo.train_py_at(state.work[stage_id].commit)
        before, after = (parse_constants(f.repo.train_py_at(c)) for c in (part.parent_commit, part.commit))
        changed = {k for k in after if after[k].value != before[k].value}
        now, was = parse_constants(reverted_py), parse_constants(main_py)
        assert {k for k in now if now[k].value != was[k].value} == changed
        assert all(now[k].value == before[k].value for k in changed)
        assert state.verdicts.get(work.experiment_id), "a revert was never judged"
        reverted.append(part_id)
    assert len(reverted) == len(set(reverted))  # each part at most once
    for parts in promoted.values():  # never the strongest part: the certificate is mostly its gain
        assert sum(p in reverted for p in parts) <= len(parts) - 1
    assert not [r for r in rows if r.event == "rejected" and r.agent == "farm" and "compile" in (r.reason or "")]
    assert comparable(rebuilt(f)) == comparable(state)
