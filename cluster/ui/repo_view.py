"""The research repo as the browser reads it: diffs and main's promotions, cached, and optional.

A run directory copied without its repo, or a commit the ledger names but
the repo lacks, must not take a page down: every call answers with text
that says what is missing instead of raising.
"""

from __future__ import annotations

import re
import subprocess
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cluster.records.repo import TRAIN_PY, RepoError, ResearchRepo

MAX_DIFF_CHARS = 400_000  # a diff beyond this is cut: the page must stay usable
_CACHE = 512
MAX_TRAIN_PY_BYTES = 1_000_000  # a train.py beyond this is not parsed for its constants


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
        self._parsed: dict[str, dict] = {}  # commit -> what parse() made of its train.py; commits never change
        self._ancestors: dict[tuple[str, ...], str | None] = {}

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

    def parse_train_files(self, commits: list[str], parse: Callable[[str], dict]) -> dict[str, dict]:
        """``parse`` of train.py at each commit ({} where the repo lacks it), the files read with one ``git cat-file
        --batch`` for all the commits not parsed before (10,000 blobs in about a second, where one git call each
        would take minutes); only the parsed result is kept (the texts of a long run are hundreds of MB).
        One ``parse`` per RepoView: the cache does not know which function filled it."""
        with self._lock:
            missing = [c for c in dict.fromkeys(commits) if c and c not in self._parsed]
            if missing and (self.path / "objects").is_dir():
                request = "".join(f"{c}:{TRAIN_PY}\n" for c in missing).encode()
                try:
                    out = subprocess.run(["git", "--git-dir", str(self.path), "cat-file", "--batch"], input=request,
                                         capture_output=True, timeout=120, check=True).stdout
                except (OSError, subprocess.SubprocessError):
                    out = b""
                position = 0
                for commit in missing:
                    end = out.find(b"\n", position)
                    if end < 0:
                        break
                    header = out[position:end].split()
                    position = end + 1
                    if len(header) != 3 or header[1] != b"blob":  # "<name> missing"
                        self._parsed[commit] = {}
                        continue
                    size = int(header[2])
                    body = out[position:position + size]
                    position += size + 1
                    self._parsed[commit] = parse(body.decode("utf-8", "replace")) if size <= MAX_TRAIN_PY_BYTES else {}
            return {c: self._parsed.get(c, {}) for c in commits}

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

    def common_ancestor(self, commits: list[str | None]) -> str | None:
        """The best common ancestor of the commits (``git merge-base --octopus``), None without one or a repo;
        cached, as commits never change."""
        wanted = tuple(dict.fromkeys(c for c in commits if c and re.fullmatch(r"[0-9a-f]{7,64}", c)))
        if not wanted or not (self.path / "objects").is_dir():
            return None
        with self._lock:
            if wanted in self._ancestors:
                return self._ancestors[wanted]
        try:
            out = subprocess.run(["git", "--git-dir", str(self.path), "merge-base", "--octopus", *wanted],
                                 capture_output=True, text=True, timeout=60).stdout.split()
        except (OSError, subprocess.SubprocessError):
            out = []
        found = out[0] if out else None
        with self._lock:
            self._ancestors[wanted] = found
        return found
