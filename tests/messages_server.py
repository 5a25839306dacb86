"""A local HTTP server that speaks enough of Anthropic's Messages API to test the Claude agent.

It listens on 127.0.0.1 (port 0: the OS picks one), answers ``POST
/v1/messages`` from a script of replies and faults, in order, and records
every request (path, headers, JSON body) for assertions. Drive it with the
real ``anthropic`` client via ``base_url=server.url``. Script items:

- ``reply(*blocks, stop_reason=..., usage=...)``: a 200 message;
- ``fault(status, type, message, headers)``: an error in Anthropic's format;
- ``DROP``: close the connection without answering (a reset);
- ``slow(seconds, item)``: wait, then answer with ``item`` (past a timeout);
- a callable ``f(body) -> item``: decides from the request.

``per_model`` scripts answer requests for one model name (several agents on
one server); when a script runs out the server answers 500 "script exhausted",
which a test sees as a failure. The scripting and HTTP plumbing are tests/standin_server.py's.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.standin_server import DROP, ScriptedServer, fault, slow

__all__ = ["DROP", "MessagesServer", "Reply", "fault", "reply", "slow", "text", "tool_use", "usage"]

_ids = itertools.count(1)


@dataclass
class Reply:
    content: list[dict]
    stop_reason: str = "tool_use"
    usage: dict = field(default_factory=dict)
    model: str = ""


def usage(input_tokens: int = 100, output_tokens: int = 20, cache_write: int = 0, cache_read: int = 0) -> dict:
    return {"input_tokens": input_tokens, "output_tokens": output_tokens,
            "cache_creation_input_tokens": cache_write, "cache_read_input_tokens": cache_read}  # fmt: skip


def text(value: str) -> dict:
    return {"type": "text", "text": value}


def tool_use(name: str, tool_input: Any, tool_id: str | None = None) -> dict:
    return {"type": "tool_use", "id": tool_id or f"toolu_{next(_ids):04d}", "name": name, "input": tool_input}


def reply(*blocks: dict, stop_reason: str | None = None, usage_: dict | None = None) -> Reply:
    if stop_reason is None:
        stop_reason = "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn"
    return Reply(list(blocks), stop_reason, usage_ or usage())


class MessagesServer(ScriptedServer):
    """Anthropic's ``POST /v1/messages``; the client's ``base_url`` is ``server.url``."""

    route = "/v1/messages"
    exhausted_type = "api_error"
    reply_types = (Reply,)

    def success(self, item: Reply, body: dict) -> tuple[dict, dict[str, str]]:
        message = {"id": f"msg_{next(_ids):06d}", "type": "message", "role": "assistant",
                   "model": item.model or body.get("model", "claude-test"), "content": item.content,
                   "stop_reason": item.stop_reason, "stop_sequence": None, "usage": item.usage}
        return message, {"request-id": f"req_{next(_ids):06d}"}

    def error(self, error_type: str, message: str) -> dict:
        return {"type": "error", "error": {"type": error_type, "message": message}}


Responder = Callable[[dict], Any]
