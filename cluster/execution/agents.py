"""The population: each agent a Ray actor that turns a Context into a Proposal.

Agents never touch git or the ledger; they get text and return text. An
actor survives its proposer's faults: an exception comes back as a failed
proposal (counted against that agent), and after repeated failures the actor
builds a fresh proposer, so one broken agent never stops the farm.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import ray
from pydantic import BaseModel

from agent.protocol import Context, Proposal, ProposalError, ProposalFailure, Proposer

RESTART_AFTER_FAILURES = 3


class ProposalOutcome(BaseModel):
    """What came back from one request: a proposal, or why there is none."""

    agent: str
    proposal: Proposal | None = None
    failure: ProposalFailure | None = None  # why there is none: its kind, whether the agent can go on, its spend
    seconds: float = 0.0
    transcript: dict | None = None  # a failed proposal's conversation, for the run dir


def make_proposer(kind: str, name: str, options: dict) -> Proposer:
    """Build a proposer by kind; the only place that knows the kinds. ``options["kind"]``, when there, is this
    agent's own kind over the population's (FarmConfig.agent_options: a mixed population)."""
    options = dict(options)  # the actor keeps its dict for rebuilds
    kind = options.pop("kind", None) or kind
    if kind == "mutate":
        from agent.mutate import MutateProposer

        return MutateProposer(name=name, **options)
    if kind == "optuna":
        from agent.optimize import OptimizeProposer  # Optuna's TPE / CMA-ES over the constants block

        return OptimizeProposer(name=name, **options)
    if kind == "script":
        from agent.scripted import ScriptedProposer

        return ScriptedProposer(name=name, **options)
    if kind == "claude":
        from agent.claude import ClaudeProposer  # the Claude agent issue

        return ClaudeProposer(name=name, **options)
    if kind == "openai":
        from agent.openai_agent import OpenAIProposer  # any OpenAI-compatible endpoint (vLLM, Ollama, ...)

        return OpenAIProposer(name=name, **options)
    raise ValueError(f"unknown agent kind {kind!r}: choose mutate, optuna, script, claude or openai")


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class AgentActor:
    """One agent of the population, holding its proposer between requests."""

    def __init__(self, kind: str, name: str, options: dict, factory: Callable[..., Proposer] | None = None) -> None:
        self.kind, self.name, self.options = kind, name, options
        self.factory = factory or make_proposer
        self.failures = 0
        self.proposer = self.factory(kind, name, options)

    def propose(self, context: Context) -> ProposalOutcome:
        outcome = propose_once(self.proposer, self.name, context)
        if outcome.proposal is not None:
            self.failures = 0
        else:
            self.failures += 1
            if self.failures >= RESTART_AFTER_FAILURES and not (outcome.failure and outcome.failure.fatal):
                self.proposer, self.failures = self.factory(self.kind, self.name, self.options), 0
        return outcome


def propose_once(proposer: Proposer, name: str, context: Context) -> ProposalOutcome:
    """One request to ``proposer``: its proposal, or its fault as a failed outcome (what it cost, whether this agent
    can go on, its transcript). Any fault of the proposer is this agent's, not the farm's: one it did not type
    (not a ProposalError) is a failure of kind ``other``, with its traceback's tail."""
    started = time.monotonic()
    try:
        proposal = proposer.propose(context)
    except ProposalError as exc:
        return ProposalOutcome(agent=name, failure=exc.failure, seconds=time.monotonic() - started,
                               transcript=exc.transcript)
    except Exception as exc:
        return ProposalOutcome(agent=name, failure=ProposalFailure.of(exc), seconds=time.monotonic() - started)
    return ProposalOutcome(agent=name, proposal=proposal, seconds=time.monotonic() - started)
