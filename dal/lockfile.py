"""One process per data folder: an exclusive flock on a lock file that names its holder's pid;
and `held_if_free`, the same lock taken only when nobody holds it (one fine-tune job at a time).

Two agents on one data folder would share a pool database and a broker client id, and knock
each other off the broker in turn. The lock is taken before anything else is opened and held
for the life of the process; the kernel drops it when the process dies, even by SIGKILL, so a
stale file never blocks a restart. The file itself stays (deleting it would let a third
process lock a new file while the second still holds the old one).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from dal.errors import ConfigError


class PidLock:
    """`PidLock(path, what).acquire()`, or ConfigError naming the pid that holds it."""

    def __init__(self, path: Path, what: str = "process") -> None:
        self.path = Path(path)
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> PidLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            taken = _try_flock(fd)
        except OSError:
            os.close(fd)
            raise
        if not taken:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"pid {holder}" if holder else "another process"
            raise ConfigError(
                f"another {self.what} ({who}) already runs on {self.path.parent}",
                hint=f"stop it first, or give this one a data folder of its own ({self.path})",
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


@contextlib.contextmanager
def held_if_free(path: Path) -> Iterator[bool]:
    """Hold an exclusive flock on `path` for the block if nobody holds it; yields whether it
    was taken (the caller skips its work when not)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        taken = _try_flock(fd)
        try:
            yield taken
        finally:
            if taken:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError):
        return None
