"""What a wire protocol must do for the research agent's loop (agent/loop.py), and nothing more.

The conversation loop (turns, tool dispatch, the turn limit, submit, spend,
transcript) is written once. A wire is the small part that differs between
APIs: how a request is built, how the reply's tool calls and usage are read,
how tool results go back, where the key comes from and which of the SDK's
errors are worth a retry. Two wires exist: Anthropic Messages
(agent/wire_anthropic.py) and OpenAI Chat Completions (agent/wire_openai.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from agent.llm import Fault


@dataclass
class ToolCall:
    """One tool call of a reply; ``error`` says why its arguments could not be read (sent back as an error)."""

    id: str
    name: str
    input: Any = None
    error: str = ""


@dataclass
class Turn:
    """One reply, in the loop's terms."""

    message: dict[str, Any]  # the assistant message as the next request sends it back
    calls: list[ToolCall] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=dict)  # Tally.add's names: input_tokens (uncached), ...
    cut_off: bool = False  # the reply hit max_tokens
    stop_reason: str = ""


@dataclass
class ToolResult:
    """What one tool call returned, for the wire to send back."""

    call: ToolCall
    text: str
    is_error: bool


class Wire(Protocol):
    """One API protocol. ``api`` names it in errors ("Messages API"); ``errors`` are its SDK's call faults."""

    api: str
    name: str
    errors: tuple[type[BaseException], ...]

    def api_key(self) -> str:
        """The key for this call (read each proposal: a rotated secret file is picked up); fatal if missing."""
        ...

    def make_client(self, key: str) -> Any:
        """A client without the SDK's own retries (agent/llm.py retries)."""
        ...

    def system(self, program: str, direction: str, temperament: str) -> Any:
        """The system prompt in this wire's shape."""
        ...

    def user(self, text: str) -> dict[str, Any]:
        """The first user message."""
        ...

    def request(self, system: Any, messages: list[dict[str, Any]]) -> dict[str, Any]:
        """The keyword arguments of one call."""
        ...

    def send(self, client: Any, request: dict[str, Any]) -> Any:
        """Make the call; the SDK's exceptions propagate to the retry loop."""
        ...

    def parse(self, response: Any) -> Turn:
        """The reply as the loop sees it."""
        ...

    def results(self, results: list[ToolResult]) -> list[dict[str, Any]]:
        """The message(s) that carry the tool results back."""
        ...

    def classify(self, exc: Exception, api_key: str) -> Fault:
        """The Fault (retry?, retry-after, kind, what) of a failed call; raises those not worth another attempt
        (agent/llm.py classify_status)."""
        ...
