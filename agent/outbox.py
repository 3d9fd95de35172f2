"""The outbox: selected samples that still have to reach the trainer, and the cycle log.

paho keeps QoS 1 messages in memory only, so this table is the source of truth for shipping:
a sample leaves it only when the trainer's Ack says it stored the sample. The tables live in
the pool's database file (`pool.sqlite`), on a connection of their own, so that one
transaction moves the chosen samples from `pooled` to `queued` in the pool, writes their outbox
rows and logs the cycle: a crash (SIGKILL, power cut) leaves either all of it or none of it.
Shipping after a restart simply continues with the rows still `queued`.

Ids: the pool's sample id is local; the wire id `{agent}:{sample id}` is fixed when the row is
written and never changes, so a resend after a restart is recognised by the trainer as the
same sample (its Ack says `duplicate`) and nothing is stored twice.

Row states: queued -> acked (trainer stored it; pool state `shipped`), queued -> rejected (the
trainer will never take it as sent; the caller deletes the sample), queued -> lost (the pooled
image vanished, e.g. deleted by hand).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dal.agent.pool_schema import POOLED, SHIPPED, count_in_state, move_state
from dal.agent.pool_schema import QUEUED as QUEUED_SAMPLE
from dal.errors import StorageError
from dal.link.messages import Ack
from dal.sqlite_tx import immediate_transaction

logger = logging.getLogger(__name__)

QUEUED, ACKED, REJECTED, LOST = "queued", "acked", "rejected", "lost"
ROW_STATES = (QUEUED, ACKED, REJECTED, LOST)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS outbox (
    sample_id    TEXT PRIMARY KEY,           -- the pool's id
    wire_id      TEXT NOT NULL UNIQUE,       -- '{{agent}}:{{sample_id}}', the idempotency key
    cycle        INTEGER NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ({", ".join(repr(s) for s in ROW_STATES)})),
    enqueued_at  REAL NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_attempt REAL,
    done_at      REAL,
    ack_status   TEXT,
    reason       TEXT
);
CREATE INDEX IF NOT EXISTS outbox_status ON outbox (status, attempts, enqueued_at);
CREATE TABLE IF NOT EXISTS cycles (
    cycle         INTEGER PRIMARY KEY AUTOINCREMENT,
    started       REAL NOT NULL,
    reason        TEXT NOT NULL,
    strategy      TEXT NOT NULL,
    k             INTEGER NOT NULL,
    beta          REAL NOT NULL,
    seed          INTEGER NOT NULL,
    model_version TEXT NOT NULL,
    pool_size     INTEGER NOT NULL,
    selected      INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS agent_state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL                      -- JSON
);
"""


@dataclass(frozen=True)
class OutboxItem:
    """One sample waiting for the trainer's Ack."""

    sample_id: str
    wire_id: str
    cycle: int
    enqueued_at: float
    attempts: int


@dataclass(frozen=True)
class CycleRecord:
    """One query cycle as logged."""

    cycle: int
    started: float
    reason: str
    strategy: str
    k: int
    beta: float
    seed: int
    model_version: str
    pool_size: int
    selected: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Outbox:
    """Outbox, cycle log and a small key/value store in the pool database. Thread-safe."""

    def __init__(self, db_path: str | Path, agent: str, synchronous: str = "NORMAL") -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL, got {synchronous!r}")
        self.db_path = Path(db_path)
        self.agent = agent
        self._lock = threading.RLock()
        try:
            self._conn = sqlite3.connect(
                self.db_path, isolation_level=None, check_same_thread=False, timeout=10.0
            )
            self._conn.execute(f"PRAGMA synchronous={synchronous}")
            self._conn.execute("PRAGMA busy_timeout=10000")
            has_pool = self._conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='samples'"
            ).fetchone()
            if not has_pool:
                raise StorageError(
                    f"{self.db_path} has no pool table",
                    hint="open the Pool on this folder before the Outbox",
                )
            self._conn.executescript(_SCHEMA)
        except sqlite3.Error as err:
            raise self._error(err) from None

    def _error(self, err: sqlite3.Error) -> StorageError:
        return StorageError(
            f"outbox in {self.db_path}: {err}",
            hint="check free disk space; `dal agent status` runs an integrity check",
        )

    def _transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return immediate_transaction(self._conn, self._lock, self._error)

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as err:
                raise self._error(err) from None

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def wire_id(self, sample_id: str) -> str:
        return f"{self.agent}:{sample_id}"

    # -- cycles --------------------------------------------------------------------------------

    def next_cycle(self) -> int:
        """The number the next logged cycle will most likely get (used to vary the seed)."""
        rows = self._query("SELECT seq FROM sqlite_sequence WHERE name = 'cycles'")
        return (int(rows[0][0]) if rows else 0) + 1

    def enqueue_cycle(
        self,
        sample_ids: Iterable[str],
        *,
        reason: str,
        strategy: str,
        k: int,
        beta: float,
        seed: int,
        model_version: str,
        pool_size: int,
    ) -> tuple[CycleRecord, list[str]]:
        """In ONE transaction: log the cycle, move the chosen samples pooled -> queued and write
        their outbox rows. Samples no longer pooled (evicted, shipped meanwhile) are skipped.
        Returns the cycle record and the ids actually queued."""
        now = time.time()
        with self._transaction() as conn:
            cur = conn.execute(
                "INSERT INTO cycles (started, reason, strategy, k, beta, seed, model_version, "
                "pool_size, selected) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)",
                (now, reason, strategy, int(k), float(beta), int(seed), model_version, pool_size),
            )
            cycle = int(cur.lastrowid or 0)
            taken = move_state(conn, sample_ids, QUEUED_SAMPLE, now, strict=False)
            conn.executemany(
                "INSERT INTO outbox (sample_id, wire_id, cycle, status, enqueued_at) "
                "VALUES (?, ?, ?, 'queued', ?) ON CONFLICT (sample_id) DO UPDATE SET "
                "status = 'queued', cycle = excluded.cycle, "
                "enqueued_at = excluded.enqueued_at, attempts = 0, done_at = NULL",
                [(sample_id, self.wire_id(sample_id), cycle, now) for sample_id in taken],
            )
            conn.execute("UPDATE cycles SET selected = ? WHERE cycle = ?", (len(taken), cycle))
        record = CycleRecord(
            cycle,
            now,
            reason,
            strategy,
            int(k),
            float(beta),
            int(seed),
            model_version,
            pool_size,
            len(taken),
        )
        return record, taken

    def last_cycle(self) -> CycleRecord | None:
        rows = self._query("SELECT * FROM cycles ORDER BY cycle DESC LIMIT 1")
        return CycleRecord(*rows[0]) if rows else None

    def cycles(self, limit: int = 20) -> list[CycleRecord]:
        rows = self._query("SELECT * FROM cycles ORDER BY cycle DESC LIMIT ?", (int(limit),))
        return [CycleRecord(*r) for r in rows]

    # -- shipping ------------------------------------------------------------------------------

    def pending(self, limit: int = 16) -> list[OutboxItem]:
        """Queued samples, least-tried first, then oldest: one that keeps failing goes last."""
        rows = self._query(
            "SELECT sample_id, wire_id, cycle, enqueued_at, attempts FROM outbox "
            "WHERE status = 'queued' ORDER BY attempts, enqueued_at, sample_id LIMIT ?",
            (int(limit),),
        )
        return [OutboxItem(*r) for r in rows]

    def note_attempt(self, sample_id: str) -> None:
        with self._transaction() as conn:
            conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_attempt = ? WHERE sample_id = ?",
                (time.time(), sample_id),
            )

    def settle(self, ack: Ack) -> str | None:
        """Record the trainer's Ack. Returns the row's new state (ACKED or REJECTED), the state
        it already had (a repeated Ack changes nothing), or None when the id is not ours."""
        now = time.time()
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT sample_id, status FROM outbox WHERE wire_id = ?", (ack.sample_id,)
            ).fetchone()
            if row is None:
                return None
            sample_id, status = row
            if status != QUEUED:
                return str(status)
            new = ACKED if ack.ok else REJECTED
            conn.execute(
                "UPDATE outbox SET status = ?, done_at = ?, ack_status = ?, reason = ? "
                "WHERE sample_id = ?",
                (new, now, ack.status, ack.reason, sample_id),
            )
            if new == ACKED:
                move_state(conn, [sample_id], SHIPPED, now, strict=False)
        return new

    def mark_lost(self, sample_id: str, reason: str) -> None:
        with self._transaction() as conn:
            conn.execute(
                "UPDATE outbox SET status = 'lost', done_at = ?, reason = ? "
                "WHERE sample_id = ? AND status = 'queued'",
                (time.time(), reason, sample_id),
            )

    def pooled(self) -> int:
        """Pooled samples, for callers that hold only the outbox (the demo); `Pool.count`."""
        with self._lock:
            try:
                return count_in_state(self._conn, POOLED)
            except sqlite3.Error as err:
                raise self._error(err) from None

    def counts(self) -> dict[str, int]:
        rows = self._query("SELECT status, COUNT(*) FROM outbox GROUP BY status")
        out = {s: 0 for s in ROW_STATES}
        out.update({r[0]: int(r[1]) for r in rows})
        return out

    def backlog(self) -> int:
        return self.counts()[QUEUED]

    def rows(self) -> list[dict[str, Any]]:
        """Every outbox row (tests, `dal agent status --json`)."""
        with self._lock:
            cur = self._conn.execute("SELECT * FROM outbox ORDER BY enqueued_at, sample_id")
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    # -- scores and small state ----------------------------------------------------------------

    def get_state(self, key: str, default: Any = None) -> Any:
        rows = self._query("SELECT value FROM agent_state WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else default

    def set_state(self, key: str, value: Any) -> None:
        text = json.dumps(value)
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO agent_state (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, text),
            )

    def integrity_check(self) -> list[str]:
        """Problems `PRAGMA integrity_check` finds in the whole database (empty = healthy)."""
        return [r[0] for r in self._query("PRAGMA integrity_check") if r[0] != "ok"]
