"""The Claude research agent, over real HTTP: the real `anthropic` client against a local Messages API server.

No network beyond loopback: tests/messages_server.py answers from a script
of replies and faults and records every request. Retry waits are shrunk to
milliseconds through the agent's own options, so the file runs in seconds
(but for the farm test at the end, which runs a real farm on the cpu-smoke
profile with Claude agents against the server).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from agent.claude import ClaudeProposer
from agent.cost import DEFAULT_MODEL, DEFAULT_PRICES, Price, Tally, price_for
from agent.llm import ApiKeyMissing, RetryPolicy, read_api_key
from agent.preflight import check_train_py
from agent.protocol import Context, ExperimentSummary, ProposalError
from agent.transcript import REDACTED, redact, write_transcript
from cluster.execution.spec import ExperimentSpec, GpuAssignment
from cluster.records.ledger import Ledger, LedgerRow
from cluster.records.state import FarmState, diff_signature
from tests.messages_server import DROP, MessagesServer, fault, reply, slow, text, tool_use, usage
from trainer.profiles import get_profile
from trainer.seed import seed_source

KEY = "sk-ant-api03-TESTKEY-0123456789abcdefghij"
SEED = seed_source(get_profile("cpu-smoke"))
FAST = {"retry_base_seconds": 0.01, "retry_max_seconds": 0.05, "timeout_seconds": 5.0}
SONNET = DEFAULT_PRICES["claude-sonnet-4"]


def context(**extra) -> Context:
    fields = dict(
        program="# the research program\nLower val_bpb.", profile="cpu-smoke", parent_commit="a1b2c3d4e5f6",
        parent_train_py=SEED, main_val_bpb=2.81, noise_sd=0.03,
        leaderboard=[ExperimentSummary(experiment_id="e0003", agent="claude-1", description="DEPTH 4 -> 3",
                                       status="ok", val_bpb=2.75, diff="-DEPTH = 4\n+DEPTH = 3")],
        recent=[ExperimentSummary(experiment_id="e0004", agent="claude-0", description="huge width", status="oom",
                                  reason="out of memory", log_tail="torch.OutOfMemoryError: ...")],
        notes=["- claude-1: lower DEPTH helps at 3 s budgets"],
    )
    fields.update(extra)
    return Context(**fields)


def proposer(server: MessagesServer, name: str = "claude-0", **options) -> ClaudeProposer:
    return ClaudeProposer(name, base_url=server.url, env={"ANTHROPIC_API_KEY": KEY}, **{**FAST, **options})


def edit_and_submit(old: str = "DEPTH = 4", new: str = "DEPTH = 3", description: str = "DEPTH 4 -> 3") -> list:
    return [tool_use("edit_train_py", {"old_text": old, "new_text": new}),
            tool_use("submit", {"description": description})]


def tool_results(body: dict) -> list[dict]:
    return [b for b in body["messages"][-1]["content"] if b.get("type") == "tool_result"]


# ---- the conversation ---------------------------------------------------------------


def test_view_edit_notes_submit_yields_the_train_py_description_and_notes() -> None:
    with MessagesServer() as server:
        server.add(
            reply(text("Let me look."), tool_use("view_file", {"path": "train.py", "start_line": 30, "end_line": 32})),
            reply(tool_use("view_file", {"path": "prepare.py", "end_line": 3}), tool_use("read_notes", {})),
            reply(tool_use("edit_train_py", {"old_text": "MLP_RATIO = 4", "new_text": "MLP_RATIO = 3"})),
            reply(tool_use("append_note", {"note": "MLP_RATIO 3 trades width for steps"}),
                  tool_use("submit", {"description": "MLP_RATIO 4 -> 3: more steps in the budget"})),
        )
        p = proposer(server, temperature=0.7, max_tokens=1234, direction="the schedule")
        proposal = p.propose(context())
    assert proposal.train_py == SEED.replace("MLP_RATIO = 4", "MLP_RATIO = 3")
    assert proposal.description == "MLP_RATIO 4 -> 3: more steps in the budget"
    assert proposal.notes == ["MLP_RATIO 3 trades width for steps"]
    assert proposal.parent_commit == "a1b2c3d4e5f6" and proposal.agent == "claude-0"

    first, second, third, _ = server.bodies()
    assert first["model"] == DEFAULT_MODEL == "claude-sonnet-4-6" and first["max_tokens"] == 1234
    assert first["temperature"] == 0.7
    assert {t["name"] for t in first["tools"]} == {"view_file", "edit_train_py", "list_experiments",
                                                  "show_experiment", "read_notes", "append_note", "submit"}
    # the stable prefix (program.md + instructions) carries the cache breakpoint; the persona follows it
    assert first["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert first["system"][0]["text"].startswith("# the research program")
    assert "cache_control" not in first["system"][1] and "the schedule" in first["system"][1]["text"]
    user = first["messages"][0]["content"][0]["text"]
    assert SEED in user and "e0003" in user and "out of memory" in user and "lower DEPTH helps" in user
    assert first["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}  # moving breakpoint
    viewed = tool_results(second)[0]
    call = next(b for b in second["messages"][1]["content"] if b["type"] == "tool_use")
    assert viewed["tool_use_id"] == call["id"] and not viewed.get("is_error")
    assert viewed["content"].startswith("train.py (lines 30-32 of") and "30| " in viewed["content"]
    harness, notes = tool_results(third)
    assert "fixed harness" in harness["content"] and "lower DEPTH helps" in notes["content"]
    assert all(r["headers"].get("authorization") == f"Bearer {KEY}" or r["headers"].get("x-api-key") == KEY
               for r in server.requests)
    transcript = proposal.transcript
    assert transcript["outcome"] == "submitted" and transcript["turns"] == 4
    assert KEY not in json.dumps(transcript)


@pytest.mark.parametrize("first", [
    pytest.param(fault(429, "rate_limit_error", "slow down", {"retry-after": "0.3"}), id="429-retry-after"),
    pytest.param(fault(529, "overloaded_error", "Overloaded"), id="529-overloaded"),
    pytest.param(fault(500, "api_error", "Internal server error"), id="500"),
    pytest.param(DROP, id="dropped-connection"),
    pytest.param(slow(1.0, reply(text("too late"))), id="slow-past-timeout"),
])
def test_transient_faults_are_retried_then_succeed(first) -> None:
    with MessagesServer() as server:
        server.add(first, reply(*edit_and_submit()))
        proposal = proposer(server, timeout_seconds=0.5).propose(context())
    assert proposal.description == "DEPTH 4 -> 3"
    assert len(server.requests) == 2
    assert len(proposal.transcript["events"]) == 1 and "retrying" in proposal.transcript["events"][0]
    if getattr(first, "status", None) == 429:  # the server's retry-after is honoured, not our 10 ms backoff
        assert server.requests[1]["at"] - server.requests[0]["at"] >= 0.3


def test_faults_that_do_not_clear_fail_the_proposal_without_stopping_the_agent() -> None:
    with MessagesServer() as server:
        server.add(*[fault(503, "api_error", "unavailable")] * 3, reply(*edit_and_submit()))
        p = proposer(server, max_retries=2)
        with pytest.raises(ProposalError, match="failed 3 time.*HTTP 503") as info:
            p.propose(context())
        assert info.value.failure.kind == "server" and not info.value.failure.fatal and len(server.requests) == 3
        assert p.propose(context()).description == "DEPTH 4 -> 3"  # the next proposal works


@pytest.mark.parametrize("status,kind", [(401, "authentication_error"), (403, "permission_error")])
def test_a_rejected_key_is_fatal_with_a_clear_message_and_no_retries(status: int, kind: str) -> None:
    with MessagesServer() as server:
        server.add(fault(status, kind, f"invalid x-api-key {KEY}"))
        with pytest.raises(ProposalError) as info:
            proposer(server).propose(context())
    assert info.value.failure.kind == "auth" and info.value.failure.fatal is True and len(server.requests) == 1
    assert str(info.value).startswith(f"the API key was rejected (HTTP {status}")
    assert KEY not in str(info.value) and KEY not in json.dumps(info.value.transcript)


def test_malformed_tool_calls_get_error_results_and_the_loop_continues() -> None:
    with MessagesServer() as server:
        server.add(
            reply(tool_use("edit_train_py", {"old": "DEPTH"}), tool_use("view_file", "train.py"),
                  tool_use("rm_rf", {}), tool_use("view_file", {"path": "/etc/passwd"})),
            reply(*edit_and_submit()),
        )
        proposal = proposer(server).propose(context())
    results = tool_results(server.bodies()[1])
    assert [r.get("is_error") for r in results] == [True] * 4
    assert "invalid input for edit_train_py" in results[0]["content"] and "old" in results[0]["content"]
    assert "invalid input for view_file" in results[1]["content"]
    assert "unknown tool 'rm_rf'" in results[2]["content"]
    assert "train.py" in results[3]["content"] and "root:" not in results[3]["content"]
    assert proposal.train_py == SEED.replace("DEPTH = 4", "DEPTH = 3")


def test_bad_edits_and_a_failing_preflight_are_reported_and_can_be_fixed() -> None:
    no_metric = SEED.replace("evaluate_bpb", "evaluate_nothing")
    with MessagesServer() as server:
        server.add(
            reply(tool_use("edit_train_py", {"old_text": "DEPTH = 5", "new_text": "DEPTH = 3"})),  # absent
            reply(tool_use("edit_train_py", {"old_text": "import ", "new_text": "import  "})),  # ambiguous
            reply(tool_use("submit", {"description": "nothing yet"})),  # unchanged
            reply(tool_use("edit_train_py", {"content": no_metric}), tool_use("submit", {"description": "x"})),
            reply(tool_use("edit_train_py", {"content": SEED.replace("DEPTH = 4", "DEPTH = 3")}),
                  tool_use("submit", {"description": "DEPTH 4 -> 3"})),
        )
        proposal = proposer(server).propose(context())
    bodies = server.bodies()
    missing, ambiguous, unchanged = (tool_results(bodies[i])[0] for i in (1, 2, 3))
    assert missing["is_error"] and "does not occur" in missing["content"] and "DEPTH = 4" in missing["content"]
    assert ambiguous["is_error"] and "occurs" in ambiguous["content"] and "times" in ambiguous["content"]
    assert unchanged["is_error"] and "unchanged" in unchanged["content"]
    rewrite, refused = tool_results(bodies[4])
    assert not rewrite.get("is_error") and refused["is_error"] and "never calls evaluate_bpb" in refused["content"]
    assert proposal.description == "DEPTH 4 -> 3" and "DEPTH = 3" in proposal.train_py


def test_ending_without_submit_fails_and_still_reports_what_it_spent() -> None:
    with MessagesServer() as server:
        server.add(reply(tool_use("read_notes", {}), usage_=usage(500, 50)),
                   reply(text("I would change the depth."), usage_=usage(600, 40, cache_read=400)))
        with pytest.raises(ProposalError, match="without a submit") as info:
            proposer(server).propose(context())
    exc, spend = info.value, info.value.failure.spend
    assert exc.failure.kind == "invalid_response" and exc.failure.fatal is False
    assert (spend.tokens_in, spend.tokens_out, spend.cache_read_tokens) == (1100, 90, 400)
    assert spend.cost_usd == pytest.approx((1100 * 3 + 90 * 15 + 400 * 0.3) / 1e6)
    assert exc.transcript["outcome"].startswith("failed: invalid_response: the conversation ended")
    assert len(exc.transcript["messages"]) == 4


def test_a_reply_cut_off_at_max_tokens_fails_clearly() -> None:
    with MessagesServer() as server:
        server.add(reply(text("Here is my long plan"), stop_reason="max_tokens"))
        with pytest.raises(ProposalError, match=r"cut off at max_tokens \(64\)"):
            proposer(server, max_tokens=64).propose(context())


def test_the_turn_limit_ends_a_proposal() -> None:
    with MessagesServer() as server:
        server.add(*[reply(tool_use("read_notes", {}))] * 3)
        with pytest.raises(ProposalError, match=r"turn limit \(2 turns\)"):
            proposer(server, max_turns=2).propose(context())
        assert len(server.requests) == 2


def test_tokens_and_cost_follow_the_servers_usage() -> None:
    with MessagesServer() as server:
        server.add(reply(tool_use("read_notes", {}), usage_=usage(2000, 100, cache_write=5000)),
                   reply(*edit_and_submit(), usage_=usage(300, 250, cache_read=5000, cache_write=700)))
        proposal = proposer(server).propose(context())
        custom = Price(input=10, output=20, cache_read=1, cache_write=12)
        server.add(reply(*edit_and_submit(), usage_=usage(1_000_000, 1_000_000, 1_000_000, 1_000_000)))
        priced = proposer(server, model="my-model-v1", prices={"my-model": custom.model_dump()}).propose(context())
    assert (proposal.tokens_in, proposal.tokens_out) == (2300, 350)
    assert (proposal.cache_read_tokens, proposal.cache_write_tokens) == (5000, 5700)
    assert proposal.cost_usd == pytest.approx((2300 * 3 + 350 * 15 + 5000 * 0.3 + 5700 * 3.75) / 1e6)
    assert proposal.transcript["usage"]["cost_usd"] == pytest.approx(proposal.cost_usd)
    assert priced.cost_usd == pytest.approx(10 + 20 + 1 + 12)
    assert price_for("claude-opus-4-5-20251101").input == 5 and price_for("claude-opus-4-1").input == 15
    with pytest.raises(ValueError, match="no price for model 'claude-opus-4-6'"):  # unknown: never guessed
        price_for("claude-opus-4-6")
    with pytest.raises(ValueError, match="no price for model 'gpt-x'"):
        ClaudeProposer("claude-0", model="gpt-x")


# ---- the key ------------------------------------------------------------------------


def test_the_key_comes_from_env_or_a_secret_file_and_is_never_shown(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text(KEY + "\n")
    assert read_api_key({"ANTHROPIC_API_KEY": KEY}) == KEY
    assert read_api_key({"ANTHROPIC_API_KEY_FILE": str(secret)}) == KEY
    with pytest.raises(ApiKeyMissing, match="no API key: set ANTHROPIC_API_KEY") as info:
        read_api_key({})
    assert info.value.failure.kind == "auth" and info.value.failure.fatal is True
    with pytest.raises(ApiKeyMissing, match="cannot read the API key file"):
        read_api_key({"ANTHROPIC_API_KEY_FILE": str(tmp_path / "absent")})
    with MessagesServer() as server:  # a model that echoes the key, a note and description that contain it
        server.add(reply(text(f"my key is {KEY} and sk-ant-other-9999999"),
                         tool_use("append_note", {"note": f"key {KEY}"}),
                         *edit_and_submit(description=f"DEPTH 3 {KEY}")))
        p = ClaudeProposer("claude-0", base_url=server.url, env={"ANTHROPIC_API_KEY_FILE": str(secret)}, **FAST)
        proposal = p.propose(context())
    dumped = proposal.model_dump_json()
    assert KEY not in dumped and "sk-ant-other" not in dumped and REDACTED in dumped
    assert proposal.notes == [f"key {REDACTED}"]
    path = write_transcript(tmp_path / "transcripts", "claude-0", {"x": f"again {KEY}"}, [KEY])
    assert path.name == "claude-0-1.json" and KEY not in path.read_text()
    assert redact({"a": ["sk-ant-api03-abcdef"]}) == {"a": [REDACTED]}


def test_a_sandbox_environment_never_holds_the_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from cluster.sandbox.base import sandbox_env

    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY_FILE", "/run/secrets/anthropic")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:1")
    spec = ExperimentSpec(experiment_id="e0001", train_py=SEED, profile="cpu-smoke", run_dir=tmp_path,
                          cache_dir=tmp_path)
    env = sandbox_env(spec, GpuAssignment(), cache="/cache", compile_cache=None, home="/tmp")
    assert not [k for k in env if k.startswith("ANTHROPIC")]
    assert not [v for v in env.values() if KEY in v or "secrets" in v]


# ---- pieces -------------------------------------------------------------------------


def test_preflight_finds_what_the_harness_would_fail_or_call_cheating() -> None:
    assert check_train_py(SEED, SEED) == []
    bad = SEED.replace("import torch\n", "import torch\nimport prepare\nimport einops\nprepare.TIME_BUDGET = 1e9\n"
                       "TIME_BUDGET = 1e9\ndef evaluate_bpb(model, tokenizer, batch_size):\n    return 0.5\n"
                       "try:\n    import flash_attn\nexcept ImportError:\n    pass\n", 1)
    problems = "\n".join(check_train_py(bad, SEED))
    for expected in ("imports einops", "assigns prepare.TIME_BUDGET", "rebinds TIME_BUDGET",
                     "defines its own evaluate_bpb"):
        assert expected in problems
    assert "flash_attn" not in problems  # a guarded optional import is fine
    assert "does not compile" in check_train_py("def f(:\n")[0]


def test_the_same_change_has_the_same_signature_whatever_the_whitespace_or_parent() -> None:
    other_parent = SEED.replace("MLP_RATIO = 4", "MLP_RATIO = 3")
    change = diff_signature(SEED, SEED.replace("DEPTH = 4", "DEPTH = 2"))
    assert change == diff_signature(SEED, SEED.replace("DEPTH = 4", "DEPTH  =   2"))
    assert change == diff_signature(other_parent, other_parent.replace("DEPTH = 4", "DEPTH = 2"))
    assert change != diff_signature(SEED, SEED.replace("DEPTH = 4", "DEPTH = 3"))
    assert diff_signature(SEED, SEED.replace("DEPTH = 4", "DEPTH =  4") + "\n\n") is None


def test_rejected_and_failed_proposals_spend_survives_a_rebuild() -> None:
    rows = [
        LedgerRow(experiment_id="e0001", event="queued", ts=1, kind="baseline", agent="farm", train_sha="a"),
        LedgerRow(experiment_id="e0002", event="queued", ts=2, kind="candidate", agent="claude-0", train_sha="b",
                  tokens_in=100, tokens_out=10, cache_read_tokens=5, cost_usd=0.25, diff_sha="d1"),
        LedgerRow(experiment_id="e0003", event="rejected", ts=3, agent="claude-0", description="same again",
                  reason="the same change as e0002", tokens_in=90, tokens_out=9, cost_usd=0.5),
        LedgerRow(experiment_id="e0004", event="proposal_failed", ts=4, agent="claude-1", reason="no submit",
                  tokens_in=50, tokens_out=5, cost_usd=1.0),
    ]
    state = FarmState.rebuild(rows, "main", SEED)
    assert state.cost_usd == pytest.approx(1.75) and state.rejected == 1 and state.next_id == 5
    assert state.spend["claude-0"].proposals == 2 and state.spend["claude-0"].tokens_in == 190
    assert state.spend["claude-1"].failed == 1 and state.spend["claude-1"].cost_usd == 1.0
    assert "farm" not in state.spend and state.work["e0002"].diff_sha == "d1"
    assert state.rejections == [("claude-0", "same again: the same change as e0002")]


def test_each_agent_gets_a_direction_and_temperament_by_default_or_from_config() -> None:
    from agent.prompt import DIRECTIONS, TEMPERAMENTS

    first, fourth, seventh = (ClaudeProposer(f"claude-{i}") for i in (0, 3, 6))
    assert (first.direction, fourth.direction, seventh.direction) == (DIRECTIONS[0], DIRECTIONS[3], DIRECTIONS[0])
    assert (first.temperament, seventh.temperament) == (TEMPERAMENTS[0], TEMPERAMENTS[1])
    assert ClaudeProposer("claude-0", direction="tokenizer-free tricks").direction == "tokenizer-free tricks"


def test_retry_delays_back_off_with_jitter_and_honour_retry_after() -> None:
    import random

    policy, rng = RetryPolicy(base_seconds=1.0, max_seconds=8.0), random.Random(0)
    delays = [policy.delay(i, None, rng) for i in range(6)]
    assert all(0.5 * min(8, 2**i) <= d <= min(8, 2**i) for i, d in enumerate(delays))
    assert 30 <= policy.delay(0, 30.0, rng) <= 30.1
    assert policy.delay(0, 10_000, rng) <= policy.max_retry_after_seconds + 0.1
    tally = Tally()
    tally.add({"input_tokens": 1, "output_tokens": 2})  # cache fields absent: zero
    assert (tally.tokens_in, tally.cache_read_tokens) == (1, 0) and tally.usd(SONNET) == pytest.approx(33e-6)


def test_the_driver_books_every_proposals_spend_writes_notes_and_transcripts_and_rejects_repeats(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.protocol import Proposal, ProposalFailure, Spend
    from cluster.config import FarmConfig
    from cluster.execution.agents import ProposalOutcome
    from cluster.execution.executor import InProcessExecutor, ProposalDone
    from cluster.loop.driver import Farm
    from cluster.records.repo import ResearchRepo

    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    ResearchRepo.create(tmp_path / "repo", SEED, "# program")
    config = FarmConfig(profile="cpu-smoke", gpus=1, metrics_port=None, agents={"kind": "claude", "count": 2})
    farm = Farm(config, tmp_path, InProcessExecutor("process"))
    main = farm.state.main_commit
    spent = Spend(tokens_in=100, tokens_out=10, cache_read_tokens=1000, cost_usd=0.5)

    def proposal(train_py: str, description: str, **extra) -> Proposal:
        return Proposal(parent_commit=main, train_py=train_py, description=description, agent="claude-0",
                        **spent.model_dump(), **extra)

    outcomes = {
        "failed": ProposalOutcome(agent="claude-1", transcript={"messages": [f"leaked {KEY}"]},
                                  failure=ProposalFailure(kind="invalid_response", message="no submit\nmore",
                                                          spend=spent)),
        "ok": ProposalOutcome(agent="claude-0", proposal=proposal(
            SEED.replace("DEPTH = 4", "DEPTH = 3"), "DEPTH 4 -> 3", notes=["depth 3 trains faster"],
            transcript={"messages": ["hello"]})),
        "again": ProposalOutcome(agent="claude-0", proposal=proposal(
            SEED.replace("DEPTH = 4", "DEPTH =   3"), "DEPTH to 3 once more")),
    }
    for outcome in outcomes.values():
        farm.pool.asking.add(0)
        farm._on_proposal(ProposalDone(0, outcome))
    farm._write_status()
    farm.ledger.close()

    rows = {r.event: r for r in Ledger(tmp_path / "ledger").read()}
    assert rows["proposal_failed"].cost_usd == 0.5 and rows["proposal_failed"].reason == "invalid_response: no submit"
    assert rows["queued"].cost_usd == 0.5 and rows["queued"].cache_read_tokens == 1000 and rows["queued"].diff_sha
    assert rows["rejected"].cost_usd == 0.5 and rows["rejected"].reason.startswith("the same change as e0002")
    assert farm.state.cost_usd == pytest.approx(1.5)
    rebuilt = FarmState.rebuild(Ledger(tmp_path / "ledger").read(), main, SEED)
    assert rebuilt.cost_usd == pytest.approx(1.5) and rebuilt.rejected == 1 and rebuilt.spend["claude-1"].failed == 1
    assert (tmp_path / "notes.md").read_text() == "- claude-0: depth 3 trains faster\n"
    assert sorted(p.name for p in (tmp_path / "transcripts").iterdir()) == ["claude-0-1.json", "claude-1-1.json"]
    failed = json.loads((tmp_path / "transcripts" / "claude-1-1.json").read_text())
    assert failed["result"] == "failed: invalid_response: no submit" and KEY not in json.dumps(failed)
    status = json.loads((tmp_path / "status.json").read_text())["llm"]
    assert status["agents"]["claude-0"]["proposals"] == 2 and status["cost_usd"] == pytest.approx(1.5)
    context = farm._context(0)
    assert context.own_rejected == ["DEPTH to 3 once more: the same change as e0002 (DEPTH 4 -> 3)"]
    assert context.notes == ["- claude-0: depth 3 trains faster"]
    # the candidate queued above and not run yet is shown to every agent, so none proposes it again
    assert [(s.experiment_id, s.status) for s in context.in_flight] == [(rows["queued"].experiment_id, "queued")]
    from agent.prompt import user_message

    shown = user_message(context).split("Being tried now", 1)[1].split("Shared notes", 1)[0]
    assert rows["queued"].experiment_id in shown and rows["queued"].description in shown


# ---- a farm with Claude agents ----------------------------------------------------------


ENV_PROBE = "import os\nprint('SANDBOX-ENV', sorted(os.environ.items()), flush=True)\n"


def _p1(body: dict) -> object:
    """The first proposal (a responder: it sees the request), which prints the sandbox's environment."""
    assert "Shared notes:\n(none yet)" in body["messages"][0]["content"][0]["text"]
    edit = {"old_text": "MATRIX_LR = 0.04", "new_text": ENV_PROBE + "MATRIX_LR = 0.0004"}
    return reply(tool_use("edit_train_py", edit),
                 tool_use("append_note", {"note": "MATRIX_LR far below 0.04 is a probe, not an idea"}),
                 tool_use("submit", {"description": "MATRIX_LR 0.04 -> 0.0004"}), usage_=usage(1000, 200))


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="the isolated process sandbox needs root (CI is root)")
def test_a_claude_farm_stops_at_the_cost_cap_and_keeps_the_key_out_of_everything(tmp_path: Path) -> None:
    same_again = ENV_PROBE + "MATRIX_LR  =   0.0004"  # P1's change, other whitespace: rejected before running
    with MessagesServer() as server:
        server.add(
            fault(529, "overloaded_error", "Overloaded"), _p1,
            reply(tool_use("edit_train_py", {"old_text": "MATRIX_LR = 0.04", "new_text": same_again}),
                  tool_use("submit", {"description": "MATRIX_LR 0.04 -> 0.0004 again"}), usage_=usage(1000, 200)),
            reply(tool_use("edit_train_py", {"old_text": "EMBEDDING_LR = 0.6", "new_text": "EMBEDDING_LR = 0.006"}),
                  tool_use("submit", {"description": "EMBEDDING_LR 0.6 -> 0.006"}), usage_=usage(1000, 200)),
            model="claude-sonnet-4-6",
        )
        server.add(fault(401, "authentication_error", "invalid x-api-key"), model="claude-haiku-4-5")
        fast = {"max_retries": 2, "retry_base_seconds": 0.01, "timeout_seconds": 20}
        config = {"profile": "cpu-smoke", "sandbox": "process", "gpus": 2, "metrics_port": None,
                  "tournament": {"baseline_replicates": 2, "min_noise_df": 1}, "finish_queue_on_stop": True,
                  "cost_cap_usd": 0.015,  # each proposal costs 1000 x $3 + 200 x $15 per MTok = $0.006
                  "agents": {"count": 2, "kind": "claude", "options": [{"model": "claude-sonnet-4-6", **fast},
                                                                       {"model": "claude-haiku-4-5", **fast}]}}
        (tmp_path / "farm.yaml").write_text(yaml.safe_dump(config))
        run_dir = tmp_path / "run"
        env = {**os.environ, "ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": server.url}
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "cluster.cli", "run", "--config", "farm.yaml", "--run-dir",
                               str(run_dir)], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
        seconds = time.monotonic() - started
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, output[-4000:]
        sonnet = [b for b in server.bodies() if b["model"] == "claude-sonnet-4-6"]
        haiku = [b for b in server.bodies() if b["model"] == "claude-haiku-4-5"]

    # the rejected key stopped that agent only, with a clear message; the other went on
    assert len(haiku) == 1 and "the API key was rejected (HTTP 401" in output and "this agent stops" in output
    # the cap: three proposals ($0.018 >= $0.015), then no more; the experiments already queued still ran
    assert len(sonnet) == 4  # one 529 retried, then one request per proposal
    assert "cost cap reached" in output and "no new proposals" in output
    rows = Ledger(run_dir / "ledger").read()
    latest = Ledger(run_dir / "ledger").latest()
    rejected = [r for r in rows if r.event == "rejected"]
    assert len(rejected) == 1 and "the same change as" in rejected[0].reason
    assert rejected[0].cost_usd == pytest.approx(0.006)
    candidates = [r for r in latest.values() if r.kind == "candidate"]
    assert len(candidates) == 2 and all(r.status == "ok" for r in candidates), candidates
    assert sum(r.cost_usd or 0 for r in rows if r.event in ("queued", "rejected")) == pytest.approx(0.018)
    status = json.loads(subprocess.run([sys.executable, "-m", "cluster.cli", "status", str(run_dir), "--output",
                                        "json"], capture_output=True, text=True, check=True).stdout)
    assert status["llm"]["cost_usd"] == pytest.approx(0.018) and status["llm"]["agents"]["claude-0"]["proposals"] == 3
    assert status["llm"]["tokens_in"] == 3000 and status["llm"]["cost_cap_usd"] == 0.015
    written = json.loads((run_dir / "status.json").read_text())  # the driver's own, as it stopped
    assert written["llm"]["cost_usd"] == pytest.approx(0.018) and written["rejected_proposals"] == 1
    text_status = subprocess.run([sys.executable, "-m", "cluster.cli", "status", str(run_dir)], capture_output=True,
                                 text=True, check=True).stdout
    assert "llm spend              $0.0180 of cap $0.0150" in text_status and "  claude-0" in text_status
    # the shared note reached the next proposal's context; every proposal's transcript is in the run dir
    assert "MATRIX_LR far below" in (run_dir / "notes.md").read_text()
    assert "MATRIX_LR far below" in sonnet[-1]["messages"][0]["content"][0]["text"]
    transcripts = sorted(p.name for p in (run_dir / "transcripts").iterdir())
    assert transcripts == ["claude-0-1.json", "claude-0-2.json", "claude-0-3.json", "claude-1-1.json"]
    # the key: sent to the API, and nowhere else (transcripts, ledger, status, logs, the sandbox's env)
    probe = next(r for r in candidates if r.description == "MATRIX_LR 0.04 -> 0.0004")
    log = (run_dir / "experiments" / probe.experiment_id / "out" / "run.log").read_text()
    assert "SANDBOX-ENV" in log and "ANTHROPIC" not in log
    leaks = [str(p) for p in run_dir.rglob("*") if p.is_file() and ".git" not in p.parts and KEY.encode() in
             p.read_bytes()]
    assert not leaks and KEY not in output
    history = subprocess.run(["git", "-C", str(run_dir / "repo"), "log", "-p", "--all"], capture_output=True,
                             text=True, check=True).stdout
    assert KEY not in history
    print(f"claude farm test: {seconds:.1f} s")


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="the isolated process sandbox needs root (CI is root)")
def test_an_api_that_repeats_one_edit_cannot_run_up_spend_or_livelock_the_farm(tmp_path: Path) -> None:
    """An LLM stuck on one idea: every answer is the same small edit. The first runs, every later one is a
    duplicate. Once this made ~36,000 requests ($209 at list prices) while the GPU slot sat idle; now the
    agents are parked until a new result, the farm stops when nobody proposes anything new, and says so."""
    def same_edit(body: dict) -> object:
        return reply(tool_use("edit_train_py", {"old_text": "MATRIX_LR = 0.04", "new_text": "MATRIX_LR = 0.03"}),
                     tool_use("submit", {"description": "MATRIX_LR 0.04 -> 0.03"}), usage_=usage(1000, 200))

    with MessagesServer() as server:
        server.add(*[same_edit] * 500, model="claude-sonnet-4-6")
        fast = {"max_retries": 1, "retry_base_seconds": 0.01, "timeout_seconds": 20, "model": "claude-sonnet-4-6",
                "max_turns": 4}  # an edit that no longer applies is retried within a proposal: at most 4 calls
        config = {"profile": "cpu-smoke", "sandbox": "process", "gpus": 1, "metrics_port": None,
                  "max_experiments": 12, "tournament": {"baseline_replicates": 2, "min_noise_df": 1},
                  "agents": {"count": 2, "kind": "claude", "options": [fast]}}
        (tmp_path / "farm.yaml").write_text(yaml.safe_dump(config))
        env = {**os.environ, "ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": server.url}
        proc = subprocess.run([sys.executable, "-m", "cluster.cli", "run", "--config", "farm.yaml", "--run-dir",
                               "run"], capture_output=True, text=True, timeout=500, cwd=tmp_path, env=env)
        requests = len(server.bodies())
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-4000:]
    assert "no agent proposed anything new" in output and "farm: FAILED" in output
    rows = Ledger(tmp_path / "run" / "ledger").read()
    ran = len([r for r in rows if r.event == "finished"])
    proposals = len([r for r in rows if r.event in ("rejected", "proposal_failed") or
                     (r.event == "queued" and r.kind == "candidate")])
    assert ran < 12 and len([r for r in rows if r.event == "rejected"]) >= 10
    assert proposals <= 25 + 3 * ran, (proposals, ran)  # bounded by the experiments run, not by the clock
    assert requests <= 4 * proposals  # and each proposal by its turn limit
    status = json.loads(subprocess.run([sys.executable, "-m", "cluster.cli", "status", "run", "--output", "json"],
                                       cwd=tmp_path, capture_output=True, text=True, check=True).stdout)
    assert status["llm"]["cost_usd"] == pytest.approx(0.006 * requests) and status["llm"]["cost_usd"] < 1.0
    assert status["llm"]["cost_cap_usd"] == 10.0  # the default cap, shown
    assert "no agent proposed anything new" in status["failure"]


def test_the_live_check_skips_without_a_key_and_prints_diff_and_cost_with_one(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from agent import live_check

    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY_FILE", raising=False)
    assert live_check.main([]) == 0 and "skipped: no API key" in capsys.readouterr().out
    with MessagesServer() as server:
        server.add(reply(*edit_and_submit(), usage_=usage(1000, 100)))
        monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        assert live_check.main(["--profile", "cpu-smoke"]) == 0
    out = capsys.readouterr().out
    assert "-DEPTH = 4" in out and "+DEPTH = 3" in out and "description: DEPTH 4 -> 3" in out
    assert "cost: $0.0045" in out and KEY not in out


@pytest.mark.slow
def test_a_stop_at_the_cost_cap_still_books_the_proposal_being_written(tmp_path: Path) -> None:
    """A proposal already paid for arrives after the cap stopped the farm and after its experiments finished."""
    submit = {"description": "EMBEDDING_LR 0.6 -> 0.3"}
    with MessagesServer() as server:
        server.add(reply(tool_use("edit_train_py", {"old_text": "MATRIX_LR = 0.04", "new_text": "MATRIX_LR = 0.02"}),
                         tool_use("submit", {"description": "MATRIX_LR 0.04 -> 0.02"}), usage_=usage(1000, 200)),
                   model="claude-sonnet-4-6")
        server.add(slow(25, reply(tool_use("edit_train_py", {"old_text": "EMBEDDING_LR = 0.6",
                                                             "new_text": "EMBEDDING_LR = 0.3"}),
                                  tool_use("submit", submit), usage_=usage(1000, 200))),
                   model="claude-haiku-4-5")
        fast = {"max_retries": 0, "timeout_seconds": 60}
        config = {"profile": "cpu-smoke", "sandbox": "process", "gpus": 1, "metrics_port": None,
                  "cost_cap_usd": 0.005,  # the first proposal ($0.006) reaches it
                  "agents": {"count": 2, "kind": "claude", "options": [{"model": "claude-sonnet-4-6", **fast},
                                                                       {"model": "claude-haiku-4-5", **fast}]}}
        (tmp_path / "farm.yaml").write_text(yaml.safe_dump(config))
        run_dir = tmp_path / "run"
        env = {**os.environ, "ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": server.url}
        proc = subprocess.run([sys.executable, "-m", "cluster.cli", "run", "--config", "farm.yaml", "--run-dir",
                               str(run_dir)], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, output[-4000:]
    assert "cost cap reached" in output and "proposals in flight" in output
    rows = Ledger(run_dir / "ledger").read()
    spent = {r.agent: r.cost_usd for r in rows if r.event == "queued" and r.kind == "candidate"}
    assert set(spent) == {"claude-0", "claude-1"}, spent  # the late one is on the ledger, to be run on a resume
    status = json.loads((run_dir / "status.json").read_text())
    assert status["llm"]["cost_usd"] == pytest.approx(sum(spent.values()))


def test_doctor_finds_the_key_where_the_agents_do(monkeypatch, tmp_path: Path, capsys) -> None:
    """A key in a mounted file (the Helm chart's way) counts; a named file that cannot be read is a problem."""
    from cluster.cli import main

    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    (tmp_path / "key").write_text(KEY + "\n")
    monkeypatch.setenv("ANTHROPIC_API_KEY_FILE", str(tmp_path / "key"))
    main(["doctor"])
    out = capsys.readouterr().out
    assert "[note] anthropic    an API key is set" in out and KEY not in out
    monkeypatch.setenv("ANTHROPIC_API_KEY_FILE", str(tmp_path / "missing"))
    main(["doctor"])
    assert "[FAIL] anthropic    cannot read the API key file" in capsys.readouterr().out


def test_a_proposal_error_survives_pickling_whole() -> None:
    """Ray carries an agent actor's exception to the driver by pickling it: kind, fatality, spend and transcript
    must arrive (the default pickling rebuilt it from the message alone and raised TypeError)."""
    import pickle

    from agent.protocol import Spend

    error = ProposalError("quota", "HTTP 429: out of credit", fatal=True, spend=Spend(tokens_in=7, cost_usd=0.01),
                          transcript={"messages": [1]})  # fmt: skip
    again = pickle.loads(pickle.dumps(error))
    assert isinstance(again, ProposalError) and str(again) == "HTTP 429: out of credit"
    assert again.failure == error.failure and again.transcript == {"messages": [1]}
