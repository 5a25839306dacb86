"""The Anthropic Messages wire: content blocks, ``tool_use``/``tool_result``, and a moving cache breakpoint.

What the Claude agent sent before the loop was shared with the OpenAI wire,
unchanged: the cached system prompt (agent/prompt.py), the tools' schemas
as ``input_schema``, and a ``cache_control`` on the conversation's last
block so each turn reads the previous ones from the prompt cache.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import anthropic

from agent.llm import Fault, classify, make_client, read_api_key
from agent.prompt import system_blocks
from agent.tools import tool_schemas
from agent.wire import ToolCall, ToolResult, Turn


class AnthropicWire:
    """Anthropic Messages API with tools (the `claude` agent kind)."""

    api = "Messages API"
    name = "anthropic"
    errors: tuple[type[BaseException], ...] = (anthropic.APIError,)

    def __init__(self, *, model: str, max_tokens: int, temperature: float | None, base_url: str | None,
                 timeout_seconds: float, env: Mapping[str, str] | None) -> None:
        self.model, self.max_tokens, self.temperature = model, max_tokens, temperature
        self.base_url, self.timeout_seconds, self.env = base_url, timeout_seconds, env
        self.tools = tool_schemas()

    def api_key(self) -> str:
        return read_api_key(self.env)

    def make_client(self, key: str) -> Any:
        return make_client(key, self.base_url, self.timeout_seconds)

    def system(self, program: str, direction: str, temperament: str) -> list[dict[str, Any]]:
        return system_blocks(program, direction, temperament)

    def user(self, text: str) -> dict[str, Any]:
        return {"role": "user", "content": [{"type": "text", "text": text}]}

    def request(self, system: Any, messages: list[dict[str, Any]]) -> dict[str, Any]:
        """The last block of the conversation carries a moving cache breakpoint, so each turn reads the previous
        turns from the cache instead of paying for them again."""
        messages = copy.deepcopy(messages)
        messages[-1]["content"][-1]["cache_control"] = {"type": "ephemeral"}
        request: dict[str, Any] = {"model": self.model, "max_tokens": self.max_tokens, "system": system,
                                   "tools": self.tools, "messages": messages}
        if self.temperature is not None:  # not a parameter of this SDK's create(); the API field is sent as is
            request["extra_body"] = {"temperature": self.temperature}
        return request

    def send(self, client: Any, request: dict[str, Any]) -> Any:
        return client.messages.create(**request)

    def parse(self, response: Any) -> Turn:
        blocks = [_block(b) for b in response.content]
        calls = [ToolCall(b["id"], b["name"], b.get("input")) for b in blocks if b["type"] == "tool_use"]
        return Turn(message={"role": "assistant", "content": blocks}, calls=calls, usage=_usage(response.usage),
                    cut_off=response.stop_reason == "max_tokens", stop_reason=str(response.stop_reason))

    def results(self, results: list[ToolResult]) -> list[dict[str, Any]]:
        return [{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": r.call.id, "content": r.text,
             **({"is_error": True} if r.is_error else {})} for r in results]}]  # fmt: skip

    def classify(self, exc: Exception, api_key: str) -> Fault:
        return classify(exc, api_key)


def _usage(usage: Any) -> dict[str, int]:
    get = usage.get if isinstance(usage, Mapping) else lambda k: getattr(usage, k, None)
    return {k: int(get(k) or 0) for k in ("input_tokens", "output_tokens", "cache_read_input_tokens",
                                          "cache_creation_input_tokens")}  # fmt: skip


def _block(block: Any) -> dict[str, Any]:
    """A response content block as the plain dict the next request sends back."""
    kind = getattr(block, "type", None)
    if kind == "text":
        return {"type": "text", "text": block.text}
    if kind == "tool_use":
        return {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
    return block.model_dump(mode="json", exclude_none=True)
