"""The model registry: every model the trainer made or was given, with lineage and metrics.

One SQLite file (`registry.db`, WAL) under the models folder. A model is a row: version,
parent, checkpoint, the released ONNX file and its signed manifest (once released), class
names, metrics (AP on the fixed validation set, with that set's sha256), the training data
(labelled samples, label revision, synthetic set, settings) and a state:

    candidate  trained, being gated or exported
    current    the model agents should run (exactly one, or none before the first)
    previous   the one that was current before it (the rollback target)
    archived   was current or previous once
    rejected   failed the promotion gate (kept for inspection; may be promoted by hand)
    failed     training, export or the parity check failed

`promote` and `rollback` change states in one transaction, and a partial unique index keeps
"one current, one previous" true even against a bug. Every change is written to `history`.
The running service publishes whatever `current()` says, so `dal models promote` from another
process takes effect within a second.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dal.errors import ModelError, StorageError
from dal.link.messages import ModelManifest
from dal.sqlite_tx import immediate_transaction

DB_NAME = "registry.db"
STATES = ("candidate", "current", "previous", "archived", "rejected", "failed")

# Every change to a model or a rollout target, shared with trainer/rollout_store.py.
HISTORY_SCHEMA = """
CREATE TABLE IF NOT EXISTS history (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    time    REAL NOT NULL,
    version TEXT NOT NULL,
    action  TEXT NOT NULL,
    detail  TEXT NOT NULL DEFAULT ''
);
"""
_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS models (
    version     TEXT PRIMARY KEY,
    parent      TEXT,
    created     REAL NOT NULL,
    state       TEXT NOT NULL,
    checkpoint  TEXT NOT NULL,
    onnx        TEXT,
    manifest    TEXT,
    class_names TEXT NOT NULL,
    metrics     TEXT NOT NULL,
    training    TEXT NOT NULL,
    reason      TEXT NOT NULL DEFAULT '',
    promoted_at REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS one_current ON models(state) WHERE state = 'current';
CREATE UNIQUE INDEX IF NOT EXISTS one_previous ON models(state) WHERE state = 'previous';
"""
    + HISTORY_SCHEMA
)


@dataclass(frozen=True)
class ModelRecord:
    """One model of the registry."""

    version: str
    checkpoint: Path
    class_names: tuple[str, ...]
    parent: str | None = None
    state: str = "candidate"
    created: float = 0.0
    onnx: Path | None = None
    manifest: ModelManifest | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    promoted_at: float | None = None

    @property
    def ap(self) -> float | None:
        value = self.metrics.get("AP")
        return float(value) if value is not None else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (`dal models show`)."""
        return {
            "version": self.version,
            "parent": self.parent,
            "state": self.state,
            "created": self.created,
            "promoted_at": self.promoted_at,
            "checkpoint": str(self.checkpoint),
            "onnx": str(self.onnx) if self.onnx else None,
            "class_names": list(self.class_names),
            "metrics": self.metrics,
            "training": self.training,
            "reason": self.reason,
            "manifest": self.manifest.to_dict() if self.manifest else None,
        }


def log_history(db: sqlite3.Connection, version: str, action: str, detail: str = "") -> None:
    """One row of the history table, inside the caller's transaction."""
    db.execute(
        "INSERT INTO history (time, version, action, detail) VALUES (?, ?, ?, ?)",
        (time.time(), version, action, detail),
    )


class Registry:
    """See the module docstring."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.folder / DB_NAME, timeout=30.0, check_same_thread=False, isolation_level=None
            )
        except (OSError, sqlite3.Error) as err:
            raise StorageError(f"cannot open the model registry in {self.folder}: {err}") from err
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return immediate_transaction(self._db, self._lock)

    # -- reading -------------------------------------------------------------------------------

    @staticmethod
    def _record(row: sqlite3.Row) -> ModelRecord:
        manifest = ModelManifest.from_json(row["manifest"]) if row["manifest"] else None
        return ModelRecord(
            version=row["version"],
            parent=row["parent"],
            state=row["state"],
            created=row["created"],
            checkpoint=Path(row["checkpoint"]),
            onnx=Path(row["onnx"]) if row["onnx"] else None,
            manifest=manifest,
            class_names=tuple(json.loads(row["class_names"])),
            metrics=json.loads(row["metrics"]),
            training=json.loads(row["training"]),
            reason=row["reason"],
            promoted_at=row["promoted_at"],
        )

    def _one(self, sql: str, params: tuple[Any, ...] = ()) -> ModelRecord | None:
        with self._lock:
            row = self._db.execute(sql, params).fetchone()
        return self._record(row) if row else None

    def get(self, version: str) -> ModelRecord | None:
        return self._one("SELECT * FROM models WHERE version = ?", (version,))

    def require(self, version: str) -> ModelRecord:
        record = self.get(version)
        if record is None:
            raise ModelError(
                f"model {version!r} is not in the registry {self.folder / DB_NAME}",
                hint="`dal models list` shows the known versions",
            )
        return record

    def current(self) -> ModelRecord | None:
        return self._one("SELECT * FROM models WHERE state = 'current'")

    def previous(self) -> ModelRecord | None:
        return self._one("SELECT * FROM models WHERE state = 'previous'")

    def list(self) -> list[ModelRecord]:
        """Every model, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM models ORDER BY created, version").fetchall()
        return [self._record(r) for r in rows]

    def history(self, version: str | None = None) -> list[dict[str, Any]]:
        sql, params = "SELECT * FROM history", ()
        if version is not None:
            sql, params = sql + " WHERE version = ?", (version,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY id", params).fetchall()
        return [dict(r) for r in rows]

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM models").fetchone()[0])

    # -- writing -------------------------------------------------------------------------------

    def add(self, record: ModelRecord) -> ModelRecord:
        """Register a new model (state candidate unless given); a known version is an error."""
        if record.state not in ("candidate", "rejected", "failed"):
            raise ModelError(f"a new model cannot start as {record.state!r}; promote it instead")
        created = record.created or time.time()
        try:
            with self._transaction() as db:
                db.execute(
                    "INSERT INTO models (version, parent, created, state, checkpoint, onnx,"
                    " manifest, class_names, metrics, training, reason) VALUES"
                    " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.version,
                        record.parent,
                        created,
                        record.state,
                        str(record.checkpoint),
                        str(record.onnx) if record.onnx else None,
                        record.manifest.to_json().decode() if record.manifest else None,
                        json.dumps(list(record.class_names)),
                        json.dumps(record.metrics),
                        json.dumps(record.training),
                        record.reason,
                    ),
                )
                log_history(db, record.version, "added", record.reason)
        except sqlite3.IntegrityError:
            raise ModelError(f"model {record.version!r} is already in the registry") from None
        return self.require(record.version)

    def update(
        self,
        version: str,
        *,
        onnx: Path | None = None,
        manifest: ModelManifest | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> ModelRecord:
        """Attach a released file, its signed manifest, or merge metrics."""
        record = self.require(version)
        merged = {**record.metrics, **(metrics or {})}
        with self._transaction() as db:
            db.execute(
                "UPDATE models SET onnx = COALESCE(?, onnx), manifest = COALESCE(?, manifest),"
                " metrics = ? WHERE version = ?",
                (
                    str(onnx) if onnx else None,
                    manifest.to_json().decode() if manifest else None,
                    json.dumps(merged),
                    version,
                ),
            )
        return self.require(version)

    def mark(self, version: str, state: str, reason: str) -> ModelRecord:
        """Set a candidate's outcome: rejected or failed (never current: use promote)."""
        if state not in ("rejected", "failed", "candidate"):
            raise ModelError(f"mark() sets rejected/failed/candidate, not {state!r}")
        record = self.require(version)
        if record.state in ("current", "previous"):
            raise ModelError(
                f"model {version} is {record.state}; roll back or promote another model first"
            )
        with self._transaction() as db:
            db.execute(
                "UPDATE models SET state = ?, reason = ? WHERE version = ?",
                (state, reason, version),
            )
            log_history(db, version, state, reason)
        return self.require(version)

    def promote(self, version: str, reason: str = "") -> ModelRecord:
        """Make `version` current: the current one becomes previous, the previous archived.
        The model must be released (ONNX + signed manifest)."""
        record = self.require(version)
        if record.onnx is None or record.manifest is None:
            raise ModelError(
                f"model {version} has no released ONNX file and signed manifest",
                hint="release it first (the fine-tune job and `dal models promote` do)",
            )
        if record.state == "current":
            return record
        with self._transaction() as db:
            db.execute("UPDATE models SET state = 'archived' WHERE state = 'previous'")
            db.execute("UPDATE models SET state = 'previous' WHERE state = 'current'")
            db.execute(
                "UPDATE models SET state = 'current', reason = ?, promoted_at = ?"
                " WHERE version = ?",
                (reason, time.time(), version),
            )
            log_history(db, version, "promoted", reason)
        return self.require(version)

    def rollback(self, reason: str = "rolled back") -> ModelRecord:
        """Make the previous model current again; the rolled-back one is archived, and the
        most recently promoted archived model becomes the new previous."""
        current, previous = self.current(), self.previous()
        if previous is None:
            raise ModelError(
                "no previous model to roll back to",
                hint="`dal models promote VERSION` can make any released model current",
            )
        with self._transaction() as db:
            if current is not None:
                # promoted_at cleared: a rolled-back model never becomes 'previous' again
                db.execute(
                    "UPDATE models SET state = 'archived', reason = ?, promoted_at = NULL"
                    " WHERE version = ?",
                    (reason, current.version),
                )
                log_history(db, current.version, "rolled_back", reason)
            db.execute(
                "UPDATE models SET state = 'current', promoted_at = ? WHERE version = ?",
                (time.time(), previous.version),
            )
            log_history(db, previous.version, "promoted", f"rollback: {reason}")
            row = db.execute(
                "SELECT version FROM models WHERE state = 'archived' AND promoted_at IS NOT NULL"
                " AND version != ? ORDER BY promoted_at DESC LIMIT 1",
                (current.version if current else "",),
            ).fetchone()
            if row is not None:
                db.execute("UPDATE models SET state = 'previous' WHERE version = ?", (row[0],))
        return self.require(previous.version)
