"""The tools a Claude agent works with, over an in-memory copy of train.py.

Nothing here touches the disk or git: the agent edits a string, reads what
its Context carries (past experiments, their diffs and log tails, the shared
notes) and ends by submitting. Every tool's input is validated by a small
pydantic model whose JSON schema is what the model is shown, so the schema
and the check cannot drift apart. A bad call never raises: it returns an
error result that says what to do instead, and the conversation goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.preflight import check_train_py
from agent.protocol import Context, ExperimentSummary

HARNESS_PATH = Path(__file__).resolve().parent.parent / "trainer" / "prepare.py"
MAX_NOTES = 3  # per proposal: the notes file is for insights, not a diary
MAX_NOTE_CHARS = 240
MAX_DESCRIPTION_CHARS = 200


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ViewFile(_Input):
    """Show a file with line numbers: train.py (your working copy), or the read-only harness prepare.py or
    program.md."""

    path: Literal["train.py", "prepare.py", "program.md"]
    start_line: int | None = Field(None, ge=1, description="first line to show (default 1)")
    end_line: int | None = Field(None, ge=1, description="last line to show (default: the end)")


class EditTrainPy(_Input):
    """Edit your working copy of train.py. Either replace old_text (which must occur exactly once) with
    new_text, or give content to rewrite the whole file."""

    old_text: str | None = Field(None, description="exact text to replace, with enough context to be unique")
    new_text: str | None = Field(None, description="replacement for old_text")
    content: str | None = Field(None, description="the whole new train.py (instead of old_text/new_text)")


class ListExperiments(_Input):
    """List past experiments: the leaderboard (best ok runs), recent results (failures included, with their
    reason), or your own recent outcomes."""

    which: Literal["leaderboard", "recent", "mine"]


class ShowExperiment(_Input):
    """One past experiment: description, status, val_bpb, verdict, reason, log tail, and its diff vs its
    parent."""

    experiment_id: str = Field(description="e.g. e0007")


class ReadNotes(_Input):
    """The shared notes: one-line insights written by every agent of the farm."""


class AppendNote(_Input):
    """Add one line to the shared notes every agent reads: a reusable insight (what helped, what did not and
    why), not a plan. At most 3 per proposal."""

    note: str = Field(min_length=1, description="one line, under 240 characters")


class Submit(_Input):
    """Submit your working copy of train.py as this proposal and end. It is checked first (compiles, calls the
    harness's evaluate_bpb, leaves the harness alone, no new packages); if the check fails you get the
    reasons and can fix them."""

    description: str = Field(min_length=1, description="one line: what changed and why, like a commit subject")


TOOL_INPUTS: dict[str, type[_Input]] = {
    "view_file": ViewFile, "edit_train_py": EditTrainPy, "list_experiments": ListExperiments,
    "show_experiment": ShowExperiment, "read_notes": ReadNotes, "append_note": AppendNote, "submit": Submit,
}  # fmt: skip


def tool_schemas() -> list[dict[str, Any]]:
    """The ``tools`` parameter of the Messages API, from the input models."""
    out = []
    for name, model in TOOL_INPUTS.items():
        schema = model.model_json_schema()
        schema.pop("title", None)
        for prop in schema.get("properties", {}).values():
            prop.pop("title", None)
        schema.setdefault("properties", {})
        out.append({"name": name, "description": " ".join(model.__doc__.split()), "input_schema": schema})
    return out


@dataclass
class Workspace:
    """What one proposal has done so far: the working copy, new notes, and the submission."""

    parent_train_py: str
    train_py: str = ""
    notes: list[str] = field(default_factory=list)
    description: str | None = None  # set by a successful submit
    edits: int = 0

    def __post_init__(self) -> None:
        self.train_py = self.train_py or self.parent_train_py


class ToolError(Exception):
    """A tool call that cannot be done; its message goes back to the model as an error result."""


class ToolExecutor:
    """Runs tool calls against a Workspace and a Context; returns (text, is_error), never raises."""

    def __init__(self, context: Context, workspace: Workspace, harness_source: str | None = None) -> None:
        self.context, self.ws = context, workspace
        self._harness = harness_source

    def run(self, name: str, raw_input: Any) -> tuple[str, bool]:
        model = TOOL_INPUTS.get(name)
        if model is None:
            return f"unknown tool {name!r}; the tools are: {', '.join(TOOL_INPUTS)}", True
        try:
            args = model.model_validate(raw_input if raw_input is not None else {})
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'input'}: {e['msg']}" for e in exc.errors())
            return f"invalid input for {name}: {problems}", True
        try:
            return getattr(self, f"_{name}")(args), False
        except ToolError as exc:
            return f"{name}: {exc}", True

    # ---- files -------------------------------------------------------------

    def _view_file(self, args: ViewFile) -> str:
        text = {"train.py": lambda: self.ws.train_py, "program.md": lambda: self.context.program,
                "prepare.py": self.harness}[args.path]()
        lines = text.splitlines()
        start, end = args.start_line or 1, min(args.end_line or len(lines), len(lines))
        if start > max(len(lines), 1) or end < start:
            raise ToolError(f"{args.path} has {len(lines)} lines; asked for {start}..{args.end_line}")
        width = len(str(end))
        body = "\n".join(f"{i:>{width}}| {lines[i - 1]}" for i in range(start, end + 1))
        return f"{args.path} (lines {start}-{end} of {len(lines)}):\n{body}"

    def harness(self) -> str:
        if self._harness is None:
            self._harness = HARNESS_PATH.read_text()
        return self._harness

    def _edit_train_py(self, args: EditTrainPy) -> str:
        if args.content is not None:
            if args.old_text is not None or args.new_text is not None:
                raise ToolError("give either content (a whole new file) or old_text and new_text, not both")
            if not args.content.strip():
                raise ToolError("content is empty; to change part of the file use old_text and new_text")
            self.ws.train_py = args.content if args.content.endswith("\n") else args.content + "\n"
            self.ws.edits += 1
            return f"train.py rewritten ({len(self.ws.train_py.splitlines())} lines)"
        if args.old_text is None or args.new_text is None:
            raise ToolError("old_text and new_text are both required (or content for a whole new file)")
        if not args.old_text:
            raise ToolError("old_text is empty: quote the exact text to replace")
        count = self.ws.train_py.count(args.old_text)
        if count == 0:
            hint = _closest_line(self.ws.train_py, args.old_text)
            raise ToolError("old_text does not occur in train.py (it must match exactly, whitespace included)"
                            + (f"; the closest line is: {hint!r}" if hint else "") + ". View the file and retry.")
        if count > 1:
            raise ToolError(f"old_text occurs {count} times in train.py: include more surrounding lines so that it "
                            "is unique")
        self.ws.train_py = self.ws.train_py.replace(args.old_text, args.new_text, 1)
        self.ws.edits += 1
        line = self.ws.train_py[: self.ws.train_py.find(args.new_text)].count("\n") + 1 if args.new_text else None
        return "edited train.py" + (f" (the new text starts at line {line})" if line else "")

    # ---- experiments ----------------------------------------------------------

    def _list_experiments(self, args: ListExperiments) -> str:
        rows = {"leaderboard": self.context.leaderboard, "recent": self.context.recent,
                "mine": self.context.own_recent}[args.which]  # fmt: skip
        if not rows:
            return f"no experiments in {args.which} yet"
        lines = [format_summary(s, with_reason=args.which != "leaderboard") for s in rows]
        if args.which == "mine" and self.context.own_rejected:
            lines += ["rejected before running: " + r for r in self.context.own_rejected]
        return "\n".join(lines)

    def _show_experiment(self, args: ShowExperiment) -> str:
        known = {s.experiment_id: s for s in (*self.context.leaderboard, *self.context.recent,
                                              *self.context.own_recent)}  # fmt: skip
        s = known.get(args.experiment_id.strip())
        if s is None:
            raise ToolError(f"no experiment {args.experiment_id!r} in view; known: {', '.join(sorted(known)) or '-'}")
        parts = [format_summary(s, with_reason=True), f"parent {s.parent_commit[:10] or '-'}  "
                 f"commit {s.commit[:10] or '-'}"]
        parts.append("diff vs parent:\n" + (s.diff or "(none recorded: a baseline or a replicate of its parent)"))
        if s.log_tail:
            parts.append("log tail:\n" + s.log_tail)
        return "\n".join(parts)

    # ---- notes and submission ---------------------------------------------------

    def _read_notes(self, _args: ReadNotes) -> str:
        notes = [*self.context.notes, *self.ws.notes]
        return "\n".join(notes) if notes else "no notes yet: be the first to write one"

    def _append_note(self, args: AppendNote) -> str:
        note = " ".join(args.note.split())
        if len(self.ws.notes) >= MAX_NOTES:
            raise ToolError(f"already {MAX_NOTES} notes in this proposal; keep the best ones")
        if len(note) > MAX_NOTE_CHARS:
            raise ToolError(f"the note has {len(note)} characters; keep it under {MAX_NOTE_CHARS}, one line")
        self.ws.notes.append(note)
        return "note added; every agent will see it"

    def _submit(self, args: Submit) -> str:
        description = " ".join(args.description.split())[:MAX_DESCRIPTION_CHARS]
        if self.ws.train_py == self.ws.parent_train_py:
            raise ToolError("train.py is unchanged from its parent: edit it before submitting")
        problems = check_train_py(self.ws.train_py, self.ws.parent_train_py)
        if problems:
            raise ToolError("not submitted; fix these first:\n- " + "\n- ".join(problems))
        self.ws.description = description
        return "submitted"


def format_summary(s: ExperimentSummary, with_reason: bool = False) -> str:
    """One experiment on one line (plus its failure reason on the next when asked)."""
    bpb = f"{s.val_bpb:.4f}" if s.val_bpb is not None else "-"
    line = f"{s.experiment_id} {s.status or '?':<8} val_bpb {bpb:<7} {s.verdict or '-':<9} {s.agent or '-':<10} " \
           f"{s.description}"
    if with_reason and s.reason:
        line += f"\n    reason: {s.reason[:300]}"
    return line


def _closest_line(text: str, wanted: str) -> str:
    import difflib

    first = next((ln.strip() for ln in wanted.splitlines() if ln.strip()), "")
    heads = {ln.strip()[: len(first)]: ln.strip() for ln in text.splitlines() if ln.strip()}  # compare like with like
    close = difflib.get_close_matches(first, list(heads), n=1, cutoff=0.6)
    return heads[close[0]] if close else ""
