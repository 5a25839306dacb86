"""The research repo with real git: experiment branches, diffs, promotion (fast-forward, merge, conflict).

Every test builds a fresh repo in a temp dir; nothing here depends on the
user's git config or environment (the tests set hostile values on purpose).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

import cluster.records.repo as repo_mod
from cluster.records.repo import FARM_EMAIL, FARM_NAME, RepoError, ResearchRepo, count_code_lines, git_merge

SEED = "".join(f"X{i} = {i}\n" for i in range(1, 21))  # 20 independent lines: edits far apart merge cleanly
PROGRAM = "# program\nMake val_bpb fall.\n"


def edit(text: str, line: int, new: str) -> str:
    lines = text.splitlines(keepends=True)
    lines[line - 1] = new + "\n"
    return "".join(lines)


def git(repo: ResearchRepo, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    return subprocess.run(["git", "--git-dir", str(repo.path), *args], env=env, check=True, capture_output=True,
                          text=True).stdout  # fmt: skip


@pytest.fixture
def repo(tmp_path: Path) -> ResearchRepo:
    return ResearchRepo.create(tmp_path / "repo", SEED, PROGRAM)


def test_create_seeds_main_with_the_farm_identity(repo: ResearchRepo, tmp_path: Path) -> None:
    main = repo.main_head()
    assert repo.train_py_at(main) == SEED and repo.program_md_at(main) == PROGRAM
    assert repo.train_py_at("main") == SEED
    assert [(c.message, c.trailers) for c in repo.log_main()] == [("seed", {})]
    assert git(repo, "log", "-1", "--format=%an <%ae>|%cn <%ce>", "main").strip() == (
        f"{FARM_NAME} <{FARM_EMAIL}>|{FARM_NAME} <{FARM_EMAIL}>"
    )
    assert git(repo, "config", "user.name").strip() == FARM_NAME
    assert git(repo, "symbolic-ref", "HEAD").strip() == "refs/heads/main"
    assert not list(tmp_path.glob(".repo.creating-*")), "the staging dir was renamed into place"
    assert ResearchRepo.open(tmp_path / "repo").main_head() == main


def test_create_and_open_refuse_what_is_not_theirs(repo: ResearchRepo, tmp_path: Path) -> None:
    with pytest.raises(RepoError, match="not empty"):
        ResearchRepo.create(repo.path, SEED, PROGRAM)
    with pytest.raises(RepoError, match="not a farm research repo"):
        ResearchRepo.open(tmp_path / "nowhere")
    plain = tmp_path / "plain"
    subprocess.run(["git", "init", "--quiet", "--bare", str(plain)], check=True)
    with pytest.raises(RepoError, match="farm.version"):
        ResearchRepo.open(plain)


def test_commit_experiment_branch_parentage_and_untouched_main(repo: ResearchRepo) -> None:
    main = repo.main_head()
    new_py = edit(SEED, 3, "X3 = 33")
    sha = repo.commit_experiment("e1", main, new_py, "X3 to 33", {"Farm-Agent": "mutate-0"})
    assert repo.branch_head("e1") == sha == repo.resolve("exp/e1")
    assert git(repo, "rev-parse", f"{sha}^").strip() == main
    assert git(repo, "rev-list", "--count", sha).strip() == "2"
    assert repo.train_py_at(sha) == new_py and repo.program_md_at(sha) == PROGRAM
    assert repo.main_head() == main and git(repo, "symbolic-ref", "HEAD").strip() == "refs/heads/main"
    trailers = git(repo, "log", "-1", "--format=%(trailers:only,unfold)", sha)
    assert "Farm-Experiment: e1" in trailers and "Farm-Agent: mutate-0" in trailers
    assert git(repo, "log", "-1", "--format=%s", sha).strip() == "X3 to 33"
    # A child of an experiment: its parent is that experiment, not main.
    child = repo.commit_experiment("e2", sha, edit(new_py, 4, "X4 = 44"), "X4 too")
    assert git(repo, "rev-parse", f"{child}^").strip() == sha
    assert repo.branch_head("never") is None


def test_commit_experiment_is_idempotent(repo: ResearchRepo, monkeypatch: pytest.MonkeyPatch) -> None:
    main, new_py = repo.main_head(), edit(SEED, 5, "X5 = 55")
    first = repo.commit_experiment("e1", main, new_py, "X5 to 55", {"Farm-Agent": "a"})
    later = time.time() + 3600  # an hour on: a fresh commit would get another sha
    monkeypatch.setattr(repo_mod.time, "time", lambda: later)
    assert repo.commit_experiment("e1", main, new_py, "X5 to 55", {"Farm-Agent": "a"}) == first
    changed = repo.commit_experiment("e1", main, edit(SEED, 5, "X5 = 56"), "X5 to 56")
    assert changed != first and repo.branch_head("e1") == changed, "new content overwrites the branch"


@pytest.mark.parametrize("bad", ["", "-x", "a..b", "a/b", "x.lock", "a b", "x" * 64])
def test_bad_experiment_ids_are_refused(repo: ResearchRepo, bad: str) -> None:
    with pytest.raises(RepoError, match="cannot name a branch"):
        repo.commit_experiment(bad, repo.main_head(), SEED, "x")


def test_unknown_commits_and_bad_trailers_are_clear_errors(repo: ResearchRepo) -> None:
    with pytest.raises(RepoError, match="no commit 'deadbeef'"):
        repo.train_py_at("deadbeef")
    with pytest.raises(RepoError, match="no commit"):
        repo.resolve("--all")
    with pytest.raises(RepoError, match="bad trailer key"):
        repo.commit_experiment("e1", repo.main_head(), SEED, "x", {"Not a key": "v"})


def test_diff_against_parent_and_against_another_commit(repo: ResearchRepo) -> None:
    main = repo.main_head()
    a = repo.commit_experiment("a", main, edit(SEED, 2, "X2 = 22"), "a")
    b = repo.commit_experiment("b", a, edit(edit(SEED, 2, "X2 = 22"), 9, "X9 = 99"), "b")
    d = repo.diff(b)
    assert "--- a/train.py" in d and "+++ b/train.py" in d
    assert "-X9 = 9\n" in d and "+X9 = 99\n" in d and "X2 = 22" not in d.replace(" X2 = 22", "")
    d_main = repo.diff(b, against=main)
    assert "+X2 = 22\n" in d_main and "+X9 = 99\n" in d_main
    assert repo.diff(a, against=a) == ""
    assert "+X1 = 1\n" in repo.diff(main), "the seed diffs against the empty tree"


def test_promote_fast_forward_records_trailers(repo: ResearchRepo) -> None:
    main = repo.main_head()
    cand = repo.commit_experiment("e7", main, edit(SEED, 7, "X7 = 77"), "X7 to 77")
    out = repo.promote(cand, "promote e7: X7 to 77", {"Farm-Experiment": "e7", "Farm-Val-Bpb": "2.712345",
                                                      "Farm-Verdict": "beat main by 0.04 > margin 0.02"})  # fmt: skip
    assert out.kind == "fast-forward" and out.main_head == main
    assert repo.main_head() == out.new_main != cand
    assert git(repo, "rev-parse", f"{out.new_main}^").strip() == main, "linear: the parent is the old main"
    assert git(repo, "rev-parse", f"{out.new_main}^{{tree}}") == git(repo, "rev-parse", f"{cand}^{{tree}}")
    log = repo.log_main()
    assert [c.sha for c in log] == [main, out.new_main]
    sha, message, trailers = log[-1]
    assert message == "promote e7: X7 to 77"
    assert trailers == {"Farm-Commit": cand, "Farm-Experiment": "e7", "Farm-Val-Bpb": "2.712345",
                        "Farm-Verdict": "beat main by 0.04 > margin 0.02"}  # fmt: skip
    again = repo.promote(cand, "again", {})
    assert again.kind == "noop" and again.new_main == repo.main_head() == out.new_main


def test_promote_after_main_moved_merges_cleanly_without_moving_main(repo: ResearchRepo) -> None:
    seed = repo.main_head()
    a = repo.commit_experiment("a", seed, edit(SEED, 2, "X2 = 22"), "X2")
    b = repo.commit_experiment("b", seed, edit(SEED, 18, "X18 = 188"), "X18")  # proposed from the same main
    main_after_a = repo.promote(a, "promote a", {"Farm-Val-Bpb": "2.8"}).new_main
    out = repo.promote(b, "promote b", {"Farm-Val-Bpb": "2.7"})
    assert out.kind == "merge" and out.new_main is None
    assert out.main_head == main_after_a == repo.main_head(), "a merge is measured before main moves"
    assert out.merge_base == seed
    assert out.merged_train_py == edit(edit(SEED, 2, "X2 = 22"), 18, "X18 = 188")
    # The natural flow: commit the merge on main, measure it, promote it: now a fast-forward.
    m = repo.commit_experiment("b-merge", out.main_head, out.merged_train_py, "merge b into main", {"Farm-Merges": "b"})
    done = repo.promote(m, "promote merge of b", {"Farm-Val-Bpb": "2.65"})
    assert done.kind == "fast-forward" and repo.train_py_at("main") == out.merged_train_py
    assert [c.trailers.get("Farm-Val-Bpb") for c in repo.log_main()] == [None, "2.8", "2.65"]


def test_promote_conflict_is_reported_and_main_untouched(repo: ResearchRepo) -> None:
    seed = repo.main_head()
    a = repo.commit_experiment("a", seed, edit(SEED, 10, "X10 = 1000"), "X10 big")
    b = repo.commit_experiment("b", seed, edit(SEED, 10, "X10 = 0"), "X10 zero")
    main = repo.promote(a, "promote a", {}).new_main
    refs_before = git(repo, "for-each-ref")
    out = repo.promote(b, "promote b", {})
    assert out.kind == "conflict" and out.new_main is None and out.merged_train_py is None
    assert repo.main_head() == main and git(repo, "for-each-ref") == refs_before
    assert "1 conflicting hunk(s) in train.py" in out.conflict
    assert "near line 10" in out.conflict and "X10 = 1000" in out.conflict and "X10 = 0" in out.conflict


def test_promote_goes_by_what_lands_on_main_not_by_parentage(repo: ResearchRepo) -> None:
    """main moved, but merging changes nothing measured: a noop, or a fast-forward of the measured text."""
    seed = repo.main_head()
    a = repo.commit_experiment("a", seed, edit(SEED, 2, "X2 = 22"), "a")
    same = repo.commit_experiment("same", seed, edit(SEED, 2, "X2 = 22"), "the same change as a")
    superset = repo.commit_experiment("sup", seed, edit(edit(SEED, 2, "X2 = 22"), 5, "X5 = 55"), "a's change and more")
    main = repo.promote(a, "promote a", {}).new_main
    out = repo.promote(same, "promote same", {})
    assert out.kind == "noop" and out.new_main == main == repo.main_head(), "main already has the change"
    out = repo.promote(superset, "promote sup", {"Farm-Val-Bpb": "2.6"})
    assert out.kind == "fast-forward", "the merge is byte-identical to the measured train.py: nothing to re-measure"
    assert repo.train_py_at("main") == repo.train_py_at(superset)
    assert git(repo, "rev-parse", f"{out.new_main}^").strip() == main


def test_line_count_ignores_blanks_and_comments(repo: ResearchRepo) -> None:
    text = "import os\n\n# a comment\n    # indented\nx = 1  # a trailing comment counts\n\n\ndef f():\n    pass\n"
    assert count_code_lines(text) == 4
    sha = repo.commit_experiment("lc", repo.main_head(), text, "lines")
    assert repo.line_count(sha) == 4 and repo.line_count("main") == 20


def test_hostile_git_environment_cannot_redirect_or_restyle_writes(
    repo: ResearchRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As under a git hook: GIT_DIR/GIT_INDEX_FILE point elsewhere, a global config signs and renames."""
    other = tmp_path / "other.git"
    subprocess.run(["git", "init", "--quiet", "--bare", str(other)], check=True)
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text("[user]\n\tname = Mallory\n[commit]\n\tgpgSign = true\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_DIR", str(other))
    monkeypatch.setenv("GIT_INDEX_FILE", str(tmp_path / "index"))
    monkeypatch.setenv("GIT_AUTHOR_NAME", "Mallory")
    monkeypatch.setenv("GIT_COMMITTER_DATE", "2001-01-01T00:00:00")
    sha = repo.commit_experiment("h", repo.main_head(), edit(SEED, 1, "X1 = 11"), "under a hook")
    out = repo.promote(sha, "promote under a hook", {})
    assert out.kind == "fast-forward"
    monkeypatch.delenv("GIT_DIR")
    assert git(repo, "log", "-1", "--format=%an|%cd", "--date=format:%Y", "main").strip() != "Mallory|2001"
    assert git(repo, "log", "-1", "--format=%an", "main").strip() == FARM_NAME
    assert subprocess.run(["git", "--git-dir", str(other), "rev-parse", "--verify", "-q", "HEAD"],
                          capture_output=True).returncode != 0, "nothing was written to the hook's repo"  # fmt: skip
    assert not (tmp_path / "index").exists()


def test_open_clears_stale_ref_locks_left_by_a_crash(repo: ResearchRepo) -> None:
    lock = repo.path / "refs" / "heads" / "exp" / "e1.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text("")
    old = time.time() - 3600
    os.utime(lock, (old, old))
    fresh = repo.path / "refs" / "heads" / "exp" / "e2.lock"
    fresh.write_text("")  # a live writer's lock: left alone
    reopened = ResearchRepo.open(repo.path)
    assert not lock.exists() and fresh.exists()
    assert reopened.commit_experiment("e1", "main", SEED + "Y = 1\n", "after the crash")
    assert not list(repo.path.rglob("index.lock"))


def test_a_merge_may_prefer_the_candidates_lines_where_both_changed_them(repo: ResearchRepo) -> None:
    """Policy stack: a stage (certified against main as a whole) takes a winner's value of a constant that main
    changed too; a plain merge calls it a conflict."""
    base, ours, theirs = "A = 1\nB = 2\n", "A = 5\nB = 2\n", "A = 7\nB = 3\n"
    text, conflict = repo.merge_train_py(base, ours, theirs)
    assert conflict and "<<<<<<<" in text
    assert repo.merge_train_py(base, ours, theirs, prefer_theirs=True) == ("A = 7\nB = 3\n", None)


def test_a_merge_passed_in_is_the_one_promotions_use(repo: ResearchRepo) -> None:
    """Strategies are passed in, never patched (bench/search.py's what-ifs): the repo merges with what it was given,
    and git's merge-file is only the default."""
    calls = []

    def merge(base: str, ours: str, theirs: str, prefer_theirs: bool = False) -> tuple[str, str | None]:
        calls.append(prefer_theirs)
        return git_merge(base, ours, theirs, prefer_theirs)

    seed = repo.main_head()
    a = repo.commit_experiment("a", seed, edit(SEED, 2, "X2 = 22"), "X2")
    b = repo.commit_experiment("b", seed, edit(SEED, 18, "X18 = 188"), "X18")
    repo.promote(a, "promote a", {})
    mine = ResearchRepo.open(repo.path, merge)
    assert mine.promote(b, "promote b", {}).kind == "merge" and calls == [False]
    assert repo.merge_train_py("A = 1\n", "A = 2\n", "A = 1\n") == ("A = 2\n", None) and calls == [False]
