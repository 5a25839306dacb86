"""The Helm chart (helm/autoresearch-farm) and the experiment Pod the kubernetes sandbox builds.

No helm binary and no cluster here: helm-python-sdk (Helm's Go SDK, embedded)
loads, lints and renders the chart offline; kubernetes-validate checks every
core manifest against the bundled Kubernetes OpenAPI schemas (strict: unknown
fields fail). KubeRay's and the Prometheus Operator's CRDs have no bundled
schema: those manifests are checked for apiVersion, kind and structure here.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import re
import shlex
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from cluster.cli import build_parser
from cluster.config import CLI_FLAGS, FarmConfig, load_config, overrides_from_args
from cluster.execution.spec import ExperimentSpec, GpuAssignment, Limits
from cluster.sandbox.base import ENV_ALLOW, OUTER_KILL_GRACE
from cluster.sandbox.kube_pod import UID_BASE, UID_SPAN, KubernetesSettings, labels, pod_manifest
from trainer.profiles import get_profile

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "autoresearch-farm"
DASHBOARD = REPO / "monitoring" / "grafana" / "autoresearch-farm.json"
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
CRDS = {("ray.io/v1", "RayCluster"), ("ray.io/v1", "RayJob"), ("monitoring.coreos.com/v1", "ServiceMonitor")}
SECRET = "sk-test-never-in-a-pod"
# Experiments run in <release>-experiments, which needs its own claim on the cache's storage: the chart refuses to
# render without one, so every render here names one (tests that are about that refusal leave it out).
BASE = {"cache": {"experimentsClaim": "farm-cache"}}
EXPERIMENTS_NS = "farm-experiments"

ALL_ON = {
    "fullnameOverride": "arf",
    "commonLabels": {"team": "research"},
    "imagePullSecrets": ["regcred"],
    "trainerImage": {"repository": "registry.example/trainer", "tag": "cu128", "pullPolicy": "Always"},
    "farm": {"profile": "h100", "gpuSlots": 16, "agents": 24, "agentKind": "claude", "maxExperiments": 500,
             "hours": 12, "costCapUsd": 50, "extraArgs": ["--queue-ahead", "3"],
             "extraEnv": [{"name": "FARM_TOURNAMENT__MARGIN_SIGMAS", "value": "3"}],
             "config": {"tournament": {"confirm_replicates": 2}, "limits": {"memory_mb": 16384},
                        "kubernetes": {"poll_max_s": 1.5}},
             "runs": {"existingClaim": "farm-runs"}},
    "rayJob": {"activeDeadlineSeconds": 86400, "backoffLimit": 5},
    "rayCluster": {"enableInTreeAutoscaling": True, "auth": {"enabled": True},
                   "networkPolicy": {"operatorNamespaceSelector": {"matchLabels": {"name": "ray-system"}},
                                     "extraIngress": [{"ports": [{"port": 8090, "protocol": "TCP"}]}]},
                   "head": {"rayStartParams": {"num-cpus": "4"}, "nodeSelector": {"pool": "cpu"},
                            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "farm",
                                             "effect": "NoSchedule"}]},
                   "agentWorkers": {"replicas": 2, "maxReplicas": 8, "nodeSelector": {"pool": "cpu"}}},
    "apiKey": {"existingSecret": "anthropic", "secretKey": "key"},
    "cache": {"existingClaim": "datasets", "subPath": "autoresearch", "experimentsClaim": "datasets-experiments"},
    "experiments": {"namespace": "research-sandbox", "createNamespace": True, "pidsLimit": 1024,
                    "serviceAccount": {"create": True, "name": "sandboxed"},
                    "gpu": True, "gpuResource": "nvidia.com/gpu", "nodeSelector": {"gpu": "h100"},
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                                    {"key": "spot", "operator": "Exists"}],
                    "startTimeoutSeconds": 900, "priorityClassName": "research", "tmpMb": 2048,
                    "runtimeClass": {"name": "gvisor", "create": True, "handler": "runsc"}},
    "serviceAccount": {"annotations": {"example.com/role": "farm"}},
    "metrics": {"port": 9500, "serviceMonitor": {"enabled": True, "additionalLabels": {"release": "kps"},
                                                 "interval": "15s"}},
    "grafanaDashboard": {"enabled": True, "sidecarLabel": "grafana_dashboard", "sidecarLabelValue": "1",
                         "folder": "Research", "additionalLabels": {"x": "y"}},
}  # fmt: skip


@pytest.fixture(scope="module")
def chart() -> helm.Chart:
    logging.getLogger().setLevel(logging.WARNING)
    return helm.Chart.load(CHART)


def with_base(values: dict | None) -> dict:
    """values over BASE (one level deep is enough for the keys BASE sets)."""
    merged = {k: dict(v) for k, v in BASE.items()}
    for key, value in (values or {}).items():
        merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) and key in merged else value
    return merged


def render(chart: helm.Chart, values: dict | None = None) -> list[dict]:
    out = chart.render(with_base(values), name="farm", namespace="research", is_install=True)
    docs = []
    for path, text in sorted(out.items()):
        if not path.endswith(".txt"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def one(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind}s"
    return found[0]


def head_env(docs: list[dict]) -> dict[str, str]:
    head = one(docs, "RayCluster")["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in head["env"]}


def farm_yaml(docs: list[dict]) -> str:
    """The farm.yaml the chart renders (its one ConfigMap of the farm's settings)."""
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-config")]
    return config_map["data"]["farm.yaml"]


def head_config(docs: list[dict], tmp_path: Path, cli: dict | None = None, env: dict | None = None) -> FarmConfig:
    """The config the driver on the head loads: the chart's farm.yaml (written where --config finds it here), the
    head's environment, flags."""
    path = tmp_path / "farm.yaml"
    path.write_text(farm_yaml(docs))
    return load_config(cli, yaml_path=path, env={**head_env(docs), "ANTHROPIC_API_KEY": "sk-x", **(env or {})})


def validate_all(docs: list[dict]) -> None:
    for doc in docs:
        for version in K8S_VERSIONS:
            if (doc["apiVersion"], doc["kind"]) in CRDS:
                with pytest.raises(kubernetes_validate.SchemaNotFoundError):  # CRDs only warn: checked below
                    kubernetes_validate.validate(doc, version, strict=True)
            else:
                kubernetes_validate.validate(doc, version, strict=True)
        meta = doc["metadata"]
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                    "app.kubernetes.io/component", "app.kubernetes.io/managed-by", "helm.sh/chart"):  # fmt: skip
            assert key in meta["labels"], (doc["kind"], key)
    text = json.dumps(docs)
    assert "docker.sock" not in text and "hostPath" not in text and 'privileged": true' not in text


def check_kuberay(docs: list[dict], slots: int) -> None:
    cluster = one(docs, "RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"
    head = cluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == str(slots)
    assert all(isinstance(v, str) for v in head["rayStartParams"].values())
    assert cluster["spec"]["authOptions"] == {"mode": "token"}  # Ray's token authentication, via KubeRay
    pod = head["template"]["spec"]
    assert pod["automountServiceAccountToken"] is True and pod["serviceAccountName"]
    container = pod["containers"][0]
    assert {p["name"] for p in container["ports"]} >= {"gcs", "dashboard", "client", "farm-metrics"}
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/cache", "/farm/runs", "/tmp"}
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "h"}, "spec": pod},
                                 K8S_VERSIONS[-1], strict=True)  # fmt: skip
    for group in cluster["spec"].get("workerGroupSpecs", []):
        assert group["rayStartParams"]["num-gpus"] == "0"
        assert group["template"]["spec"]["automountServiceAccountToken"] is False
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "w"},
                                      "spec": group["template"]["spec"]}, K8S_VERSIONS[-1], strict=True)  # fmt: skip
    job = one(docs, "RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert job["spec"]["shutdownAfterJobFinishes"] is False
    assert "farm run" in job["spec"]["entrypoint"]


def farm_args(entrypoint: str) -> list[list[str]]:
    """The two `farm run` commands of the entrypoint (new run, resume)."""
    words = shlex.split(entrypoint.replace(";", " ; "))
    runs, current = [], None
    for word in words:
        if word == "farm":
            current = []
        elif word in (";", "fi", "else") and current is not None:
            runs.append(current)
            current = None
        elif current is not None:
            current.append(word)
    return runs


def test_lint_is_clean(chart) -> None:
    for values in (BASE, ALL_ON):
        report = helm.lint(CHART, values, strict=True, namespace="research", kube_version="v1.30.0")
        assert report["errors"] == [] and report["total_charts_linted"] == 1
        serious = [m for m in report["messages"] if m["severity"] >= 2]
        assert serious == [], serious


def test_every_value_is_commented() -> None:
    """helm-docs style: every value has a '# --' comment; a section has a plain comment and commented children."""
    content_indent = None  # inside the default of a commented value (e.g. resources:), keys are content
    lines = (CHART / "values.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        if content_indent is not None and indent > content_indent:
            continue
        content_indent = None
        if stripped.startswith("-") or ":" not in stripped:
            continue
        previous = lines[i - 1].strip()
        assert previous.startswith("#"), f"values.yaml line {i + 1} has no comment: {line}"
        if previous.startswith("# --"):
            content_indent = indent


def test_default_render_validates(chart) -> None:
    docs = render(chart)
    validate_all(docs)
    check_kuberay(docs, 8)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(["RayCluster", "RayJob", "ServiceAccount", "ServiceAccount", "Role", "RoleBinding",
                            "PersistentVolumeClaim", "NetworkPolicy", "NetworkPolicy", "Service",
                            "Namespace", "ConfigMap"])  # fmt: skip
    pvc = one(docs, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    env = head_env(docs)
    assert "ANTHROPIC_API_KEY" not in env and "ANTHROPIC_API_KEY_FILE" not in env
    notes = chart.render(BASE, name="farm", namespace="research")["autoresearch-farm/templates/NOTES.txt"]
    assert "port-forward service/farm-autoresearch-farm-head-svc 8265:8265" in notes
    assert "port-forward service/farm-autoresearch-farm-metrics 9464:9464" in notes


def test_all_flags_render_validates(chart, tmp_path) -> None:
    docs = render(chart, ALL_ON)
    validate_all(docs)
    check_kuberay(docs, 16)
    assert not [d for d in docs if d["kind"] in ("Secret", "PersistentVolumeClaim")]  # existing ones are used
    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kps"
    service = one(docs, "Service")
    assert service["spec"]["ports"][0]["port"] == 9500 and service["spec"]["ports"][0]["name"] == "metrics"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics" and monitor["spec"]["endpoints"][0]["interval"] == "15s"
    (dashboard,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "arf-dashboard"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1" and dashboard["metadata"]["labels"]["x"] == "y"
    assert dashboard["metadata"]["annotations"]["grafana_folder"] == "Research"
    assert json.loads(dashboard["data"]["autoresearch-farm.json"]) == json.loads(DASHBOARD.read_text())
    runtime = one(docs, "RuntimeClass")
    assert runtime["metadata"]["name"] == "gvisor" and runtime["handler"] == "runsc"
    cluster = one(docs, "RayCluster")
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    assert head["imagePullSecrets"] == [{"name": "regcred"}] and head["nodeSelector"] == {"pool": "cpu"}
    assert {"name": "runs", "persistentVolumeClaim": {"claimName": "farm-runs"}} in head["volumes"]
    assert cluster["spec"]["workerGroupSpecs"][0]["replicas"] == 2
    assert head_env(docs)["FARM_TOURNAMENT__MARGIN_SIGMAS"] == "3"  # farm.extraEnv: over farm.yaml
    config = head_config(docs, tmp_path)
    assert config.tournament.margin_sigmas == 3 and config.tournament.confirm_replicates == 2
    k = config.kubernetes
    assert k.runtime_class == "gvisor" and k.pids == 1024 and k.cache_sub_path == "autoresearch"
    assert k.cache_pvc == "datasets-experiments"  # the claim in the experiments' namespace
    assert k.namespace == "research-sandbox" and k.service_account == "sandboxed"


def test_api_key_reaches_the_driver_side_only_as_a_file(chart) -> None:
    docs = render(chart, {"apiKey": {"value": SECRET}})
    validate_all(docs)
    secret = one(docs, "Secret")
    assert base64.b64decode(secret["data"]["ANTHROPIC_API_KEY"]).decode() == SECRET
    cluster = one(docs, "RayCluster")
    pods = [cluster["spec"]["headGroupSpec"]["template"]["spec"]]
    pods += [g["template"]["spec"] for g in cluster["spec"]["workerGroupSpecs"]]
    for pod in pods:
        container = pod["containers"][0]
        assert {"name": "ANTHROPIC_API_KEY_FILE", "value": "/var/run/secrets/autoresearch-farm/api-key"} in container[
            "env"
        ]
        assert not any("valueFrom" in e for e in container["env"])  # never an env var holding the key itself
        volume = next(v for v in pod["volumes"] if v["name"] == "api-key")
        assert volume["secret"]["secretName"] == secret["metadata"]["name"]
        assert next(m for m in container["volumeMounts"] if m["name"] == "api-key")["readOnly"] is True
    job = one(docs, "RayJob")["spec"]["submitterPodTemplate"]["spec"]
    assert "volumes" not in job  # the submitter pod only runs `ray job submit`
    assert SECRET not in json.dumps([d for d in docs if d["kind"] != "Secret"])


def test_schema_rejects_typos_and_wrong_types(chart) -> None:
    chart.validate_schema(ALL_ON)
    bad = [
        {"farm": {"gpuSlot": 4}},  # a typo'd key
        {"experimentz": {}},
        {"metrics": {"port": "9464"}},  # a string where a number goes
        {"metrics": {"port": 8265}},  # Ray's dashboard port
        {"farm": {"gpuSlots": 0}},
        {"farm": {"profile": "h200"}},
        {"experiments": {"gpu": "yes"}},
        {"experiments": {"tolerations": [{"key": "a", "operater": "Exists"}]}},
        {"cache": {"accessModes": ["ReadWriteAll"]}},
        {"rayCluster": {"head": {"rayStartParams": {"num-gpus": "2"}}}},  # set by the chart from gpuSlots
        {"metrics": {"serviceMonitor": {"interval": "often"}}},
        {"experiments": {"namespace": "Research_Sandbox"}},  # not a DNS label
        {"experiments": {"pidsLimit": -1}},
        {"experiments": {"serviceAccount": {"create": True, "automount": True}}},
        {"cache": {"experimentsClaim": "Datasets"}},
        {"rayCluster": {"auth": {"enabled": "yes"}}},
        {"rayCluster": {"networkPolicy": {"operatorPodSelector": {"matchLabel": {"a": "b"}}}}},
        {"farm": {"config": "tournament.margin_sigmas=3"}},  # farm.yaml's fields, as a map
    ]
    for values in bad:
        with pytest.raises(helm.HelmError):
            chart.validate_schema(values)
        with pytest.raises(helm.HelmError):
            chart.render(with_base(values), name="farm", namespace="research")


def backend_calls(tmp_path: Path, namespace: str) -> set[tuple[str, str, str]]:
    """(namespace, resource, verb) of every API request the kubernetes sandbox makes: start (the access check),
    a run (a retried attempt's leftover removed first, the candidate, the pod, polls, the log, the deletes),
    leftover cleanup, and a run that fails to start."""
    from cluster.sandbox.kube_pod import EXPERIMENT_LABEL, INSTANCE_LABEL, ROLE, ROLE_LABEL
    from cluster.sandbox.kubernetes import KubernetesSandbox
    from tests.fake_kube import FakeKube, Script

    token = tmp_path / "token"
    token.write_text("good-token")
    bad = Script(pending_s=float("inf"), waiting={"reason": "InvalidImageName", "message": "x"})
    with FakeKube(lambda pod: bad if "bad" in pod["metadata"]["name"] else Script(run_s=0.2, log="ok\n")) as fake:
        sandbox = KubernetesSandbox(KubernetesSettings(api_server=fake.url, token_file=token, namespace=namespace,
                                                       instance="farm", poll_max_s=0.1))  # fmt: skip
        for experiment in ("e1", "bad"):
            spec = ExperimentSpec(experiment_id=experiment, train_py="print(1)\n", profile="cpu-smoke",
                                  run_dir=tmp_path / experiment, cache_dir=tmp_path)  # fmt: skip
            lost = {ROLE_LABEL: ROLE, INSTANCE_LABEL: "farm", EXPERIMENT_LABEL: experiment}
            fake.add("pods", f"farm-{experiment}-lost", lost, namespace)
            fake.add("configmaps", f"farm-{experiment}-lost-src", lost, namespace)
            sandbox.run(spec, GpuAssignment())
        fake.add("pods", "farm-crashed", {ROLE_LABEL: ROLE, INSTANCE_LABEL: "farm"}, namespace)
        assert sandbox.cleanup_leftovers() == 1
        return fake.rbac_pairs()


def test_rbac_is_exactly_what_the_backend_calls(chart, tmp_path) -> None:
    """The Role's (resource, verb) pairs are the requests the backend makes, no more (no watch), no fewer; in the
    experiments' namespace only: the driver can create no pod where the API key's Secret is."""
    docs = render(chart, {"apiKey": {"value": SECRET}})
    (role,) = [d for d in docs if d["kind"] == "Role"]
    assert role["metadata"]["namespace"] == EXPERIMENTS_NS
    granted = set()
    for rule in role["rules"]:
        assert rule["apiGroups"] == [""] and set(rule) == {"apiGroups", "resources", "verbs"}  # no resourceNames
        granted |= {(EXPERIMENTS_NS, r, v) for r in rule["resources"] for v in rule["verbs"]}
    used = backend_calls(tmp_path, EXPERIMENTS_NS)
    assert used == granted
    assert {r for _, r, _ in used} == {"pods", "pods/log", "configmaps"}
    binding = one(docs, "RoleBinding")
    account = next(d for d in docs if d["kind"] == "ServiceAccount" and d["metadata"].get("namespace") is None)
    assert binding["metadata"]["namespace"] == EXPERIMENTS_NS and binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}  # fmt: skip
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": "research"}]  # fmt: skip
    head = one(docs, "RayCluster")["spec"]["headGroupSpec"]["template"]["spec"]
    assert head["serviceAccountName"] == account["metadata"]["name"]
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    secret = one(docs, "Secret")
    assert secret["metadata"].get("namespace") is None  # the release namespace, where the driver has no rights
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "RoleBinding"] == [binding["metadata"]["name"]]


def test_experiments_get_a_restricted_namespace_an_account_without_rights_and_no_traffic(chart, tmp_path) -> None:
    for values, ns, account_name in ((None, EXPERIMENTS_NS, "farm-autoresearch-farm-experiment"),
                                     (ALL_ON, "research-sandbox", "sandboxed")):  # fmt: skip
        docs = render(chart, values)
        namespace = one(docs, "Namespace")
        assert namespace["metadata"]["name"] == ns
        psa = {k: v for k, v in namespace["metadata"]["labels"].items() if k.startswith("pod-security.")}
        assert psa == {f"pod-security.kubernetes.io/{mode}{suffix}": value for mode in ("enforce", "warn", "audit")
                       for suffix, value in (("", "restricted"), ("-version", "latest"))}  # fmt: skip
        account = next(d for d in docs if d["kind"] == "ServiceAccount" and d["metadata"].get("namespace") == ns)
        assert account["metadata"]["name"] == account_name and account["automountServiceAccountToken"] is False
        bound = [s["name"] for d in docs if d["kind"] == "RoleBinding" for s in d["subjects"]]
        assert account_name not in bound  # no rights at all
        policy = next(d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"].get("namespace") == ns)
        assert policy["spec"] == {"podSelector": {"matchLabels": {"autoresearch-farm/role": "experiment",
                                                                  "autoresearch-farm/instance": docs_instance(docs)}},
                                  "policyTypes": ["Ingress", "Egress"], "ingress": [], "egress": []}  # fmt: skip
        settings = head_config(docs, tmp_path).kubernetes
        assert settings.namespace == ns and settings.service_account == account_name


def docs_instance(docs: list[dict]) -> str:
    return one(docs, "RayCluster")["metadata"]["name"]


def test_experiments_beside_the_farm_or_a_missing_cache_claim(chart, tmp_path) -> None:
    """experiments.namespace = the release's: the old single-namespace layout (no Namespace, no PSA labels, the
    head's cache claim); a separate namespace without cache.experimentsClaim: a refusal that says what to set."""
    docs = render(chart, {"experiments": {"namespace": "research"}, "cache": {"experimentsClaim": ""}})
    validate_all(docs)
    assert not [d for d in docs if d["kind"] == "Namespace"]
    settings = head_config(docs, tmp_path).kubernetes
    assert settings.namespace == "research"
    assert settings.cache_pvc == one(docs, "PersistentVolumeClaim")["metadata"]["name"]
    assert one(docs, "Role")["metadata"]["namespace"] == "research"
    with pytest.raises(helm.HelmError, match="cache.experimentsClaim.*experiments.namespace=research"):
        chart.render({}, name="farm", namespace="research")


def test_ray_pods_take_connections_from_the_farm_only(chart) -> None:
    """Ray's ports (GCS, dashboard/Jobs API, client, raylet, workers) answer the farm's own pods and the KubeRay
    operator's dashboard calls; an experiment pod matches no rule, even in the release namespace."""
    for values in (None, ALL_ON):
        docs = render(chart, values)
        policy = next(d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"].endswith("-ray"))
        assert policy["metadata"].get("namespace") is None  # the release namespace, where Ray runs
        spec = policy["spec"]
        assert spec["policyTypes"] == ["Ingress"]
        cluster = one(docs, "RayCluster")["spec"]
        head = cluster["headGroupSpec"]["template"]["metadata"]["labels"]
        worker = cluster["workerGroupSpecs"][0]["template"]["metadata"]["labels"]
        submitter = one(docs, "RayJob")["spec"]["submitterPodTemplate"]["metadata"]["labels"]
        assert selects(spec["podSelector"], head) and selects(spec["podSelector"], worker)
        assert not selects(spec["podSelector"], submitter)
        farm_rule, operator_rule, metrics_rule, *extra = spec["ingress"]
        assert set(farm_rule) == {"from"} and len(farm_rule["from"]) == 1  # every port, from the farm's pods only
        peer = farm_rule["from"][0]
        assert set(peer) == {"podSelector"}  # no namespaceSelector: this namespace only
        for pod in (head, worker, submitter):
            assert selects(peer["podSelector"], pod)
        experiment = experiment_pod(KubernetesSettings(instance=docs_instance(docs)))["metadata"]["labels"]
        assert not selects(peer["podSelector"], experiment)
        assert not selects(peer["podSelector"], {**experiment, "app.kubernetes.io/instance": "farm"})
        assert operator_rule["ports"] == [{"protocol": "TCP", "port": 8265}]
        (operator,) = operator_rule["from"]
        assert operator["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}
        assert operator["namespaceSelector"] == ({"matchLabels": {"name": "ray-system"}} if values else {})
        assert metrics_rule == {"ports": [{"protocol": "TCP", "port": 9500 if values else 9464}]}
        assert extra == ([{"ports": [{"port": 8090, "protocol": "TCP"}]}] if values else [])
    off = render(chart, {"rayCluster": {"networkPolicy": {"enabled": False}, "auth": {"enabled": False}}})
    assert not [d for d in off if d["kind"] == "NetworkPolicy" and d["metadata"]["name"].endswith("-ray")]
    assert "authOptions" not in one(off, "RayCluster")["spec"]


def selects(selector: dict, pod_labels: dict[str, str]) -> bool:
    """A LabelSelector's verdict on a pod's labels (matchLabels and In/NotIn/Exists/DoesNotExist)."""
    if not selector.get("matchLabels", {}).items() <= pod_labels.items():
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {"In": pod_labels.get(key) in values, "NotIn": pod_labels.get(key) not in values,
              "Exists": key in pod_labels, "DoesNotExist": key not in pod_labels}[op]  # fmt: skip
        if not ok:
            return False
    return True


def test_driver_entrypoint_is_a_valid_farm_run(chart, tmp_path) -> None:
    for values, slots in (({}, 8), (ALL_ON, 16)):
        docs = render(chart, values)
        runs = farm_args(one(docs, "RayJob")["spec"]["entrypoint"])
        assert len(runs) == 2 and runs[0][:2] == ["run", "--resume"] and runs[1][:2] == ["run", "--config"]
        new = build_parser().parse_args(runs[1])
        head = one(docs, "RayCluster")["spec"]["headGroupSpec"]["template"]["spec"]
        (mount,) = [m for m in head["containers"][0]["volumeMounts"] if m["name"] == "farm-config"]
        (volume,) = [v for v in head["volumes"] if v["name"] == "farm-config"]
        assert mount["readOnly"] is True and new.config == Path(mount["mountPath"]) / "farm.yaml"
        assert volume["configMap"]["name"] == f"{docs_instance(docs)}-config"  # the ConfigMap that holds farm.yaml
        assert overrides_from_args(new)["run_dir"] == f"/farm/runs/{docs_instance(docs)}"
        for argv in runs:  # a resumed run keeps its saved config (farm-config.json), the flags over it
            config = head_config(docs, tmp_path, overrides_from_args(build_parser().parse_args(argv)))
            assert config.sandbox == "kubernetes" and config.gpus == slots
            assert config.metrics_port == (9500 if values else 9464) and config.metrics_address == "0.0.0.0"
            assert config.kubernetes.namespace == ("research-sandbox" if values else EXPERIMENTS_NS)


def test_chart_renders_one_farm_yaml_the_driver_loads(chart, tmp_path) -> None:
    """The farm's settings travel as data: one farm.yaml (a ConfigMap), the kubernetes sandbox's computed from the
    chart's values, farm.config merged in, types kept; no FARM_KUBERNETES__* on the head."""
    for values in ({}, ALL_ON):
        docs = render(chart, values)
        farm_env = {n for n in head_env(docs) if n.startswith("FARM_")}  # FARM_CACHE: read outside FarmConfig
        assert farm_env == ({"FARM_CACHE", "FARM_TOURNAMENT__MARGIN_SIGMAS"} if values else {"FARM_CACHE"})
        data = yaml.safe_load(farm_yaml(docs))
        assert set(data) == ({"kubernetes", "tournament", "limits"} if values else {"kubernetes"})
        config = head_config(docs, tmp_path, env={"FARM_TOURNAMENT__MARGIN_SIGMAS": ""})  # farm.yaml alone
        k = config.kubernetes
        assert k.instance == docs_instance(docs) and k.gpu_resource == "nvidia.com/gpu"
        assert k.start_timeout_s == (900 if values else 600) and k.tmp_mb == (2048 if values else 1024)
        assert isinstance(data["kubernetes"]["tmp_mb"], int) and isinstance(data["kubernetes"]["tolerations"], list)
        if values:
            assert k.gpu is True and k.priority_class == "research" and k.image_pull_policy == "Always"
            assert k.image_pull_secrets == ["regcred"] and k.node_selector == {"gpu": "h100"}
            assert k.tolerations == ALL_ON["experiments"]["tolerations"] and k.poll_max_s == 1.5  # farm.config
            assert config.tournament.confirm_replicates == 2 and config.limits.memory_mb == 16384
            assert config.tournament.margin_sigmas == 2.3  # the default: FARM_TOURNAMENT__MARGIN_SIGMAS emptied
        else:
            assert k.gpu is None and k.pids is None and k.runtime_class is None and k.priority_class is None
            assert k.node_selector == {} and k.image_pull_secrets == []
    docs = render(chart, {"farm": {"costCapUsd": 0, "config": {"cost_cap_usd": None, "agents": {"kind": "openai"},
                                                               "tournament": {"margin_sigmas": 3}}}})
    config = head_config(docs, tmp_path)  # a null survives (no cap), a kind the chart's agentKind does not offer
    assert config.cost_cap_usd is None and config.agents.kind == "openai" and config.tournament.margin_sigmas == 3


def test_farm_config_may_not_set_what_the_chart_sets(chart) -> None:
    """A field the chart sets (in farm.yaml, or as a flag of the entrypoint, which would win silently) is refused in
    farm.config, naming the value to set instead; every flag of the entrypoint is covered."""
    flagged = {flag: path for path, (flag, _) in CLI_FLAGS.items()}
    runs = farm_args(one(render(chart, ALL_ON), "RayJob")["spec"]["entrypoint"])
    paths = {flagged[w] for w in runs[1] if w in flagged} - {"queue_ahead"}  # farm.extraArgs: the user's own
    assert paths >= {"sandbox", "profile", "gpus", "image", "cache_dir", "metrics_port", "run_dir", "agents.count"}
    paths |= {"kubernetes.namespace", "kubernetes.tolerations", "kubernetes.cache_pvc", "kubernetes.runtime_class"}
    for path in sorted(paths):
        *parents, last = path.split(".")
        config: dict = {last: None}
        for part in reversed(parents):
            config = {part: config}
        values = {**ALL_ON, "farm": {**ALL_ON["farm"], "config": config}}
        with pytest.raises(helm.HelmError, match=re.escape(f"farm.config.{path}: the chart sets it from ")):
            render(chart, values)
    with pytest.raises(helm.HelmError, match="farm.config.kubernetes.namespace: .* experiments.namespace"):
        render(chart, {"farm": {"config": {"kubernetes": {"namespace": "default"}}}})
    render(chart, {"farm": {"config": {"kubernetes": {"pids": 64}, "max_experiments": 3}}})  # unset by the chart


def experiment_pod(settings: KubernetesSettings, profile: str = "h100", tmp: Path = Path("/nonexistent")) -> dict:
    spec = ExperimentSpec(experiment_id="e0042.retry_1", train_py="print('hi')\n", profile=profile, seed=3,
                          run_dir=tmp / "run", cache_dir=Path("/cache"), image="registry.example/trainer:cu128",
                          limits=Limits(memory_mb=30000, shm_mb=4096, cpus=6))  # fmt: skip
    return pod_manifest(
        spec, GpuAssignment(index=0), settings, "farm-e0042-retry-1-abcdef12", "farm-e0042-src", "a" * 12
    )


def s_index(args: list[str], flag: str) -> int:
    return args.index(flag) + 1


def assert_restricted(pod: dict, settings: KubernetesSettings, gpu: bool) -> None:
    """Every restriction of the kubernetes sandbox, field by field: the separated pod (the runner's and the
    candidate's containers) unless a GPU has no shared claim (then the single container of old)."""
    claimed = gpu and bool(settings.gpu_claim_template)
    for version in K8S_VERSIONS if not claimed else K8S_VERSIONS[1:]:  # the pod's claim API is 1.31+
        kubernetes_validate.validate(pod, version, strict=True)
    spec = pod["spec"]
    assert psa_restricted_violations(pod) == []
    split = not gpu or claimed
    assert [c["name"] for c in spec["containers"]] == (["runner", "candidate"] if split else ["experiment"])
    container = spec["containers"][0]  # the runner's: its log carries the result
    sc = container["securityContext"]
    if split:
        candidate = spec["containers"][1]
        csc = candidate["securityContext"]
        uid = csc["runAsUser"]
        assert sc["runAsUser"] == sc["runAsGroup"] == 65534  # the farm's uid, which owns the cache
        assert csc["runAsGroup"] == uid and "fsGroup" not in spec["securityContext"]  # no group shared with it
        assert "runAsUser" not in spec["securityContext"] and spec["shareProcessNamespace"] is False
        assert container["command"][:2] == ["python", "-c"] and container["command"][3] == "0"  # no cap on the runner
        assert container["args"][s_index(container["args"], "--exchange")] == "/exchange"
        assert container["args"][s_index(container["args"], "--pids")] == str(settings.pids or 512)
        assert candidate["command"] == ["python", "-m", "trainer.exchange", "/exchange"]
        assert {e["name"] for e in candidate["env"]} <= {"PYTHONUNBUFFERED", "HOME"}  # the runner sends the rest
        containers = [container, candidate]
    else:
        uid = spec["securityContext"]["runAsUser"]
        assert sc["runAsUser"] == uid and sc["runAsGroup"] == 65534
        assert container["command"][:2] == ["python", "-c"] and "RLIMIT_NPROC" in container["command"][2]
        assert container["command"][3] == str(settings.pids or 512)  # the spec's limits.pids unless set
        containers = [container]
    assert UID_BASE <= uid < UID_BASE + UID_SPAN  # a uid of its own: not the farm's 65534, nor root
    for c in containers:
        csc = c["securityContext"]
        assert csc["runAsNonRoot"] is True and csc["allowPrivilegeEscalation"] is False and csc["privileged"] is False
        assert csc["capabilities"] == {"drop": ["ALL"]}
        assert csc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert csc["readOnlyRootFilesystem"] is True
        assert all("valueFrom" not in e for e in c["env"])
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    assert spec.get("serviceAccountName") == settings.service_account
    assert spec["enableServiceLinks"] is False
    assert spec["restartPolicy"] == "Never"
    assert spec["hostNetwork"] is False and spec["hostPID"] is False and spec["hostIPC"] is False
    wall = get_profile(pod["spec"]["containers"][0]["args"][s_index(container["args"], "--profile")]).wall_limit
    assert spec["activeDeadlineSeconds"] == math.ceil(wall + OUTER_KILL_GRACE + settings.start_timeout_s)
    assert f"{wall:g}" == container["args"][s_index(container["args"], "--wall-limit")]
    trains = containers[-1]  # the container the candidate trains in
    limits, requests = trains["resources"]["limits"], trains["resources"]["requests"]
    assert limits == requests and limits["memory"] == "30000Mi" and limits["cpu"] == "6000m"
    assert container["resources"]["limits"] == limits  # the runner evaluates the same model with the same means
    if claimed:
        assert spec["resourceClaims"] == [{"name": "gpu", "resourceClaimTemplateName": settings.gpu_claim_template}]
        assert all(c["resources"]["claims"] == [{"name": "gpu"}] for c in containers)
        assert settings.gpu_resource not in limits
    elif gpu:
        assert limits[settings.gpu_resource] == "1"
    else:
        assert settings.gpu_resource not in limits and "resourceClaims" not in spec
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in trains["volumeMounts"]}
    assert mounts["/tmp"]["name"] == "tmp" and "emptyDir" in volumes["tmp"]
    assert volumes["tmp"]["emptyDir"]["sizeLimit"] == f"{settings.tmp_mb}Mi"
    assert mounts["/dev/shm"]["name"] == "shm" and volumes["shm"]["emptyDir"] == {
        "medium": "Memory",
        "sizeLimit": "4096Mi",
    }
    for c in containers:
        ms = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert ms["/cache"]["readOnly"] is True and ms["/candidate"]["readOnly"] is True
    assert volumes["cache"]["persistentVolumeClaim"] == {"claimName": settings.cache_pvc, "readOnly": True}
    assert volumes["candidate"]["configMap"]["name"] == "farm-e0042-src"
    if split:  # nothing else is mounted; the runner's /tmp (its out dir) is not the candidate's
        assert set(mounts) == {"/tmp", "/dev/shm", "/cache", "/candidate", "/exchange"}
        runner_mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert set(runner_mounts) == {"/tmp", "/cache", "/candidate", "/exchange"}
        assert runner_mounts["/tmp"] == "runner-tmp" and "runner-tmp" not in {m["name"] for m in trains["volumeMounts"]}
    else:
        assert set(mounts) == {"/tmp", "/dev/shm", "/cache", "/candidate"}  # nothing else is mounted, nothing writable
    assert not any("hostPath" in v for v in volumes.values())
    assert spec.get("runtimeClassName") == settings.runtime_class
    assert spec.get("nodeSelector", {}) == settings.node_selector
    assert spec.get("tolerations", []) == settings.tolerations
    env = {e["name"]: e["value"] for e in container["env"]}
    allowed = set(ENV_ALLOW) - {"PATH"}
    allowed |= {"FARM_PROFILE", "FARM_CACHE", "FARM_SEED", "HOME", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED",
                "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "USER", "LOGNAME"}  # fmt: skip
    assert set(env) <= allowed, set(env) - allowed
    assert SECRET not in json.dumps(pod)
    assert env["FARM_CACHE"] == "/cache" and env["HOME"] == "/tmp"
    if gpu:
        assert "CUDA_VISIBLE_DEVICES" not in env  # the device plugin or the claim shows the pod its one GPU
    else:
        assert env["CUDA_VISIBLE_DEVICES"] == "" and env["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert container["args"][:2] == ["-m", "trainer.runner"] and "/candidate/train.py" in container["args"]
    assert "--wall-limit" in container["args"]
    meta = pod["metadata"]["labels"]
    assert meta["autoresearch-farm/role"] == "experiment"
    assert meta["autoresearch-farm/instance"] == (settings.instance or "farm")
    assert meta["autoresearch-farm/experiment"] == "e0042.retry_1"


def psa_restricted_violations(pod: dict) -> list[str]:
    """What Pod Security Admission's `restricted` level (v1.30+, the namespace's enforce label) would refuse."""
    spec, found = pod["spec"], []
    containers = spec["containers"] + spec.get("initContainers", []) + spec.get("ephemeralContainers", [])
    pod_sc = spec.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            found.append(flag)
    allowed_volumes = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                       "projected", "secret"}  # fmt: skip
    for volume in spec.get("volumes", []):
        if set(volume) - {"name"} - allowed_volumes:
            found.append(f"volume {volume['name']}")
    if pod_sc.get("runAsUser") == 0:
        found.append("pod runAsUser 0")
    for c in containers:
        sc, name = c.get("securityContext", {}), c["name"]
        if sc.get("privileged"):
            found.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []) or set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: capabilities")
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True or sc.get("runAsUser") == 0:
            found.append(f"{name}: runAsNonRoot")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: seccompProfile")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            found.append(f"{name}: hostPort")
        if sc.get("procMount", "Default") != "Default":
            found.append(f"{name}: procMount")
    return found


def test_psa_check_refuses_what_restricted_refuses(tmp_path) -> None:
    """The check above is not vacuous: each loosening of the experiment pod is caught."""
    import copy

    base = experiment_pod(KubernetesSettings(), profile="cpu-tiny", tmp=tmp_path)  # the separated pod
    assert psa_restricted_violations(base) == []
    loosen = [
        lambda p: p["spec"].update(hostPID=True),
        lambda p: p["spec"]["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        lambda p: p["spec"]["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True),
        lambda p: p["spec"]["containers"][0]["securityContext"].update(capabilities={"drop": ["NET_RAW"]}),
        lambda p: p["spec"]["containers"][0]["securityContext"].update(capabilities={"drop": ["ALL"],
                                                                                     "add": ["SYS_ADMIN"]}),
        lambda p: [p["spec"]["containers"][0]["securityContext"].pop("runAsNonRoot"),
                   p["spec"]["securityContext"].pop("runAsNonRoot")],
        lambda p: [p["spec"]["containers"][0]["securityContext"].pop("seccompProfile"),
                   p["spec"]["securityContext"].pop("seccompProfile")],
        lambda p: p["spec"]["containers"][0]["securityContext"].update(privileged=True),
    ]  # fmt: skip
    for change in loosen:
        pod = copy.deepcopy(base)
        change(pod)
        assert psa_restricted_violations(pod), change


def test_experiment_pod_carries_every_restriction(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9/")
    defaults = KubernetesSettings()
    assert_restricted(experiment_pod(defaults, tmp=tmp_path), defaults, gpu=True)
    cpu = KubernetesSettings(runtime_class="gvisor", node_selector={"pool": "cpu"},
                             tolerations=[{"key": "spot", "operator": "Exists"}], tmp_mb=512)  # fmt: skip
    assert_restricted(experiment_pod(cpu, "cpu-tiny", tmp_path), cpu, gpu=False)
    forced = KubernetesSettings(gpu=False, service_account="farm-experiment", pids=64)
    assert_restricted(experiment_pod(forced, "h100", tmp_path), forced, gpu=False)
    claimed = KubernetesSettings(gpu_claim_template="one-h100")
    assert_restricted(experiment_pod(claimed, "h100", tmp_path), claimed, gpu=True)


def test_chart_settings_drive_the_experiment_pod(chart, monkeypatch, tmp_path) -> None:
    """The chart's farm.yaml (what the driver reads) gives a pod the chart's NetworkPolicy covers."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    for values in ({}, ALL_ON):
        docs = render(chart, values)
        settings = head_config(docs, tmp_path, {"gpus": 2}).kubernetes  # the driver's; each spec carries it
        assert settings.namespace == ("research-sandbox" if values else EXPERIMENTS_NS)
        assert settings.cache_pvc == ("datasets-experiments" if values else "farm-cache")
        assert settings.service_account == ("sandboxed" if values else "farm-autoresearch-farm-experiment")
        assert settings.pids == (1024 if values else None)
        pod = experiment_pod(settings, "h100", tmp_path)
        assert_restricted(pod, settings, gpu=True)
        policy = next(d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"].get("namespace"))
        assert policy["metadata"]["namespace"] == settings.namespace
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
        assert not policy["spec"].get("ingress") and not policy["spec"].get("egress")  # deny all, both ways
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        cluster = one(docs, "RayCluster")
        assert settings.instance == cluster["metadata"]["name"]
        if values:
            assert pod["spec"]["runtimeClassName"] == "gvisor" and pod["spec"]["nodeSelector"] == {"gpu": "h100"}
            assert pod["spec"]["tolerations"] == ALL_ON["experiments"]["tolerations"]
            assert pod["spec"]["priorityClassName"] == "research" and pod["spec"]["imagePullSecrets"] == [
                {"name": "regcred"}
            ]
            assert pod["spec"]["containers"][0]["imagePullPolicy"] == "Always"
            assert pod["spec"]["containers"][0]["volumeMounts"][1]["subPath"] == "autoresearch"


def test_labels_are_valid_for_odd_experiment_ids(tmp_path) -> None:
    settings = KubernetesSettings(instance="x" * 70)
    spec = ExperimentSpec(experiment_id="A" + "_" * 61 + ".", train_py="", run_dir=tmp_path, cache_dir=tmp_path)
    pod = pod_manifest(spec, GpuAssignment(), settings, "farm-a-00000000", "farm-a-00000000-src", "0" * 12)
    kubernetes_validate.validate(pod, K8S_VERSIONS[-1], strict=True)
    assert all(len(v) <= 63 for v in labels(settings, spec, "0" * 12).values())


def test_dashboard_symlink_points_at_the_monitoring_file() -> None:
    link = CHART / "dashboards" / "autoresearch-farm.json"
    assert link.is_symlink() and link.resolve() == DASHBOARD.resolve()
    assert os.readlink(link) == "../../../monitoring/grafana/autoresearch-farm.json"


def test_render_script_without_a_helm_binary(capsys) -> None:
    """helm/render.py: the chart's manifests for `kubectl apply -f -`, linted and validated on the way."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("helm_render", CHART.parent / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["-n", "research", "--set", "metrics.serviceMonitor.enabled=true", "--set", "cache.experimentsClaim=c"]
    assert module.main([*argv, "--lint", "--validate"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert {d["kind"] for d in docs} >= {"RayCluster", "RayJob", "ServiceMonitor", "NetworkPolicy", "Role"}
    assert module.main(["--set", "metrics.port=8265"]) == 1  # the schema's refusal, said on stderr
    assert "metrics/port" in capsys.readouterr().err


# ---- the run browser (`farm ui`) ----------------------------------------------------------------------------


def test_run_browser_is_off_by_default_and_a_read_only_sidecar_with_a_cluster_ip_service(chart) -> None:
    assert not [d for d in render(chart) if d["metadata"]["name"].endswith("-ui")]
    values = {**ALL_ON, "ui": {"enabled": True, "port": 8091, "grafanaUrl": "http://grafana.example/d/farm"}}
    docs = render(chart, values)
    validate_all(docs)
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "arf-ui")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": 8091, "targetPort": "farm-ui", "protocol": "TCP"}]
    head = one(docs, "RayCluster")["spec"]["headGroupSpec"]["template"]
    assert service["spec"]["selector"].items() <= {**head["metadata"]["labels"], "ray.io/cluster": "arf",
                                                  "ray.io/node-type": "head"}.items()  # KubeRay adds the last two
    containers = {c["name"]: c for c in head["spec"]["containers"]}
    assert list(containers)[0] == "ray-head"  # KubeRay: the Ray container comes first
    ui = containers["farm-ui"]
    assert {p["name"]: p["containerPort"] for p in ui["ports"]} == {"farm-ui": 8091}
    mounts = {m["name"]: m for m in ui["volumeMounts"]}
    assert mounts["runs"]["readOnly"] is True and "api-key" not in mounts and "cache" not in mounts
    assert "env" not in ui  # no API key, no farm settings
    assert ui["securityContext"]["readOnlyRootFilesystem"] is True
    args = build_parser().parse_args(ui["command"][1:])
    assert args.command == "ui" and [str(r) for r in args.run_dir] == ["/farm/runs/arf"] and args.address == "0.0.0.0"
    assert args.port == 8091 and args.grafana_url == "http://grafana.example/d/farm"
    assert ui["readinessProbe"]["httpGet"] == {"path": "/api/version", "port": "farm-ui"}
    notes = chart.render(values, name="farm", namespace="research")["autoresearch-farm/templates/NOTES.txt"]
    assert "port-forward service/arf-ui 8091:8091" in notes


def test_schema_rejects_bad_run_browser_values(chart) -> None:
    chart.validate_schema({"ui": {"enabled": True, "port": 8090, "grafanaUrl": ""}})
    for values in ({"ui": {"port": "8090"}}, {"ui": {"port": 8265}}, {"ui": {"enable": True}},
                   {"ui": {"grafanaUrl": "javascript:alert(1)"}}):
        with pytest.raises(helm.HelmError):
            chart.validate_schema(values)
