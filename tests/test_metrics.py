"""The farm's Prometheus metrics and the Grafana dashboard that reads them.

Unit tests feed cluster.observers.metrics events and read the exposition text back
(checked by `promtool check metrics`). The slow test runs a real farm and a
real Prometheus (Debian's package, on loopback) that scrapes it, then runs
every PromQL expression of the dashboard against that Prometheus: each must
parse (promql-parser) and return data. No Grafana server runs here.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from agent.llm import Fault, RetryPolicy, call_with_retries, classify, classify_status
from agent.protocol import FAILURE_KINDS, Proposal, ProposalError, ProposalFailure, Spend
from cluster.config import FarmConfig
from cluster.execution.agents import ProposalOutcome
from cluster.execution.task import TaskOutcome
from cluster.observers.live import FarmStatus
from cluster.observers.metrics import ERROR_KINDS, PHASE_BUCKETS, PHASES, STATUSES, FarmMetrics, serve
from cluster.records.ledger import LedgerRow
from cluster.records.state import Work
from trainer.result import ExperimentResult, HarnessFacts, Status

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "monitoring"
DASHBOARD = MONITORING / "grafana" / "autoresearch-farm.json"
AGENTS = ["mutate-0", "mutate-1"]


def need(tool: str) -> str:
    """The path of a Prometheus tool; CI (FARM_REQUIRE_PROMETHEUS=1, set by .ci/run) fails instead of skipping."""
    path = shutil.which(tool)
    if path:
        return path
    message = (f"`{tool}` is not installed: `apt-get install -y prometheus` (Debian's package gives prometheus and "
               "promtool; .ci/run installs it)")
    if os.environ.get("FARM_REQUIRE_PROMETHEUS") == "1":
        pytest.fail(message)
    pytest.skip(message)


# ---- the exporter, fed by hand --------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fake_farm(queue: int = 0, asking: int = 0) -> Callable[[], FarmStatus]:
    """A farm's status as the metrics read it (the driver's latest snapshot): a resumed run, main and best known."""
    status = FarmStatus(run_dir="/run", profile="cpu-tiny", gpus=2, queue=queue, proposals_pending=asking,
                        main_val_bpb=2.5, best_val_bpb=2.4)
    return lambda: status


def work(eid: str, kind: str = "candidate") -> Work:
    return Work(eid, kind, "c0ffee", "beef", "sha-" + eid, agent="mutate-0")


def outcome(eid: str, dispatched_at: float, status: Status = Status.OK) -> TaskOutcome:
    facts = HarnessFacts(startup_seconds=1.5, train_batches=10, training_wall_seconds=3.2, eval_seconds=0.4)
    result = ExperimentResult(status=status, val_bpb=2.5 if status == Status.OK else None, profile="cpu-smoke",
                              time_budget=3, facts=facts, started_at=dispatched_at + 0.9)
    return TaskOutcome(experiment_id=eid, result=result, node="n", gpu_class="cpu", started_at=dispatched_at + 0.2,
                       finished_at=dispatched_at + 7, attempt_pid=1)


def samples(metrics: FarmMetrics) -> dict[tuple, float]:
    """{(sample name, sorted labels): value} of one scrape."""
    out = {}
    for family in text_string_to_metric_families(metrics.text()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(scrape: dict[tuple, float], name: str, **labels: str) -> float:
    return scrape[(name, tuple(sorted(labels.items())))]


def test_events_move_the_counters_and_gauges() -> None:
    clock, farm = Clock(), fake_farm(queue=3, asking=1)
    m = FarmMetrics(farm, gpus=2, agents=AGENTS, info={"profile": "cpu-smoke"}, clock=clock)
    first = samples(m)
    assert value(first, "farm_gpus") == 2 and value(first, "farm_gpus_busy") == 0
    assert value(first, "farm_experiments_queued") == 3 and value(first, "farm_proposals_in_flight") == 1
    assert value(first, "farm_main_val_bpb") == 2.5 and value(first, "farm_best_val_bpb") == 2.4  # a resumed run
    assert all(v == 0 for (n, _), v in first.items() if n.endswith("_total"))  # every label set there, at 0

    t0 = time.time()
    m.dispatched(work("e1", "baseline"))
    clock.now += 10
    m.dispatched(work("e2"))
    busy = samples(m)
    assert value(busy, "farm_gpus_busy") == 2 and value(busy, "farm_experiments_in_flight") == 2
    assert value(busy, "farm_gpu_busy_seconds_total") == pytest.approx(10)
    clock.now += 5
    assert value(samples(m), "farm_gpu_busy_seconds_total") == pytest.approx(20)  # grows while experiments run

    m.finished(work("e1", "baseline"), LedgerRow(experiment_id="e1", event="finished", ts=0, status="ok"),
               outcome("e1", t0))
    m.finished(work("e2"), LedgerRow(experiment_id="e2", event="finished", ts=0, status="error", reason="lost"))
    clock.now += 100  # nothing in flight: no more GPU-seconds
    m.promoted()
    s = samples(m)
    assert value(s, "farm_gpus_busy") == 0 and value(s, "farm_gpu_busy_seconds_total") == pytest.approx(20)
    assert value(s, "farm_experiments_total", status="ok", kind="baseline") == 1
    assert value(s, "farm_experiments_total", status="error", kind="candidate") == 1
    assert sum(v for (n, _), v in s.items() if n == "farm_experiments_total") == 2
    assert value(s, "farm_promotions_total") == 1
    # phases of the one experiment that came back (the lost one has none)
    for phase, seconds in {"sandbox": 0.7, "startup": 1.5, "train": 3.2, "eval": 0.4}.items():
        assert value(s, "farm_experiment_phase_seconds_count", phase=phase) == 1
        assert value(s, "farm_experiment_phase_seconds_sum", phase=phase) == pytest.approx(seconds)
        below = [b for b in PHASE_BUCKETS if b < seconds]
        if below:
            assert value(s, "farm_experiment_phase_seconds_bucket", phase=phase, le=_le(below[-1])) == 0
        above = min(b for b in PHASE_BUCKETS if b >= seconds)
        assert value(s, "farm_experiment_phase_seconds_bucket", phase=phase, le=_le(above)) == 1
    assert 0 <= value(s, "farm_experiment_phase_seconds_sum", phase="dispatch") < 1
    assert {dict(labels)["phase"] for n, labels in s if n == "farm_experiment_phase_seconds_count"} == set(PHASES)
    assert value(s, "farm_info", profile="cpu-smoke") == 1


def _le(bound: float) -> str:
    return f"{bound:g}" if bound != int(bound) else f"{int(bound)}.0"


def test_proposals_tokens_cost_and_errors_by_agent() -> None:
    farm = fake_farm()
    m = FarmMetrics(farm, gpus=1, agents=AGENTS)
    proposal = Proposal(parent_commit="p", train_py="x", description="d", agent="mutate-1", tokens_in=1000,
                        tokens_out=200, cache_read_tokens=5000, cache_write_tokens=300, cost_usd=0.0125)
    m.proposal(1, ProposalOutcome(agent="mutate-1", proposal=proposal))  # queued
    m.proposal(1, ProposalOutcome(agent="mutate-1", proposal=proposal), rejected=True)  # refused before running
    failure = ProposalFailure(kind="rate_limit", message="the Messages API call failed 7 time(s), last: HTTP 429")
    m.proposal(0, ProposalOutcome(agent="mutate-0", failure=failure))
    died = ProposalFailure(kind="actor_died", message="ActorDiedError: the actor died unexpectedly")
    m.proposal(0, ProposalOutcome(agent="agent-0", failure=died))
    spent = Spend(tokens_in=10, tokens_out=5, cost_usd=0.001)  # a failed proposal still paid for its calls
    failure = ProposalFailure(kind="invalid_response", message="no submit within the turn limit", spend=spent)
    m.proposal(0, ProposalOutcome(agent="mutate-0", failure=failure))
    s = samples(m)
    assert value(s, "farm_proposals_total", outcome="queued") == 1
    assert value(s, "farm_proposals_total", outcome="rejected") == 1
    assert value(s, "farm_proposals_total", outcome="failed") == 3
    for kind, n in {"input": 2000, "output": 400, "cache_read": 10000, "cache_write": 600}.items():
        assert value(s, "farm_agent_tokens_total", agent="mutate-1", type=kind) == n
    for kind, n in {"input": 10, "output": 5, "cache_read": 0, "cache_write": 0}.items():
        assert value(s, "farm_agent_tokens_total", agent="mutate-0", type=kind) == n
    assert value(s, "farm_agent_cost_usd_total", agent="mutate-1") == pytest.approx(0.025)
    assert value(s, "farm_agent_cost_usd_total", agent="mutate-0") == pytest.approx(0.001)
    assert value(s, "farm_agent_errors_total", agent="mutate-0", kind="invalid_response") == 1
    assert value(s, "farm_agent_errors_total", agent="mutate-0", kind="rate_limit") == 1
    assert value(s, "farm_agent_errors_total", agent="mutate-0", kind="actor_died") == 1
    assert sum(v for (n, _), v in s.items() if n == "farm_agent_errors_total") == 3


@pytest.mark.parametrize(("status", "message", "kind"), [
    (401, "invalid x-api-key", "auth"),
    (403, "permission denied", "auth"),
    (402, "credit balance too low", "quota"),
    (429, "rate limited", "rate_limit"),
    (529, "Overloaded", "overloaded"),
    (500, "{'type': 'overloaded_error'}", "overloaded"),
    (500, "internal error", "server"),
    (503, "unavailable", "server"),
    (408, "request timeout", "timeout"),
    (400, "prompt too long", "bad_request"),
    (404, "model not found", "bad_request"),
])  # fmt: skip
def test_an_api_fault_is_typed_where_its_status_is_known(status: int, message: str, kind: str) -> None:
    """The agents' API client types each fault (agent/llm.py), retried or not; the metrics count by that kind."""

    def fail() -> None:
        raise RuntimeError(message)

    with pytest.raises(ProposalError) as info:
        call_with_retries(fail, RetryPolicy(max_retries=1), sleep=lambda _: None, errors=(RuntimeError,),
                          classify=lambda exc, key: classify_status(status, str(exc), None))
    assert info.value.failure.kind == kind and info.value.failure.fatal == (status in (401, 403, 404))


def test_timeouts_dropped_connections_and_unreadable_replies_are_typed_too() -> None:
    import anthropic

    def bare(cls: type[Exception]) -> Exception:  # classify reads only the type: no request or response needed
        return cls.__new__(cls)

    assert classify(bare(anthropic.APITimeoutError)) == Fault(True, None, "timeout", "timed out")
    assert classify(bare(anthropic.APIConnectionError)).kind == "connection"
    unreadable = bare(anthropic.APIResponseValidationError)
    assert classify(unreadable) == Fault(False, None, "invalid_response", "APIResponseValidationError")
    assert ERROR_KINDS == FAILURE_KINDS  # every kind an agent can type is a label value, and no other


def test_label_sets_are_bounded_whatever_the_events() -> None:
    m = FarmMetrics(fake_farm(), gpus=1, agents=AGENTS)
    for i in range(50):
        w = work(f"e{i}", kind="candidate")
        m.dispatched(w)
        m.finished(w, LedgerRow(experiment_id=w.experiment_id, event="finished", ts=0, status="crash"))
        m.proposal(i % 2, ProposalOutcome(agent="x", failure=ProposalFailure.of(ValueError(f"message {i}"))))
    s = samples(m)
    assert len(s) == len(samples(FarmMetrics(fake_farm(), gpus=1, agents=AGENTS)))  # no new series
    assert not any("e1" in dict(labels).values() for _, labels in s)  # no experiment ids as labels
    assert {dict(labels).get("status") for n, labels in s if n == "farm_experiments_total"} == set(STATUSES)


def test_exposition_passes_promtool_check_metrics() -> None:
    promtool = need("promtool")
    m = FarmMetrics(fake_farm(), gpus=2, agents=AGENTS, info={"profile": "cpu-smoke", "sandbox": "process"})
    w = work("e1")
    m.dispatched(w)
    m.finished(w, LedgerRow(experiment_id="e1", event="finished", ts=0, status="ok"), outcome("e1", time.time()))
    proc = subprocess.run([promtool, "check", "metrics"], input=m.text(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), proc.stdout + proc.stderr


def test_served_on_its_own_port_and_address_and_off_without_a_port() -> None:
    m = FarmMetrics(fake_farm(), gpus=3, agents=AGENTS)
    assert serve(m, None) is None and serve(m, 0) is None
    server = serve(m, free_port(), "127.0.0.1")
    try:
        body = urllib.request.urlopen(server.url, timeout=10).read().decode()
        assert server.url.startswith("http://127.0.0.1:") and "farm_gpus 3.0" in body
        assert "python_gc" not in body and "process_cpu" not in body  # its own registry, not the global default
    finally:
        server.close()
    config = FarmConfig()
    assert config.metrics_port == 9464 and config.metrics_address == "127.0.0.1"


def test_a_taken_port_warns_and_the_farm_runs_on(capsys: pytest.CaptureFixture[str]) -> None:
    from cluster.run_cli import _serve_metrics

    farm = SimpleNamespace(metrics=FarmMetrics(fake_farm(), gpus=1))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert _serve_metrics(farm, FarmConfig(metrics_port=port)) is None
    assert f"no metrics on 127.0.0.1:{port}" in capsys.readouterr().err
    assert _serve_metrics(farm, FarmConfig(metrics_port=None)) is None


# ---- the dashboard and the monitoring stack, statically ------------------------------------


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(dash: dict) -> list[dict]:
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # collapsed rows hold their panels
    return out


def expressions(dash: dict) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in panels(dash) for t in p.get("targets", [])]


def grafana_variables(dash: dict) -> dict[str, str]:
    """What Grafana would put in for each variable: the built-ins as for a 15 s scrape, ours at their defaults."""
    values = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h", "__range_s": "3600"}
    for var in dash["templating"]["list"]:
        if var["type"] == "datasource":
            continue
        if var.get("includeAll"):
            values[var["name"]] = var["allValue"]
        else:
            values[var["name"]] = var["current"]["value"]
    return values


def substitute(expr: str, values: dict[str, str]) -> str:
    def one(match: re.Match) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        assert name in values, f"unknown Grafana variable ${name} in {expr}"
        return values[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)", one, expr)


def test_dashboard_is_a_grafana_dashboard_on_a_datasource_variable() -> None:
    dash = dashboard()
    assert dash["uid"] == "autoresearch-farm-v1" and len(dash["uid"]) <= 40 and dash["title"]
    assert 36 <= dash["schemaVersion"] <= 41  # what Grafana 10-12 write and read
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in panels(dash)]
    titles = [p["title"] for p in panels(dash)]
    assert len(ids) == len(set(ids)) and len(titles) == len(set(titles))
    titles = " | ".join(p["title"] for p in panels(dash)).lower()
    for wanted in ("gpu duty", "experiments per hour by status", "val_bpb", "queue and in flight",
                   "phase durations", "agent spend", "tokens", "errors"):
        assert wanted in titles, f"no panel for {wanted}"
    for p in panels(dash):
        assert 0 <= p["gridPos"]["x"] and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        if p["type"] == "row":
            continue
        assert p["type"] in ("timeseries", "stat") and p["targets"]
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"] and t["refId"]
    instance = variables["instance"]
    assert instance["datasource"]["uid"] == "${datasource}"
    assert "label_values(farm_gpus, instance)" in json.dumps(instance["query"])


def test_every_dashboard_expression_parses_and_names_exported_metrics() -> None:
    dash = dashboard()
    values = grafana_variables(dash)
    m = FarmMetrics(fake_farm(), gpus=1, agents=AGENTS, info={"profile": "x"})
    exported = {s[0] for s in samples(m)} | {"farm_main_val_bpb", "farm_best_val_bpb"}
    found = set()
    for title, expr in expressions(dash):
        query = substitute(expr, values)
        assert "$" not in query, (title, query)
        parsed = promql_parser.parse(query)  # raises on a syntax error
        assert parsed is not None
        names = set(re.findall(r"\b(farm_\w+)", query))
        assert names and names <= exported, f"{title}: {names - exported} are not exported"
        found |= names
    for family in ("farm_gpus", "farm_gpus_busy", "farm_gpu_busy_seconds_total", "farm_experiments_total",
                   "farm_main_val_bpb", "farm_best_val_bpb", "farm_experiments_queued", "farm_experiments_in_flight",
                   "farm_experiment_phase_seconds_bucket", "farm_agent_cost_usd_total", "farm_agent_tokens_total",
                   "farm_agent_errors_total", "farm_proposals_total", "farm_promotions_total"):
        assert family in found, f"the dashboard never shows {family}"


def test_prometheus_config_passes_promtool_and_scrapes_the_default_port() -> None:
    promtool = need("promtool")
    proc = subprocess.run([promtool, "check", "config", str(MONITORING / "prometheus.yml")], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    targets = [t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert f"127.0.0.1:{FarmConfig().metrics_port}" in targets


def compose_commands() -> list[list[str]]:
    """The compose CLIs on this machine: the docker plugin (v2) and/or docker-compose (v1)."""
    out = []
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        out.append([docker, "compose"])
    if shutil.which("docker-compose"):
        out.append([shutil.which("docker-compose")])
    return out


def test_compose_file_provisions_the_datasource_and_the_dashboard() -> None:
    compose_file = MONITORING / "docker-compose.yml"
    for compose in compose_commands():  # what `make monitor` would run, where one is installed
        proc = subprocess.run([*compose, "-f", str(compose_file), "config", "--quiet"], capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, f"{' '.join(compose)} config: {proc.stderr}"
    compose = yaml.safe_load(compose_file.read_text())
    services = compose["services"]
    assert set(services) == {"prometheus", "grafana"}
    mounts: dict[str, Path] = {}  # path in a container -> file or folder here
    for name, service in services.items():
        assert service["image"] and service["network_mode"] == "host", name
        for volume in service["volumes"]:
            source, target = volume.split(":")[:2]
            if source.startswith("./"):
                assert (MONITORING / source).exists(), f"{name} mounts {source}, which is missing"
                mounts[target] = MONITORING / source
            else:
                assert source in compose["volumes"], f"{name}: undeclared volume {source}"
    assert mounts["/etc/prometheus/prometheus.yml"] == MONITORING / "prometheus.yml"
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    listen = next(a for a in services["prometheus"]["command"] if a.startswith("--web.listen-address="))
    prov = mounts["/etc/grafana/provisioning"]
    (datasource,) = yaml.safe_load((prov / "datasources" / "prometheus.yaml").read_text())["datasources"]
    assert datasource["type"] == "prometheus" and datasource["isDefault"]
    assert datasource["url"] == "http://" + listen.split("=", 1)[1]
    providers = yaml.safe_load((prov / "dashboards" / "autoresearch-farm.yaml").read_text())["providers"]
    folder = providers[0]["options"]["path"]
    dashboards = {t: p for t, p in mounts.items() if t.startswith(folder + "/")}
    assert list(dashboards.values()) == [DASHBOARD]
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home in dashboards


def test_make_monitor_uses_the_compose_file() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^\.PHONY:.*\bmonitor\b", makefile, re.M)
    target = makefile.split("\nmonitor:", 1)[1].split("\n\n", 1)[0]
    assert "monitoring/docker-compose.yml" in target and " up " in target


# ---- a real Prometheus scraping a real farm --------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(base: str, path: str, **params: str) -> dict:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]


def has_finite_value(data: dict) -> bool:
    if data["resultType"] == "scalar":
        return math.isfinite(float(data["result"][1]))
    return any(math.isfinite(float(r["value"][1])) for r in data["result"])


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="the isolated process sandbox needs root (CI is root)")
def test_prometheus_scrapes_a_running_farm_and_every_dashboard_query_has_data(tmp_path: Path) -> None:
    prometheus = need("prometheus")
    metrics_port, prom_port = free_port(), free_port()
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "autoresearch-farm",
                            "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}],
    }))  # fmt: skip
    prom_log = open(tmp_path / "prometheus.log", "w")
    prom = subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}",
                             "--log.level=warn"], stdout=prom_log, stderr=subprocess.STDOUT)
    farm_yaml = tmp_path / "farm.yaml"
    farm_yaml.write_text(yaml.safe_dump({
        "profile": "cpu-smoke", "sandbox": "process", "gpus": 2, "agents": {"count": 2, "kind": "mutate"},
        "tournament": {"baseline_replicates": 2, "min_noise_df": 1}, "metrics_port": metrics_port,
    }))  # fmt: skip
    farm_log = open(tmp_path / "farm.log", "w")
    farm = subprocess.Popen([sys.executable, "-m", "cluster.cli", "run", "--config", str(farm_yaml), "--run-dir",
                             str(tmp_path / "run"), "--max-experiments", "40"],
                            stdout=farm_log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    base = f"http://127.0.0.1:{prom_port}"

    def logs() -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in (tmp_path / "farm.log",
                                                                             tmp_path / "prometheus.log"))

    def scraped(query: str) -> float | None:
        result = api(base, "/api/v1/query", query=query)["result"]
        return float(result[0]["value"][1]) if result else None

    try:
        deadline = time.monotonic() + 240  # 4 experiments of 3 s: ~40 s idle, minutes on a machine busy with others
        while True:  # main measured, a few experiments back, and scraped a few times since
            assert farm.poll() is None, "the farm exited early\n" + logs()
            assert prom.poll() is None, "prometheus exited\n" + logs()
            assert time.monotonic() < deadline, "no data in time\n" + logs()
            try:
                done = scraped("sum(farm_experiments_total)")
                ready = done is not None and done >= 4 and scraped("farm_main_val_bpb") is not None
            except OSError:  # prometheus still starting
                ready = False
            if ready:
                break
            time.sleep(1)
        time.sleep(3)  # a few more scrapes for rate()
        assert scraped('up{job="autoresearch-farm"}') == 1
        assert 0 < scraped("farm_gpu_busy_seconds_total") and scraped("farm_gpus") == 2
        assert scraped("sum(farm_experiment_phase_seconds_count)") > 0
        assert scraped('sum(farm_experiments_total{status="ok"})') >= 1
        assert scraped('sum(farm_proposals_total{outcome="queued"})') >= 1

        dash = dashboard()
        values = grafana_variables(dash)
        instances = api(base, "/api/v1/label/instance/values", **{"match[]": "farm_gpus"})
        assert instances == [f"127.0.0.1:{metrics_port}"]  # the dashboard's instance variable has its values
        empty = []
        for title, expr in expressions(dash):
            query = substitute(expr, values)
            promql_parser.parse(query)
            data = api(base, "/api/v1/query", query=query)
            if not has_finite_value(data):
                empty.append(f"{title}: {query}")
            print(f"{title}: {[(r.get('metric'), r['value'][1]) for r in data['result']][:4]}")  # shown with -s
            api(base, "/api/v1/query_range", query=query, start=str(time.time() - 60), end=str(time.time()),
                step="5")  # a panel's range query is accepted too
        assert not empty, "dashboard queries without data:\n" + "\n".join(empty) + "\n" + logs()

        farm.send_signal(signal.SIGINT)  # Ctrl-C: the experiments in flight finish, the exporter closes
        assert farm.wait(timeout=60) == 0, logs()
        assert f"metrics at http://127.0.0.1:{metrics_port}/metrics" in (tmp_path / "farm.log").read_text()
    finally:
        if farm.poll() is None:
            os.killpg(farm.pid, signal.SIGKILL)  # the driver and the local Ray it started
            farm.wait(timeout=30)
        prom.terminate()
        prom.wait(timeout=30)
