"""The inside of the process sandbox, run as root in fresh namespaces (see process.py).

    python -m cluster.sandbox.jail --out DIR [--rw DIR ...] [--cgroup PATH ...] [--shm-mb N]
        [--scratch DIR --scratch-mb N] -- CMD...

By the time this runs, ``unshare`` has given it its own network (nothing but
a downed loopback), PID and mount namespaces. It joins the experiment's
cgroups, makes every mount read-only except the experiment's out dir, a
private /dev/shm and a size-limited scratch filesystem (its HOME and TMPDIR),
and then executes CMD with no capabilities at all, so not even root can undo
any of it. Standard library only: it is on the start-up
path of every experiment.
"""

from __future__ import annotations

import ctypes
import os
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
_libc = ctypes.CDLL(None, use_errno=True)
# Mounts that stay as they are: fresh per namespace (/proc) or device nodes that must stay writable.
_KEEP = ("/proc", "/dev", "/dev/pts", "/dev/mqueue")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    if _libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def _mount_points() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4].replace("\\040", " ") for line in f]
    return sorted(set(points), key=len)


def lock_down(writable: list[str], shm_mb: int, scratch: str | None = None, scratch_mb: int = 1024) -> None:
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we do here propagates to the host
    for path in writable:
        _mount(path, path, None, MS_BIND)  # each becomes its own (writable) mount
    _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, f"size={shm_mb}m,mode=1777")
    for point in _mount_points():
        if point in _KEEP or point in writable or point == "/dev/shm" or point.startswith("/proc/"):
            continue
        try:
            _mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
        except OSError:
            if point == "/":
                raise  # the root must be read-only; anything else is best effort (e.g. overmounted)
    if scratch:  # after the read-only pass: a fresh, bounded, writable tmpfs (filling it is the candidate's ENOSPC)
        _mount("tmpfs", scratch, "tmpfs", MS_NOSUID | MS_NODEV, f"size={scratch_mb}m,mode=1777")


def main(argv: list[str]) -> None:
    split = argv.index("--")
    opts, cmd = argv[:split], argv[split + 1 :]
    writable = [os.path.realpath(opts[i + 1]) for i, opt in enumerate(opts) if opt in ("--out", "--rw")]
    shm_mb = int(opts[opts.index("--shm-mb") + 1]) if "--shm-mb" in opts else 256
    scratch = os.path.realpath(opts[opts.index("--scratch") + 1]) if "--scratch" in opts else None
    scratch_mb = int(opts[opts.index("--scratch-mb") + 1]) if "--scratch-mb" in opts else 1024
    for i, opt in enumerate(opts):
        if opt == "--cgroup":
            with open(os.path.join(opts[i + 1], "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
    lock_down(writable, shm_mb, scratch, scratch_mb)
    os.execvp(
        "setpriv",
        ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs", "--", *cmd],
    )


if __name__ == "__main__":
    main(sys.argv[1:])
