"""A local HTTP server that speaks enough of OpenAI's Chat Completions API (with tools) to test the agent.

It listens on 127.0.0.1 (port 0: the OS picks one), answers ``POST
/v1/chat/completions`` from a script of replies and faults, in order, and
records every request (path, headers, JSON body) for assertions: the same
stand-in for OpenAI, vLLM, Ollama or llama.cpp's server. Drive it with the
real ``openai`` client via ``base_url=server.url`` (which ends in ``/v1``).
Script items:

- ``reply(*calls, content=..., finish_reason=..., usage_=...)``: a 200 completion
  whose message carries ``tool_calls`` (``call(name, arguments)``; a str
  ``arguments`` is sent as is, e.g. malformed JSON);
- ``fault(status, type, message, headers)``: an error in OpenAI's format;
- ``DROP``: close the connection without answering (a reset);
- ``slow(seconds, item)``: wait, then answer with ``item`` (past a timeout);
- a callable ``f(body) -> item``: decides from the request.

When the script runs out the server answers 500 "script exhausted", which a
test sees as a failure. The scripting and HTTP plumbing are tests/standin_server.py's.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

from tests.standin_server import DROP, ScriptedServer, fault, slow

__all__ = ["DROP", "ChatServer", "Reply", "call", "fault", "reply", "slow", "usage"]

_ids = itertools.count(1)


@dataclass
class Reply:
    tool_calls: list[dict]
    content: str | None = None
    finish_reason: str = "tool_calls"
    usage: dict | None = field(default_factory=dict)


def usage(prompt_tokens: int = 100, completion_tokens: int = 20, cached: int = 0) -> dict:
    """OpenAI's usage: prompt_tokens includes the cached ones."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached}}  # fmt: skip


def call(name: str, arguments: Any, call_id: str | None = None) -> dict:
    """One tool call; ``arguments`` as a dict is JSON-encoded, a str goes out verbatim."""
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": call_id or f"call_{next(_ids):04d}", "type": "function",
            "function": {"name": name, "arguments": text}}  # fmt: skip


def reply(*calls: dict, content: str | None = None, finish_reason: str | None = None,
          usage_: dict | None = None) -> Reply:
    if finish_reason is None:
        finish_reason = "tool_calls" if calls else "stop"
    return Reply(list(calls), content, finish_reason, usage() if usage_ is None else usage_)


class ChatServer(ScriptedServer):
    """OpenAI's ``POST /v1/chat/completions``; the client's ``base_url`` is ``server.url`` (ends in ``/v1``)."""

    route = "/v1/chat/completions"
    url_suffix = "/v1"
    exhausted_type = "server_error"
    reply_types = (Reply,)

    def success(self, item: Reply, body: dict) -> tuple[dict, dict[str, str]]:
        message: dict[str, Any] = {"role": "assistant", "content": item.content}
        if item.tool_calls:
            message["tool_calls"] = item.tool_calls
        completion = {"id": f"chatcmpl-{next(_ids):06d}", "object": "chat.completion",
                      "created": int(time.time()), "model": body.get("model", "local-test"),
                      "choices": [{"index": 0, "message": message, "finish_reason": item.finish_reason,
                                   "logprobs": None}],
                      **({"usage": item.usage} if item.usage else {})}
        return completion, {}

    def error(self, error_type: str, message: str) -> dict:
        return {"error": {"type": error_type, "message": message, "param": None, "code": None}}
