"""The model store on disk: every kept model file and the current/previous links.

Layout under `data_dir/models`:

    versions/<version>.onnx    every kept model file
    current  -> versions/...   the model in use (symlink, replaced atomically)
    previous -> versions/...   the one before it: the rollback target
    incoming/                  ModelDownloader's partial and verified downloads
    refused.json               (version, sha256) pairs never to try again, with the reason
    configured.json            which `[detector] model` file was last imported

A symlink is swapped with os.replace of a new link, so after a crash `current` names either
the old or the new model, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from dal.errors import StorageError
from dal.fileio import atomic_write_json, copy_durably, fsync_dir

logger = logging.getLogger(__name__)


class ModelStore:
    """Model files and the current/previous links; see the module docstring."""

    def __init__(self, root: str | os.PathLike[str], keep_previous: int = 2) -> None:
        self.root = Path(root)
        self.versions = self.root / "versions"
        self.incoming = self.root / "incoming"
        self.keep_previous = keep_previous
        try:
            self.versions.mkdir(parents=True, exist_ok=True)
            self.incoming.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StorageError(
                f"cannot create the model store {self.root}: {err.strerror}",
                hint="check [agent] data_dir and its permissions",
            ) from None
        self._refused_path = self.root / "refused.json"
        self._configured_path = self.root / "configured.json"

    def path_for(self, version: str) -> Path:
        return self.versions / f"{version}.onnx"

    def _target(self, name: str) -> Path | None:
        link = self.root / name
        if not link.is_symlink():
            return None
        target = (self.root / os.readlink(link)).resolve()
        return target if target.is_file() else None

    def current(self) -> Path | None:
        return self._target("current")

    def previous(self) -> Path | None:
        return self._target("previous")

    def _link(self, name: str, target: Path) -> None:
        tmp = self.root / f".{name}.tmp"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(os.path.relpath(target, self.root), tmp)
        os.replace(tmp, self.root / name)
        fsync_dir(self.root)

    def install(self, source: Path, version: str, move: bool = False) -> Path:
        """Put a model file into versions/ under its version (copy, or move when it is ours)."""
        target = self.path_for(version)
        try:
            if move:
                os.replace(source, target)
            else:
                copy_durably(source, target)
            fsync_dir(self.versions)
        except OSError as err:
            raise StorageError(
                f"cannot store model {version} in {self.versions}: {err.strerror}",
                hint="free disk space under data_dir",
            ) from None
        return target

    def activate(self, version: str) -> None:
        """Make `version` current; the old current becomes previous."""
        target = self.path_for(version)
        if not target.is_file():
            raise StorageError(f"model {version} is not in {self.versions}")
        old = self.current()
        if old is not None and old != target.resolve():
            self._link("previous", old)
        self._link("current", target)
        self.prune()

    def rollback(self) -> Path | None:
        """Make previous current again; None (nothing changed) when there is no previous."""
        previous = self.previous()
        if previous is None:
            return None
        self._link("current", previous)
        with contextlib.suppress(FileNotFoundError):
            (self.root / "previous").unlink()
        return previous

    def prune(self) -> list[Path]:
        """Delete model files beyond current, previous and the newest `keep_previous` others."""
        files = sorted(
            (p for p in self.versions.glob("*.onnx") if p.is_file()),
            key=lambda p: p.stat().st_mtime_ns,
            reverse=True,
        )
        keep = {p for p in (self.current(), self.previous()) if p is not None}
        others = [p for p in files if p.resolve() not in keep]
        removed = others[self.keep_previous :]
        for path in removed:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                logger.info("model store: removed old model %s", path.name)
        return removed

    # -- refused models and the configured start model -----------------------------------------

    def _read_json(self, path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            logger.warning("model store: ignoring unreadable %s: %s", path, err)
            return {}
        return data if isinstance(data, dict) else {}

    def refuse(self, version: str, sha256: str, reason: str) -> None:
        refused = self._read_json(self._refused_path)
        refused[f"{version}:{sha256}"] = {"reason": reason, "time": time.time()}
        atomic_write_json(self._refused_path, refused)

    def is_refused(self, version: str, sha256: str) -> bool:
        return f"{version}:{sha256}" in self._read_json(self._refused_path)

    @staticmethod
    def _fingerprint(path: Path) -> dict[str, Any]:
        st = path.stat()
        return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}

    def configured_changed(self, path: Path) -> bool:
        """Is `[detector] model` a different file (or changed) since it was last imported?"""
        return self._read_json(self._configured_path) != self._fingerprint(path)

    def remember_configured(self, path: Path) -> None:
        atomic_write_json(self._configured_path, self._fingerprint(path))
