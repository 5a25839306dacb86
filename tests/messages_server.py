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
which a test sees as a failure.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_ids = itertools.count(1)


@dataclass
class Reply:
    content: list[dict]
    stop_reason: str = "tool_use"
    usage: dict = field(default_factory=dict)
    model: str = ""


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


def fault(status: int, error_type: str, message: str = "", headers: dict[str, str] | None = None) -> Fault:
    return Fault(status, error_type, message or error_type, headers or {})


def slow(seconds: float, item: Any) -> Slow:
    return Slow(seconds, item)


class MessagesServer:
    """Start with ``with MessagesServer() as server:``; ``server.add(...)`` scripts, ``server.requests`` records."""

    def __init__(self) -> None:
        self.script: deque = deque()
        self.per_model: dict[str, deque] = {}
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def add(self, *items: Any, model: str | None = None) -> MessagesServer:
        with self.lock:
            (self.per_model.setdefault(model, deque()) if model else self.script).extend(items)
        return self

    def __enter__(self) -> MessagesServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def bodies(self) -> list[dict]:
        return [r["body"] for r in self.requests]

    def _next(self, body: dict) -> Any:
        with self.lock:
            queue = self.per_model.get(body.get("model"), self.script)
            item = queue.popleft() if queue else fault(500, "api_error", "test script exhausted")
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
                if self.path.split("?")[0] != "/v1/messages":
                    return self._send(404, {"type": "error", "error": {"type": "not_found_error",
                                                                         "message": f"no route {self.path}"}})
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
                    error = {"type": "error", "error": {"type": item.error_type, "message": item.message}}
                    return self._send(item.status, error, item.headers)
                message = {"id": f"msg_{next(_ids):06d}", "type": "message", "role": "assistant",
                           "model": item.model or body.get("model", "claude-test"), "content": item.content,
                           "stop_reason": item.stop_reason, "stop_sequence": None, "usage": item.usage}
                return self._send(200, message, {"request-id": f"req_{next(_ids):06d}"})

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


Responder = Callable[[dict], Any]
