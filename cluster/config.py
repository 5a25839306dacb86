"""The configuration of one farm run: one pydantic model, from four sources.

Precedence, highest first: command-line flags, ``FARM_*`` environment
variables, ``farm.yaml``, the defaults below. Environment variables name a
field by its path in upper case with ``__`` between levels: ``FARM_GPUS=8``,
``FARM_AGENTS__COUNT=4``, ``FARM_TOURNAMENT__MARGIN_SIGMAS=3``,
``FARM_LIMITS__MEMORY_MB=16384``; a value starting with ``[`` or ``{`` is read
as YAML/JSON (``FARM_AGENTS__OPTIONS='[{"temperament": "bold"}]'``) and
``none``/``null`` means None. ``RAY_ADDRESS`` is honoured when
``FARM_RAY_ADDRESS`` is not set. Other ``FARM_*`` names without ``__`` belong
to other parts of the farm (``FARM_CACHE``, ...) and are ignored. Any invalid
value raises ConfigError naming the field, the value, where it came from and
why it is wrong. See farm.example.yaml for every field.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import importlib.util
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.cost import DEFAULT_MODEL, DEFAULT_OPENAI_MODEL, Price, openai_price, price_for
from cluster.decisions.policies import PolicySettings
from cluster.execution.spec import TRAINER_IMAGE, KubernetesSettings, Limits
from trainer.profiles import cache_dir, get_profile

REASONS = {  # pydantic's error types, said shortly
    "greater_than_equal": "must be >= {ge}",
    "greater_than": "must be > {gt}",
    "less_than_equal": "must be <= {le}",
    "less_than": "must be < {lt}",
    "literal_error": "must be one of {expected}",
    **dict.fromkeys(["int_parsing", "int_type", "int_from_float"], "must be a whole number"),
    **dict.fromkeys(["float_parsing", "float_type"], "must be a number"),
    **dict.fromkeys(["bool_parsing", "bool_type"], "must be true or false"),
}
DEFAULT_COST_CAP_USD = 10.0  # a run nobody capped still cannot spend without end (issue: a looping agent)
RAY_PORTS = {6379: "Ray's GCS", 8265: "Ray's dashboard", 10001: "Ray's client server"}


def absolute(path: Path | str) -> Path:
    """``path`` with ``~`` expanded, made absolute against the current directory (links kept as they are)."""
    return Path(os.path.abspath(Path(path).expanduser()))


class ConfigError(ValueError):
    """An invalid configuration value; the message says which field, which value, from where and why."""


AgentKind = Literal["mutate", "optuna", "script", "claude", "openai"]


class AgentOptions(BaseModel):
    """Options of one agent (agent i gets options[i % len(options)])."""

    model_config = ConfigDict(extra="forbid")

    kind: AgentKind | None = Field(None, description="this agent's kind, over agents.kind: a mixed population")
    direction: str | None = Field(None, description="a research direction, e.g. 'optimizer' (claude, openai)")
    temperament: str | None = Field(None, description="e.g. 'bold' or 'careful' (claude, openai)")
    model: str | None = Field(None, description="model name (claude: Anthropic's; openai: the endpoint's)")
    temperature: float | None = Field(None, ge=0, le=1, description="sampling temperature (claude, openai)")
    max_tokens: int | None = Field(None, ge=1, description="output tokens per model call (claude, openai)")
    base_url: str | None = Field(None, description="API base URL; default ANTHROPIC_BASE_URL (claude) or "
                                                   "OPENAI_BASE_URL, else OpenAI's (openai)")
    timeout_seconds: float | None = Field(None, gt=0, description="one model call's timeout (claude, openai)")
    max_turns: int | None = Field(None, ge=1, le=200, description="model calls per proposal (claude, openai)")
    max_retries: int | None = Field(None, ge=0, le=20, description="retries of a failed model call")
    retry_base_seconds: float | None = Field(None, gt=0, description="first retry backoff, doubling")
    retry_max_seconds: float | None = Field(None, gt=0, description="longest retry backoff")
    prices: dict[str, Price] | None = Field(None, description="USD per MTok by model name prefix (claude, openai)")
    api_key_env: str | None = Field(None, description="the variable holding the key; default OPENAI_API_KEY "
                                                      "(openai)")
    api_key_file: str | None = Field(None, description="a file holding the key, e.g. a mounted secret (openai)")
    changes: list[dict[str, int | float | str]] | None = Field(None, description="change sets to replay (script)")
    sampler: Literal["tpe", "cmaes"] | None = Field(None, description="Optuna's sampler: tpe (default) or cmaes "
                                                    "(optuna)")
    startup_trials: int | None = Field(None, ge=1, description="random trials before the sampler models (optuna)")

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    def check_priced(self, kind: str) -> None:
        """ValueError when this agent's spend could not be priced: spend must never count as free by accident
        (an openai agent on a self-hosted endpoint is the documented exception, agent/cost.py openai_price)."""
        if kind in ("auto", "claude"):
            price_for(self.model or DEFAULT_MODEL, self.prices)
        elif kind == "openai":
            from agent.wire_openai import resolve_base_url

            openai_price(self.model or DEFAULT_OPENAI_MODEL, resolve_base_url(self.base_url), self.prices)


LLM_OPTIONS = {"direction", "temperament", "model", "temperature", "max_tokens", "base_url", "timeout_seconds",
               "max_turns", "max_retries", "retry_base_seconds", "retry_max_seconds", "prices"}
KIND_OPTIONS = {
    "mutate": set(),
    "optuna": {"sampler", "startup_trials"},
    "script": {"changes"},
    "claude": LLM_OPTIONS,
    "openai": LLM_OPTIONS | {"api_key_env", "api_key_file"},
}


class AgentsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    count: int | None = Field(None, ge=1, description="agents in the population; default 2 per GPU slot")
    kind: Literal["auto", "mutate", "optuna", "claude", "openai", "script"] = Field(
        "auto", description="auto: claude with an API key; options[i].kind overrides it per agent")
    options: list[AgentOptions] = Field(default_factory=list)

    @model_validator(mode="after")
    def _priced(self) -> AgentsConfig:
        for options in self.options:
            options.check_priced(options.kind or self.kind)
        return self


@functools.lru_cache(maxsize=1)
def detect_cuda_gpus() -> int:
    """CUDA GPUs on this machine (0 without torch or CUDA); torch is imported only when this is called."""
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0


def detect_profile() -> str:
    """The profile this machine's GPUs can run (trainer/cards.py: memory, bf16, compute capability), else cpu-tiny.

    A GPU no profile fits is a ValueError that says why and what to do, before any experiment runs.
    """
    if not detect_cuda_gpus():
        return "cpu-tiny"
    from trainer import cards

    pick = cards.pick_profile(cards.query_cards())
    if pick.profile is None:
        raise ValueError(pick.reason)
    return pick.profile


def cpu_slots() -> int:
    """Logical GPU slots on a machine without a GPU: cpu-tiny experiments use one thread each."""
    return min(4, max(1, (os.cpu_count() or 2) // 2))


class FarmConfig(BaseModel):
    """Everything a farm run is told; ``None`` fields are detected (see each description)."""

    model_config = ConfigDict(extra="forbid")

    gpus: int | None = Field(None, ge=1, description="GPU slots; default: local CUDA GPUs, else CPU logical slots")
    agents: AgentsConfig = Field(default_factory=AgentsConfig)
    profile: str | None = Field(None, description="default: the profile the local GPUs fit "
                                 "(trainer/cards.py: h100, gpu-48gb, gpu-24gb), else cpu-tiny")
    sandbox: Literal["auto", "docker", "process", "kubernetes"] = Field("auto", description="auto: docker when usable")
    image: str = Field(TRAINER_IMAGE, min_length=1, description="trainer image (docker and kubernetes sandboxes)")
    allow_unisolated: bool = Field(
        False, description="let LLM agents' train.py files run in the process sandbox without root: no isolation, "
        "the candidate runs as your user and can forge its verdict (refused unless set)"
    )
    kubernetes: KubernetesSettings = Field(
        default_factory=KubernetesSettings, description="experiment pods (kubernetes sandbox; FARM_KUBERNETES__*)"
    )
    run_dir: Path | None = Field(None, description="the run's directory; default: a new one under runs/")
    cache_dir: Path = Field(default_factory=cache_dir, description="prepared data and tokenizers")
    ray_address: str | None = Field(None, description="Ray cluster to join; None starts a local one")
    tournament: PolicySettings = Field(default_factory=PolicySettings, description="the policy and its knobs "
                                       "(cluster/decisions/policies/; FARM_TOURNAMENT__*)")
    metrics_port: int | None = Field(9464, ge=1, le=65535, description="Prometheus exporter port; None: off")
    metrics_address: str = Field("127.0.0.1", min_length=1,
                                 description="address the exporter binds (0.0.0.0: every interface, e.g. in a pod)")
    ui_port: int | None = Field(None, ge=0, le=65535, description="serve the run browser (`farm ui`) beside the "
                                "farm on this port (8090 is its usual one; 0: any free port); None: off")
    ui_address: str = Field("127.0.0.1", min_length=1, description="address the run browser binds (0.0.0.0: every "
                            "interface, e.g. in a pod; it has no authentication)")
    cost_cap_usd: float | None = Field(DEFAULT_COST_CAP_USD, ge=0, description="stop proposing when LLM spend "
                                       "reaches this (USD); none: no cap")
    max_consecutive_errors: int = Field(3, ge=0, description="stop after this many experiments in a row fail "
                                        "through the farm's own fault (status error) with no ok in between; 0: never")
    max_experiments: int | None = Field(None, ge=1, description="stop after this many experiments")
    hours: float | None = Field(None, gt=0, description="stop after this many hours")
    limits: Limits = Field(default_factory=Limits)
    queue_ahead: int = Field(2, ge=0, description="ready proposals kept per GPU slot (an LLM's latency hidden behind "
                             "the runs); 0: ask only for a slot that would otherwise idle, so each proposal is built "
                             "on the freshest main (for instant proposers)")
    finish_queue_on_stop: bool = Field(False, description="on a stop, still run the proposals already queued")
    seed: int = Field(0, description="seeds parent selection and the mutate agents")

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, value: str | None) -> str | None:
        if value is not None:
            get_profile(value)  # ValueError listing the valid names
        return value

    @field_validator("run_dir", "cache_dir")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        """Made absolute once, here where a path enters: sandboxes resolve nothing against their own cwd."""
        return absolute(value) if value is not None else None

    @field_validator("metrics_port")
    @classmethod
    def _not_rays_port(cls, value: int | None) -> int | None:
        if value in RAY_PORTS:
            raise ValueError(f"port {value} is {RAY_PORTS[value]}")
        return value

    @model_validator(mode="after")
    def _detect(self) -> FarmConfig:
        if self.profile is None:
            self.profile = detect_profile()
        if self.agents.count is None:
            self.agents.count = 2 * self.gpus_total()
        return self

    def gpus_total(self) -> int:
        """GPU slots the farm schedules on."""
        return self.gpus or detect_cuda_gpus() or cpu_slots()

    def agent_kind(self, env: Mapping[str, str] | None = None) -> str:
        """The proposer kind, with auto resolved from ANTHROPIC_API_KEY (and whether the Claude agent is installed)."""
        if self.agents.kind != "auto":
            return self.agents.kind
        env = os.environ if env is None else env
        has_key = bool(env.get("ANTHROPIC_API_KEY") or env.get("ANTHROPIC_API_KEY_FILE"))
        return "claude" if has_key and importlib.util.find_spec("agent.claude") else "mutate"

    def agent_kind_of(self, index: int, env: Mapping[str, str] | None = None) -> str:
        """Agent ``index``'s own kind: its options' ``kind`` if set (a mixed population), else agent_kind."""
        own = self.agents.options[index % len(self.agents.options)].kind if self.agents.options else None
        return own or self.agent_kind(env)

    def llm_agents(self, env: Mapping[str, str] | None = None) -> list[str]:
        """The kinds of the population that are LLMs (their train.py files are written to win, by any means)."""
        count = self.agents.count or 1
        return sorted({k for k in (self.agent_kind_of(i, env) for i in range(count)) if k in ("claude", "openai")})

    def agent_name(self, index: int, env: Mapping[str, str] | None = None) -> str:
        """Agent ``index``'s name everywhere (ledger, status, metrics, transcripts): its own kind and its index, so
        that in a mixed population an Ollama agent is never called claude-1."""
        return f"{self.agent_kind_of(index, env)}-{index}"

    def agent_options(self, index: int, env: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Keyword options for agent ``index``'s proposer: the ones its kind takes, unset ones left out. An agent
        whose kind differs from the population's carries it as ``kind`` (cluster.execution.agents.make_proposer uses
        it)."""
        if not self.agents.options:
            return {}
        options = self.agents.options[index % len(self.agents.options)].model_dump(exclude_none=True)
        kind = self.agent_kind_of(index, env)
        own = {k: v for k, v in options.items() if k in KIND_OPTIONS[kind]}
        return {**own, "kind": kind} if kind != self.agent_kind(env) else own


# Flags of `farm run` for the fields set most often (the others: farm.yaml or FARM_*), with their types.
CLI_FLAGS = {
    "gpus": ("--gpus", int), "agents.count": ("--agents", int), "agents.kind": ("--agent-kind", str),
    "profile": ("--profile", str), "sandbox": ("--sandbox", str), "image": ("--image", str),
    "run_dir": ("--run-dir", str), "cache_dir": ("--cache-dir", str), "ray_address": ("--address", str),
    "metrics_port": ("--metrics-port", int), "metrics_address": ("--metrics-address", str),
    "ui_port": ("--ui-port", int), "ui_address": ("--ui-address", str),
    "cost_cap_usd": ("--cost-cap", float),
    "max_experiments": ("--max-experiments", int), "hours": ("--hours", float),
    "queue_ahead": ("--queue-ahead", int), "seed": ("--seed", int),
    "allow_unisolated": ("--allow-unisolated", bool),
}  # fmt: skip


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the CLI_FLAGS to a parser (default None: not given); read them back with overrides_from_args."""
    for path, (flag, kind) in CLI_FLAGS.items():
        *parents, last = path.split(".")
        field = _fields_at(tuple(parents)).get(last)
        if kind is bool:  # a switch: given means true
            parser.add_argument(flag, dest=f"cfg:{path}", action="store_const", const=True, default=None,
                                help=field and field.description)
        else:
            parser.add_argument(flag, dest=f"cfg:{path}", type=kind, default=None, help=field and field.description)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The config flags given on the command line, as load_config's cli_overrides."""
    return {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg:") and v is not None}


def load_config(
    cli_overrides: Mapping[str, Any] | None = None,
    yaml_path: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> FarmConfig:
    """Merge defaults < farm.yaml (given, or ./farm.yaml if present) < FARM_* env < flags.

    ``cli_overrides`` has dotted keys (``{"agents.count": 4}``) or nested dicts; None values are flags not given.
    """
    env = os.environ if env is None else env
    if yaml_path is None and Path("farm.yaml").is_file():
        yaml_path = Path("farm.yaml")
    layers: list[tuple[tuple, Any, str]] = []  # (field path, value, source), lowest precedence first
    lines: dict[tuple, int] = {}
    if yaml_path is not None:
        data, lines = _read_yaml(Path(yaml_path))
        layers += [(path, value, f"yaml:{yaml_path}") for path, value in _leaves(data, ())]
    layers += _from_env(env)
    flags = _leaves(cli_overrides or {}, ())
    layers += [(path, value, _flag_label(path)) for path, value in flags if value is not None]
    merged: dict[str, Any] = {}
    origin: dict[tuple, str] = {}
    for path, value, label in layers:
        _put(merged, origin, path, value, label)
    try:
        return FarmConfig.model_validate(merged)
    except ValidationError as exc:
        problems = [_explain(err, merged, origin, lines) for err in exc.errors()]
        raise ConfigError("invalid farm configuration:\n  " + "\n  ".join(problems)) from None


def _read_yaml(path: Path) -> tuple[dict, dict[tuple, int]]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file: {exc.strerror or exc}") from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: malformed YAML: {getattr(exc, 'problem', None) or exc}") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of fields, not a {type(data).__name__}")
    lines: dict[tuple, int] = {}

    def walk(n: yaml.Node, path_: tuple) -> None:
        if isinstance(n, yaml.MappingNode):
            for key, value in n.value:
                lines[(*path_, key.value)] = key.start_mark.line + 1
                walk(value, (*path_, key.value))
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                lines[(*path_, i)] = item.start_mark.line + 1
                walk(item, (*path_, i))

    walk(node, ())
    return data, lines


def _from_env(env: Mapping[str, str]) -> list[tuple[tuple, Any, str]]:
    out = []
    names = [k for k in env if k.startswith("FARM_")]
    if "FARM_RAY_ADDRESS" not in env and env.get("RAY_ADDRESS"):
        names.append("RAY_ADDRESS")
    for name in names:
        path = ("ray_address",) if name == "RAY_ADDRESS" else tuple(name[5:].lower().split("__"))
        if len(path) == 1 and path[0] not in FarmConfig.model_fields:
            continue  # FARM_CACHE, FARM_PROFILE-style variables of other parts
        raw = env[name].strip()
        if not raw:
            continue  # FARM_X= (empty) is the same as unset
        if raw.lower() in ("none", "null", "~"):
            value: Any = None
        elif raw.startswith(("[", "{")):
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError as exc:
                raise ConfigError(
                    f"env {name}: {'.'.join(path)} = {raw!r}: not valid YAML/JSON: {getattr(exc, 'problem', exc)}"
                ) from None
        else:
            value = raw
        out.append((path, value, f"env {name}"))
    return out


def _leaves(node: Any, path: tuple) -> list[tuple[tuple, Any]]:
    """A nested mapping's leaves (dotted keys split); lists, scalars and empty mappings replace, never merge."""
    if isinstance(node, Mapping) and node:
        return [leaf for key, value in node.items() for leaf in _leaves(value, (*path, *str(key).split(".")))]
    return [(path, node)] if path else []


def _put(merged: dict, origin: dict[tuple, str], path: tuple, value: Any, label: str) -> None:
    node = merged
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[path[-1]] = value
    for key in [k for k in origin if k[: len(path)] == path]:
        del origin[key]
    origin[path] = label


def _flag_label(path: tuple) -> str:
    dotted = ".".join(path)
    return "flag " + CLI_FLAGS.get(dotted, ("--" + dotted.replace(".", "-").replace("_", "-"),))[0]


def _explain(err: dict, merged: dict, origin: dict[tuple, str], lines: dict[tuple, int]) -> str:
    """One pydantic error as 'SOURCE: field.path = value: reason'."""
    loc, node = [], merged
    for part in err["loc"]:  # keep the parts that are really in the data (drop union member tags)
        if isinstance(node, dict) and part in node or isinstance(node, list) and isinstance(part, int):
            loc.append(part)
            node = node[part] if isinstance(node, dict) or part < len(node) else None
        else:
            break
    loc_t = tuple(loc)
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "(config)"
    sources = [label for key, label in origin.items() if key[: len(loc_t)] == loc_t or loc_t[: len(key)] == key]
    source = ", ".join(dict.fromkeys(_with_line(s, loc_t, lines) for s in sources)) or "default"
    kind, ctx = err["type"], err.get("ctx", {})
    reason = REASONS[kind].format(**ctx) if kind in REASONS else err["msg"].removeprefix("Value error, ")
    if kind == "extra_forbidden":
        known = list(_fields_at(loc_t[:-1]))
        close = difflib.get_close_matches(str(loc_t[-1]), known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
        return f"{source}: {path}: unknown key; {hint}"
    return f"{source}: {path} = {_show(err.get('input'))}: {reason}"


def _with_line(label: str, loc: tuple, lines: dict[tuple, int]) -> str:
    if not label.startswith("yaml:"):
        return label
    for n in range(len(loc), 0, -1):
        if loc[:n] in lines:
            return f"{label[5:]} line {lines[loc[:n]]}"
    return label[5:]


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _unwrap(annotation: Any) -> Any:
    """The model or list type inside Optional[...]."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _fields_at(loc: tuple) -> dict[str, Any]:
    """The fields of the model at a field path ({} where there is none)."""
    tp: Any = FarmConfig
    for part in loc:
        if isinstance(part, int):
            tp = _unwrap((typing.get_args(tp) or [None])[0])
        elif isinstance(tp, type) and issubclass(tp, BaseModel) and part in tp.model_fields:
            tp = _unwrap(tp.model_fields[part].annotation)
        else:
            return {}
    return tp.model_fields if isinstance(tp, type) and issubclass(tp, BaseModel) else {}
