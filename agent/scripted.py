"""A proposer that replays a fixed list of constant changes, in order.

For trying a known list of ideas under the farm's noise-aware judging (and
for reproducible end-to-end tests): each proposal applies the next change set
to the parent's train.py. When the list runs out the agent stops.
"""

from __future__ import annotations

from agent.protocol import Context, Proposal, ProposalError
from trainer.seed import set_constants


class ScriptedProposer:
    def __init__(self, name: str, changes: list[dict[str, int | float]]) -> None:
        if not changes:
            raise ValueError("a scripted agent needs at least one change set, e.g. [{'DEPTH': 2}]")
        self.name, self.changes, self.position = name, changes, 0

    def propose(self, context: Context) -> Proposal:
        if self.position >= len(self.changes):
            # the agent has nothing more to say: fatal, the farm goes on without it
            raise ProposalError("other", f"all {len(self.changes)} scripted change sets proposed", fatal=True)
        change = self.changes[self.position]
        self.position += 1
        return Proposal(
            parent_commit=context.parent_commit,
            train_py=set_constants(context.parent_train_py, change),
            description="; ".join(f"{k} = {v!r}" for k, v in change.items()),
            agent=self.name,
        )
