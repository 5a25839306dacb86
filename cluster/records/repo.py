"""The research repo: the git history of one farm run, written only by the driver.

A *bare* repository (no working tree, no index): every write is plumbing,
objects first and then one atomic ``update-ref``, so a crash at any instant
leaves refs pointing at complete commits and no ``index.lock`` behind.
``main`` is the main line; experiment ``<id>`` is one commit on ``exp/<id>``
whose parent is the commit it was proposed from. ``git -C RUN/repo log main``
shows it. Promotion, the one flow that moves main::

    out = repo.promote(cand, "promote exp-17", {"Farm-Val-Bpb": "2.712345"})
    if out.kind == "merge":          # main moved: measure the merge before it counts
        m = repo.commit_experiment("exp-17-m", out.main_head, out.merged_train_py, "merge exp-17 onto main")
        ...measure m against main...; repo.promote(m, ...)  # a fast-forward now
    elif out.kind == "conflict":     # main untouched: send out.conflict back to an agent

Git runs with the user's global/system config and any inherited ``GIT_DIR``
(a hook's) shut out, so nothing outside the run can redirect or alter a write.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Literal, NamedTuple, Protocol

import git
from pydantic import BaseModel

TRAIN_PY = "train.py"
PROGRAM_MD = "program.md"
MAIN_REF = "refs/heads/main"
EXP_PREFIX = "exp/"
FARM_NAME = "autoresearch-farm"
FARM_EMAIL = "farm@autoresearch-farm.invalid"
STALE_LOCK_SECONDS = 60.0  # git holds a ref lock for milliseconds: older ones are left by a crash
_ZERO = "0" * 40
_EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_TRAILER_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")


class RepoError(RuntimeError):
    """The research repo cannot do what was asked; the message names the problem and the fix."""


class PromoteOutcome(BaseModel):
    """What :meth:`ResearchRepo.promote` did. Only ``fast-forward`` moves main."""

    kind: Literal["fast-forward", "merge", "conflict", "noop"]
    main_head: str  # main when the decision was taken (the parent for a merge's re-measurement)
    new_main: str | None = None  # main's head once the change is on it (fast-forward, noop); None otherwise
    merge_base: str | None = None
    merged_train_py: str | None = None  # the clean merge to measure (merge only)
    conflict: str | None = None  # the conflicting hunks, summarised (conflict only)
    reason: str = ""


class MainCommit(NamedTuple):
    sha: str
    message: str  # without the trailer block
    trailers: dict[str, str]


def count_code_lines(text: str) -> int:
    """Non-blank, non-comment lines: the measure of the simplicity rule (fewer lines wins a tie)."""
    return sum(1 for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))


def _runner(git_dir: Path) -> git.Git:
    """A gitpython runner pinned to ``git_dir`` and the farm identity, whatever the caller's environment holds."""
    runner = git.Git(str(git_dir))
    runner.update_environment(
        GIT_DIR=str(git_dir), GIT_OBJECT_DIRECTORY=str(git_dir / "objects"), GIT_INDEX_FILE=str(git_dir / "index"),
        GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_COUNT="0", GIT_CONFIG_PARAMETERS="",
        GIT_NAMESPACE="", GIT_ALTERNATE_OBJECT_DIRECTORIES="", GIT_TERMINAL_PROMPT="0",
        GIT_AUTHOR_NAME=FARM_NAME, GIT_AUTHOR_EMAIL=FARM_EMAIL,
        GIT_COMMITTER_NAME=FARM_NAME, GIT_COMMITTER_EMAIL=FARM_EMAIL,
    )  # fmt: skip
    return runner


def _format_message(message: str, trailers: dict[str, str]) -> str:
    for key in trailers:
        if not _TRAILER_KEY_RE.match(key):
            raise RepoError(f"bad trailer key {key!r}: use letters, digits and '-' (e.g. 'Farm-Val-Bpb')")
    body = message.strip() or "(no description)"
    block = "\n".join(f"{k}: {' '.join(str(v).split())}" for k, v in trailers.items())
    return f"{body}\n\n{block}\n" if block else f"{body}\n"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def _check_id(experiment_id: str) -> None:
    if not _ID_RE.match(experiment_id) or ".." in experiment_id or experiment_id.endswith((".lock", ".")):
        raise RepoError(
            f"experiment id {experiment_id!r} cannot name a branch: use 1-63 of [A-Za-z0-9_.-], "
            "starting with a letter or digit, without '..' and not ending in '.' or '.lock'"
        )


class ResearchRepo:
    """One farm run's git repository; build it with :meth:`create` or :meth:`open`."""

    def __init__(self, path: Path, merge: Merge | None = None) -> None:
        """``merge``: the three-way merge of train.py (promotions, the policies' stages); None: ``git_merge``. A
        benchmark passes another one in (bench/search.py's what-ifs), so no caller patches this class."""
        self.path = Path(path).resolve()
        self._merge = merge or git_merge
        self._git = _runner(self.path)
        self._lock = threading.RLock()  # one writer, but the driver may call from several threads
        self._blobs: dict[tuple[str, str], str] = {}  # (commit sha, file) -> text

    # -- creating and opening -------------------------------------------------------------

    @classmethod
    def create(cls, path: str | os.PathLike, train_py: str, program_md: str) -> ResearchRepo:
        """A new repo whose ``main`` is one "seed" commit; built aside and renamed into place (all or nothing)."""
        path = Path(path).absolute()
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise RepoError(f"{path} exists and is not empty: open it with ResearchRepo.open or pick a new path")
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.creating-", dir=path.parent))
        runner = _runner(staging)
        runner.execute(["git", "init", "--quiet", "--bare", "--initial-branch=main", str(staging)])
        # The farm identity; a reflog of every move of main; objects and refs on disk before a ref points at them.
        settings = {"user.name": FARM_NAME, "user.email": FARM_EMAIL, "core.logAllRefUpdates": "true"}
        settings.update({"core.fsync": "committed", "commit.gpgSign": "false", "farm.version": "1"})
        for key, value in settings.items():
            runner.execute(["git", "config", key, value])
        repo = cls(staging)
        tree = repo._mktree({}, {TRAIN_PY: train_py, PROGRAM_MD: program_md})
        seed = repo._commit_tree(tree, [], _format_message("seed", {}))
        repo._update_ref(MAIN_REF, seed, _ZERO, "seed")
        if path.exists():
            path.rmdir()
        os.rename(staging, path)
        _fsync_dir(path.parent)
        return cls.open(path)

    @classmethod
    def open(cls, path: str | os.PathLike, merge: Merge | None = None) -> ResearchRepo:
        """An existing farm repo; removes ref locks a crashed writer left behind."""
        path = Path(path)
        if not (path / "HEAD").is_file() or not (path / "objects").is_dir():
            raise RepoError(
                f"{path} is not a farm research repo (no bare git repository there): "
                "create one with ResearchRepo.create, or point at RUN_DIR/repo"
            )
        repo = cls(path, merge)
        if repo._run(["config", "--get", "farm.version"], check=False)[0] != 0:
            raise RepoError(
                f"{path} is a git repository but not a farm research repo (no farm.version in its config): "
                "import a checkout with `farm run --from PATH` instead"
            )
        if repo._ref(MAIN_REF) is None:
            raise RepoError(f"{path} has no main branch: the repo was damaged; start a new run or restore it")
        repo._clear_stale_locks()
        return repo

    def _clear_stale_locks(self) -> None:
        now = time.time()
        candidates = list((self.path / "refs").rglob("*.lock")) + list((self.path / "logs").rglob("*.lock"))
        candidates += [self.path / n for n in ("packed-refs.lock", "config.lock", "HEAD.lock")]
        for lock in candidates:
            if lock.exists() and now - lock.stat().st_mtime > STALE_LOCK_SECONDS:
                lock.unlink(missing_ok=True)

    # -- reading --------------------------------------------------------------------------

    def main_head(self) -> str:
        sha = self._ref(MAIN_REF)
        if sha is None:
            raise RepoError(f"{self.path} has no main branch")
        return sha

    def resolve(self, rev: str) -> str:
        """The full sha of a commit (sha, short sha, ``main``, ``exp/<id>``)."""
        found = not rev.startswith("-") and self._run(["rev-parse", "--verify", f"{rev}^{{commit}}"], check=False)
        if not found or found[0] != 0:
            raise RepoError(f"no commit {rev!r} in {self.path}")
        return found[1].strip()

    def branch_head(self, experiment_id: str) -> str | None:
        """The commit of experiment ``experiment_id``, or None if it was never committed."""
        _check_id(experiment_id)
        return self._ref(f"refs/heads/{EXP_PREFIX}{experiment_id}")

    def train_py_at(self, commit: str) -> str:
        return self._blob(commit, TRAIN_PY)

    def program_md_at(self, commit: str) -> str:
        return self._blob(commit, PROGRAM_MD)

    def line_count(self, commit: str) -> int:
        """Non-blank, non-comment lines of train.py at ``commit`` (the simplicity rule)."""
        return count_code_lines(self.train_py_at(commit))

    def diff(self, commit: str, against: str | None = None) -> str:
        """Unified diff of train.py from ``against`` (default: the commit's parent) to ``commit``."""
        with self._lock:
            new = self.resolve(commit)
            old = self.resolve(against) if against is not None else ([*self._commit_fields(new)[1], _EMPTY_TREE])[0]
            return self._run(["diff", "--no-color", "--no-ext-diff", "--no-textconv", old, new, "--", TRAIN_PY])[1]

    def log_main(self) -> list[MainCommit]:
        """Main's first-parent history, oldest first, with each commit's trailers: the state to rebuild from."""
        fmt = "%H%x1f%B%x1f%(trailers:only,unfold)%x1e"
        out = self._run(["log", "--first-parent", "--reverse", f"--format={fmt}", MAIN_REF])[1]
        commits = []
        for record in filter(str.strip, out.split("\x1e")):
            sha, body, block = record.lstrip("\n").split("\x1f")
            trailers = {k.strip(): v.strip() for k, sep, v in (ln.partition(":") for ln in block.splitlines()) if sep}
            message = body.strip().rsplit("\n\n", 1)[0] if trailers else body.strip()  # drop the trailer block
            commits.append(MainCommit(sha, message.strip(), trailers))
        return commits

    # -- writing --------------------------------------------------------------------------

    def commit_experiment(
        self, experiment_id: str, parent_commit: str, train_py: str, description: str, trailers: dict | None = None
    ) -> str:
        """Point ``exp/<id>`` at one commit: parent's tree with train.py replaced. Same content, same sha.

        The working tree and HEAD are never touched; the branch moves by one
        atomic compare-and-swap. A ``Farm-Experiment`` trailer is always added.
        """
        _check_id(experiment_id)
        with self._lock:
            parent = self.resolve(parent_commit)
            tree = self._mktree(self._entries(parent), {TRAIN_PY: train_py})
            message = _format_message(description, {"Farm-Experiment": experiment_id, **(trailers or {})})
            ref = f"refs/heads/{EXP_PREFIX}{experiment_id}"
            existing = self._ref(ref)
            if existing is not None and self._commit_fields(existing) == (tree, [parent], message):
                return existing
            sha = self._commit_tree(tree, [parent], message)
            self._update_ref(ref, sha, existing or _ZERO, f"experiment {experiment_id}")
            return sha

    def promote(self, commit: str, message: str, trailers: dict[str, str] | None = None) -> PromoteOutcome:
        """Bring a winning experiment onto main, or say why it cannot go yet.

        main only ever receives a train.py that was measured: it moves
        (``fast-forward``: one new commit, parent = main, so the history stays
        linear and carries ``message`` plus trailers, ``Farm-Commit`` = the
        candidate) only when the three-way merge of train.py (base = merge
        base, ours = main, theirs = candidate) is byte-identical to the
        candidate's (main's train.py did not change since the candidate
        forked, or only in ways the candidate has too). Otherwise a clean merge comes back as ``merge`` with
        ``merged_train_py``: the caller commits it with
        :meth:`commit_experiment` on ``main_head``, measures it, and promotes
        that commit, which then fast-forwards. ``conflict`` summarises the
        hunks; ``noop`` means main already has the change. Only
        ``fast-forward`` writes anything.
        """
        with self._lock:
            cand, main = self.resolve(commit), self.main_head()
            out = dict(main_head=main)
            if self._is_ancestor(cand, main):
                return PromoteOutcome(kind="noop", new_main=main, reason=f"{cand[:7]} is already on main", **out)
            status, base, _ = self._run(["merge-base", main, cand], check=False)
            if status != 0:
                raise RepoError(f"{cand[:7]} shares no history with main: it was not proposed from this repo")
            base = base.strip()
            out["merge_base"] = base
            ours, theirs = self.train_py_at(main), self.train_py_at(cand)
            merged, conflicts = self.merge_train_py(self.train_py_at(base), ours, theirs)
            if conflicts:
                return PromoteOutcome(kind="conflict", conflict=conflicts, reason="both changed the same lines", **out)
            if merged == ours:
                return PromoteOutcome(kind="noop", new_main=main, reason="main's train.py has the change", **out)
            if merged != theirs:
                return PromoteOutcome(
                    kind="merge", merged_train_py=merged, reason="main moved: measure the merge first", **out
                )
            tree = self._mktree(self._entries(main), {TRAIN_PY: theirs})
            body = _format_message(message, {"Farm-Commit": cand, **(trailers or {})})
            new = self._commit_tree(tree, [main], body)
            self._update_ref(MAIN_REF, new, main, f"promote {cand[:7]}")
            return PromoteOutcome(kind="fast-forward", new_main=new, reason="measured train.py lands as is", **out)

    # -- plumbing ---------------------------------------------------------------------------

    def _run(self, args: list[str], stdin: bytes | None = None, check: bool = True, env: dict | None = None):
        """(status, stdout, stderr) of one git command; stdout keeps its final newline."""
        options = dict(with_extended_output=True, with_exceptions=False, strip_newline_in_stdout=False, env=env)
        if stdin is None:
            status, out, err = self._git.execute(["git", *args], **options)
        else:
            with tempfile.TemporaryFile() as stream:  # gitpython feeds stdin from a real file
                stream.write(stdin)
                stream.seek(0)
                status, out, err = self._git.execute(["git", *args], istream=stream, **options)
        if check and status != 0:
            raise RepoError(f"git {' '.join(args[:2])} failed in {self.path} (exit {status}): {err.strip()}")
        return status, out, err

    def _ref(self, ref: str) -> str | None:
        status, out, _ = self._run(["rev-parse", "--verify", "--quiet", ref], check=False)
        return out.strip() if status == 0 else None

    def _blob(self, commit: str, name: str) -> str:
        """A file at a commit; cached by full sha (commits never change), so the driver's loop spawns no git."""
        key = (commit, name)
        if len(commit) == 40 and key in self._blobs:
            return self._blobs[key]
        with self._lock:
            sha = self.resolve(commit)
            status, out, _ = self._run(["cat-file", "blob", f"{sha}:{name}"], check=False)
            if status != 0:
                raise RepoError(f"commit {sha[:7]} has no {name}: not a farm commit")
            if len(self._blobs) > 4096:
                self._blobs.clear()
            self._blobs[(sha, name)] = out
            return out

    def _commit_fields(self, sha: str) -> tuple[str, list[str], str]:
        """(tree, parents, message) of a commit, as stored."""
        raw = self._run(["cat-file", "commit", sha])[1]
        header, _, message = raw.partition("\n\n")
        lines = header.splitlines()
        tree = next(line[5:] for line in lines if line.startswith("tree "))
        return tree, [line[7:] for line in lines if line.startswith("parent ")], message

    def _is_ancestor(self, older: str, newer: str) -> bool:
        return self._run(["merge-base", "--is-ancestor", older, newer], check=False)[0] == 0

    def _entries(self, commit: str) -> dict[str, str]:
        """Top-level tree entries of a commit, name -> the ``mode type sha`` part of ``ls-tree -z``."""
        items = (item.partition("\t") for item in self._run(["ls-tree", "-z", commit])[1].split("\0") if item)
        return {name: meta for meta, _, name in items}

    def _mktree(self, entries: dict[str, str], files: dict[str, str]) -> str:
        entries = dict(entries)
        for name, text in files.items():
            blob = self._run(["hash-object", "-w", "--no-filters", "--stdin"], stdin=text.encode())[1].strip()
            entries[name] = f"100644 blob {blob}"
        listing = "".join(f"{meta}\t{name}\0" for name, meta in sorted(entries.items()))
        return self._run(["mktree", "-z"], stdin=listing.encode())[1].strip()

    def _commit_tree(self, tree: str, parents: list[str], message: str) -> str:
        stamp = f"@{int(time.time())} +0000"
        args = ["commit-tree", "--no-gpg-sign", tree, *[a for p in parents for a in ("-p", p)], "-F", "-"]
        env = {"GIT_AUTHOR_DATE": stamp, "GIT_COMMITTER_DATE": stamp}
        return self._run(args, stdin=message.encode(), env=env)[1].strip()

    def _update_ref(self, ref: str, new: str, old: str, reason: str) -> None:
        status, _, err = self._run(["update-ref", "-m", reason, ref, new, old], check=False)
        if status != 0:
            raise RepoError(
                f"could not move {ref} to {new[:7]} ({err.strip()}): it moved under the driver; "
                "only one farm driver may write a run's repo"
            )

    def merge_train_py(self, base: str, ours: str, theirs: str, prefer_theirs: bool = False) -> tuple[str, str | None]:
        """The run's three-way merge of train.py (the one passed in, else ``git_merge``): (merged text, None) or
        (text with markers, summary of conflicts). Promotions and the policies' stages all merge through here."""
        return self._merge(base, ours, theirs, prefer_theirs)


class Merge(Protocol):
    """A three-way merge of train.py: (merged text, None) or (text with markers, a summary of the conflicts).
    ``prefer_theirs``: conflicting lines take the candidate's side (a stage, certified as a whole, may)."""

    def __call__(self, base: str, ours: str, theirs: str, prefer_theirs: bool = False) -> tuple[str, str | None]: ...


def git_merge(base: str, ours: str, theirs: str, prefer_theirs: bool = False) -> tuple[str, str | None]:
    """``git merge-file -p`` of train.py (the farm's merge): it needs no repository, only the three texts."""
    with tempfile.TemporaryDirectory(prefix="farm-merge-") as tmp:
        labels = {"main": ours, "base": base, "candidate": theirs}
        for name, text in labels.items():
            (Path(tmp) / name).write_bytes(text.encode())
        args = ["merge-file", "-p", "--theirs" if prefer_theirs else "--diff3",
                *[a for n in labels for a in ("-L", n)]]
        status, merged, err = _runner(Path(tmp)).execute(
            ["git", *args, *(str(Path(tmp) / n) for n in labels)], with_extended_output=True,
            with_exceptions=False, strip_newline_in_stdout=False)
    if status < 0 or status > 127:
        raise RepoError(f"git merge-file failed (exit {status}): {err.strip()}")
    return merged, (_summarise_conflicts(merged) if status else None)


def _summarise_conflicts(merged: str, max_lines: int = 6) -> str:
    """Each conflicting hunk of ``merge-file --diff3`` output: where, what main has, what the candidate has."""
    parts, side, at, hunk = [], None, 0, {}
    for lineno, line in enumerate(merged.splitlines(), 1):
        marker = line[:8]
        if marker == "<<<<<<< ":
            side, at, hunk = "main", lineno, {"main": [], "base": [], "cand": []}
        elif side and marker in ("||||||| ", "=======", ">>>>>>> "):
            side = {"||||||| ": "base", "=======": "cand"}.get(marker)
            if side is None:
                show = {k: "\n".join(f"    {x}" for x in v[:max_lines]) or "    (nothing)" for k, v in hunk.items()}
                parts.append(f"near line {at}:\n  main has:\n{show['main']}\n  candidate has:\n{show['cand']}")
        elif side:
            hunk[side].append(line)
    return f"{len(parts)} conflicting hunk(s) in {TRAIN_PY}:\n" + "\n".join(parts)
