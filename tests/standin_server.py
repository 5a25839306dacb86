"""What the stand-in LLM servers share: a scripted HTTP server on loopback that records every request.

The Anthropic Messages stand-in (tests/messages_server.py) and the OpenAI Chat Completions stand-in
(tests/chat_server.py) differ only in their route, their reply and their error format; the script (replies,
faults, dropped connections, slow answers, callables that decide from the request), the recording and the HTTP
plumbing are this module's. Real clients (``anthropic``, ``openai``) talk to them over real HTTP.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


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


def fault(status: int, error_type: str, message: str = "", headers: dict[str, str] | None = None) -> Fault:
    """An error answer in the server's own API format."""
    return Fault(status, error_type, message or error_type, headers or {})


def slow(seconds: float, item: Any) -> Slow:
    """Wait, then answer with ``item`` (a client's timeout test)."""
    return Slow(seconds, item)


class ScriptedServer:
    """Start with ``with Server() as server:``; ``server.add(...)`` scripts, ``server.requests`` records.

    A subclass names its ``route``, the error type of an exhausted script, and how a reply and an error look
    (``success``, ``error``); ``url_suffix`` is what its client's base URL ends with."""

    route = ""
    url_suffix = ""
    exhausted_type = "server_error"
    reply_types: tuple[type, ...] = ()

    def __init__(self) -> None:
        self.script: deque = deque()
        self.per_model: dict[str, deque] = {}  # requests naming this model take their own script
        self.requests: list[dict[str, Any]] = []
        self.raw: list[bytes] = []  # every request's bytes, headers included: for "the key is nowhere else"
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{self.url_suffix}"

    def add(self, *items: Any, model: str | None = None) -> ScriptedServer:
        with self.lock:
            (self.per_model.setdefault(model, deque()) if model else self.script).extend(items)
        return self

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def bodies(self) -> list[dict]:
        return [r["body"] for r in self.requests]

    # -- what a subclass says ----------------------------------------------------------------------------------

    def success(self, item: Any, body: dict) -> tuple[dict, dict[str, str]]:
        """The 200 payload (and headers) for a scripted reply."""
        raise NotImplementedError

    def error(self, error_type: str, message: str) -> dict:
        """An error payload in the API's format."""
        raise NotImplementedError

    # -- the plumbing ------------------------------------------------------------------------------------------

    def _next(self, body: dict) -> Any:
        with self.lock:
            queue = self.per_model.get(body.get("model"), self.script)
            item = queue.popleft() if queue else fault(500, self.exhausted_type, "test script exhausted")
        while callable(item) and not isinstance(item, (*self.reply_types, Fault, Slow, _Drop)):
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
                if self.path.split("?")[0] != server.route:
                    return self._send(404, server.error("not_found_error", f"no route {self.path}"))
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
                    return self._send(item.status, server.error(item.error_type, item.message), item.headers)
                payload, headers = server.success(item, body)
                return self._send(200, payload, headers)

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
