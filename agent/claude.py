"""The Claude research agent: a tool-use loop on the Messages API that turns a Context into a Proposal.

Each proposal is a fresh, short conversation (no history carried between
proposals: the Context is the memory): the cached system prompt (program.md
and the working instructions), this agent's direction and temperament, and a
user message with the parent's train.py and the farm's results. The model
reads and edits an in-memory train.py with tools (agent/tools.py) and ends
by calling ``submit``, which pre-flights the file first.

A proposal fails, counted against this agent, when the conversation ends
without a submit, a reply is cut off at ``max_tokens``, the turn limit is
reached, or the API keeps failing after retries (agent/llm.py). A rejected
key raises an error with ``fatal = True``: the actor stops asking this agent,
the farm goes on. Whatever happens, the tokens spent are reported: a failed
proposal's exception carries ``spend`` and ``transcript`` for the driver, so
the USD cap counts failures too.
"""

from __future__ import annotations

import copy
import functools
import random
import time
from collections.abc import Mapping
from typing import Any

from agent.cost import DEFAULT_MODEL, Price, Tally, price_for
from agent.llm import AgentError, RetryPolicy, call_with_retries, make_client, read_api_key
from agent.prompt import default_persona, system_blocks, user_message
from agent.protocol import Context, Proposal, Spend
from agent.tools import ToolExecutor, Workspace, tool_schemas
from agent.transcript import redact


class ClaudeProposer:
    """One Claude agent of the population (options: cluster.config.AgentOptions)."""

    def __init__(
        self,
        name: str,
        *,
        direction: str | None = None,
        temperament: str | None = None,
        model: str = DEFAULT_MODEL,
        max_tokens: int = 8192,
        temperature: float | None = None,
        base_url: str | None = None,
        timeout_seconds: float = 300.0,
        max_turns: int = 24,
        max_retries: int = 6,
        retry_base_seconds: float = 1.0,
        retry_max_seconds: float = 60.0,
        prices: Mapping[str, Price | Mapping[str, float]] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        default_direction, default_temperament = default_persona(name)
        self.name = name
        self.direction, self.temperament = direction or default_direction, temperament or default_temperament
        self.model, self.max_tokens, self.temperature = model, max_tokens, temperature
        self.base_url, self.timeout_seconds, self.max_turns = base_url, timeout_seconds, max_turns
        self.retry = RetryPolicy(max_retries=max_retries, base_seconds=retry_base_seconds,
                                 max_seconds=retry_max_seconds)
        overrides = {k: Price.model_validate(v) for k, v in (prices or {}).items()}
        self.price = price_for(model, overrides)  # an unknown model fails here, not after spending
        self.env = env
        self.rng = random.Random()
        self.tools = tool_schemas()
        self._client: Any = None
        self._client_key = ""

    # ---- the Proposer protocol -------------------------------------------------

    def propose(self, context: Context) -> Proposal:
        tally, record = Tally(), _Record(started=time.time())
        key = ""
        try:
            key = read_api_key(self.env)  # each time: a rotated secret file is picked up
            return self._converse(context, key, tally, record)
        except Exception as exc:
            record.outcome = f"failed: {type(exc).__name__}: {exc}"
            for attr, value in (("spend", Spend(**tally.as_dict(self.price))),
                                ("transcript", self._transcript(context, record, tally, key))):
                try:
                    setattr(exc, attr, value)
                except AttributeError:
                    pass
            raise

    # ---- the loop ---------------------------------------------------------------

    def _converse(self, context: Context, key: str, tally: Tally, record: _Record) -> Proposal:
        client = self._client_for(key)
        ws = Workspace(parent_train_py=context.parent_train_py)
        executor = ToolExecutor(context, ws)
        record.system = system_blocks(context.program, self.direction, self.temperament)
        record.messages = [{"role": "user", "content": [{"type": "text", "text": user_message(context)}]}]
        for turn in range(1, self.max_turns + 1):
            request = self._request(record.system, record.messages)

            def on_retry(what: str, wait: float, turn: int = turn) -> None:
                record.events.append(f"turn {turn}: {what}; retrying in {wait:.2f} s")

            response = call_with_retries(functools.partial(client.messages.create, **request), self.retry,
                                         api_key=key, rng=self.rng, on_retry=on_retry)
            tally.add(response.usage)
            blocks = [_block(b) for b in response.content]
            record.messages.append({"role": "assistant", "content": blocks})
            record.turns = turn
            if response.stop_reason == "max_tokens":
                raise AgentError(f"a reply was cut off at max_tokens ({self.max_tokens}) on turn {turn} before "
                                 "the agent submitted; raise the agent's max_tokens")
            calls = [b for b in blocks if b["type"] == "tool_use"]
            if not calls:
                raise AgentError(f"the conversation ended on turn {turn} (stop_reason {response.stop_reason!r}) "
                                 "without a submit: no proposal")
            results = []
            for call in calls:
                text, is_error = executor.run(call["name"], call.get("input"))
                results.append({"type": "tool_result", "tool_use_id": call["id"], "content": text,
                                **({"is_error": True} if is_error else {})})
            record.messages.append({"role": "user", "content": results})
            if ws.description is not None:
                record.outcome = "submitted"
                return Proposal(  # notes and description reach files every agent reads: no secrets in them
                    parent_commit=context.parent_commit, train_py=ws.train_py,
                    description=redact(ws.description, [key]), agent=self.name, notes=redact(ws.notes, [key]),
                    **tally.as_dict(self.price),
                    transcript=self._transcript(context, record, tally, key),
                )
        raise AgentError(f"no submit within the turn limit ({self.max_turns} turns)")

    def _request(self, system: list[dict], messages: list[dict]) -> dict[str, Any]:
        """One Messages API request; the last block of the conversation carries a moving cache breakpoint, so
        each turn reads the previous turns from the cache instead of paying for them again."""
        messages = copy.deepcopy(messages)
        messages[-1]["content"][-1]["cache_control"] = {"type": "ephemeral"}
        request: dict[str, Any] = {"model": self.model, "max_tokens": self.max_tokens, "system": system,
                                   "tools": self.tools, "messages": messages}
        if self.temperature is not None:  # not a parameter of this SDK's create(); the API field is sent as is
            request["extra_body"] = {"temperature": self.temperature}
        return request

    def _client_for(self, key: str) -> Any:
        if self._client is None or key != self._client_key:
            self._client, self._client_key = make_client(key, self.base_url, self.timeout_seconds), key
        return self._client

    def _transcript(self, context: Context, record: _Record, tally: Tally, key: str) -> dict[str, Any]:
        return redact({
            "agent": self.name, "model": self.model, "direction": self.direction, "temperament": self.temperament,
            "parent_commit": context.parent_commit, "started_at": record.started,
            "seconds": round(time.time() - record.started, 3), "turns": record.turns, "outcome": record.outcome,
            "events": record.events, "usage": tally.as_dict(self.price), "system": record.system,
            "tools": [t["name"] for t in self.tools], "messages": record.messages,
        }, [key])  # fmt: skip


class _Record:
    """What one proposal's conversation has been so far (for the transcript)."""

    def __init__(self, started: float) -> None:
        self.started, self.turns, self.outcome = started, 0, "unfinished"
        self.system: list[dict] = []
        self.messages: list[dict] = []
        self.events: list[str] = []


def _block(block: Any) -> dict[str, Any]:
    """A response content block as the plain dict the next request sends back."""
    kind = getattr(block, "type", None)
    if kind == "text":
        return {"type": "text", "text": block.text}
    if kind == "tool_use":
        return {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
    return block.model_dump(mode="json", exclude_none=True)
