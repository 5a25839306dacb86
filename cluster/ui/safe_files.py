"""Reading what an experiment left behind: its run.log was written by hostile code.

The candidate may have replaced ``run.log`` (or a directory on the way to
it) by a symlink to a host secret, by a FIFO that blocks whoever opens it,
or by a file of gigabytes. So every path component is opened relative to
the one before with ``O_NOFOLLOW`` (no link is followed anywhere below the
run directory), the file is opened non-blocking and must be a regular file,
and at most ``max_bytes`` from its end are read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

LOG_TAIL_BYTES = 64 * 1024
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)


class UnsafeFile(Exception):
    """The file is missing, not a regular file, or reached through a link: nothing is shown."""


def read_tail(base: Path, parts: list[str], max_bytes: int = LOG_TAIL_BYTES) -> tuple[str, bool]:
    """(the last ``max_bytes`` of ``base/parts...`` as text, whether it was cut), never following a link.

    ``base`` is trusted (the run directory the user named); each of ``parts``
    must be one plain name. Raises :class:`UnsafeFile` with the reason.
    """
    for part in parts:
        if not part or part in (".", "..") or "/" in part or "\0" in part:
            raise UnsafeFile(f"not a plain name: {part!r}")
    fds: list[int] = []
    try:
        try:
            fds.append(os.open(base, _DIR_FLAGS))
            for name in parts[:-1]:
                fds.append(os.open(name, _DIR_FLAGS, dir_fd=fds[-1]))
            fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=fds[-1])
        except FileNotFoundError as exc:
            raise UnsafeFile("no such file") from exc
        except OSError as exc:  # ELOOP/ENOTDIR: a link or a non-directory on the way
            raise UnsafeFile(f"refused ({os.strerror(exc.errno or 0)}): a link or not a plain file") from exc
        fds.append(fd)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeFile("not a regular file")
        size = info.st_size
        start = max(0, size - max_bytes)
        os.lseek(fd, start, os.SEEK_SET)
        chunks, left = [], min(size, max_bytes)
        while left > 0:
            chunk = os.read(fd, min(left, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
    finally:
        for opened in reversed(fds):
            os.close(opened)
    if start:  # drop the partial first line
        newline = data.find(b"\n")
        data = data[newline + 1 :] if 0 <= newline < 4096 else data
    return data.decode("utf-8", errors="replace").replace("\0", "\ufffd"), start > 0
