"""The candidate in a container of its own: the runner's end and the launcher's end of one Unix socket.

Where the runner cannot be root (a Kubernetes pod under Pod Security "restricted" drops every capability), it
cannot start the candidate as another user. The pod then runs two containers as two users: the runner's and the
candidate's, whose PID 1 is this module's launcher (``python -m trainer.exchange DIR``). They share one directory,
the exchange (an emptyDir). The runner listens on a Unix socket there; the launcher connects once per channel:

- ``control``: the runner sends the candidate's argv, environment, working dir and process cap as one JSON line,
  may later send ``kill``; the launcher answers ``rc N`` when the candidate has ended;
- ``events``: the candidate's harness events (its FARM_EVENTS_FD), timed by the runner on arrival;
- ``reply``: the runner's answer to evaluate_bpb (its FARM_REPLY_FD);
- ``output``: the candidate's stdout and stderr;
- ``data``: the training batches the runner serves (its FARM_DATA_FD; trainer/feeder.py).

Nothing the launcher says is believed beyond what it is: its exit code only classifies a failure, an ``ok`` still
needs a model that the trusted evaluator, in the runner's container, scored. The launcher itself is out of the
candidate's reach in a real container: PID 1 of its PID namespace (the kernel drops every signal the candidate
sends it), not dumpable (no ptrace by the same user), and the only holder of the control connection. The
candidate reaches the runner's container only through the three other connections and the handed-over model.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

SOCKET = "runner.sock"
CHANNELS = ("control", "events", "reply", "output", "data")
# The candidate's working dir in the exchange (where it hands its model over): made by the runner, open to the
# candidate, inside a directory of the runner's that the candidate cannot write in.
WORK = "farm/work"
LAUNCHER_LOST = 255  # the exit code the runner reports when the launcher vanished without saying one
CONNECT_WAIT_S = 900.0  # the launcher waits this long for the runner's socket (the runner starts its evaluator first)


class LauncherError(RuntimeError):
    """The candidate's container never connected, or connected wrongly: the farm's problem, not the candidate's."""


class PodCandidate:
    """The runner's handle on a candidate that runs in another container, shaped like ``subprocess.Popen``
    (``stdout``, ``poll``, ``wait``) plus ``kill``, so the runner treats both the same way."""

    def __init__(self, exchange: Path) -> None:
        self.exchange = Path(exchange)
        self.path = self.exchange / SOCKET
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(self.path))
        os.chmod(self.path, 0o666)  # the candidate's user must be able to connect
        self.listener.listen(len(CHANNELS))
        self.peer_uid: int | None = None
        self.stdout = None
        self._control: socket.socket | None = None
        self._buffer = b""
        self._rc: int | None = None

    def start(
        self, argv: list[str], env: dict[str, str], cwd: Path, nproc: int | None, timeout: float
    ) -> tuple[int, int, int]:
        """Wait for the launcher's connections, send it the candidate to start; (events fd, reply fd, data fd) for
        reading events, writing the answer and writing the training batches. Raises LauncherError if it does not
        connect within ``timeout`` seconds."""
        conns: dict[str, socket.socket] = {}
        deadline = time.monotonic() + timeout
        try:
            while len(conns) < len(CHANNELS):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LauncherError(f"the candidate's container did not connect to {self.path} within "
                                        f"{timeout:g} s (its launcher is `python -m trainer.exchange`)")
                self.listener.settimeout(left)
                try:
                    conn, _ = self.listener.accept()
                except TimeoutError:
                    continue
                conn.settimeout(10)
                name = _read_line(conn, 32).decode(errors="replace")
                if name not in CHANNELS or name in conns:
                    conn.close()
                    raise LauncherError(f"an unexpected connection to the exchange socket ({name!r})")
                uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                          struct.calcsize("3i")))[1]  # fmt: skip
                if self.peer_uid is not None and uid != self.peer_uid:
                    conn.close()
                    raise LauncherError(f"exchange connections from two users ({self.peer_uid} and {uid})")
                self.peer_uid = uid
                conn.settimeout(None)
                conns[name] = conn
        finally:
            self.listener.close()
            try:
                self.path.unlink()  # nothing else ever connects
            except OSError:
                pass
            if len(conns) < len(CHANNELS):
                for conn in conns.values():
                    conn.close()
        self._control = conns["control"]
        order = {"argv": argv, "env": env, "cwd": str(cwd), "nproc": nproc}
        self._control.sendall((json.dumps(order) + "\n").encode())
        conns["events"].shutdown(socket.SHUT_WR)
        conns["reply"].shutdown(socket.SHUT_RD)
        conns["data"].shutdown(socket.SHUT_RD)
        self.stdout = conns["output"].makefile("rb")
        conns["output"].close()  # the file holds its own reference
        return conns["events"].detach(), conns["reply"].detach(), conns["data"].detach()

    @property
    def separated(self) -> bool:
        """Whether the kernel says the candidate's launcher runs as another user than the runner."""
        return self.peer_uid is not None and self.peer_uid != os.getuid()

    def poll(self) -> int | None:
        """The candidate's exit code once the launcher reported it (LAUNCHER_LOST if it vanished), else None."""
        if self._rc is None and self._control is not None:
            self._control.setblocking(False)
            try:
                chunk = self._control.recv(256)
                self._take(chunk)
            except BlockingIOError:
                pass
            except OSError:
                self._rc = LAUNCHER_LOST
            finally:
                if self._rc is None:
                    self._control.setblocking(True)
        return self._rc

    def wait(self, timeout: float = 30.0) -> int:
        """Block until the launcher reports (at most ``timeout`` seconds: then it counts as lost)."""
        deadline = time.monotonic() + timeout
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._rc is None:
            self._rc = LAUNCHER_LOST
        return self._rc

    def kill(self) -> None:
        """Ask the launcher to kill every process in the candidate's container; it then reports the exit code."""
        if self._control is not None and self._rc is None:
            try:
                self._control.sendall(b"kill\n")
            except OSError:
                pass

    def close(self) -> None:
        for thing in (self._control, self.stdout):
            if thing is not None:
                try:
                    thing.close()
                except OSError:
                    pass

    def _take(self, chunk: bytes) -> None:
        if not chunk:
            self._rc = LAUNCHER_LOST
            return
        self._buffer = (self._buffer + chunk)[-256:]
        for line in self._buffer.split(b"\n")[:-1]:
            parts = line.split()
            if len(parts) == 2 and parts[0] == b"rc":
                try:
                    self._rc = int(parts[1])
                except ValueError:
                    self._rc = LAUNCHER_LOST
                return


def _read_line(conn: socket.socket, limit: int) -> bytes:
    data = b""
    while not data.endswith(b"\n") and len(data) < limit:
        byte = conn.recv(1)
        if not byte:
            break
        data += byte
    return data.strip()


# -- the launcher: PID 1 of the candidate's container ------------------------------------------------------------


def launch(exchange: Path) -> int:
    """Connect to the runner, start the candidate it describes, report its exit code; kill what is left."""
    try:
        PR_SET_DUMPABLE = 4
        ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # no ptrace of the launcher by the candidate's user
    except (OSError, AttributeError):
        pass
    path = Path(exchange) / SOCKET
    deadline = time.monotonic() + CONNECT_WAIT_S
    conns: dict[str, socket.socket] = {}
    while not conns:
        try:
            for name in CHANNELS:
                conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                conn.connect(str(path))
                conn.sendall(name.encode() + b"\n")
                conns[name] = conn
        except OSError:
            for conn in conns.values():
                conn.close()
            conns = {}
            if time.monotonic() > deadline:
                print(f"launcher: no runner socket at {path} after {CONNECT_WAIT_S:g} s", file=sys.stderr)
                return 2
            time.sleep(0.2)
    control = conns["control"]
    try:
        order = json.loads(_read_line(control, 1 << 20))  # unbuffered: a later "kill" stays for _obey to read
    except (OSError, ValueError):
        return 2  # the runner went away before it said what to run
    cwd = Path(order["cwd"])
    events, reply, output = conns["events"].detach(), conns["reply"].detach(), conns["output"].detach()
    data = conns["data"].detach()
    env = dict(order["env"], FARM_EVENTS_FD=str(events), FARM_REPLY_FD=str(reply), FARM_DATA_FD=str(data))
    nproc = order.get("nproc")
    proc = subprocess.Popen(
        order["argv"], env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
        pass_fds=(events, reply, data), start_new_session=True,
        preexec_fn=(lambda: resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))) if nproc else None,
    )
    for fd in (events, reply, output, data):
        os.close(fd)
    threading.Thread(target=_obey, args=(control, proc), daemon=True).start()
    rc = proc.wait()
    _kill_all(proc)
    _reap()
    try:
        control.sendall(f"rc {rc}\n".encode())
    except OSError:
        pass
    control.close()
    return 0


def _obey(control: socket.socket, proc: subprocess.Popen) -> None:
    """The runner's ``kill`` (or its going away: the same) ends the candidate."""
    try:
        while chunk := control.recv(64):
            if b"kill" in chunk:
                break
    except OSError:
        pass
    _kill_all(proc)


def _kill_all(proc: subprocess.Popen) -> None:
    """The candidate's process group; as PID 1 of the container, every other process in it too (all the
    candidate's: nothing else runs there), so no child it left behind keeps training or holds a connection."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if os.getpid() == 1:
        try:
            os.kill(-1, signal.SIGKILL)  # every process but this one
        except ProcessLookupError:
            pass


def _reap() -> None:
    """As PID 1, collect the orphans it inherited (after the candidate's own exit code was taken)."""
    if os.getpid() != 1:
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m trainer.exchange EXCHANGE_DIR", file=sys.stderr)
        return 2
    return launch(Path(args[0]))


if __name__ == "__main__":
    sys.exit(main())
