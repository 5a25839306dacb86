"""What a proposal cost: token counts from each response's ``usage``, turned into US dollars.

The farm stops proposing at a USD cap, so every call's usage is counted,
including the calls of a proposal that then fails. Cached input is priced
apart: a cache write costs more than plain input, a cache read a tenth of it.
Prices are USD per million tokens as Anthropic published them for these
model families; an unknown model raises at start-up (set ``prices`` in the
agent's options) rather than being counted as free.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Price(BaseModel):
    """USD per million tokens of one model."""

    model_config = ConfigDict(extra="forbid")

    input: float = Field(ge=0, description="uncached input tokens")
    output: float = Field(ge=0, description="output tokens")
    cache_read: float = Field(ge=0, description="input tokens read from the prompt cache")
    cache_write: float = Field(ge=0, description="input tokens written to the prompt cache (5-minute TTL)")


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


@dataclass
class Tally:
    """Tokens spent so far by one proposal, summed over its calls."""

    tokens_in: int = 0  # uncached input
    tokens_out: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
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

    def as_dict(self, price: Price) -> dict[str, float | int]:
        """The fields a Proposal and a ledger row carry."""
        return {"tokens_in": self.tokens_in, "tokens_out": self.tokens_out,
                "cache_read_tokens": self.cache_read_tokens, "cache_write_tokens": self.cache_write_tokens,
                "cost_usd": self.usd(price)}  # fmt: skip
