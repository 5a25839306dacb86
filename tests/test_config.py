"""Farm configuration: defaults, precedence flag > env > farm.yaml > default, and errors that say where and why."""

from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

import cluster.config as config
from cluster.config import ConfigError, FarmConfig, add_config_arguments, load_config, overrides_from_args
from cluster.decisions.policies import PolicySettings
from cluster.execution.spec import TRAINER_IMAGE, Limits
from trainer.profiles import cache_dir

EXAMPLE = Path(__file__).resolve().parents[1] / "farm.example.yaml"


@pytest.fixture(autouse=True)
def no_gpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A machine without CUDA and without a farm.yaml in the working directory, unless a test says otherwise."""
    monkeypatch.setattr(config, "detect_cuda_gpus", lambda: 0)
    monkeypatch.setattr(config, "cpu_slots", lambda: 3)
    monkeypatch.chdir(tmp_path)


def write(tmp_path: Path, text: str, name: str = "farm.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(**kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(**kwargs)
    return str(info.value)


def test_defaults() -> None:
    c = load_config({}, None, {})
    assert c.gpus is None and c.gpus_total() == 3
    assert c.profile == "cpu-tiny"
    assert c.agents.count == 6 and c.agents.kind == "auto" and c.agents.options == []
    assert c.sandbox == "auto" and c.image == TRAINER_IMAGE
    assert c.run_dir is None and c.cache_dir == cache_dir()
    assert c.ray_address is None and c.metrics_port == 9464
    assert c.cost_cap_usd == 10.0 and c.max_experiments is None and c.hours is None
    assert c.limits == Limits() and c.tournament == PolicySettings()
    assert c.queue_ahead == 2 and c.seed == 0 and c.finish_queue_on_stop is False


def test_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainer import cards

    def card(name: str, gib: int, cc=(9, 0)) -> cards.CardFacts:
        return cards.CardFacts(name=name, memory_bytes=gib * cards.GIB, capability=cc, bf16=cc >= (8, 0))

    monkeypatch.setattr(config, "detect_cuda_gpus", lambda: 8)
    monkeypatch.setattr(cards, "query_cards", lambda: [card("NVIDIA H100 80GB HBM3", 80)] * 8)
    c = FarmConfig()
    assert c.profile == "h100" and c.gpus_total() == 8 and c.agents.count == 16
    monkeypatch.setattr(cards, "query_cards", lambda: [card("NVIDIA GeForce RTX 4090", 24, (8, 9))] * 8)
    assert FarmConfig().profile == "gpu-24gb"
    monkeypatch.setattr(cards, "query_cards", lambda: [card("Tesla V100-SXM2-32GB", 32, (7, 0))] * 8)
    with pytest.raises(ValueError, match="compute capability 8.0"):
        FarmConfig()
    c = FarmConfig(gpus=2, profile="cpu-tiny")
    assert c.profile == "cpu-tiny" and c.gpus_total() == 2 and c.agents.count == 4


def test_agent_kind_and_options() -> None:
    c = load_config({}, None, {})
    assert c.agent_kind({}) == "mutate"
    claude_installed = importlib.util.find_spec("agent.claude") is not None
    assert c.agent_kind({"ANTHROPIC_API_KEY": "sk-x"}) == ("claude" if claude_installed else "mutate")
    c = load_config(
        {"agents": {"kind": "claude", "options": [{"model": "claude-haiku-4-5", "temperature": 0.5},
                                                  {"direction": "optimizer"}]}}
    )
    assert c.agent_kind({}) == "claude"
    assert c.agent_options(0) == {"model": "claude-haiku-4-5", "temperature": 0.5}
    assert c.agent_options(3) == {"direction": "optimizer"}
    mutate = c.model_copy(update={"agents": c.agents.model_copy(update={"kind": "mutate"})})
    assert mutate.agent_options(0) == {}  # the mutator takes none of the LLM options


def test_precedence_flag_env_yaml_default(tmp_path: Path) -> None:
    yaml_path = write(tmp_path, "gpus: 2\nagents:\n  count: 3\n  kind: mutate\nseed: 5\nhours: 1.5\n")
    env = {"FARM_GPUS": "4", "FARM_AGENTS__COUNT": "7", "FARM_SEED": "9"}
    flags = {"gpus": 8, "agents.count": None}  # None: a flag not given
    c = load_config(flags, yaml_path, env)
    assert c.gpus == 8  # flag over env over yaml
    assert c.agents.count == 7  # env over yaml (the flag was not given)
    assert c.agents.kind == "mutate"  # yaml, nothing above it; nested siblings kept
    assert c.seed == 9 and c.hours == 1.5
    assert c.queue_ahead == 2  # default
    assert load_config({}, yaml_path, {}).gpus == 2
    assert load_config({}, None, env).gpus == 4


def test_dotted_and_nested_flags_and_argparse_helpers() -> None:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    args = parser.parse_args(["--gpus", "2", "--agents", "5", "--address", "ray://head:10001", "--hours", "0.5"])
    overrides = overrides_from_args(args)
    assert overrides == {"gpus": 2, "agents.count": 5, "ray_address": "ray://head:10001", "hours": 0.5}
    c = load_config(overrides, None, {})
    assert (c.gpus, c.agents.count, c.ray_address, c.hours) == (2, 5, "ray://head:10001", 0.5)
    assert load_config({"limits": {"memory_mb": 100}}, None, {}).limits.memory_mb == 100


def test_env_scheme() -> None:
    env = {
        "FARM_TOURNAMENT__MARGIN_SIGMAS": "3",
        "FARM_LIMITS__MEMORY_MB": "16384",
        "FARM_AGENTS__OPTIONS": '[{"temperament": "bold"}]',
        "FARM_METRICS_PORT": "none",
        "FARM_FINISH_QUEUE_ON_STOP": "true",
        "FARM_CACHE": "/elsewhere",  # another part's variable: not a config field, ignored
        "FARM_EVENTS_FD": "7",
        "FARM_HOURS": "",  # empty = unset
        "RAY_ADDRESS": "auto",
    }
    c = load_config({}, None, env)
    assert c.tournament.margin_sigmas == 3 and c.limits.memory_mb == 16384
    assert c.agents.options[0].temperament == "bold"
    assert c.metrics_port is None and c.finish_queue_on_stop is True and c.hours is None
    assert c.ray_address == "auto"
    assert load_config({}, None, {**env, "FARM_RAY_ADDRESS": "ray://x:10001"}).ray_address == "ray://x:10001"


def test_farm_yaml_in_working_directory(tmp_path: Path) -> None:
    write(tmp_path, "queue_ahead: 4\n")
    assert load_config({}, None, {}).queue_ahead == 4


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        # negative agents, from each source
        ({"yaml": "agents:\n  count: -1\n"}, "farm.yaml line 2: agents.count = -1: must be >= 1"),
        ({"env": {"FARM_AGENTS__COUNT": "-1"}}, "env FARM_AGENTS__COUNT: agents.count = '-1': must be >= 1"),
        ({"flags": {"agents.count": -1}}, "flag --agents: agents.count = -1: must be >= 1"),
        # unknown sandbox
        ({"yaml": "sandbox: podman\n"}, "farm.yaml line 1: sandbox = 'podman': must be one of 'auto', 'docker'"),
        ({"flags": {"sandbox": "podman"}}, "flag --sandbox: sandbox = 'podman': must be one of"),
        # bad ports
        ({"yaml": "metrics_port: 70000\n"}, "farm.yaml line 1: metrics_port = 70000: must be <= 65535"),
        ({"env": {"FARM_METRICS_PORT": "0"}}, "env FARM_METRICS_PORT: metrics_port = '0': must be >= 1"),
        ({"flags": {"metrics_port": 8265}}, "flag --metrics-port: metrics_port = 8265: port 8265 is Ray's dashboard"),
        # wrong types from env
        ({"env": {"FARM_GPUS": "eight"}}, "env FARM_GPUS: gpus = 'eight': must be a whole number"),
        ({"env": {"FARM_HOURS": "soon"}}, "env FARM_HOURS: hours = 'soon': must be a number"),
        ({"env": {"FARM_LIMITS__PIDS": "[1]"}}, "env FARM_LIMITS__PIDS: limits.pids = [1]:"),
        # other fields
        ({"yaml": "profile: a100\n"}, "farm.yaml line 1: profile = 'a100': unknown profile 'a100': choose one of h100"),
        ({"yaml": "agents:\n  kind: gpt\n"}, "farm.yaml line 2: agents.kind = 'gpt': must be one of"),
        (
            {"yaml": "agents:\n  options:\n    - model: m\n      temperature: 2\n"},
            "farm.yaml line 4: agents.options[0].temperature = 2: must be <= 1",
        ),
        (
            {"yaml": "tournament:\n  margin_sigmas: -1\n"},
            "farm.yaml line 2: tournament.margin_sigmas = -1: must be > 0",
        ),
        ({"yaml": "queue_ahead: -1\n"}, "farm.yaml line 1: queue_ahead = -1: must be >= 0"),
    ],
)
def test_bad_values_name_field_value_source_reason(tmp_path: Path, kwargs: dict, expected: str) -> None:
    yaml_path = write(tmp_path, kwargs["yaml"]) if "yaml" in kwargs else None
    message = error_of(cli_overrides=kwargs.get("flags", {}), yaml_path=yaml_path, env=kwargs.get("env", {}))
    assert expected in message, message


def test_unknown_yaml_keys_suggest(tmp_path: Path) -> None:
    text = "gpus: 2\nagents:\n  cont: 4\nsandbx: docker\ntournament:\n  margin_sigma: 3\nfrobnicate: 1\n"
    message = error_of(cli_overrides={}, yaml_path=write(tmp_path, text), env={})
    assert "farm.yaml line 3: agents.cont: unknown key; did you mean 'count'?" in message
    assert "farm.yaml line 4: sandbx: unknown key; did you mean 'sandbox'?" in message
    assert "farm.yaml line 6: tournament.margin_sigma: unknown key; did you mean 'margin_sigmas'?" in message
    assert "farm.yaml line 7: frobnicate: unknown key; known keys: gpus, agents" in message


def test_unknown_nested_env_name_suggests() -> None:
    message = error_of(cli_overrides={}, yaml_path=None, env={"FARM_AGENT__COUNT": "2"})
    assert "env FARM_AGENT__COUNT: agent: unknown key; did you mean 'agents'?" in message


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    message = error_of(cli_overrides={"queue_ahead": -1}, yaml_path=write(tmp_path, "gpus: 0\n"),
                       env={"FARM_SEED": "x"})
    assert "flag --queue-ahead" in message and "farm.yaml line 1: gpus" in message and "env FARM_SEED" in message


def test_a_higher_source_hides_a_lower_bad_value(tmp_path: Path) -> None:
    c = load_config({"gpus": 2}, write(tmp_path, "gpus: -3\n"), {})
    assert c.gpus == 2


@pytest.mark.parametrize(
    "text, expected",
    [
        ("agents:\n  count: [1, 2\n", r"farm\.yaml line \d+: malformed YAML"),
        ("gpus: 1\n  bad indent: 2\n", r"farm\.yaml line 2: malformed YAML"),
        ("- gpus\n- 2\n", r"farm\.yaml: the top level must be a mapping"),
    ],
)
def test_malformed_yaml(tmp_path: Path, text: str, expected: str) -> None:
    message = error_of(cli_overrides={}, yaml_path=write(tmp_path, text), env={})
    assert re.search(expected, message), message


def test_missing_yaml_file(tmp_path: Path) -> None:
    assert "cannot read" in error_of(cli_overrides={}, yaml_path=tmp_path / "nope.yaml", env={})


def test_empty_yaml_is_defaults(tmp_path: Path) -> None:
    assert load_config({}, write(tmp_path, "# nothing yet\n"), {}) == load_config({}, None, {})


def _field_names(model: type[BaseModel]) -> set[str]:
    names = set()
    for name, field in model.model_fields.items():
        names.add(name)
        for sub in (field.annotation, *getattr(field.annotation, "__args__", ())):
            if isinstance(sub, type) and issubclass(sub, BaseModel):
                names |= _field_names(sub)
    return names


def test_example_yaml_is_valid_defaults_and_names_every_field() -> None:
    c = load_config({}, EXAMPLE, {})
    assert c == load_config({}, None, {})
    text = EXAMPLE.read_text()
    missing = [name for name in sorted(_field_names(FarmConfig)) if not re.search(rf"\b{name}:", text)]
    assert not missing, f"farm.example.yaml does not mention {missing}"


def test_claude_options_are_validated_and_priced() -> None:
    price = {"input": 1, "output": 2, "cache_read": 0.1, "cache_write": 1.25}
    c = load_config({"agents": {"kind": "claude", "options": [{
        "model": "my-proxy-model", "base_url": "http://127.0.0.1:9", "max_turns": 5, "max_retries": 0,
        "timeout_seconds": 2.5, "prices": {"my-proxy": price},
    }]}}, None, {})
    options = c.agent_options(0)
    assert options["base_url"] == "http://127.0.0.1:9" and options["max_turns"] == 5
    assert options["prices"] == {"my-proxy": price}
    assert "no price for model 'mystery'" in error_of(cli_overrides={"agents.options": [{"model": "mystery"}]},
                                                       env={})
    assert "must start with http" in error_of(cli_overrides={"agents.options": [{"base_url": "ftp://x"}]}, env={})
    assert "max_turns = 0: must be >= 1" in error_of(cli_overrides={"agents.options": [{"max_turns": 0}]}, env={})
    assert c.agent_kind({"ANTHROPIC_API_KEY_FILE": "/run/secrets/key"}) == "claude"


def test_a_mixed_population_names_each_agent_by_its_own_kind() -> None:
    config = FarmConfig(gpus=1, agents={"count": 3, "kind": "claude", "options": [
        {"kind": "openai", "model": "llama3", "base_url": "http://127.0.0.1:8000/v1"}, {}]})
    assert [config.agent_name(i) for i in range(3)] == ["openai-0", "claude-1", "openai-2"]


def test_each_policy_is_built_from_its_own_settings_model_and_farm_yaml_sets_them_all() -> None:
    """cluster/decisions/policies/: a policy module names its class (POLICIES); its settings model's fields are
    farm.yaml's ``tournament:`` keys, and the factory hands it only its own."""
    from cluster.decisions.policies import REGISTRY, make_policy
    from cluster.decisions.policies.greedy import GreedyPolicy, GreedySettings
    from cluster.decisions.policies.stack import StackSettings

    assert set(REGISTRY) == {"tournament", "paired", "stack", "pipeline", "greedy"}
    for name, cls in REGISTRY.items():
        assert set(cls.settings_model.model_fields) <= set(PolicySettings.model_fields)
        policy = make_policy(PolicySettings(policy=name))
        assert isinstance(policy, cls) and type(policy.settings) is cls.settings_model
    greedy = make_policy(PolicySettings(policy="greedy", parent_main_prob=1.0, margin_sigmas=3.0))
    assert isinstance(greedy, GreedyPolicy) and greedy.settings == GreedySettings(parent_main_prob=1.0)
    assert make_policy(PolicySettings(policy="stack")).settings == StackSettings(policy="stack")
    with pytest.raises(ValidationError, match="unknown policy 'nope'"):
        PolicySettings(policy="nope")


def test_every_package_of_the_source_tree_is_in_the_wheel() -> None:
    """The farm image installs the project as a wheel (images/farm.Dockerfile), which holds only the packages
    pyproject.toml lists: a package missing there (cluster.policies once was) is an ImportError in every pod."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {str(p.parent.relative_to(root)).replace("/", ".") for top in ("agent", "cluster", "trainer")
             for p in (root / top).rglob("__init__.py")}
    assert listed == found
