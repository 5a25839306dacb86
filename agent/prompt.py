"""What a Claude agent is told: a stable, cached system prompt and a fresh user message per proposal.

The system prompt is program.md plus fixed working instructions: the same
text for every agent and every proposal, so it carries the prompt-cache
breakpoint (the tool definitions before it are cached with it). The agent's
research direction and temperament follow in a second, small system block.
Everything that changes (the parent's train.py, the leaderboard, recent
results, the notes, this agent's own outcomes) goes into the user message.
"""

from __future__ import annotations

from typing import Any

from agent.protocol import Context
from agent.tools import format_summary

# Assigned round-robin by agent number when config gives none, so a population differs by default.
DIRECTIONS = (
    "the optimizer: learning rates, betas, momentum, weight decay, Muon/AdamW settings",
    "the architecture: depth, width, heads, MLP, normalisation, attention and embedding details",
    "the schedule: warmup, warmdown, final learning rate, batch size over the budget",
    "efficiency: more useful tokens per second within the fixed budget (throughput, batch, precision, fused ops)",
    "simplification: remove code and knobs that do not pay for themselves; equal score with less code wins",
    "wild ideas: unusual changes nobody has tried yet, backed by a reason they could work",
)
TEMPERAMENTS = (
    "careful: one well-reasoned change at a time, sized so its effect is measurable above the noise",
    "bold: larger or combined changes when the evidence suggests a big gain is available",
)

INSTRUCTIONS = """\
# How you work in this farm

Each request is one proposal: you start from a parent train.py (shown in the
user message), change it with your tools, and submit it. Then the farm runs
it in a sandbox under the fixed harness and judges it; you will see the result
in a later request. You do not run code yourself.

Tools:
- view_file: read train.py (your working copy), prepare.py (the fixed harness,
  read-only) or program.md, with line numbers.
- edit_train_py: replace an exact, unique piece of text (old_text -> new_text),
  or rewrite the whole file (content). Errors tell you what did not match.
- list_experiments / show_experiment: the leaderboard, recent results
  (failures with their reason), your own outcomes, and any experiment's diff
  against its parent and its log tail. Learn from what failed.
- read_notes / append_note: the shared notes every agent reads. Write a note
  when you learned something reusable (at most 3 one-line notes per proposal).
- submit: your working copy becomes the proposal. It is checked first; fix
  what the check reports and submit again.

Be efficient: a few tool calls, then submit. Do not propose what is already in
the leaderboard or the recent results: the farm rejects a change identical to
an earlier experiment's before it runs. Keep the description to one line that
says what changed (and the values), like a commit subject.
"""


def system_blocks(program: str, direction: str, temperament: str) -> list[dict[str, Any]]:
    """The system parameter: the shared, cached prefix, then this agent's own line."""
    return [
        {"type": "text", "text": f"{program.rstrip()}\n\n{INSTRUCTIONS}", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": f"Your research direction: {direction}.\nYour temperament: {temperament}.\n"
                                 "Other agents cover other directions; stay mostly within yours."},
    ]


def default_persona(name: str) -> tuple[str, str]:
    """(direction, temperament) for agent ``name`` ("claude-3" -> the 4th direction) when config sets none."""
    tail = name.rsplit("-", 1)[-1]
    index = int(tail) if tail.isdigit() else sum(map(ord, name))
    return DIRECTIONS[index % len(DIRECTIONS)], TEMPERAMENTS[(index // len(DIRECTIONS)) % len(TEMPERAMENTS)]


def user_message(context: Context) -> str:
    """This proposal's situation, built fresh from the Context."""
    main = f"{context.main_val_bpb:.4f}" if context.main_val_bpb is not None else "not measured yet"
    noise = f"{context.noise_sd:.4f}" if context.noise_sd is not None else "not known yet"
    parts = [
        f"Profile: {context.profile}. Main's val_bpb: {main} (run-to-run noise sd: {noise}; lower is better).",
        f"You propose a change to the train.py of commit {context.parent_commit[:10]}.",
        _section("Leaderboard (best ok runs)", [format_summary(s) for s in context.leaderboard]),
        _section("Recent results (newest last)", [format_summary(s, with_reason=True) for s in context.recent]),
        _section("Your own recent outcomes", [format_summary(s, with_reason=True) for s in context.own_recent]
                 + [f"rejected before running: {r}" for r in context.own_rejected]),
        _section("Being tried now by the farm's agents (queued or running: propose something else)",
                 [format_summary(s) for s in context.in_flight]),
        _section("Shared notes", context.notes),
        f"The parent train.py:\n```python\n{context.parent_train_py}```" if context.parent_train_py.endswith("\n")
        else f"The parent train.py:\n```python\n{context.parent_train_py}\n```",
        "Make one proposal now and submit it.",
    ]
    return "\n\n".join(parts)


def _section(title: str, lines: list[str]) -> str:
    return f"{title}:\n" + ("\n".join(lines) if lines else "(none yet)")
