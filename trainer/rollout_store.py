"""Targeted manifests and canary rollouts, kept in the registry's SQLite file (registry.db).

`targets` says which model a group or one agent should run instead of the global current one;
the running trainer service publishes every row retained on that group's or agent's manifest
topic within a second (trainer/rollout.py). A cleared target stays as a row without a version
(a tombstone), so a restarted service still clears its retained manifest on the broker.
`rollouts` records each canary rollout (canary -> passed -> group, or failed), so what a
promote did survives a restart of the CLI or the trainer. Changes go to the registry's history.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dal.errors import StorageError
from dal.sqlite_tx import immediate_transaction
from dal.trainer.registry import DB_NAME, HISTORY_SCHEMA, log_history

SCOPES = ("group", "agent")

_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS targets (
    scope   TEXT NOT NULL CHECK (scope IN ('group', 'agent')),
    name    TEXT NOT NULL,
    version TEXT,
    updated REAL NOT NULL,
    reason  TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (scope, name)
);
CREATE TABLE IF NOT EXISTS rollouts (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    version  TEXT NOT NULL,
    grp      TEXT NOT NULL,
    canary   TEXT NOT NULL,
    state    TEXT NOT NULL,
    started  REAL NOT NULL,
    finished REAL,
    message  TEXT NOT NULL DEFAULT ''
);
"""
    + HISTORY_SCHEMA
)


@dataclass(frozen=True)
class Target:
    """One group's or agent's model; version None = cleared (follow the next less specific)."""

    scope: str
    name: str
    version: str | None
    updated: float
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TargetStore:
    """The targets and rollouts tables; see the module docstring."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.path = Path(folder) / DB_NAME
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.path, timeout=30.0, check_same_thread=False, isolation_level=None
            )
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as err:
            raise StorageError(f"cannot open the rollout tables in {self.path}: {err}") from err
        self._lock = threading.RLock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> TargetStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return immediate_transaction(self._db, self._lock)

    # -- targets -------------------------------------------------------------------------------

    def set(self, scope: str, names: list[str], version: str | None, reason: str = "") -> None:
        """Point each of `names` (groups or agents) at `version`; None clears them."""
        if scope not in SCOPES:
            raise ValueError(f"scope {scope!r} is not one of {SCOPES}")
        with self._transaction() as db:
            for name in names:
                old = db.execute(
                    "SELECT version FROM targets WHERE scope = ? AND name = ?", (scope, name)
                ).fetchone()
                db.execute(
                    "INSERT INTO targets (scope, name, version, updated, reason)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (scope, name) DO UPDATE SET"
                    " version = excluded.version, updated = excluded.updated,"
                    " reason = excluded.reason",
                    (scope, name, version, time.time(), reason),
                )
                if version is not None:
                    log_history(db, version, "targeted", f"{scope} {name}: {reason}".rstrip(": "))
                elif old is not None and old[0] is not None:
                    log_history(db, old[0], "untargeted", f"{scope} {name}: {reason}".rstrip(": "))

    def list(self, include_cleared: bool = False) -> list[Target]:
        sql = "SELECT * FROM targets"
        if not include_cleared:
            sql += " WHERE version IS NOT NULL"
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY scope, name").fetchall()
        return [
            Target(r["scope"], r["name"], r["version"], r["updated"], r["reason"]) for r in rows
        ]

    def get(self, scope: str, name: str) -> str | None:
        """The version `name` is pointed at, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT version FROM targets WHERE scope = ? AND name = ?", (scope, name)
            ).fetchone()
        return row[0] if row else None

    # -- rollouts ------------------------------------------------------------------------------

    def begin_rollout(self, version: str, group: str, canary: str) -> int:
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO rollouts (version, grp, canary, state, started)"
                " VALUES (?, ?, ?, 'canary', ?)",
                (version, group, canary, time.time()),
            )
            log_history(db, version, "canary", f"group {group}, canary {canary}")
            return int(cursor.lastrowid or 0)

    def finish_rollout(self, rollout: int, state: str, message: str) -> None:
        """state 'done' (the group got the model) or 'failed' (it did not)."""
        with self._transaction() as db:
            row = db.execute("SELECT version FROM rollouts WHERE id = ?", (rollout,)).fetchone()
            db.execute(
                "UPDATE rollouts SET state = ?, finished = ?, message = ? WHERE id = ?",
                (state, time.time(), message, rollout),
            )
            if row is not None:
                log_history(db, row[0], f"rollout_{state}", message)

    def rollouts(self, limit: int = 20) -> list[dict[str, Any]]:
        """The latest rollouts, newest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM rollouts ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
        out = []
        for row in rows:
            item = dict(row)
            item["group"] = item.pop("grp")
            out.append(item)
        return out
