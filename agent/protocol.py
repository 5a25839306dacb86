"""What a proposer receives and returns: plain data, so agents never touch git or the ledger."""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import BaseModel, Field


class ExperimentSummary(BaseModel):
    """One past experiment as an agent sees it."""

    experiment_id: str
    parent_commit: str = ""
    commit: str = ""
    agent: str = ""
    description: str = ""
    status: str = ""
    val_bpb: float | None = None
    verdict: str = ""
    reason: str = Field("", description="why it failed or was judged so (the runner's or the tournament's words)")
    log_tail: str = ""
    diff: str = Field("", description="unified diff of train.py against its parent (candidates and merges)")


class Measured(BaseModel):
    """One finished experiment as an optimiser sees it: the literal constants of its train.py and its score."""

    experiment_id: str
    constants: dict[str, float] = Field(default_factory=dict, description="the constants block (agent/mutate.py)")
    val_bpb: float | None = Field(None, description="None: the run did not end ok (a crash, an oom, ...)")


class Context(BaseModel):
    """Everything an agent is shown for one proposal, built fresh each time."""

    program: str = Field(description="program.md, the research program")
    profile: str
    parent_commit: str
    parent_train_py: str
    main_val_bpb: float | None = None
    noise_sd: float | None = None
    leaderboard: list[ExperimentSummary] = Field(default_factory=list)
    recent: list[ExperimentSummary] = Field(default_factory=list)
    own_recent: list[ExperimentSummary] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    own_rejected: list[str] = Field(default_factory=list, description="this agent's proposals refused before running")
    seed: int = Field(0, description="for proposers that draw random numbers: reproducible runs")
    measured: list[Measured] = Field(default_factory=list, description="every finished experiment of the run, "
                                     "whoever proposed it (optimiser agents only; empty for the others)")


class Spend(BaseModel):
    """LLM tokens and USD one proposal cost (zero for proposers without an LLM)."""

    tokens_in: int = 0  # uncached input tokens
    tokens_out: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0

    @classmethod
    def of(cls, carrier: object) -> Spend:
        """The spend part of anything that carries these fields (a Proposal, a flat ledger row; None counts 0)."""
        return cls(**{name: getattr(carrier, name, None) or 0 for name in cls.model_fields})

    def is_paid(self) -> bool:
        """Anything spent at all (a proposer without an LLM spends nothing)."""
        return bool(self.tokens_in or self.tokens_out or self.cost_usd)


class Proposal(Spend):
    """A candidate train.py, proposed from a parent commit."""

    parent_commit: str
    train_py: str
    description: str
    agent: str
    model: str = Field("", description="the LLM behind it (LLM agents), so a mixed population can be told apart")
    notes: list[str] = Field(default_factory=list, description="one-line insights for the shared notes file")
    transcript: dict[str, Any] | None = Field(None, description="the conversation, key redacted, for the run dir")


class Proposer(Protocol):
    name: str

    def propose(self, context: Context) -> Proposal:
        """One proposal; raises only for faults the caller should count against this agent."""
        ...
