"""The kubernetes sandbox's lifecycle against a fake API server on 127.0.0.1 (tests/fake_kube.py).

No cluster runs here: the fake speaks the REST paths and JSON the backend
uses. One test runs the pod's real container command (the runner on the
cpu-smoke profile, with the pod's mounts mapped to local directories), so
the candidate-in / result-out path is the real one.
"""

from __future__ import annotations

import base64
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from cluster.execution.spec import ExperimentSpec, GpuAssignment, Limits
from cluster.sandbox import SandboxError, kube_api, make_sandbox, resolve_sandbox
from cluster.sandbox import kubernetes as kube
from cluster.sandbox.kube_pod import (
    END_MARK,
    EXPERIMENT_LABEL,
    IN_POD,
    INSTANCE_LABEL,
    RESULT_MARK,
    ROLE,
    ROLE_LABEL,
    KubernetesSettings,
    parse_log,
)
from tests import candidates
from tests.fake_kube import FakeKube, Script, run_in_docker_pod
from tests.needs import sandbox_or_skip
from trainer.result import ExperimentResult, Status


@pytest.fixture
def token(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("good-token\n")
    return path


def settings(kube_: FakeKube, token: Path, **fields) -> KubernetesSettings:
    fields = {"namespace": "farm", **fields}
    return KubernetesSettings(api_server=kube_.url, token_file=token, instance="t1", cache_pvc="cache",
                              poll_max_s=0.2, **fields)  # fmt: skip


def make_spec(tmp_path: Path, cache: Path, source: str | None = None, **fields) -> ExperimentSpec:
    return ExperimentSpec(
        experiment_id=f"kt-{uuid.uuid4().hex[:10]}",
        train_py=source or candidates.source("good"),
        profile="cpu-smoke",
        run_dir=tmp_path / "run",
        cache_dir=cache,
        **fields,
    )


def assert_nothing_left(kube_: FakeKube) -> None:
    assert kube_.names("pods") == [] and kube_.names("configmaps") == []


def test_real_run_through_the_pod_spec(tmp_path, token, farm_cache) -> None:
    """Created, run (the pod's own command, locally), result read from the log, everything deleted."""
    with FakeKube(lambda pod: "run", pvcs={"cache": str(farm_cache)}) as fake:
        sandbox = kube.KubernetesSandbox(settings(fake, token))
        spec = make_spec(tmp_path, farm_cache)
        stale = {ROLE_LABEL: ROLE, INSTANCE_LABEL: "t1", EXPERIMENT_LABEL: spec.experiment_id}
        fake.add("pods", "farm-lost-attempt", stale)  # an earlier attempt of the same experiment (a lost worker)
        result = sandbox.run(spec, GpuAssignment())
        assert result.status == Status.OK, result.reason + result.log_tail
        assert result.val_bpb is not None and result.facts.train_batches > 0
        out = spec.run_dir / "out"
        assert ExperimentResult.model_validate_json((out / "result.json").read_text()).val_bpb == result.val_bpb
        assert "val_bpb" in (out / "run.log").read_text()  # the runner's run.log, carried back in the log
        assert_nothing_left(fake)
        methods = [(m, p.rsplit("/", 2)[-2] if p.count("/") > 5 else p.rsplit("/", 1)[-1]) for m, p, _ in fake.requests]
        assert ("POST", "configmaps") in methods and ("POST", "pods") in methods
        deleted = [p for m, p, _ in fake.requests if m == "DELETE"]
        assert any(p.endswith("/pods/farm-lost-attempt") for p in deleted)
        logs = [q for m, p, q in fake.requests if p.endswith("/log")]
        assert logs and all(int(q["limitBytes"]) <= kube.LOG_LIMIT_BYTES and "tailLines" in q for q in logs)


def test_deadline_kills_and_keeps_the_log(tmp_path, token, farm_cache, monkeypatch) -> None:
    monkeypatch.setattr(kube, "OUTER_KILL_GRACE", 0.5)
    with FakeKube(lambda pod: Script(pending_s=0.3, log="step 1\nstep 2 still going\n")) as fake:
        sandbox = kube.KubernetesSandbox(settings(fake, token))
        spec = make_spec(tmp_path, farm_cache, limits=Limits(wall_seconds=1.0))
        result = sandbox.run(spec, GpuAssignment())
        assert result.status == Status.TIMEOUT
        assert "killed by the sandbox at the wall limit" in result.reason
        assert "still going" in result.log_tail
        assert (spec.run_dir / "out" / "container.log").read_text().startswith("step 1")
        assert_nothing_left(fake)


def test_kubelet_deadline_counts_as_timeout(tmp_path, token, farm_cache, monkeypatch) -> None:
    """The backstop: the kubelet's activeDeadlineSeconds fires (here: before the sandbox's own clock)."""
    monkeypatch.setattr(kube, "OUTER_KILL_GRACE", 60.0)

    def short_deadline(pod: dict) -> Script:
        pod["spec"]["activeDeadlineSeconds"] = 1
        return Script(log="training\n")

    with FakeKube(short_deadline) as fake:
        result = kube.KubernetesSandbox(settings(fake, token)).run(
            make_spec(tmp_path, farm_cache, limits=Limits(wall_seconds=1.0)), GpuAssignment()
        )
        assert result.status == Status.TIMEOUT
        assert_nothing_left(fake)


def test_oom_killed_pod_is_oom(tmp_path, token, farm_cache) -> None:
    with FakeKube(lambda pod: Script(run_s=0.2, exit_code=137, reason="OOMKilled", log="Killed\n")) as fake:
        result = kube.KubernetesSandbox(settings(fake, token)).run(make_spec(tmp_path, farm_cache), GpuAssignment())
        assert result.status == Status.OOM and "limit" in result.reason
        assert_nothing_left(fake)


def test_a_pod_evicted_for_the_disk_it_filled_is_the_candidates_crash_not_the_farms_error(
        tmp_path, token, farm_cache) -> None:
    evicted = Script(run_s=0.2, exit_code=137, reason="Error", pod_reason="Evicted", log="writing\n",
                     pod_message='Usage of EmptyDir volume "tmp" exceeds the limit "1Gi".')
    with FakeKube(lambda pod: evicted) as fake:
        result = kube.KubernetesSandbox(settings(fake, token)).run(make_spec(tmp_path, farm_cache), GpuAssignment())
        assert result.status == Status.CRASH and "evicted by the kubelet for the disk it used" in result.reason
        assert_nothing_left(fake)
    pressure = Script(run_s=0.2, exit_code=137, reason="Error", pod_reason="Evicted",
                      pod_message="The node was low on resource: memory.")
    with FakeKube(lambda pod: pressure) as fake:  # the node's trouble, not the candidate's: the farm's error
        result = kube.KubernetesSandbox(settings(fake, token)).run(make_spec(tmp_path, farm_cache), GpuAssignment())
        assert result.status == Status.ERROR


def test_canned_result_block_is_read_and_the_last_one_wins(tmp_path, token, farm_cache) -> None:
    spec = make_spec(tmp_path, farm_cache)
    good = ExperimentResult(status=Status.OK, val_bpb=1.25, profile="cpu-smoke", time_budget=3, started_at=0)
    fake_block = block(good.model_copy(update={"val_bpb": 0.01}))  # "printed by the candidate" earlier
    log = f"noise\n{fake_block}status=ok\n{block(good)}"
    with FakeKube(lambda pod: Script(run_s=0.1, log=log)) as fake:
        result = kube.KubernetesSandbox(settings(fake, token)).run(spec, GpuAssignment())
        assert result.status == Status.OK and result.val_bpb == 1.25
        assert_nothing_left(fake)


def block(result: ExperimentResult) -> str:
    text = base64.b64encode(result.model_dump_json().encode()).decode()
    lines = [text[i : i + 76] for i in range(0, len(text), 76)]
    return "\n".join([RESULT_MARK, *lines, END_MARK]) + "\n"


def test_parse_log_ignores_damaged_blocks() -> None:
    run_log, result, plain = parse_log(f"a\n{RESULT_MARK}\n!!not base64!!\n{END_MARK}\nb\n")
    assert run_log is None and result is None and plain == "a\nb"


def test_exception_mid_wait_still_deletes(tmp_path, token, farm_cache) -> None:
    with FakeKube(lambda pod: Script()) as fake:
        sandbox = kube.KubernetesSandbox(settings(fake, token))
        fake.fail_gets_after = 2
        with pytest.raises(SandboxError, match="500"):
            sandbox.run(make_spec(tmp_path, farm_cache), GpuAssignment())
        assert_nothing_left(fake)


def test_interrupt_mid_wait_still_deletes(tmp_path, token, farm_cache, monkeypatch) -> None:
    def interrupt(_seconds: float) -> None:
        raise KeyboardInterrupt

    with FakeKube(lambda pod: Script()) as fake:
        sandbox = kube.KubernetesSandbox(settings(fake, token))
        monkeypatch.setattr(kube.time, "sleep", interrupt)
        with pytest.raises(KeyboardInterrupt):
            sandbox.run(make_spec(tmp_path, farm_cache), GpuAssignment())
        monkeypatch.undo()
        assert_nothing_left(fake)


def test_unschedulable_pod_times_out_as_error(tmp_path, token, farm_cache) -> None:
    unschedulable = Script(pending_s=float("inf"), conditions=[{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}])  # fmt: skip
    with FakeKube(lambda pod: unschedulable) as fake:
        sandbox = kube.KubernetesSandbox(settings(fake, token, start_timeout_s=0.5))
        result = sandbox.run(make_spec(tmp_path, farm_cache), GpuAssignment())
        assert result.status == Status.ERROR
        assert "did not start within 0.5 s" in result.reason and "Insufficient nvidia.com/gpu" in result.reason
        assert_nothing_left(fake)


def test_bad_image_fails_at_once(tmp_path, token, farm_cache) -> None:
    bad = Script(pending_s=float("inf"), waiting={"reason": "InvalidImageName", "message": 'invalid "x::y"'})
    with FakeKube(lambda pod: bad) as fake:
        result = kube.KubernetesSandbox(settings(fake, token)).run(make_spec(tmp_path, farm_cache), GpuAssignment())
        assert result.status == Status.ERROR and "InvalidImageName" in result.reason
        assert_nothing_left(fake)


def test_cleanup_leftovers_by_label(tmp_path, token) -> None:
    ours = {ROLE_LABEL: ROLE, INSTANCE_LABEL: "t1", EXPERIMENT_LABEL: "e1"}
    with FakeKube() as fake:
        fake.add("pods", "farm-e1-a", ours)
        fake.add("configmaps", "farm-e1-a-src", ours)
        fake.add("pods", "farm-e2-b", {**ours, INSTANCE_LABEL: "other-release"})
        fake.add("pods", "someone-elses", {"app": "web"})
        removed = kube.KubernetesSandbox(settings(fake, token)).cleanup_leftovers()
        assert removed == 2
        assert fake.names("pods") == ["farm-e2-b", "someone-elses"] and fake.names("configmaps") == []
        selectors = {q.get("labelSelector") for m, _, q in fake.requests if m == "GET"}
        assert f"{ROLE_LABEL}={ROLE},{INSTANCE_LABEL}=t1" in selectors


def test_unauthorized_is_a_clear_error(tmp_path, token) -> None:
    token.write_text("stale-token")
    with FakeKube() as fake, pytest.raises(SandboxError, match="401 Unauthorized.*TOKEN_FILE"):
        kube.KubernetesSandbox(settings(fake, token))


def test_forbidden_is_a_clear_error(tmp_path, token) -> None:
    with FakeKube(forbidden=("pods",)) as fake, pytest.raises(SandboxError, match="403 Forbidden.*Role"):
        kube.KubernetesSandbox(settings(fake, token))


def test_not_in_a_cluster_is_a_clear_error(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(kube_api, "SA_DIR", tmp_path / "no-such-dir")
    for name in [n for n in __import__("os").environ if n.startswith("FARM_KUBERNETES__")]:
        monkeypatch.delenv(name)
    with pytest.raises(SandboxError, match="not running inside a Kubernetes pod.*Helm chart"):
        make_sandbox("kubernetes")
    with pytest.raises(SandboxError, match="not running inside a Kubernetes pod"):
        resolve_sandbox("kubernetes")


def test_in_cluster_configuration(monkeypatch, tmp_path) -> None:
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("t")
    (sa / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    (sa / "namespace").write_text("research\n")
    monkeypatch.setattr(kube_api, "SA_DIR", sa)
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    client = kube_api.KubeClient.from_settings(KubernetesSettings(), env)  # builds only: no request is sent
    assert client.server == "https://10.96.0.1:443" and client.namespace == "research"
    assert client.token_file == sa / "token" and client.session.verify == str(sa / "ca.crt")
    client = kube_api.KubeClient.from_settings(
        KubernetesSettings(namespace="x"), {"KUBERNETES_SERVICE_HOST": "fd00::1"}
    )
    assert client.server == "https://[fd00::1]:443" and client.namespace == "x"


def test_settings_travel_with_the_experiment_to_the_task(tmp_path, token, farm_cache) -> None:
    """The driver's kubernetes settings reach the Ray task inside the spec (JSON), not through its environment:
    the task builds its backend from the spec alone."""
    from cluster.sandbox import sandbox_for

    with FakeKube() as fake:
        s = KubernetesSettings(api_server=fake.url, token_file=token, namespace="n", gpu=False, runtime_class="gvisor",
                               tolerations=[{"key": "gpu", "operator": "Exists"}], node_selector={"pool": "gpu"})
        spec = make_spec(tmp_path, farm_cache).model_copy(update={"kubernetes": s})
        travelled = type(spec).model_validate_json(spec.model_dump_json())
        assert travelled.kubernetes == s
        assert not [n for n in os.environ if n.startswith("FARM_KUBERNETES__")]
        sandbox = sandbox_for(travelled, "kubernetes")
        assert sandbox.settings == s and sandbox.client.server == fake.url


def test_doctor_reports_the_kubernetes_sandbox(monkeypatch, token, capsys) -> None:
    from cluster.cli import main

    with FakeKube() as fake:
        monkeypatch.setenv("FARM_KUBERNETES__API_SERVER", fake.url)
        monkeypatch.setenv("FARM_KUBERNETES__TOKEN_FILE", str(token))
        main(["doctor"])
        assert "[ok  ] kubernetes" in capsys.readouterr().out
        token.write_text("revoked")
        main(["doctor"])
        assert "[FAIL] kubernetes   the Kubernetes API rejected" in capsys.readouterr().out


def test_doctor_checks_the_settings_of_a_farm_yaml(monkeypatch, tmp_path, token, capsys) -> None:
    """On the chart's Ray head the settings are a farm.yaml (`farm doctor --config /farm/config/farm.yaml`)."""
    from cluster.cli import main

    for name in [n for n in os.environ if n.startswith("FARM_KUBERNETES__")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")  # in a pod; the file names the API server
    config = tmp_path / "farm.yaml"
    with FakeKube() as fake:
        config.write_text(f"kubernetes:\n  api_server: {fake.url}\n  token_file: {token}\n  namespace: n\n")
        main(["doctor", "--config", str(config)])
        assert "[ok  ] kubernetes" in capsys.readouterr().out  # the file's API server was asked
    config.write_text("kubernetes:\n  tmp_mb: lots\n")
    main(["doctor", "--config", str(config)])
    assert "[FAIL] kubernetes   invalid farm configuration" in capsys.readouterr().out  # said, not a traceback


def test_the_pod_has_its_own_uid_no_rights_and_a_pids_cap_in_its_namespace(tmp_path, token, farm_cache) -> None:
    """What the backend asks the API for: the experiments' namespace, the rightless ServiceAccount, no token, the
    pids cap in the pod's command, a uid per attempt (RLIMIT_NPROC counts per uid)."""
    pods: list[dict] = []

    def record(pod: dict) -> Script:
        pods.append(pod)
        return Script(run_s=0.1, log="ok\n")

    with FakeKube(record) as fake:
        sandbox = kube.KubernetesSandbox(settings(fake, token, namespace="farm-experiments",
                                                  service_account="farm-experiment"))  # fmt: skip
        capped = kube.KubernetesSandbox(settings(fake, token, namespace="farm-experiments", pids=99))
        sandbox.run(make_spec(tmp_path / "a", farm_cache, limits=Limits(pids=300)), GpuAssignment())
        sandbox.run(make_spec(tmp_path / "b", farm_cache), GpuAssignment())
        capped.run(make_spec(tmp_path / "c", farm_cache, limits=Limits(pids=300)), GpuAssignment())
        assert_nothing_left(fake)
        assert {p.split("/")[4] for _, p, _ in fake.requests} == {"farm-experiments"}
    runners = [p["spec"]["containers"][0] for p in pods]
    assert [r["args"][r["args"].index("--pids") + 1] for r in runners] == ["300", "512", "99"]  # spec, default, setting
    for pod in pods:
        spec = pod["spec"]
        assert spec["automountServiceAccountToken"] is False and spec["shareProcessNamespace"] is False
        assert spec["securityContext"]["runAsNonRoot"] is True and "fsGroup" not in spec["securityContext"]
        runner, candidate = spec["containers"]
        assert (runner["name"], candidate["name"]) == ("runner", "candidate")
        assert runner["securityContext"]["runAsUser"] == 65534  # the farm's uid: the cache's owner
        assert candidate["securityContext"]["runAsUser"] >= 200_000
        assert candidate["securityContext"]["runAsGroup"] == candidate["securityContext"]["runAsUser"]
        for c in (runner, candidate):
            assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert candidate["command"] == ["python", "-m", "trainer.exchange", "/exchange"]
        assert "/tmp" in {m["mountPath"] for m in candidate["volumeMounts"]}
        runner_tmp = next(m["name"] for m in runner["volumeMounts"] if m["mountPath"] == "/tmp")
        assert runner_tmp not in {m["name"] for m in candidate["volumeMounts"]}  # the out dir is the runner's alone
    assert [p["spec"].get("serviceAccountName") for p in pods] == ["farm-experiment", "farm-experiment", None]
    assert len({p["spec"]["containers"][1]["securityContext"]["runAsUser"] for p in pods}) == 3


def test_a_gpu_pod_shares_one_claim_between_runner_and_candidate_or_says_it_is_not_separated(tmp_path, token) -> None:
    """With a ResourceClaimTemplate both containers use the pod's one GPU claim; without one, a GPU pod is the single
    container of old, and the backend warns that its verdicts are not forgery-proof."""
    spec = ExperimentSpec(experiment_id="gpu-1", train_py="print()", profile="h100", run_dir=tmp_path / "r",
                          cache_dir=tmp_path)  # fmt: skip
    with FakeKube() as fake:
        claimed = kube.KubernetesSandbox(settings(fake, token, gpu_claim_template="one-gpu"))
        pod = claimed.pod_manifest(spec, GpuAssignment())["spec"]
        assert pod["resourceClaims"] == [{"name": "gpu", "resourceClaimTemplateName": "one-gpu"}]
        assert [c["resources"]["claims"] for c in pod["containers"]] == [[{"name": "gpu"}]] * 2
        assert all("nvidia.com/gpu" not in c["resources"]["limits"] for c in pod["containers"])
        plain = kube.KubernetesSandbox(settings(fake, token))
        pod = plain.pod_manifest(spec, GpuAssignment())["spec"]
        assert [c["name"] for c in pod["containers"]] == ["experiment"]
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
        with pytest.warns(UserWarning, match="not forgery-proof.*gpu_claim_template"):
            plain.run(spec, GpuAssignment())


@pytest.mark.skipif(os.geteuid() != 0 or not os.access("/usr/bin/python3", os.X_OK), reason="needs root to setuid")
def test_pids_cap_of_the_pod_command_holds(tmp_path) -> None:
    """The pod's own command (IN_POD) as a non-root uid: the candidate's threads stop at the cap (RLIMIT_NPROC
    counts threads too); with a higher cap the same code gets all it asked for."""
    grab = ("import threading, time\nn = 0\ntry:\n    for _ in range(40):\n"
            "        threading.Thread(target=time.sleep, args=(3,), daemon=True).start(); n += 1\n"
            "except RuntimeError:\n    pass\nprint('threads', n)\n")  # fmt: skip
    uid = 200_000 + os.getpid() % 100_000  # a uid with no other process here (the count is per uid)
    counts = []
    for cap in (12, 200):
        out = subprocess.run(
            ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "/usr/bin/python3", "-c", IN_POD,
             str(cap), "-c", grab, "--out", str(tmp_path)],
            capture_output=True, text=True, timeout=60, cwd="/",
        )  # fmt: skip
        counts.append(int(out.stdout.split("threads")[-1]))
    assert counts[0] < 12 and counts[1] == 40, counts


@pytest.mark.skipif(os.geteuid() != 0, reason="the pod's two users need root here (CI runs as root)")
@pytest.mark.parametrize("name", ["good", "upstream_style"])
def test_honest_candidates_score_in_the_two_container_pod_as_in_the_docker_sandbox(name, tmp_path, farm_cache) -> None:
    """The pod's real containers (the fake kubelet runs them in the Docker Engine): the candidate, as a uid of its
    own in its container, trains and hands its model over; the runner, in the other, scores it. The verdict is ok
    and the same as the docker sandbox gives the same file (evaluation is deterministic for given weights; the
    steps differ with the machine's load, so the value agrees within the profile's noise: cpu-smoke's sd is 0.15-0.4
    under load, docs/trainer.md; 0.6 apart was seen on a quiet machine, so two such sds; an untrained model scores
    ~8)."""
    docker = sandbox_or_skip("docker", "docker (the fake kubelet's runtime)")
    source = candidates.source(name)
    pod = run_in_docker_pod(source, tmp_path / "pod", farm_cache)
    assert pod.status == Status.OK, pod.reason + pod.log_tail
    assert pod.facts.candidate_uid is not None and pod.facts.candidate_uid >= 200_000  # another user than the runner
    assert pod.facts.train_batches > 0 and pod.facts.handover_bytes > 0
    reference = docker.run(make_spec(tmp_path / "docker", farm_cache, source), GpuAssignment())
    assert reference.status == Status.OK, reference.reason
    assert pod.val_bpb == pytest.approx(reference.val_bpb, abs=0.8)
    assert pod.summary.val_bpb == pytest.approx(pod.val_bpb, abs=1e-6)  # what it printed is what it was scored
