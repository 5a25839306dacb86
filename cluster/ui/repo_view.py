"""The research repo as the browser reads it: diffs and main's promotions, cached, and optional.

A run directory copied without its repo, or a commit the ledger names but
the repo lacks, must not take a page down: every call answers with text
that says what is missing instead of raising.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from cluster.repo import RepoError, ResearchRepo

MAX_DIFF_CHARS = 400_000  # a diff beyond this is cut: the page must stay usable
_CACHE = 512


@dataclass(frozen=True)
class MainStep:
    """One commit of main's first-parent history: which experiment put it there (None: the seed)."""

    sha: str
    experiment_id: str | None
    candidate_commit: str | None
    val_bpb: float | None


class RepoView:
    """Read-only access to ``RUN/repo``: opened on first use, diffs cached by commit pair (commits never change)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._repo: ResearchRepo | None = None
        self._lock = threading.Lock()
        self._diffs: OrderedDict[tuple[str, str | None], str] = OrderedDict()
        self._main: tuple[str, list[MainStep]] | None = None

    def _open(self) -> ResearchRepo | None:
        if self._repo is None:
            # Not ResearchRepo.open: it deletes stale ref locks, and the browser never writes to a run.
            if not (self.path / "HEAD").is_file() or not (self.path / "objects").is_dir():
                return None
            self._repo = ResearchRepo(self.path)
        return self._repo

    @property
    def available(self) -> bool:
        with self._lock:
            return self._open() is not None

    def diff(self, commit: str | None, against: str | None = None) -> tuple[str, str | None]:
        """(unified diff of train.py, None) or ("", why there is none); ``against`` None: the commit's parent."""
        if not commit:
            return "", "no commit recorded for this experiment"
        key = (commit, against)
        with self._lock:
            if key in self._diffs:
                self._diffs.move_to_end(key)
                return self._diffs[key], None
            repo = self._open()
            if repo is None:
                return "", f"no research repo at {self.path}"
            try:
                text = repo.diff(commit, against)
            except RepoError as exc:
                return "", str(exc)
            if len(text) > MAX_DIFF_CHARS:
                text = text[:MAX_DIFF_CHARS] + f"\n... (cut at {MAX_DIFF_CHARS} characters)\n"
            self._diffs[key] = text
            if len(self._diffs) > _CACHE:
                self._diffs.popitem(last=False)
            return text, None

    def main_steps(self) -> list[MainStep]:
        """Main's history, oldest first (empty without a repo); re-read only when main's head moved."""
        with self._lock:
            repo = self._open()
            if repo is None:
                return []
            try:
                head = repo.main_head()
                if self._main is None or self._main[0] != head:
                    steps = []
                    for c in repo.log_main():
                        value = c.trailers.get("Farm-Val-Bpb")
                        try:
                            val = float(value) if value else None
                        except ValueError:
                            val = None
                        steps.append(MainStep(c.sha, c.trailers.get("Farm-Experiment"), c.trailers.get("Farm-Commit"),
                                              val))
                    self._main = (head, steps)
            except RepoError:
                return []
            return self._main[1]
