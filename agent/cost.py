"""What a proposal cost: token counts from each response's ``usage``, turned into US dollars.

The farm stops proposing at a USD cap, so every call's usage is counted,
including the calls of a proposal that then fails. Cached input is priced
apart: a cache write costs more than plain input, a cache read a tenth of it.
Prices are USD per million tokens as Anthropic published them for these
model families; an unknown model raises at start-up (set ``prices`` in the
agent's options) rather than being counted as free. OpenAI-compatible
endpoints follow one documented rule (openai_price): OpenAI's own table or
``prices``, else 0 USD only for a self-hosted server, and the transcript
says so.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.protocol import Spend


class Price(BaseModel):
    """USD per million tokens of one model."""

    model_config = ConfigDict(extra="forbid")

    input: float = Field(ge=0, description="uncached input tokens")
    output: float = Field(ge=0, description="output tokens")
    cache_read: float = Field(ge=0, description="input tokens read from the prompt cache")
    cache_write: float = Field(ge=0, description="input tokens written to the prompt cache (5-minute TTL)")

    @model_validator(mode="before")
    @classmethod
    def _cache_defaults(cls, data: Any) -> Any:
        """``{input: 0, output: 0}`` is enough for a free model: missing cache prices are the most an API charges
        for them (a read at the input price, a write at Anthropic's 1.25x), so a short entry never under-counts."""
        if isinstance(data, Mapping) and "input" in data:
            data = {"cache_read": data["input"], "cache_write": data["input"] * 1.25, **data}
        return data


def _price(input_: float, output: float) -> Price:
    # Anthropic's rule: a 5-minute cache write is 1.25x input, a cache read 0.1x input.
    return Price(input=input_, output=output, cache_read=round(input_ * 0.1, 6), cache_write=input_ * 1.25)


DEFAULT_MODEL = "claude-sonnet-4-6"  # the Claude agent's model when config names none (4-5 is deprecated)

# Model-name prefixes; the longest matching prefix wins. Only families whose price we know: a newer model
# (e.g. claude-opus-4-6, claude-sonnet-5) needs a `prices` entry rather than a guess.
DEFAULT_PRICES: dict[str, Price] = {
    "claude-opus-4-5": _price(5.0, 25.0),
    "claude-opus-4-1": _price(15.0, 75.0),
    "claude-opus-4-0": _price(15.0, 75.0),
    "claude-opus-4-2025": _price(15.0, 75.0),  # claude-opus-4-20250514
    "claude-sonnet-4": _price(3.0, 15.0),  # 4, 4-5, 4-6: every Sonnet so far was $3/$15 (check yours)
    "claude-3-7-sonnet": _price(3.0, 15.0),
    "claude-haiku-4-5": _price(1.0, 5.0),
    "claude-3-5-haiku": _price(0.8, 4.0),
}


def price_for(model: str, overrides: Mapping[str, Price] | None = None) -> Price:
    """The price of ``model``: an override by exact name or prefix first, then the built-in table."""
    for table in (overrides or {}, DEFAULT_PRICES):
        matches = [prefix for prefix in table if model.startswith(prefix)]
        if matches:
            return table[max(matches, key=len)]
    known = ", ".join(sorted({*DEFAULT_PRICES, *(overrides or {})}))
    raise ValueError(f"no price for model {model!r}: add it to the agent's `prices` option (known: {known})")


class Tally(Spend):
    """Tokens spent so far by one proposal, summed over its calls (``cost_usd`` is priced by ``spend``)."""

    calls: int = 0

    def add(self, usage: Any) -> None:
        """Add one response's ``usage`` (the SDK's object or a dict); missing cache fields count as 0."""
        get = usage.get if isinstance(usage, Mapping) else lambda k: getattr(usage, k, None)
        self.tokens_in += int(get("input_tokens") or 0)
        self.tokens_out += int(get("output_tokens") or 0)
        self.cache_read_tokens += int(get("cache_read_input_tokens") or 0)
        self.cache_write_tokens += int(get("cache_creation_input_tokens") or 0)
        self.calls += 1

    def usd(self, price: Price) -> float:
        """What these tokens cost at ``price``."""
        return (
            self.tokens_in * price.input
            + self.tokens_out * price.output
            + self.cache_read_tokens * price.cache_read
            + self.cache_write_tokens * price.cache_write
        ) / 1e6

    def spend(self, price: Price) -> Spend:
        """What a Proposal and a ledger row carry: these tokens, priced at ``price``."""
        return Spend(**self.model_dump(include=set(Spend.model_fields)) | {"cost_usd": self.usd(price)})


def _openai(input_: float, output: float, cached: float) -> Price:
    # OpenAI caches prompts by itself: a cached read is discounted, a cache write is not reported (input price).
    return Price(input=input_, output=output, cache_read=cached, cache_write=input_)


DEFAULT_OPENAI_MODEL = "gpt-4.1-mini"  # the openai agent's model when config names none
# USD per MTok as OpenAI published them for these families (check yours; a `prices` entry wins).
OPENAI_PRICES: dict[str, Price] = {
    "gpt-4.1-nano": _openai(0.10, 0.40, 0.025),
    "gpt-4.1-mini": _openai(0.40, 1.60, 0.10),
    "gpt-4.1": _openai(2.0, 8.0, 0.50),
    "gpt-4o-mini": _openai(0.15, 0.60, 0.075),
    "gpt-4o": _openai(2.50, 10.0, 1.25),
}
FREE = Price(input=0, output=0, cache_read=0, cache_write=0)
_LOCAL_SUFFIXES = (".local", ".internal", ".localhost", ".svc", ".cluster.local", ".lan", ".home.arpa")


def is_self_hosted(base_url: str) -> bool:
    """Whether ``base_url`` is a server of one's own: loopback, a private or link-local address, ``localhost``,
    a single-label or cluster-internal name (``vllm``, ``ollama.default.svc``)."""
    host = (urlsplit(base_url).hostname or "").lower().rstrip(".")
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host == "localhost" or "." not in host or host.endswith(_LOCAL_SUFFIXES)
    return address.is_loopback or address.is_private or address.is_link_local


def openai_price(model: str, base_url: str, overrides: Mapping[str, Price] | None = None) -> tuple[Price, str]:
    """(price, note) of an OpenAI-compatible ``model`` served at ``base_url``.

    The rule: a ``prices`` entry (exact name or prefix) first, then OpenAI's table. A model priced by neither
    is counted as 0 USD only on a self-hosted endpoint (is_self_hosted: its tokens cost no money per token),
    and the note says so in the transcript; its tokens are still counted. On any other endpoint an unknown
    model is refused at start, as for Claude: a hosted API's spend must never count as free, or the cost cap
    could not stop it. ``prices: {my-model: {input: 0, output: 0}}`` makes any endpoint free on purpose.
    """
    for table in (overrides or {}, OPENAI_PRICES):
        matches = [prefix for prefix in table if model.startswith(prefix)]
        if matches:
            return table[max(matches, key=len)], ""
    host = urlsplit(base_url).hostname or base_url
    if is_self_hosted(base_url):
        return FREE, (f"no price known for model {model!r}: counted as 0 USD because {host} is self-hosted; "
                      "tokens are counted (set the agent's `prices` to charge it)")
    known = ", ".join(sorted({*OPENAI_PRICES, *(overrides or {})}))
    raise ValueError(f"no price for model {model!r} at {host}: add it to the agent's `prices` option (a free "
                     f"endpoint: prices: {{{model}: {{input: 0, output: 0}}}}; known: {known})")
