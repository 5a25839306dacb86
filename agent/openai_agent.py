"""The OpenAI-compatible research agent: the shared tool-use loop (agent/loop.py) over Chat Completions.

Any endpoint that speaks OpenAI's Chat Completions with tools will do:
OpenAI itself, or a model of one's own behind vLLM, Ollama or llama.cpp's
server (``base_url: http://localhost:11434/v1``). The conversation, tools,
pre-flight, retries, spend and transcript are exactly the Claude agent's;
only the wire differs (agent/wire_openai.py). Pricing follows
agent/cost.py openai_price: known or configured prices, else 0 USD for a
self-hosted endpoint only (said in the transcript), else refused at start.
"""

from __future__ import annotations

from collections.abc import Mapping

from agent.cost import DEFAULT_OPENAI_MODEL, Price, openai_price
from agent.llm import RetryPolicy
from agent.loop import ToolUseProposer
from agent.wire_openai import OpenAIWire, resolve_base_url


class OpenAIProposer(ToolUseProposer):
    """One OpenAI-compatible agent of the population (options: cluster.config.AgentOptions, kind openai)."""

    def __init__(
        self,
        name: str,
        *,
        direction: str | None = None,
        temperament: str | None = None,
        model: str = DEFAULT_OPENAI_MODEL,
        max_tokens: int = 4096,
        temperature: float | None = None,
        base_url: str | None = None,
        timeout_seconds: float = 300.0,
        max_turns: int = 24,
        max_retries: int = 6,
        retry_base_seconds: float = 1.0,
        retry_max_seconds: float = 60.0,
        prices: Mapping[str, Price | Mapping[str, float]] | None = None,
        api_key_env: str | None = None,
        api_key_file: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        url = resolve_base_url(base_url, env)
        overrides = {k: Price.model_validate(v) for k, v in (prices or {}).items()}
        price, note = openai_price(model, url, overrides)  # a hosted model without a price fails here
        wire = OpenAIWire(model=model, max_tokens=max_tokens, temperature=temperature, base_url=url,
                          timeout_seconds=timeout_seconds, api_key_env=api_key_env, api_key_file=api_key_file,
                          env=env)
        super().__init__(name, wire=wire, model=model, price=price, direction=direction, temperament=temperament,
                         max_turns=max_turns, price_note=note,
                         retry=RetryPolicy(max_retries=max_retries, base_seconds=retry_base_seconds,
                                           max_seconds=retry_max_seconds))
        self.base_url, self.max_tokens, self.temperature = url, max_tokens, temperature
