"""The OpenAI Chat Completions wire: ``tools`` as functions, ``tool_calls`` in, ``role: "tool"`` results out.

Spoken by OpenAI and by the servers that copy its API (vLLM, Ollama,
llama.cpp's server, LiteLLM, hosted open-model providers), so one wire
serves hosted and local models. Streaming is off. Differences from the
Messages wire that the loop must not see are handled here:

- tool arguments arrive as a JSON *string*; one that does not parse becomes
  an error result for that call (the model hears why) and the loop goes on;
- ``prompt_tokens`` includes cached tokens (``prompt_tokens_details``):
  the uncached part is what Tally counts as input;
- ``max_tokens`` (not ``max_completion_tokens``): the name every compatible
  server accepts;
- a server that omits a tool call's id gets one made up, so the results
  still pair with their calls.

The key: the environment variable ``api_key_env`` names (default
``OPENAI_API_KEY``), else the file ``api_key_file``; a self-hosted endpoint
(agent/cost.py is_self_hosted) may have none (a placeholder is sent, as
local servers ignore it). It goes only into the Authorization header.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import openai

from agent.cost import is_self_hosted
from agent.llm import ApiKeyMissing, Fault, classify_status, read_key_file
from agent.prompt import INSTRUCTIONS
from agent.tools import tool_schemas
from agent.transcript import redact
from agent.wire import ToolCall, ToolResult, Turn

API_KEY_ENV = "OPENAI_API_KEY"
BASE_URL_ENV = "OPENAI_BASE_URL"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
NO_KEY = "no-key"  # what a keyless self-hosted server is sent (the SDK needs some key)


def resolve_base_url(base_url: str | None, env: Mapping[str, str] | None = None) -> str:
    """The endpoint: the agent's ``base_url``, else OPENAI_BASE_URL, else OpenAI's."""
    env = os.environ if env is None else env
    return base_url or env.get(BASE_URL_ENV) or DEFAULT_BASE_URL


def read_openai_key(base_url: str, api_key_env: str | None = None, api_key_file: str | None = None,
                    env: Mapping[str, str] | None = None) -> str:
    """The key from the variable ``api_key_env`` names (default OPENAI_API_KEY), else from ``api_key_file``;
    "" for a self-hosted endpoint when neither was configured; ApiKeyMissing otherwise."""
    env = os.environ if env is None else env
    name = api_key_env or API_KEY_ENV
    key = env.get(name, "").strip()
    if key:
        return key
    if api_key_file:
        return read_key_file(os.path.expanduser(api_key_file), api_key_file)
    if api_key_env is None and is_self_hosted(base_url):
        return ""  # vLLM, Ollama, llama.cpp: no key unless the server was started with one
    raise ApiKeyMissing(f"no API key for {base_url}: set {name} (or the agent's api_key_file)")


def function_tools() -> list[dict[str, Any]]:
    """The tools as Chat Completions functions (the same schemas the Messages wire sends)."""
    return [{"type": "function", "function": {"name": t["name"], "description": t["description"],
                                              "parameters": t["input_schema"]}} for t in tool_schemas()]


class OpenAIWire:
    """OpenAI Chat Completions with tools (the `openai` agent kind)."""

    api = "Chat Completions API"
    name = "openai"
    errors: tuple[type[BaseException], ...] = (openai.APIError,)

    def __init__(self, *, model: str, max_tokens: int, temperature: float | None, base_url: str,
                 timeout_seconds: float, api_key_env: str | None = None, api_key_file: str | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.model, self.max_tokens, self.temperature = model, max_tokens, temperature
        self.base_url, self.timeout_seconds, self.env = base_url, timeout_seconds, env
        self.api_key_env, self.api_key_file = api_key_env, api_key_file
        self.tools = function_tools()
        self._calls = 0

    def api_key(self) -> str:
        return read_openai_key(self.base_url, self.api_key_env, self.api_key_file, self.env)

    def make_client(self, key: str) -> Any:
        return openai.OpenAI(api_key=key or NO_KEY, base_url=self.base_url, timeout=self.timeout_seconds,
                             max_retries=0)

    def system(self, program: str, direction: str, temperament: str) -> str:
        return (f"{program.rstrip()}\n\n{INSTRUCTIONS}\nYour research direction: {direction}.\n"
                f"Your temperament: {temperament}.\nOther agents cover other directions; stay mostly within yours.")

    def user(self, text: str) -> dict[str, Any]:
        return {"role": "user", "content": text}

    def request(self, system: Any, messages: list[dict[str, Any]]) -> dict[str, Any]:
        request: dict[str, Any] = {"model": self.model, "max_tokens": self.max_tokens, "tools": self.tools,
                                   "messages": [{"role": "system", "content": system}, *messages]}
        if self.temperature is not None:
            request["temperature"] = self.temperature
        return request

    def send(self, client: Any, request: dict[str, Any]) -> Any:
        return client.chat.completions.create(**request)

    def parse(self, response: Any) -> Turn:
        if not response.choices:
            return Turn(message={"role": "assistant", "content": ""}, usage=_usage(response.usage),
                        stop_reason="no choices")
        choice = response.choices[0]
        message: dict[str, Any] = {"role": "assistant", "content": choice.message.content}
        calls, wire_calls = [], []
        for raw in choice.message.tool_calls or []:
            self._calls += 1
            function = getattr(raw, "function", None)
            name = getattr(function, "name", None) or ""
            arguments = getattr(function, "arguments", None)
            call = ToolCall(id=getattr(raw, "id", None) or f"call_{self._calls:04d}", name=name)
            call.input, call.error = _arguments(arguments)
            text = arguments if isinstance(arguments, str) else json.dumps(arguments)
            calls.append(call)
            wire_calls.append({"id": call.id, "type": "function", "function": {"name": name, "arguments": text}})
        if wire_calls:
            message["tool_calls"] = wire_calls
        return Turn(message=message, calls=calls, usage=_usage(response.usage),
                    cut_off=choice.finish_reason == "length", stop_reason=str(choice.finish_reason))

    def results(self, results: list[ToolResult]) -> list[dict[str, Any]]:
        # no is_error field in this protocol: the text says it
        return [{"role": "tool", "tool_call_id": r.call.id, "content": f"ERROR: {r.text}" if r.is_error else r.text}
                for r in results]

    def classify(self, exc: Exception, api_key: str) -> Fault:
        if isinstance(exc, openai.APITimeoutError):
            return Fault(True, None, "timeout", "timed out")
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc.__context__
            return Fault(True, None, "connection", f"connection failed ({type(cause or exc).__name__})")
        if isinstance(exc, openai.APIStatusError):
            return classify_status(exc.status_code, redact(_message(exc), [api_key]), exc.response.headers,
                                   api=self.api, key_hint=self.api_key_env or self.api_key_file or API_KEY_ENV,
                                   url_hint=f"base_url ({self.base_url})")
        return Fault(False, None, "invalid_response", type(exc).__name__)  # a reply the SDK could not read


def _arguments(arguments: Any) -> tuple[Any, str]:
    """(input, error) of a tool call's arguments: a JSON object string (some servers send the object)."""
    if isinstance(arguments, dict):
        return arguments, ""
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}, ""
    try:
        value = json.loads(arguments)
    except (TypeError, ValueError) as exc:
        return None, f"the arguments are not valid JSON ({exc}); send one JSON object"
    if not isinstance(value, dict):
        return None, f"the arguments must be a JSON object, not {type(value).__name__}"
    return value, ""


def _usage(usage: Any) -> dict[str, int]:
    """Chat Completions usage in Tally's names: prompt tokens less the cached ones are the uncached input."""
    if usage is None:
        return {}
    prompt = int(getattr(usage, "prompt_tokens", 0) or 0)
    details = getattr(usage, "prompt_tokens_details", None)
    cached = int(getattr(details, "cached_tokens", 0) or 0) if details is not None else 0
    return {"input_tokens": max(0, prompt - cached), "output_tokens": int(getattr(usage, "completion_tokens", 0)
                                                                           or 0),
            "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0}


def _message(exc: openai.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error") if isinstance(body.get("error"), dict) else body
    return str(error.get("message") or exc.message)[:300]
