"""The Claude research agent: the shared tool-use loop (agent/loop.py) over the Anthropic Messages wire.

Everything about the conversation (tools, pre-flight, the turn limit,
submit, spend, transcript) is agent/loop.py's; the request and reply shapes
are agent/wire_anthropic.py's. This module only turns the agent's options
into those two, and refuses a model whose price it does not know: spend on
Anthropic's API must never be counted as free.
"""

from __future__ import annotations

from collections.abc import Mapping

from agent.cost import DEFAULT_MODEL, Price, price_for
from agent.llm import RetryPolicy
from agent.loop import ToolUseProposer
from agent.wire_anthropic import AnthropicWire


class ClaudeProposer(ToolUseProposer):
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
        overrides = {k: Price.model_validate(v) for k, v in (prices or {}).items()}
        price = price_for(model, overrides)  # an unknown model fails here, not after spending
        wire = AnthropicWire(model=model, max_tokens=max_tokens, temperature=temperature, base_url=base_url,
                             timeout_seconds=timeout_seconds, env=env)
        super().__init__(name, wire=wire, model=model, price=price, direction=direction, temperament=temperament,
                         max_turns=max_turns, retry=RetryPolicy(max_retries=max_retries,
                                                                base_seconds=retry_base_seconds,
                                                                max_seconds=retry_max_seconds))
        self.max_tokens, self.temperature, self.base_url = max_tokens, temperature, base_url
        self.timeout_seconds, self.env, self.tools = timeout_seconds, env, wire.tools
