"""The research agent's conversation loop, written once for every wire protocol.

Each proposal is a fresh, short conversation (no history carried between
proposals: the Context is the memory): the system prompt (program.md and the
working instructions), this agent's direction and temperament, and a user
message with the parent's train.py and the farm's results. The model reads
and edits an in-memory train.py with tools (agent/tools.py) and ends by
calling ``submit``, which pre-flights the file first.

A proposal fails, counted against this agent, when the conversation ends
without a submit, a reply is cut off at ``max_tokens``, the turn limit is
reached, or the API keeps failing after retries (agent/llm.py). A rejected
key is a ``fatal`` failure: the actor stops asking this agent, the farm goes
on. Whatever happens, the tokens spent are reported: a failed proposal raises
a ProposalError whose failure carries ``spend`` (and the error its
``transcript``) for the driver, so the USD cap counts failures too.

What differs between APIs (request shape, tool calls, usage, errors) is the
wire's (agent/wire.py); nothing here knows which API it talks to.
"""

from __future__ import annotations

import functools
import random
import time
from typing import Any

from agent.cost import Price, Tally
from agent.llm import RetryPolicy, call_with_retries
from agent.prompt import default_persona, user_message
from agent.protocol import Context, Proposal, ProposalError, ProposalFailure
from agent.tools import TOOL_INPUTS, ToolExecutor, Workspace
from agent.transcript import redact
from agent.wire import ToolResult, Wire


class ToolUseProposer:
    """One tool-use research agent of the population, over one wire (see ClaudeProposer, OpenAIProposer)."""

    def __init__(self, name: str, *, wire: Wire, model: str, price: Price, direction: str | None = None,
                 temperament: str | None = None, max_turns: int = 24, retry: RetryPolicy | None = None,
                 price_note: str = "") -> None:
        default_direction, default_temperament = default_persona(name)
        self.name, self.wire, self.model, self.price, self.price_note = name, wire, model, price, price_note
        self.direction, self.temperament = direction or default_direction, temperament or default_temperament
        self.max_turns, self.retry = max_turns, retry or RetryPolicy()
        self.rng = random.Random()
        self._client: Any = None
        self._client_key = ""

    # ---- the Proposer protocol -------------------------------------------------

    def propose(self, context: Context) -> Proposal:
        tally, record = Tally(), _Record(started=time.time())
        key = ""
        try:
            key = self.wire.api_key()  # each time: a rotated secret file is picked up
            return self._converse(context, key, tally, record)
        except Exception as exc:  # raised again with what was spent so far, whatever the fault
            failure = exc.failure if isinstance(exc, ProposalError) else ProposalFailure.of(exc)
            record.outcome = f"failed: {failure.headline()}"
            raise ProposalError(failure.kind, failure.message, fatal=failure.fatal, spend=tally.spend(self.price),
                                transcript=self._transcript(context, record, tally, key)) from exc

    # ---- the loop ---------------------------------------------------------------

    def _converse(self, context: Context, key: str, tally: Tally, record: _Record) -> Proposal:
        client = self._client_for(key)
        ws = Workspace(parent_train_py=context.parent_train_py)
        executor = ToolExecutor(context, ws)
        record.system = self.wire.system(context.program, self.direction, self.temperament)
        record.messages = [self.wire.user(user_message(context))]
        for turn in range(1, self.max_turns + 1):
            request = self.wire.request(record.system, record.messages)

            def on_retry(what: str, wait: float, turn: int = turn) -> None:
                record.events.append(f"turn {turn}: {what}; retrying in {wait:.2f} s")

            response = call_with_retries(functools.partial(self.wire.send, client, request), self.retry,
                                         api_key=key, rng=self.rng, on_retry=on_retry,
                                         classify=self.wire.classify, errors=self.wire.errors, api=self.wire.api)
            reply = self.wire.parse(response)
            tally.add(reply.usage)
            record.messages.append(reply.message)
            record.turns = turn
            if reply.cut_off:
                raise ProposalError("invalid_response", f"a reply was cut off at max_tokens "
                                    f"({getattr(self.wire, 'max_tokens', '?')}) on turn {turn} before the agent "
                                    "submitted; raise the agent's max_tokens")
            if not reply.calls:
                raise ProposalError("invalid_response", f"the conversation ended on turn {turn} (stop_reason "
                                    f"{reply.stop_reason!r}) without a submit: no proposal")
            results = []
            for call in reply.calls:
                if call.error:  # arguments the wire could not read: the model hears why and goes on
                    text, is_error = f"invalid input for {call.name}: {call.error}", True
                else:
                    text, is_error = executor.run(call.name, call.input)
                results.append(ToolResult(call, text, is_error))
            record.messages.extend(self.wire.results(results))
            if ws.description is not None:
                record.outcome = "submitted"
                return Proposal(  # notes and description reach files every agent reads: no secrets in them
                    parent_commit=context.parent_commit, train_py=ws.train_py,
                    description=redact(ws.description, [key]), agent=self.name, notes=redact(ws.notes, [key]),
                    model=self.model, **tally.spend(self.price).model_dump(),
                    transcript=self._transcript(context, record, tally, key),
                )
        raise ProposalError("invalid_response", f"no submit within the turn limit ({self.max_turns} turns)")

    def _client_for(self, key: str) -> Any:
        if self._client is None or key != self._client_key:
            self._client, self._client_key = self.wire.make_client(key), key
        return self._client

    def _transcript(self, context: Context, record: _Record, tally: Tally, key: str) -> dict[str, Any]:
        return redact({
            "agent": self.name, "model": self.model, "wire": self.wire.name, "direction": self.direction,
            "temperament": self.temperament, "parent_commit": context.parent_commit, "started_at": record.started,
            "seconds": round(time.time() - record.started, 3), "turns": record.turns, "outcome": record.outcome,
            "events": record.events, "usage": tally.spend(self.price).model_dump(),
            **({"price_note": self.price_note} if self.price_note else {}), "system": record.system,
            "tools": list(TOOL_INPUTS), "messages": record.messages,
        }, [key])  # fmt: skip


class _Record:
    """What one proposal's conversation has been so far (for the transcript)."""

    def __init__(self, started: float) -> None:
        self.started, self.turns, self.outcome = started, 0, "unfinished"
        self.system: Any = []
        self.messages: list[dict] = []
        self.events: list[str] = []
