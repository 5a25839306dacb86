"""Hostile candidates are contained by every sandbox backend, and classified.

One parametrised suite over the backends (process, docker). Each case runs a
real train.py that attacks the sandbox, then checks the verdict and that the
host is clean: no process or container left, nothing written outside the
run dir, no secret seen, no listener reached.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import trainer
from cluster.execution.spec import ExperimentSpec, GpuAssignment, Limits
from cluster.sandbox.process import MARKER
from cluster.sandbox.untrusted import read_text
from tests import candidates
from tests.needs import sandbox_or_skip
from trainer.result import ExperimentResult, Status

SECRET = "sk-ant-test-" + uuid.uuid4().hex
IS_ROOT = os.geteuid() == 0


@pytest.fixture(params=["process", "docker"])
def sandbox(request: pytest.FixtureRequest):
    if request.param == "process" and not IS_ROOT:
        pytest.skip("the isolated process sandbox needs root (CI runs as root)")
    return sandbox_or_skip(request.param, f"{request.param} sandbox")


@pytest.fixture(autouse=True)
def secret_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The farm's own environment holds a key; no candidate may ever see it."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9/")


def run(sandbox, tmp_path: Path, farm_cache: Path, source: str, **limits) -> ExperimentResult:
    run_dir = tmp_path / "run"
    spec = ExperimentSpec(
        experiment_id=f"t-{uuid.uuid4().hex[:10]}",
        train_py=source,
        profile="cpu-smoke",
        run_dir=run_dir,
        cache_dir=farm_cache,
        limits=Limits(**limits),
    )
    result = sandbox.run(spec, GpuAssignment())
    assert_host_clean(spec)
    text = result.model_dump_json() + _read(run_dir / "out" / "run.log")
    assert SECRET not in text
    return result


def _read(path: Path) -> str:
    return read_text(path, 1 << 20)  # as the host reads: a link the candidate planted is not followed


def assert_host_clean(spec: ExperimentSpec) -> None:
    leftovers = []
    for proc_dir in Path("/proc").glob("[0-9]*"):
        try:
            environ = (proc_dir / "environ").read_bytes()
        except OSError:
            continue
        if any(e.startswith(f"{MARKER}=".encode()) and f".{spec.experiment_id}.".encode() in e
               for e in environ.split(b"\0")):
            leftovers.append(proc_dir.name)
    assert not leftovers, f"processes left running: {leftovers}"
    docker = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=autoresearch-farm.experiment={spec.experiment_id}"],
        capture_output=True,
        text=True,
    )
    assert docker.stdout.strip() == "", "container left behind"


CLASSIFIED = [
    ("good", Status.OK, ""),
    ("fake_printed_bpb", Status.INVALID, "printed val_bpb 0.1"),
    ("over_budget_3x", Status.INVALID, "trained past the budget"),
    ("monkeypatches_evaluate", Status.INVALID, "never handed its model to evaluate_bpb"),
    ("stdout_flood", Status.OK, ""),
]


@pytest.mark.parametrize(("name", "status", "reason"), CLASSIFIED, ids=[c[0] for c in CLASSIFIED])
def test_classified_the_same_in_every_sandbox(sandbox, tmp_path, farm_cache, name, status, reason) -> None:
    result = run(sandbox, tmp_path, farm_cache, candidates.source(name))
    assert result.status == status, f"{result.reason}\n{result.log_tail}"
    assert reason in result.reason
    if status == Status.OK:
        assert 2.0 < result.val_bpb < 8.0


@pytest.mark.parametrize("name", ["infinite_loop", "fork_bomb"])
def test_runaway_code_is_killed_at_the_wall_limit(sandbox, tmp_path, farm_cache, name) -> None:
    result = run(sandbox, tmp_path, farm_cache, candidates.source(name), wall_seconds=12, pids=256)
    assert result.status == Status.TIMEOUT, result.reason
    assert "wall limit" in result.reason


EXHAUSTS = [("disk_bomb", "No space left on device"), ("work_bomb", "No space left on device"),
            ("big_file", "File too large"),
            ("pids_bomb", "Resource temporarily unavailable")]


@pytest.mark.parametrize(("name", "reason"), EXHAUSTS, ids=[e[0] for e in EXHAUSTS])
def test_a_candidate_that_exhausts_its_resources_is_its_own_crash_never_the_farms_error(
        sandbox, tmp_path, farm_cache, name, reason) -> None:
    """Its disk (a bounded scratch filesystem), its largest file, its processes: the candidate fails, the runner
    reports it, and the verdict is the candidate's (the farm stops on repeated ``error``s, never on these)."""
    result = run(sandbox, tmp_path, farm_cache, candidates.source(name), disk_mb=200, file_mb=64, pids=128,
                 wall_seconds=60)
    assert result.status == Status.CRASH, f"{result.status}: {result.reason}\n{result.log_tail}"
    assert reason in result.reason


def test_links_and_blockers_planted_in_the_out_dir_neither_fool_the_host_nor_cost_the_verdict(
        sandbox, tmp_path, farm_cache) -> None:
    result = run(sandbox, tmp_path, farm_cache, candidates.source("plants_links"))
    assert result.status == Status.OK and 2.0 < result.val_bpb < 8.0, f"{result.reason}\n{result.log_tail}"
    out = tmp_path / "run" / "out"
    assert (out / "result.json").is_file() and not (out / "result.json").is_symlink()
    log = _read(out / "run.log")
    assert "PROBE planted" not in log and log.count("PROBE blocked") == 6, log  # the out dir is the runner's alone
    assert "FARM_PROFILE" not in result.log_tail


def test_a_cpu_hog_gets_no_more_than_its_cores(sandbox, tmp_path, farm_cache) -> None:
    """cpu-smoke's quota is 1 torch thread + the runner's slack: 8 spinning processes share ~1.25 cores."""
    result = run(sandbox, tmp_path, farm_cache, candidates.source("cpu_hog"), wall_seconds=60)
    log = _read(tmp_path / "run" / "out" / "run.log")
    cores = float(next(line.split()[2] for line in log.splitlines() if line.startswith("PROBE cores")))
    assert result.status == Status.OK, result.reason
    assert 0.3 < cores < 1.5, cores  # without the quota: ~2 on this 2-core machine, ~8 on a bigger one


def test_memory_bomb_is_out_of_memory(sandbox, tmp_path, farm_cache) -> None:
    result = run(sandbox, tmp_path, farm_cache, candidates.source("memory_bomb"), memory_mb=1200, wall_seconds=60)
    assert result.status == Status.OOM, f"{result.reason}\n{result.log_tail}"


def test_environment_holds_no_secret(sandbox, tmp_path, farm_cache) -> None:
    code = "for k, v in sorted(os.environ.items()):\n    print('PROBE env', k, v)"
    result = run(
        sandbox, tmp_path, farm_cache, candidates.source("good", prelude="import os\n" + candidates.probe(code))
    )
    log = _read(tmp_path / "run" / "out" / "run.log")
    assert result.status == Status.OK
    names = {line.split()[2] for line in log.splitlines() if line.startswith("PROBE env")}
    assert "FARM_PROFILE" in names  # the probe really ran
    assert not names & {"ANTHROPIC_API_KEY", "HTTPS_PROXY", "AWS_SECRET_ACCESS_KEY"}


def test_writes_outside_the_out_dir_fail(sandbox, tmp_path, farm_cache) -> None:
    harness = Path(trainer.__file__).parent
    blocked = {
        "etc": "'/etc/farm-escape'",
        "cache": repr(str(farm_cache / "pydoc" / "data" / "shard_00000.parquet")),
        "harness": "__import__('prepare').__file__",
    }
    host_tmp = f"/tmp/farm-escape-{uuid.uuid4().hex}"  # a container's /tmp is its own scratch: may succeed there
    targets = {**blocked, "tmp": repr(host_tmp)}
    code = "\n".join(
        f"try:\n    open({path}, 'a').write('pwned')\n"
        f"    print('PROBE wrote {key}')\nexcept OSError as exc:\n    print('PROBE blocked {key}', exc)"
        for key, path in targets.items()
    )
    before = _tree_digest(farm_cache), _tree_digest(harness)
    result = run(sandbox, tmp_path, farm_cache, candidates.source("good", prelude=code))
    log = _read(tmp_path / "run" / "out" / "run.log")
    for key in blocked:
        assert f"PROBE blocked {key}" in log, log
    assert (_tree_digest(farm_cache), _tree_digest(harness)) == before
    assert not Path("/etc/farm-escape").exists() and not Path(host_tmp).exists()
    assert result.status == Status.OK


def test_no_host_unix_socket_is_reachable(sandbox, tmp_path, farm_cache) -> None:
    """The Docker Engine's socket is root on the host; the process sandbox's fresh /run and /tmp leave none."""
    listener = socket.socket(socket.AF_UNIX)  # a host socket in /tmp, the other usual place for them
    host_sock = f"/tmp/farm-host-{uuid.uuid4().hex[:8]}.sock"
    listener.bind(host_sock)
    listener.listen()
    paths = ["/var/run/docker.sock", "/run/docker.sock", host_sock]
    code = "\n".join(
        f"try:\n    s = socket.socket(socket.AF_UNIX)\n    s.connect({p!r})\n    print('PROBE reached {p}')\n"
        f"except OSError as exc:\n    print('PROBE unreachable {p}', type(exc).__name__)" for p in paths
    )
    try:
        result = run(sandbox, tmp_path, farm_cache, candidates.source("good", prelude="import socket\n" + code))
    finally:
        listener.close()
        os.unlink(host_sock)
    log = _read(tmp_path / "run" / "out" / "run.log")
    for path in paths:
        assert f"PROBE unreachable {path}" in log, log
    assert result.status == Status.OK


def test_no_host_device_but_the_few_an_experiment_needs(sandbox, tmp_path, farm_cache) -> None:
    """No raw disk or other hardware node of the host: /dev holds the usual character devices and a private shm."""
    code = ("import stat\nfor name in sorted(os.listdir('/dev')):\n    mode = os.stat('/dev/' + name).st_mode\n"
            "    print('PROBE dev', name, 'block' if stat.S_ISBLK(mode) else 'char' if stat.S_ISCHR(mode) else 'other')"
            "\nopen('/dev/null', 'w').write('x')\nprint('PROBE null writable')")
    source = candidates.source("good", prelude="import os\n" + candidates.probe(code))
    result = run(sandbox, tmp_path, farm_cache, source)
    log = _read(tmp_path / "run" / "out" / "run.log")
    devices = {line.split()[2]: line.split()[3] for line in log.splitlines() if line.startswith("PROBE dev")}
    assert "PROBE null writable" in log and {"null", "zero", "urandom", "shm"} <= set(devices), log
    assert "block" not in devices.values(), devices  # no disk
    assert not {name for name in devices if name.startswith(("sd", "nvme", "vd", "xvd", "loop", "mem", "kmsg"))}
    assert result.status == Status.OK


def test_the_shared_compile_cache_is_read_only_and_only_mains_runs_add_to_it(sandbox, tmp_path, farm_cache) -> None:
    """Each experiment compiles into a private copy; what a candidate plants there dies with it, unless the farm
    asked the run to publish (main's baselines) and it ended ok."""
    shared = tmp_path / "compile"
    (shared / "inductor").mkdir(parents=True)
    (shared / "inductor" / "warm").write_text("from main")
    code = ("import os\nprivate = os.environ['TORCHINDUCTOR_CACHE_DIR']\n"
            "print('PROBE warm', open(os.path.join(private, 'warm')).read())\n"
            "open(os.path.join(private, 'planted'), 'w').write('x')\nprint('PROBE planted')\n"
            "for path in ('/compile-cache/inductor/x', '/run/farm/compile/inductor/x'):\n"
            "    try:\n        open(path, 'w').write('x')\n        print('PROBE wrote shared', path)\n"
            "    except OSError as exc:\n        print('PROBE blocked', type(exc).__name__)")
    for publish in (False, True):
        spec = ExperimentSpec(
            experiment_id=f"t-{uuid.uuid4().hex[:10]}", train_py=candidates.source("good", prelude=code),
            profile="cpu-smoke", run_dir=tmp_path / f"run-{publish}", cache_dir=farm_cache,
            compile_cache_dir=shared, publish_compile_cache=publish,
        )
        result = sandbox.run(spec, GpuAssignment())
        log = _read(spec.run_dir / "out" / "run.log")
        assert result.status == Status.OK, result.reason
        assert "PROBE warm from main" in log and "PROBE planted" in log and "PROBE wrote shared" not in log, log
        assert (shared / "inductor" / "planted").exists() == publish
        assert (shared / "inductor" / "warm").read_text() == "from main"  # never overwritten
        assert not (spec.run_dir / "out" / "compile-cache").exists()


def test_daemon_does_not_outlive_the_experiment(sandbox, tmp_path, farm_cache) -> None:
    tag = f"{600 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 1000:03d}"
    code = f"import subprocess\nsubprocess.Popen(['sleep', '{tag}'], start_new_session=True)\n"
    code += "print('PROBE daemon started')"
    result = run(sandbox, tmp_path, farm_cache, candidates.source("good", prelude=candidates.probe(code)))
    assert "PROBE daemon started" in _read(tmp_path / "run" / "out" / "run.log")
    assert result.status == Status.OK
    assert subprocess.run(["pgrep", "-f", f"sleep {tag}"], capture_output=True).stdout == b""


@pytest.mark.skipif(not IS_ROOT, reason="network namespaces for the outside host need root")
def test_no_network_to_outside_or_host_loopback(sandbox, tmp_path, farm_cache, outside_host, loopback_listener) -> None:
    targets = [outside_host.address, loopback_listener.address]
    code = "\n".join(
        f"try:\n    socket.create_connection({addr!r}, timeout=2).close()\n    print('PROBE connected', {addr!r})\n"
        f"except OSError as exc:\n    print('PROBE blocked', {addr!r}, exc)"
        for addr in targets
    )
    result = run(sandbox, tmp_path, farm_cache, candidates.source("good", prelude="import socket\n" + code))
    log = _read(tmp_path / "run" / "out" / "run.log")
    assert "PROBE connected" not in log and log.count("PROBE blocked") == 2, log
    assert outside_host.connections() == 0 and loopback_listener.connections == 0
    assert result.status == Status.OK


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            h.update(str(path).encode() + path.read_bytes())
    return h.hexdigest()


class LoopbackListener:
    """A TCP listener on the host's loopback that counts who reached it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = self.sock.getsockname()
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()


@pytest.fixture
def loopback_listener() -> Iterator[LoopbackListener]:
    listener = LoopbackListener()
    socket.create_connection(listener.address, timeout=2).close()  # reachable from the host itself
    for _ in range(50):  # counted by the accept thread before the count is reset
        if listener.connections:
            break
        threading.Event().wait(0.05)
    listener.connections = 0
    yield listener
    listener.sock.close()


class OutsideHost:
    """A host in a network namespace this test creates (a veth pair), listening on TCP.

    It stands in for "the outside": the host can reach it, so a sandbox that
    leaked would reach it too, and the packet never leaves this machine.
    """

    def __init__(self, tmp_path: Path) -> None:
        tag = uuid.uuid4().hex[:6]
        self.ns, self.veth = f"farmtest-{tag}", f"vf{tag}"
        self.count_file = tmp_path / "outside-connections"
        self.address = ("10.213.77.2", 8765)
        sh = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
        sh("ip", "netns", "add", self.ns)
        sh("ip", "link", "add", self.veth + "h", "type", "veth", "peer", "name", self.veth + "n")
        sh("ip", "link", "set", self.veth + "n", "netns", self.ns)
        sh("ip", "addr", "add", "10.213.77.1/30", "dev", self.veth + "h")
        sh("ip", "link", "set", self.veth + "h", "up")
        sh("ip", "netns", "exec", self.ns, "ip", "addr", "add", "10.213.77.2/30", "dev", self.veth + "n")
        sh("ip", "netns", "exec", self.ns, "ip", "link", "set", self.veth + "n", "up")
        server = (
            "import socket,sys\ns=socket.create_server(('10.213.77.2',8765))\nn=0\n"
            "while True:\n    c,_=s.accept(); n+=1; open(sys.argv[1],'w').write(str(n)); c.close()"
        )
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, sys.executable, "-c", server, str(self.count_file)]
        )
        for _ in range(50):  # the host reaches it: proves the probe would have seen a leak
            try:
                socket.create_connection(self.address, timeout=1).close()
                break
            except OSError:
                threading.Event().wait(0.1)
        else:
            raise RuntimeError("outside host never came up")
        for _ in range(50):  # the server has counted the host's own probe
            if self.connections() >= 1:
                break
            threading.Event().wait(0.1)
        self.baseline = self.connections()

    def connections(self) -> int:
        return int(_read(self.count_file) or 0) - getattr(self, "baseline", 0)

    def close(self) -> None:
        self.server.kill()
        subprocess.run(["ip", "link", "del", self.veth + "h"], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)


@pytest.fixture
def outside_host(tmp_path: Path) -> Iterator[OutsideHost]:
    host = OutsideHost(tmp_path)
    yield host
    host.close()
