"""The model API client: where the key comes from, and which faults are retried how (both wires).

The SDK's own retries are switched off (``max_retries=0``) and done here, so
the policy is one readable function with options the farm controls (and
tests can shrink to milliseconds): 429 (honouring ``retry-after``), 529
overloaded, 5xx, 408/409, timeouts and dropped connections are retried with
exponential backoff and jitter; a rejected key (401/403) or an unknown model
(404) can never succeed, so they raise a ProposalError marked ``fatal`` that
stops this agent (the farm goes on with the others); any other 4xx is counted
against the agent as one failed proposal. Every fault is typed here, where
its HTTP status is known (``FailureKind``: auth, rate_limit, overloaded, ...),
for the metrics. The rule (classify_status) is the same for the Messages and
the Chat Completions wire; each wire only maps its SDK's exceptions onto it
(agent/wire_anthropic.py, agent/wire_openai.py).

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
from typing import NamedTuple, TypeVar

import anthropic

from agent.protocol import FailureKind, ProposalError
from agent.transcript import redact

API_KEY_ENV = "ANTHROPIC_API_KEY"
API_KEY_FILE_ENV = "ANTHROPIC_API_KEY_FILE"
BASE_URL_ENV = "ANTHROPIC_BASE_URL"
RETRIED_STATUS = frozenset({408, 409, 429})  # and every 5xx (529: overloaded)

T = TypeVar("T")


class ApiKeyMissing(ProposalError):
    """No key to call the API with (also raised outside a proposal, by read_api_key): fatal for this agent."""

    def __init__(self, message: str) -> None:
        super().__init__("auth", message, fatal=True)


class Fault(NamedTuple):
    """A failed call as a wire classifies it: retry it?, after how long (the server's word), what kind, what."""

    retry: bool
    retry_after: float | None
    kind: FailureKind
    what: str


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


def status_kind(status: int, message: str) -> FailureKind:
    """The kind of an HTTP error (an overloaded server may say so in a 500's body)."""
    if status == 529 or "overloaded" in message.lower():
        return "overloaded"
    if status in (401, 403):
        return "auth"
    if status == 402:
        return "quota"
    if status == 429:
        return "rate_limit"
    if status in (408, 504):
        return "timeout"
    return "server" if status >= 500 else "bad_request"


def classify_status(
    status: int,
    message: str,
    headers: Mapping[str, str] | None,
    *,
    api: str = "Messages API",
    key_hint: str = API_KEY_ENV,
    url_hint: str = BASE_URL_ENV,
) -> Fault:
    """The Fault of an HTTP error of either wire; raises (ProposalError) for those not worth another attempt.
    One rule for every protocol, so an agent's faults read the same whichever API it speaks."""
    kind = status_kind(status, message)
    if status in (401, 403):
        raise ProposalError(kind, f"the API key was rejected (HTTP {status}: {message}); check {key_hint} and "
                            "the account's access: this agent stops, the farm goes on with the others",
                            fatal=True) from None
    if status == 404:
        raise ProposalError(kind, f"HTTP 404 from the {api} ({message}): is the model name or {url_hint} right? "
                            "this agent stops", fatal=True) from None
    if status in RETRIED_STATUS or status >= 500:
        return Fault(True, retry_after_seconds(headers), kind, f"HTTP {status} ({message})")
    raise ProposalError(kind, f"the {api} refused the request: HTTP {status}: {message}") from None


def classify(exc: Exception, api_key: str = "") -> Fault:
    """The Fault of a failed Messages API call; raises for those not worth another attempt."""
    if isinstance(exc, anthropic.APITimeoutError):
        return Fault(True, None, "timeout", "timed out")
    if isinstance(exc, anthropic.APIConnectionError):
        return Fault(True, None, "connection", f"connection failed ({_cause(exc)})")
    if isinstance(exc, anthropic.APIStatusError):
        return classify_status(exc.status_code, redact(_message(exc), [api_key]), exc.response.headers)
    return Fault(False, None, "invalid_response", type(exc).__name__)  # a reply the SDK could not read


def call_with_retries(
    call: Callable[[], T],
    policy: RetryPolicy,
    *,
    api_key: str = "",
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
    on_retry: Callable[[str, float], None] | None = None,
    classify: Callable[[Exception, str], Fault] = classify,
    errors: tuple[type[BaseException], ...] = (anthropic.APIError,),
    api: str = "Messages API",
) -> T:
    """``call()``, retried on transient faults per ``policy``; a ProposalError of the last fault's kind when they
    do not clear.

    ``classify`` and ``errors`` are the wire's (agent/wire.py): which of its SDK's exceptions are faults of
    the call, and which of those are worth another attempt."""
    rng = rng or random.Random()
    for retry in range(policy.max_retries + 1):
        try:
            return call()
        except errors as exc:
            fault = classify(exc, api_key)
            if not fault.retry or retry >= policy.max_retries:
                what = f"the {api} call failed {retry + 1} time(s), last: {fault.what}"
                raise ProposalError(fault.kind, what) from None
            wait = policy.delay(retry, fault.retry_after, rng)
            if on_retry:
                on_retry(fault.what, wait)
            sleep(wait)
    raise AssertionError("unreachable")


def _message(exc: anthropic.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    return str(error.get("message") or exc.message)[:300]


def _cause(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    return type(cause).__name__ if cause else type(exc).__name__
