"""The model API client: where the key comes from, and which faults are retried how (both wires).

The SDK's own retries are switched off (``max_retries=0``) and done here, so
the policy is one readable function with options the farm controls (and
tests can shrink to milliseconds): 429 (honouring ``retry-after``), 529
overloaded, 5xx, 408/409, timeouts and dropped connections are retried with
exponential backoff and jitter; a rejected key (401/403) or an unknown model
(404) can never succeed, so they raise an error marked ``fatal`` that stops
this agent (the farm goes on with the others); any other 4xx is counted
against the agent as one failed proposal. The rule (classify_status) is the
same for the Messages and the Chat Completions wire; each wire only maps its
SDK's exceptions onto it (agent/wire_anthropic.py, agent/wire_openai.py).

The key is read from ``ANTHROPIC_API_KEY`` or from the file named by
``ANTHROPIC_API_KEY_FILE`` (a mounted secret), never from config, and never
appears in an error message.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import anthropic

from agent.transcript import redact

API_KEY_ENV = "ANTHROPIC_API_KEY"
API_KEY_FILE_ENV = "ANTHROPIC_API_KEY_FILE"
BASE_URL_ENV = "ANTHROPIC_BASE_URL"
RETRIED_STATUS = frozenset({408, 409, 429})  # and every 5xx (529: overloaded)

T = TypeVar("T")


class AgentError(RuntimeError):
    """A proposal failed; counted against this agent (its actor restarts it after repeated failures)."""

    fatal = False


class FatalAgentError(AgentError):
    """This agent can never succeed as configured; the farm goes on without it."""

    fatal = True


class ApiKeyMissing(FatalAgentError):
    pass


class ApiKeyRejected(FatalAgentError):
    pass


class RetriesExhausted(AgentError):
    pass


def read_key_file(path: str, label: str) -> str:
    """The key a file holds (both wires: a key mounted from a secret); ApiKeyMissing, naming ``label``, if the
    file cannot be read or is empty."""
    try:
        key = Path(path).read_text().strip()
    except OSError as exc:
        raise ApiKeyMissing(f"cannot read the API key file {label}: {exc.strerror or type(exc).__name__}") from None
    if not key:
        raise ApiKeyMissing(f"the API key file {label} is empty")
    return key


def read_api_key(env: Mapping[str, str] | None = None) -> str:
    """The key from ANTHROPIC_API_KEY, else from the file ANTHROPIC_API_KEY_FILE names; ApiKeyMissing if neither."""
    env = os.environ if env is None else env
    key = env.get(API_KEY_ENV, "").strip()
    if key:
        return key
    path = env.get(API_KEY_FILE_ENV, "").strip()
    if path:
        return read_key_file(path, f"{API_KEY_FILE_ENV}={path}")
    raise ApiKeyMissing(f"no API key: set {API_KEY_ENV} (or {API_KEY_FILE_ENV} to a file holding it)")


def make_client(api_key: str, base_url: str | None, timeout_seconds: float) -> anthropic.Anthropic:
    """A client without SDK retries (see call_with_retries); base_url None: ANTHROPIC_BASE_URL or Anthropic's."""
    base_url = base_url or os.environ.get(BASE_URL_ENV) or None
    return anthropic.Anthropic(api_key=api_key, base_url=base_url, timeout=timeout_seconds, max_retries=0)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to wait between attempts of one call."""

    max_retries: int = 6
    base_seconds: float = 1.0  # first backoff; doubles each retry
    max_seconds: float = 60.0  # cap of one backoff
    max_retry_after_seconds: float = 300.0  # a server's retry-after is honoured up to this

    def delay(self, retry: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds before retry number ``retry`` (0-based): the server's retry-after if it gave one, else
        exponential backoff with 'equal jitter' (half fixed, half random) so agents do not retry in step."""
        if retry_after is not None and retry_after >= 0:
            return min(retry_after, self.max_retry_after_seconds) + rng.uniform(0, self.base_seconds * 0.1)
        step = min(self.max_seconds, self.base_seconds * 2**retry)
        return step / 2 + rng.uniform(0, step / 2)


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """``retry-after-ms`` or ``retry-after`` (seconds) of a response, if given as a number."""
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                return float(value) * scale
            except ValueError:
                continue  # an HTTP date: fall back to our own backoff
    return None


def classify_status(
    status: int,
    message: str,
    headers: Mapping[str, str] | None,
    *,
    api: str = "Messages API",
    key_hint: str = API_KEY_ENV,
    url_hint: str = BASE_URL_ENV,
) -> tuple[bool, float | None, str]:
    """(retry?, retry-after seconds, a short description) of an HTTP error of either wire; raises for the
    fatal ones. One rule for every protocol, so an agent's faults read the same whichever API it speaks."""
    if status in (401, 403):
        raise ApiKeyRejected(
            f"the API key was rejected (HTTP {status}: {message}); check {key_hint} and the account's "
            "access: this agent stops, the farm goes on with the others"
        ) from None
    if status == 404:
        raise FatalAgentError(f"HTTP 404 from the {api} ({message}): is the model name or "
                              f"{url_hint} right? this agent stops") from None
    if status in RETRIED_STATUS or status >= 500:
        return True, retry_after_seconds(headers), f"HTTP {status} ({message})"
    raise AgentError(f"the {api} refused the request: HTTP {status}: {message}") from None


def classify(exc: Exception, api_key: str = "") -> tuple[bool, float | None, str]:
    """(retry?, retry-after seconds, a short description) of a failed Messages API call; raises for the fatal
    ones."""
    if isinstance(exc, anthropic.APITimeoutError):
        return True, None, "timed out"
    if isinstance(exc, anthropic.APIConnectionError):
        return True, None, f"connection failed ({_cause(exc)})"
    if isinstance(exc, anthropic.APIStatusError):
        return classify_status(exc.status_code, redact(_message(exc), [api_key]), exc.response.headers)
    raise exc


def call_with_retries(
    call: Callable[[], T],
    policy: RetryPolicy,
    *,
    api_key: str = "",
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
    on_retry: Callable[[str, float], None] | None = None,
    classify: Callable[[Exception, str], tuple[bool, float | None, str]] = classify,
    errors: tuple[type[BaseException], ...] = (anthropic.APIError,),
    api: str = "Messages API",
) -> T:
    """``call()``, retried on transient faults per ``policy``; RetriesExhausted when they do not clear.

    ``classify`` and ``errors`` are the wire's (agent/wire.py): which of its SDK's exceptions are faults of
    the call, and which of those are worth another attempt."""
    rng = rng or random.Random()
    for retry in range(policy.max_retries + 1):
        try:
            return call()
        except errors as exc:
            retryable, retry_after, what = classify(exc, api_key)
            if not retryable or retry >= policy.max_retries:
                raise RetriesExhausted(f"the {api} call failed {retry + 1} time(s), last: {what}") from None
            wait = policy.delay(retry, retry_after, rng)
            if on_retry:
                on_retry(what, wait)
            sleep(wait)
    raise AssertionError("unreachable")


def _message(exc: anthropic.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    return str(error.get("message") or exc.message)[:300]


def _cause(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    return type(cause).__name__ if cause else type(exc).__name__
