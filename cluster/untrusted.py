"""Files an experiment left behind, read and written by the host as what they are: bytes from hostile code.

A candidate can replace its run.log or result.json with a link (to /dev/zero, to /proc/self/environ, to a
host file), a FIFO, or a file of any size. Every host-side access to an experiment's out dir goes through
here: opened without following a link, only a regular file is read, never more than a cap, and a file the
host writes there replaces whatever entry the candidate planted instead of writing through it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # NONBLOCK: opening a FIFO must not hang


def read_bytes(path: Path, limit: int, *, tail: bool = False) -> bytes | None:
    """At most ``limit`` bytes of a regular file (its last ones if ``tail``); None when ``path`` is missing, a
    link, or not a regular file."""
    try:
        fd = os.open(path, _READ)
    except OSError:  # missing, a link (ELOOP), unreadable
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        size = info.st_size
        if tail and size > limit:
            os.lseek(fd, size - limit, os.SEEK_SET)
        chunks, left = [], limit
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_text(path: Path, limit: int, *, tail: bool = False) -> str:
    """``read_bytes`` decoded (bad bytes replaced); "" where there is nothing to read."""
    data = read_bytes(path, limit, tail=tail)
    return data.decode("utf-8", "replace") if data else ""


def log_tail(path: Path, lines: int, limit: int = 64 * 1024) -> str:
    """The last ``lines`` lines of a log, from at most its last ``limit`` bytes."""
    return "\n".join(read_text(path, limit, tail=True).splitlines()[-lines:])


def write_bytes(path: Path, data: bytes) -> None:
    """Write a new file at ``path`` in a directory the candidate could write to: whatever entry is there (a
    link to a host file, say) is removed first, and the file is created exclusively, never through a link."""
    try:
        os.unlink(path)  # unlink removes a link itself, never its target
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        raise OSError(f"{path} is a directory planted by the experiment; not written") from None
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
