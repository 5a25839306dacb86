"""What a proposer receives and returns: plain data, so agents never touch git or the ledger."""

from __future__ import annotations

import traceback
from typing import Any, Literal, Protocol, get_args

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
    in_flight: list[ExperimentSummary] = Field(default_factory=list, description="candidates of any agent queued or "
                                               "running now: ideas already being tried, not to be proposed again")
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


# Why a proposal request brought no proposal, decided where the fault happened (the API client knows the HTTP
# status; the Ray executor knows the actor died), so nobody reads it back out of a message. ``other``: a fault the
# proposer did not type (a bug, a library's error): its traceback tail is in the message. The farm's metrics count
# failures by these (farm_agent_errors_total's ``kind``); cluster/vocabulary.py re-exports them.
FailureKind = Literal["auth", "quota", "rate_limit", "overloaded", "timeout", "connection", "server", "bad_request",
                      "invalid_response", "actor_died", "other"]
FAILURE_KINDS: tuple[FailureKind, ...] = get_args(FailureKind)


class ProposalFailure(BaseModel):
    """Why one proposal request brought no proposal, and what it still cost."""

    kind: FailureKind = "other"
    message: str = Field(description="what happened; the first line says it (headline), a traceback may follow")
    fatal: bool = Field(False, description="this agent can never succeed as configured (e.g. a rejected API key): "
                        "it is asked no more, the farm goes on with the others")
    spend: Spend | None = Field(None, description="the LLM tokens a failed proposal still cost: on the ledger and "
                                "counted against the cost cap")

    @classmethod
    def of(cls, exc: BaseException) -> ProposalFailure:
        """A fault the proposer did not type (a bug, a library's error): kind ``other``, with its traceback's tail."""
        tail = "".join(traceback.format_exception(exc, limit=3))[-800:]
        return cls(message=f"{type(exc).__name__}: {exc}\n{tail}")

    def headline(self) -> str:
        """One line for the ledger, the live view and the transcript: the kind, then the message's first line."""
        return f"{self.kind}: {(self.message.strip().splitlines() or ['no reason given'])[0]}"


class ProposalError(Exception):
    """The one exception a proposer raises for its own faults: it carries the typed ``failure`` (built here, with
    its kind, fatality and spend said where the fault is known) and, for LLM agents, the conversation so far."""

    def __init__(self, kind: FailureKind, message: str, *, fatal: bool = False, spend: Spend | None = None,
                 transcript: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.failure = ProposalFailure(kind=kind, message=message, fatal=fatal, spend=spend)
        self.transcript = transcript  # key redacted, for the run dir

    def __reduce__(self):
        """Pickled whole (Ray carries it from an agent actor to the driver): the default would rebuild it from
        the message alone and fail on the missing kind."""
        f = self.failure
        return _proposal_error, (f.kind, f.message, f.fatal, f.spend, self.transcript)


def _proposal_error(kind: FailureKind, message: str, fatal: bool, spend: Spend | None,
                    transcript: dict[str, Any] | None) -> ProposalError:  # fmt: skip
    return ProposalError(kind, message, fatal=fatal, spend=spend, transcript=transcript)


class Proposer(Protocol):
    name: str

    def propose(self, context: Context) -> Proposal:
        """One proposal; raises (ProposalError, typed) only for faults the caller should count against this agent."""
        ...
