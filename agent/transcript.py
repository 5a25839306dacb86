"""A proposal's transcript for audit, with every secret taken out.

The driver saves it as JSON in the run dir, so what an agent saw and did can
be read later. Anything that looks like an Anthropic or OpenAI key
(``sk-ant-...``, ``sk-proj-...``) and the exact key in use are replaced, wherever they occur (a tool result, a
model's text, an error message), before the transcript leaves the agent and
again before it is written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REDACTED = "[REDACTED]"
# Anthropic's sk-ant-..., and OpenAI-style keys (sk-..., sk-proj-...) long enough not to be a word
KEY_PATTERN = re.compile(r"sk-ant-[A-Za-z0-9_\-]{4,}|sk-[A-Za-z0-9_\-]{20,}")
MIN_SECRET_LENGTH = 8  # a shorter "key" would blank out ordinary words


def redact(value: Any, secrets: Iterable[str] = ()) -> Any:
    """``value`` (str, or JSON-like dicts and lists of them) with ``secrets`` and key-shaped strings replaced."""
    secrets = [s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH]
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, REDACTED)
        return KEY_PATTERN.sub(REDACTED, value)
    if isinstance(value, dict):
        return {redact(k, secrets): redact(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v, secrets) for v in value]
    return value


def write_transcript(directory: Path, agent: str, transcript: dict[str, Any], secrets: Iterable[str] = ()) -> Path:
    """Save ``transcript`` (redacted again) as ``directory/<agent>-<n>.json``, n counting this agent's files."""
    directory.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", agent) or "agent"
    n = len(list(directory.glob(f"{safe}-*.json"))) + 1
    while (path := directory / f"{safe}-{n}.json").exists():
        n += 1
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(redact(transcript, secrets), indent=1, default=str))
    tmp.replace(path)
    return path
