"""Atomic file writes that survive a power cut, and file hashing.

A reader must see either the old file or the new one, never half of each: write a temp file in
the same folder (same filesystem, so the rename is atomic), flush and fsync it, `os.replace` it
over the target, then fsync the folder so the rename itself is on disk.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from dal.errors import StorageError

logger = logging.getLogger(__name__)

_HASH_CHUNK = 1 << 20


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


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Replace `path` with `data` atomically; on failure the old file (if any) stays untouched."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_name: str | None = None
    try:
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
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


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Atomic text write (see `atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode(encoding))


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
