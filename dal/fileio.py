"""Atomic file writes that survive a power cut, and file hashing.

A reader must see either the old file or the new one, never half of each: write a temp file in
the same folder (same filesystem, so the rename is atomic), flush and fsync it, `os.replace` it
over the target, then fsync the folder so the rename itself is on disk.

Permissions: a written file gets the mode the process umask allows (0666 & ~umask, what `open`
would give), or the mode the caller names for a secret. mkstemp alone would make every file
0600, unreadable by the other service users that read exported models and pooled images.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from dal.errors import StorageError

logger = logging.getLogger(__name__)

_HASH_CHUNK = 1 << 20
_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it in /proc; elsewhere
    set and restored at once (under a lock, though other threads could still race it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def default_mode() -> int:
    """The mode `open()` gives a new file: 0666 less the umask."""
    return 0o666 & ~current_umask()


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable; some filesystems refuse to open folders, that is fine."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as err:  # e.g. EINVAL on filesystems without directory fsync
        logger.debug("fsync of folder %s skipped: %s", folder, err)
    finally:
        os.close(fd)


def storage_error(err: OSError, path: Path) -> StorageError:
    """The StorageError for a failed write of `path` (disk full, permissions, other)."""
    if err.errno == errno.ENOSPC:
        return StorageError(
            f"disk full: free space under {path.parent}",
            hint=f"could not write {path.name}; delete old files or point the output elsewhere",
        )
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StorageError(
            f"cannot write {path}: {err.strerror}",
            hint="check the folder's permissions or choose another output folder",
        )
    return StorageError(f"cannot write {path}: {err}")


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, mode: int | None = None) -> Path:
    """Replace `path` with `data` atomically; on failure the old file (if any) stays untouched.
    The file gets `mode`, else what the umask allows (see the module docstring)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_name: str | None = None
    try:
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.fchmod(fd, default_mode() if mode is None else mode)  # before any byte lands
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
        tmp_name = None
    except OSError as err:
        raise storage_error(err, target) from err
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
    fsync_dir(target.parent)
    return target


def atomic_write_text(
    path: str | os.PathLike[str], text: str, encoding: str = "utf-8", mode: int | None = None
) -> Path:
    """Atomic text write (see `atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode(encoding), mode)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> Path:
    """Serialise first (a TypeError leaves no file at all), then write atomically."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False)
    return atomic_write_text(path, text + "\n")


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks so large models do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# -- partial files: chunks that arrive in any order, then one durable rename --------------------


def write_at(path: str | os.PathLike[str], offset: int, data: bytes, mode: int = 0o666) -> None:
    """Write `data` at `offset` of a partial file, creating it if needed (`mode` less the
    umask: the finished file is renamed into place and keeps it): how the link spools chunks
    that arrive in any order and more than once."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, mode)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def sync_file(path: str | os.PathLike[str], size: int | None = None) -> None:
    """fsync a file's data, first cutting it to `size` bytes when given (a partial file may hold
    stray bytes past its real end), so that a rename of it is all that is left to do."""
    fd = os.open(path, os.O_RDONLY if size is None else os.O_WRONLY)
    try:
        if size is not None:
            os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_durably(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Copy `source` over `target` atomically: a temp copy beside the target, fsynced, renamed.
    The caller fsyncs the folder once it has put everything in place."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(source, tmp)
    sync_file(tmp)
    os.replace(tmp, target)


def move_durably(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Rename `source` to `target`; across filesystems, copy durably and delete the source."""
    try:
        os.replace(source, target)
    except OSError as err:
        if err.errno != errno.EXDEV:
            raise
        copy_durably(source, target)
        Path(source).unlink(missing_ok=True)
