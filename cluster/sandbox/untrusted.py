"""Files an experiment left behind, read and written by the host as what they are: bytes from hostile code.

A candidate can replace its run.log or result.json with a link (to /dev/zero, to /proc/self/environ, to a
host file), a FIFO, or a file of any size. Every host-side access to an experiment's out dir goes through
here (the driver, the sandboxes' collection, `farm show`, the run browser): opened without following a link,
only a regular file is read, never more than a cap, and a file the host writes there replaces whatever entry the
candidate planted instead of writing through it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)  # a FIFO must not hang
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
LOG_TAIL_BYTES = 64 * 1024  # what the run browser shows of a log


class UnsafeFile(Exception):
    """The file is missing, not a regular file, or reached through a link: nothing is read."""


def _read_open(fd: int, limit: int, tail: bool) -> bytes | None:
    """At most ``limit`` bytes of the open file ``fd`` (its last ones if ``tail``); None unless a regular file."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        return None
    if tail and info.st_size > limit:
        os.lseek(fd, info.st_size - limit, os.SEEK_SET)
    chunks, left = [], limit
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_bytes(path: Path, limit: int, *, tail: bool = False) -> bytes | None:
    """At most ``limit`` bytes of a regular file (its last ones if ``tail``); None when ``path`` is missing, a
    link, or not a regular file."""
    try:
        fd = os.open(path, _READ)
    except OSError:  # missing, a link (ELOOP), unreadable
        return None
    try:
        return _read_open(fd, limit, tail)
    finally:
        os.close(fd)


def read_beneath(base: Path, parts: list[str], limit: int = LOG_TAIL_BYTES) -> tuple[str, bool]:
    """(the last ``limit`` bytes of ``base/parts...`` as text, whether it was cut), no link followed anywhere below
    ``base``: each component is opened relative to the one before with O_NOFOLLOW, so a directory on the way that
    the candidate swapped for a link is refused too (the run browser reads a whole run's tree this way).

    ``base`` is trusted (the run directory the user named); each of ``parts`` must be one plain name. Raises
    :class:`UnsafeFile` with the reason.
    """
    for part in parts:
        if not part or part in (".", "..") or "/" in part or "\0" in part:
            raise UnsafeFile(f"not a plain name: {part!r}")
    fds: list[int] = []
    try:
        try:
            fds.append(os.open(base, _DIR))
            for name in parts[:-1]:
                fds.append(os.open(name, _DIR, dir_fd=fds[-1]))
            fds.append(os.open(parts[-1], _READ, dir_fd=fds[-1]))
        except FileNotFoundError as exc:
            raise UnsafeFile("no such file") from exc
        except OSError as exc:  # ELOOP/ENOTDIR: a link or a non-directory on the way
            raise UnsafeFile(f"refused ({os.strerror(exc.errno or 0)}): a link or not a plain file") from exc
        size = os.fstat(fds[-1]).st_size
        data = _read_open(fds[-1], limit, tail=True)
    finally:
        for opened in reversed(fds):
            os.close(opened)
    if data is None:
        raise UnsafeFile("not a regular file")
    cut = size > limit
    if cut:  # drop the partial first line
        newline = data.find(b"\n")
        data = data[newline + 1 :] if 0 <= newline < 4096 else data
    return data.decode("utf-8", errors="replace").replace("\0", "\ufffd"), cut


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
