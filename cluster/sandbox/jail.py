"""The inside of the process sandbox, run as root in fresh namespaces (see process.py).

    python -m cluster.sandbox.jail [--bind SRC DST] [--bind-rw SRC DST] [--reach PATH] [--hide PATH]
        [--cgroup PATH] [--shm-mb N] [--tmp-mb N] -- CMD...

By the time this runs, ``unshare`` has given it its own network (nothing but
a downed loopback), PID and mount namespaces. It joins the experiment's
cgroups and builds the experiment's view of the file system:

- a fresh ``/run`` holding only ``/run/farm/<name>`` binds of the experiment's
  own directories (candidate, data cache, out dir, compile cache), so the
  host's sockets under /run (the Docker Engine's among them) are gone;
- a fresh, size-limited ``/tmp`` (HOME and TMPDIR, and the runner's scratch: the candidate's work dir and the
  copy of its model; filling it is the candidate's ENOSPC, never the host disk's);
- a fresh ``/dev`` with only null, zero, full, random, urandom, tty, the NVIDIA driver's nodes and a private
  ``/dev/shm`` (no raw disks or other hardware of the host);
- ``--reach``: directories the candidate's user must be able to enter (the
  Python it runs on) stay at their paths even under a parent it may not enter
  (``/root`` is 0700): that parent is replaced by an empty directory holding
  just those binds, which also hides the rest of it;
- ``--hide``: an empty read-only directory over a path (CPython's
  ``pydoc_data``, the source of the CPU profiles' validation text);
- everything else read-only.

Then it executes CMD (the runner) as root with only the capabilities the
runner needs to start the candidate as another user and clean up after it
(setuid, setgid, chown, fowner, kill, dac_read_search: it reads what the candidate hands over), and no way
to gain more. Standard
library only: it is on the start-up path of every experiment.
"""

from __future__ import annotations

import ctypes
import os
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
_libc = ctypes.CDLL(None, use_errno=True)
# Mounts that stay as they are: fresh per namespace (/proc) or the fresh /dev (device nodes must stay writable).
_KEEP = ("/proc", "/dev")
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
VIEW = "/run/farm"
FRESH = ("/tmp/", "/run/")  # replaced by fresh filesystems in the view
RUNNER_CAPS = "-all,+setuid,+setgid,+chown,+fowner,+kill,+dac_read_search"


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    if _libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def _mount_points() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4].replace("\\040", " ") for line in f]
    return sorted(set(points), key=len)


def _blocking_parent(path: str) -> str | None:
    """The outermost directory above ``path`` that others may not enter (no o+x), or None."""
    parts = path.strip("/").split("/")
    for i in range(1, len(parts)):
        parent = "/" + "/".join(parts[:i])
        if not os.stat(parent).st_mode & 0o001:
            return parent
    return None


def _bind_fd(fd: int, target: str, writable: bool) -> None:
    os.makedirs(target, exist_ok=True)
    _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC)
    if not writable:
        _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _device_nodes() -> list[str]:
    """The host's device nodes an experiment needs: the usual character devices and the NVIDIA driver's."""
    import glob

    names = [f"/dev/{n}" for n in DEVICES if os.path.exists(f"/dev/{n}")]
    return names + sorted(p for p in glob.glob("/dev/nvidia*") if not os.path.islink(p))


def _minimal_dev(devices: list[tuple[int, str]], shm_mb: int) -> None:
    """A fresh /dev holding only ``devices`` (bound from the host's nodes), a private /dev/shm and the usual links:
    no raw disks, no other hardware, nothing of the host's to open."""
    _mount("tmpfs", "/dev", "tmpfs", MS_NOSUID, "size=64k,mode=0755")
    for fd, path in devices:
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            os.makedirs(path, exist_ok=True)
        else:
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"/dev/{name}")
    os.mkdir("/dev/shm")
    _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, f"size={shm_mb}m,mode=1777")


def build_view(binds: list[tuple[str, str, bool]], reach: list[str], hide: list[str], shm_mb: int, tmp_mb: int) -> None:
    """Mount the experiment's file system (see the module docstring); ``binds``: (source, target, writable)."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we do here propagates to the host
    # Every source is opened before anything is mounted over it (a source may live under /tmp, /run or /root).
    sources = [(os.open(src, os.O_PATH | os.O_DIRECTORY), dst, rw) for src, dst, rw in binds]
    reachable = [(os.open(p, os.O_PATH | os.O_DIRECTORY), p) for p in dict.fromkeys(os.path.realpath(p) for p in reach)]
    # A path under a directory replaced below (/tmp, /run) comes back as a bind at its own path; one under a
    # parent others may not enter comes back under an empty stand-in for that parent.
    fresh = {p: p.startswith(FRESH) for _, p in reachable}
    blocked = {p: None if fresh[p] else _blocking_parent(p) for _, p in reachable}
    devices = [(os.open(path, os.O_PATH), path) for path in _device_nodes()]
    _mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "size=16m,mode=0755")
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmp_mb}m,mode=1777")
    _minimal_dev(devices, shm_mb)
    for parent in sorted({b for b in blocked.values() if b}, key=len):
        _mount("tmpfs", parent, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    for fd, path in reachable:
        if blocked[path] or fresh[path]:
            _bind_fd(fd, path, writable=False)
    for fd, dst, rw in sources:
        _bind_fd(fd, dst, rw)
    for path in hide:
        if os.path.isdir(path):
            _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "size=4k,mode=0555")
    writable = {dst for _, dst, rw in sources if rw} | {"/tmp"}
    for point in _mount_points():
        if point in _KEEP or point in writable or point.startswith(("/proc/", "/dev/")):
            continue
        try:
            _mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
        except OSError:
            if point == "/":
                raise  # the root must be read-only; anything else is best effort (e.g. overmounted)


def main(argv: list[str]) -> None:
    split = argv.index("--")
    opts, cmd = argv[:split], argv[split + 1 :]
    binds, reach, hide = [], [], []
    shm_mb, tmp_mb = 256, 1024
    i = 0
    while i < len(opts):
        opt = opts[i]
        if opt in ("--bind", "--bind-rw"):
            binds.append((opts[i + 1], opts[i + 2], opt == "--bind-rw"))
            i += 3
            continue
        value = opts[i + 1]
        if opt == "--reach":
            reach.append(value)
        elif opt == "--hide":
            hide.append(value)
        elif opt == "--shm-mb":
            shm_mb = int(value)
        elif opt == "--tmp-mb":
            tmp_mb = int(value)
        elif opt == "--cgroup":
            with open(os.path.join(value, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        else:
            raise SystemExit(f"jail: unknown option {opt}")
        i += 2
    build_view(binds, reach, hide, shm_mb, tmp_mb)
    os.execvp(
        "setpriv",
        ["setpriv", f"--bounding-set={RUNNER_CAPS}", "--inh-caps=-all", "--no-new-privs", "--", *cmd],
    )


if __name__ == "__main__":
    main(sys.argv[1:])
