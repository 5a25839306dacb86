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
test sees as a failure.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_ids = itertools.count(1)


@dataclass
class Reply:
    tool_calls: list[dict]
    content: str | None = None
    finish_reason: str = "tool_calls"
    usage: dict | None = field(default_factory=dict)


@dataclass
class Fault:
    status: int
    error_type: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Slow:
    seconds: float
    item: Any


class _Drop:
    pass


DROP = _Drop()


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


def fault(status: int, error_type: str, message: str = "", headers: dict[str, str] | None = None) -> Fault:
    return Fault(status, error_type, message or error_type, headers or {})


def slow(seconds: float, item: Any) -> Slow:
    return Slow(seconds, item)


class ChatServer:
    """Start with ``with ChatServer() as server:``; ``server.add(...)`` scripts, ``server.requests`` records."""

    def __init__(self) -> None:
        self.script: deque = deque()
        self.requests: list[dict[str, Any]] = []
        self.raw: list[bytes] = []  # every request's bytes, headers included: for "the key is nowhere else"
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def add(self, *items: Any) -> ChatServer:
        with self.lock:
            self.script.extend(items)
        return self

    def __enter__(self) -> ChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def bodies(self) -> list[dict]:
        return [r["body"] for r in self.requests]

    def _next(self, body: dict) -> Any:
        with self.lock:
            item = self.script.popleft() if self.script else fault(500, "server_error", "test script exhausted")
        while callable(item) and not isinstance(item, Reply | Fault | Slow | _Drop):
            item = item(body)
        return item

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {"_raw": raw.decode(errors="replace")}
                headers = {k.lower(): v for k, v in self.headers.items()}
                with server.lock:
                    server.requests.append({"path": self.path, "headers": headers, "body": body,
                                            "at": time.monotonic()})
                    server.raw.append(self.requestline.encode() + b"\n" + bytes(self.headers) + raw)
                if self.path.split("?")[0] != "/v1/chat/completions":
                    return self._send(404, {"error": {"type": "invalid_request_error", "code": "not_found",
                                                      "message": f"no route {self.path}", "param": None}})
                self._answer(server._next(body), body)

            def _answer(self, item: Any, body: dict) -> None:
                if isinstance(item, Slow):
                    time.sleep(item.seconds)
                    return self._answer(item.item, body)
                if isinstance(item, _Drop):
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return None
                if isinstance(item, Fault):
                    error = {"error": {"type": item.error_type, "message": item.message, "param": None,
                                       "code": None}}
                    return self._send(item.status, error, item.headers)
                message: dict[str, Any] = {"role": "assistant", "content": item.content}
                if item.tool_calls:
                    message["tool_calls"] = item.tool_calls
                completion = {"id": f"chatcmpl-{next(_ids):06d}", "object": "chat.completion",
                              "created": int(time.time()), "model": body.get("model", "local-test"),
                              "choices": [{"index": 0, "message": message, "finish_reason": item.finish_reason,
                                           "logprobs": None}],
                              **({"usage": item.usage} if item.usage else {})}
                return self._send(200, completion)

            def _send(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

        return Handler
