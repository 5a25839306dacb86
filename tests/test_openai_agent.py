"""The OpenAI-compatible research agent, over real HTTP: the real `openai` client against a local server.

tests/chat_server.py stands in for OpenAI, vLLM, Ollama or llama.cpp's
server: it answers Chat Completions from a script and records every request.
The conversation loop is the Claude agent's (agent/loop.py); the last tests
drive one research conversation through both wires and compare.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.claude import ClaudeProposer
from agent.cost import OPENAI_PRICES, is_self_hosted, openai_price
from agent.openai_agent import OpenAIProposer
from agent.protocol import ProposalError
from agent.transcript import REDACTED
from tests import messages_server as ms
from tests.chat_server import DROP, ChatServer, call, fault, reply, slow, usage
from tests.test_claude import SEED, context

KEY = "sk-proj-TESTKEY-0123456789abcdefghijklmnop"
FAST = {"retry_base_seconds": 0.01, "retry_max_seconds": 0.05, "timeout_seconds": 5.0}
LOCAL = "local-coder-7b"  # a model with no known price, served on loopback: counted as 0 USD


def proposer(server: ChatServer, name: str = "openai-0", model: str = LOCAL, **options) -> OpenAIProposer:
    return OpenAIProposer(name, model=model, base_url=server.url, env={"OPENAI_API_KEY": KEY}, **{**FAST, **options})


def edit_and_submit(old: str = "DEPTH = 4", new: str = "DEPTH = 3", description: str = "DEPTH 4 -> 3") -> list:
    return [call("edit_train_py", {"old_text": old, "new_text": new}), call("submit", {"description": description})]


def tool_results(body: dict) -> list[dict]:
    """The role-tool messages after the last assistant message."""
    out = []
    for message in reversed(body["messages"]):
        if message["role"] != "tool":
            break
        out.insert(0, message)
    return out


# ---- the conversation ---------------------------------------------------------------


def test_view_edit_notes_submit_over_chat_completions() -> None:
    with ChatServer() as server:
        server.add(
            reply(call("view_file", {"path": "train.py", "start_line": 30, "end_line": 32}), content="Let me look."),
            reply(call("read_notes", {}), call("edit_train_py", {"old_text": "MLP_RATIO = 4",
                                                                 "new_text": "MLP_RATIO = 3"})),
            reply(call("append_note", {"note": "MLP_RATIO 3 trades width for steps"}),
                  call("submit", {"description": "MLP_RATIO 4 -> 3: more steps in the budget"})),
        )
        proposal = proposer(server, temperature=0.7, max_tokens=1234, direction="the schedule").propose(context())
    assert proposal.train_py == SEED.replace("MLP_RATIO = 4", "MLP_RATIO = 3")
    assert proposal.description == "MLP_RATIO 4 -> 3: more steps in the budget"
    assert proposal.notes == ["MLP_RATIO 3 trades width for steps"]
    assert proposal.agent == "openai-0" and proposal.model == LOCAL

    first, second, third = server.bodies()
    assert all(r["path"] == "/v1/chat/completions" for r in server.requests)
    assert first["model"] == LOCAL and first["max_tokens"] == 1234 and first["temperature"] == 0.7
    assert "stream" not in first or first["stream"] is False
    assert {t["function"]["name"] for t in first["tools"]} == {
        "view_file", "edit_train_py", "list_experiments", "show_experiment", "read_notes", "append_note", "submit"}
    assert all(t["type"] == "function" and t["function"]["parameters"]["type"] == "object" for t in first["tools"])
    system, user = first["messages"]
    assert system["role"] == "system" and system["content"].startswith("# the research program")
    assert "the schedule" in system["content"] and "submit" in system["content"]
    assert user["role"] == "user" and SEED in user["content"] and "out of memory" in user["content"]
    assistant = second["messages"][2]
    assert assistant["role"] == "assistant" and assistant["tool_calls"][0]["function"]["name"] == "view_file"
    (viewed,) = tool_results(second)
    assert viewed["tool_call_id"] == assistant["tool_calls"][0]["id"]
    assert viewed["content"].startswith("train.py (lines 30-32 of") and "30| " in viewed["content"]
    notes, edited = tool_results(third)
    assert "lower DEPTH helps" in notes["content"] and edited["content"].startswith("edited train.py")
    transcript = proposal.transcript
    assert transcript["outcome"] == "submitted" and transcript["turns"] == 3 and transcript["wire"] == "openai"
    assert transcript["model"] == LOCAL


@pytest.mark.parametrize("first", [
    pytest.param(fault(429, "rate_limit_exceeded", "slow down", {"retry-after": "0.3"}), id="429-retry-after"),
    pytest.param(fault(500, "server_error", "Internal server error"), id="500"),
    pytest.param(fault(503, "server_error", "model is loading"), id="503"),
    pytest.param(DROP, id="dropped-connection"),
    pytest.param(slow(1.0, reply(call("read_notes", {}))), id="slow-past-timeout"),
])
def test_transient_faults_are_retried_then_succeed(first) -> None:
    with ChatServer() as server:
        server.add(first, reply(*edit_and_submit()))
        proposal = proposer(server, timeout_seconds=0.5).propose(context())
    assert proposal.description == "DEPTH 4 -> 3"
    assert len(server.requests) == 2
    assert len(proposal.transcript["events"]) == 1 and "retrying" in proposal.transcript["events"][0]
    if getattr(first, "status", None) == 429:  # the server's retry-after is honoured
        assert server.requests[1]["at"] - server.requests[0]["at"] >= 0.3


def test_faults_that_do_not_clear_fail_the_proposal_without_stopping_the_agent() -> None:
    with ChatServer() as server:
        server.add(*[fault(502, "server_error", "bad gateway")] * 3, reply(*edit_and_submit()))
        p = proposer(server, max_retries=2)
        with pytest.raises(ProposalError, match="Chat Completions API call failed 3 time.*HTTP 502") as info:
            p.propose(context())
        assert info.value.failure.kind == "server" and not info.value.failure.fatal and len(server.requests) == 3
        assert p.propose(context()).description == "DEPTH 4 -> 3"


@pytest.mark.parametrize("status", [401, 403])
def test_a_rejected_key_is_fatal_for_that_agent_only(status: int) -> None:
    from cluster.execution.agents import make_proposer

    with ChatServer() as bad, ChatServer() as good:
        bad.add(fault(status, "invalid_api_key", f"Incorrect API key provided: {KEY}"))
        good.add(reply(*edit_and_submit()))
        env = {"OPENAI_API_KEY": KEY}
        rejected = make_proposer("openai", "openai-0", {"model": LOCAL, "base_url": bad.url, "env": env, **FAST})
        other = make_proposer("claude", "claude-1", {"kind": "openai", "model": LOCAL, "base_url": good.url,
                                                     "env": env, **FAST})
        with pytest.raises(ProposalError) as info:
            rejected.propose(context())
        assert other.propose(context()).description == "DEPTH 4 -> 3"  # the other agent goes on
    assert info.value.failure.kind == "auth" and info.value.failure.fatal is True and len(bad.requests) == 1
    assert str(info.value).startswith(f"the API key was rejected (HTTP {status}")
    assert KEY not in str(info.value) and KEY not in json.dumps(info.value.transcript)


def test_malformed_tool_arguments_get_error_results_and_the_loop_continues() -> None:
    with ChatServer() as server:
        server.add(
            reply(call("edit_train_py", '{"old_text": "DEPTH = 4", "new_text": '), call("view_file", '["train.py"]'),
                  call("rm_rf", {}), call("edit_train_py", {"old": "DEPTH"})),
            reply(*edit_and_submit()),
        )
        proposal = proposer(server).propose(context())
    results = tool_results(server.bodies()[1])
    assert len(results) == 4 and all(r["content"].startswith("ERROR: ") for r in results)
    assert "not valid JSON" in results[0]["content"] and "JSON object" in results[1]["content"]
    assert "unknown tool 'rm_rf'" in results[2]["content"]
    assert "invalid input for edit_train_py" in results[3]["content"]
    # the malformed call is sent back as it came, so the next request is a valid conversation
    assert server.bodies()[1]["messages"][2]["tool_calls"][0]["function"]["arguments"].endswith('"new_text": ')
    assert proposal.train_py == SEED.replace("DEPTH = 4", "DEPTH = 3")


def test_the_turn_limit_ending_without_submit_and_a_cut_off_reply_fail_the_proposal() -> None:
    with ChatServer() as server:
        server.add(*[reply(call("read_notes", {}))] * 3)
        with pytest.raises(ProposalError, match=r"turn limit \(2 turns\)") as info:
            proposer(server, max_turns=2).propose(context())
        assert len(server.requests) == 2 and info.value.failure.spend.tokens_in == 200
        assert info.value.failure.kind == "invalid_response"
        server.script.clear()
        server.add(reply(content="I would lower the depth."))
        with pytest.raises(ProposalError, match="without a submit"):
            proposer(server).propose(context())
        server.add(reply(content="a long plan", finish_reason="length"))
        with pytest.raises(ProposalError, match=r"cut off at max_tokens \(64\)"):
            proposer(server, max_tokens=64).propose(context())


def test_tokens_and_cost_follow_the_servers_usage_and_unknown_local_models_cost_zero() -> None:
    mini = OPENAI_PRICES["gpt-4.1-mini"]
    with ChatServer() as server:
        server.add(reply(call("read_notes", {}), usage_=usage(2000, 100, cached=500)),
                   reply(*edit_and_submit(), usage_=usage(3000, 250, cached=2000)))
        priced = proposer(server, model="gpt-4.1-mini").propose(context())
        server.add(reply(*edit_and_submit(), usage_=usage(1000, 50)))
        local = proposer(server).propose(context())
        server.add(reply(*edit_and_submit(), usage_=usage(1_000_000, 1_000_000)))
        custom = proposer(server, prices={"local-coder": {"input": 1, "output": 2}}).propose(context())
        server.add(reply(*edit_and_submit(), usage_={}))  # a server that reports no usage
        silent = proposer(server).propose(context())
    assert (priced.tokens_in, priced.tokens_out, priced.cache_read_tokens) == (2500, 350, 2500)
    assert priced.cache_write_tokens == 0 and priced.transcript["usage"]["cost_usd"] == pytest.approx(priced.cost_usd)
    assert priced.cost_usd == pytest.approx((2500 * mini.input + 350 * mini.output + 2500 * mini.cache_read) / 1e6)
    assert "price_note" not in priced.transcript
    assert (local.tokens_in, local.tokens_out, local.cost_usd) == (1000, 50, 0.0)
    assert "counted as 0 USD" in local.transcript["price_note"] and "127.0.0.1" in local.transcript["price_note"]
    assert custom.cost_usd == pytest.approx(1 + 2)
    assert (silent.tokens_in, silent.tokens_out, silent.cost_usd) == (0, 0, 0.0)
    # a hosted endpoint never counts an unknown model as free; an explicit zero price is a choice
    with pytest.raises(ValueError, match="no price for model 'mystery' at api.example.com"):
        OpenAIProposer("openai-0", model="mystery", base_url="https://api.example.com/v1", env={})
    assert openai_price("mystery", "https://api.example.com/v1", {"mystery": _zero()})[0].output == 0
    assert all(map(is_self_hosted, ["http://localhost:11434/v1", "http://10.1.2.3:8000/v1", "http://vllm:8000/v1",
                                    "http://ollama.ai-models.svc:11434/v1", "http://[::1]:8080/v1"]))
    assert not any(map(is_self_hosted, ["https://api.openai.com/v1", "https://openrouter.ai/api/v1"]))


def _zero():
    from agent.cost import Price

    return Price.model_validate({"input": 0, "output": 0})


# ---- the key ------------------------------------------------------------------------


def test_the_key_goes_only_into_the_authorization_header_and_never_into_a_transcript(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text(KEY + "\n")
    with ChatServer() as server:  # a model that echoes the key into its text, a note and the description
        server.add(reply(call("append_note", {"note": f"key {KEY}"}), *edit_and_submit(description=f"D3 {KEY}"),
                         content=f"my key is {KEY} and sk-proj-otherkey-abcdefghijklmnopqrstu"),
                   reply(*edit_and_submit()))
        p = OpenAIProposer("openai-0", model=LOCAL, base_url=server.url, api_key_file=str(secret), env={}, **FAST)
        proposal = p.propose(context())
        named = OpenAIProposer("openai-1", model=LOCAL, base_url=server.url, api_key_env="MY_VLLM_KEY",
                               env={"MY_VLLM_KEY": KEY}, **FAST).propose(context())
        raw = list(server.raw)
        headers = [r["headers"] for r in server.requests]
    assert [h["authorization"] for h in headers] == [f"Bearer {KEY}"] * 2
    for request in raw:  # the key is in the Authorization line and nowhere else of any request
        assert request.count(KEY.encode()) == 1 and f"Bearer {KEY}".encode() in request
    dumped = proposal.model_dump_json() + named.model_dump_json()
    assert KEY not in dumped and "sk-proj-otherkey" not in dumped and REDACTED in dumped
    assert proposal.notes == [f"key {REDACTED}"] and proposal.description == f"D3 {REDACTED}"


def test_a_key_is_needed_for_a_hosted_endpoint_but_not_for_a_self_hosted_one(tmp_path: Path) -> None:
    hosted = OpenAIProposer("openai-0", model="gpt-4.1-mini", base_url="https://api.openai.com/v1", env={}, **FAST)
    with pytest.raises(ProposalError, match="set OPENAI_API_KEY") as info:
        hosted.propose(context())
    assert info.value.failure.kind == "auth" and info.value.failure.fatal is True
    with pytest.raises(ProposalError, match="cannot read the API key file"):
        OpenAIProposer("openai-0", model=LOCAL, base_url="http://127.0.0.1:9/v1", api_key_file=str(tmp_path / "x"),
                       env={}).propose(context())
    with ChatServer() as server:  # Ollama and vLLM without --api-key: no key configured, none needed
        server.add(reply(*edit_and_submit()))
        proposal = OpenAIProposer("openai-0", model=LOCAL, base_url=server.url, env={}, **FAST).propose(context())
    assert proposal.description == "DEPTH 4 -> 3" and server.requests[0]["headers"]["authorization"] == "Bearer no-key"


# ---- one loop, two wires --------------------------------------------------------------


RESEARCH = [  # one research conversation: (tool, input) per call, calls per turn
    [("view_file", {"path": "train.py", "start_line": 1, "end_line": 5}), ("list_experiments", {"which": "recent"})],
    [("show_experiment", {"experiment_id": "e0003"}), ("read_notes", {})],
    [("submit", {"description": "too early"}), ("edit_train_py", {"old_text": "DEPTH = 4", "new_text": "DEPTH = 3"})],
    [("edit_train_py", {"old_text": "MLP_RATIO = 4", "new_text": "MLP_RATIO = 3"}),
     ("append_note", {"note": "DEPTH 3 and MLP_RATIO 3 together"}),
     ("submit", {"description": "DEPTH 4 -> 3, MLP_RATIO 4 -> 3"})],
]


def test_both_wires_drive_the_same_loop_to_the_same_proposal() -> None:
    """The same scripted conversation over Messages and over Chat Completions: the same proposal, the same tool
    results (errors included) in the same order, the same turns and tokens."""
    with ms.MessagesServer() as messages, ChatServer() as chat:
        messages.add(*[ms.reply(*[ms.tool_use(n, i) for n, i in turn], usage_=ms.usage(100, 20)) for turn in RESEARCH])
        chat.add(*[reply(*[call(n, i) for n, i in turn], usage_=usage(100, 20)) for turn in RESEARCH])
        claude = ClaudeProposer("agent-0", base_url=messages.url, env={"ANTHROPIC_API_KEY": "sk-ant-x" * 4}, **FAST)
        openai_ = OpenAIProposer("agent-0", model=LOCAL, base_url=chat.url, env={"OPENAI_API_KEY": KEY}, **FAST)
        a, b = claude.propose(context()), openai_.propose(context())
    assert (a.train_py, a.description, a.notes, a.parent_commit, a.agent) == \
           (b.train_py, b.description, b.notes, b.parent_commit, b.agent)
    assert a.transcript["turns"] == b.transcript["turns"] == 4 and a.description == "DEPTH 4 -> 3, MLP_RATIO 4 -> 3"
    assert (a.tokens_in, a.tokens_out) == (b.tokens_in, b.tokens_out) == (400, 80)
    assert (a.model, b.model) == ("claude-sonnet-4-6", LOCAL)
    anthropic_results = [[(r["content"], bool(r.get("is_error"))) for r in m["content"]]
                         for m in a.transcript["messages"][2::2]]
    openai_results, turn = [], []
    for m in b.transcript["messages"][1:]:
        if m["role"] == "assistant" and turn:
            openai_results.append(turn)
            turn = []
        elif m["role"] == "tool":
            error = m["content"].startswith("ERROR: ")
            turn.append((m["content"].removeprefix("ERROR: "), error))
    openai_results.append(turn)
    assert anthropic_results == openai_results and anthropic_results[2][0][1] is True  # "unchanged" refused


# ---- config --------------------------------------------------------------------------


def test_a_mixed_population_from_config() -> None:
    from agent.claude import ClaudeProposer as Claude
    from cluster.config import ConfigError, load_config
    from cluster.execution.agents import make_proposer

    c = load_config({"agents": {"kind": "claude", "count": 3, "options": [
        {"model": "claude-haiku-4-5", "direction": "optimizer"},
        {"kind": "openai", "base_url": "http://localhost:11434/v1", "model": "qwen2.5-coder:32b",
         "api_key_env": "OLLAMA_KEY", "temperature": 0.2},
    ]}}, None, {})
    assert [c.agent_kind_of(i) for i in range(3)] == ["claude", "openai", "claude"]
    assert c.agent_options(0) == {"model": "claude-haiku-4-5", "direction": "optimizer"}
    assert c.agent_options(1) == {"kind": "openai", "base_url": "http://localhost:11434/v1",
                                  "model": "qwen2.5-coder:32b", "api_key_env": "OLLAMA_KEY", "temperature": 0.2}
    built = [make_proposer(c.agent_kind(), f"claude-{i}", c.agent_options(i)) for i in range(3)]
    assert [type(p) for p in built] == [Claude, OpenAIProposer, Claude]
    assert built[1].model == "qwen2.5-coder:32b" and built[1].price.output == 0  # self-hosted, said in transcript

    openai_only = load_config({"agents": {"kind": "openai", "options": [
        {"model": "gpt-4.1", "api_key_file": "/run/secrets/openai"}]}}, None, {})
    assert openai_only.agent_kind() == "openai" and openai_only.agent_options(0) == {
        "model": "gpt-4.1", "api_key_file": "/run/secrets/openai"}
    with pytest.raises(ConfigError, match="no price for model 'mystery' at api.example.com"):
        load_config({"agents": {"kind": "openai", "options": [
            {"model": "mystery", "base_url": "https://api.example.com/v1"}]}}, None, {})
    with pytest.raises(ConfigError, match="no price for model 'gpt-x'"):  # Claude still refuses unknown prices
        load_config({"agents": {"kind": "openai", "options": [{"kind": "claude", "model": "gpt-x"}]}}, None, {})


def test_the_ledger_keeps_each_proposals_model(tmp_path: Path) -> None:
    from cluster.records.ledger import Ledger, LedgerRow

    ledger = Ledger(tmp_path / "ledger")
    ledger.append([LedgerRow(experiment_id="e0001", event="queued", ts=1.0, agent="claude-1", model=LOCAL),
                   LedgerRow(experiment_id="e0002", event="queued", ts=2.0, agent="mutate-0")])
    assert [row.model for row in ledger.read()] == [LOCAL, None]
