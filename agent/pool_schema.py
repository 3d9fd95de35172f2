"""The pool database: its schema, its connection, and the sample states with their one writer.

`pool.sqlite` (WAL mode) holds one row per sample in `samples`; the outbox adds its own tables to
the same file (agent/outbox.py). Sample state is owned here:

    pooled -> queued (a cycle picked it; the outbox ships it) -> shipped (trainer acked) -> labelled
    queued -> pooled (transfer abandoned)

`move_state` is the only code that writes `samples.state`. It runs inside the caller's
transaction on any connection to the file, so the outbox can queue samples and write its own
rows in ONE transaction (a crash leaves all of it or none) without writing the state itself.
Moving a sample to the state it already has is a no-op, so repeated acks are harmless.

Pool files written before it was dropped also allow a 'selected' state (nothing ever set it) in
their CHECK constraint; that is harmless.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from dal.contract import FEATURE_DIM
from dal.errors import DalError, StorageError
from dal.strategies import Candidates

logger = logging.getLogger(__name__)

POOLED, QUEUED, SHIPPED, LABELLED = "pooled", "queued", "shipped", "labelled"
STATES = (POOLED, QUEUED, SHIPPED, LABELLED)
TRANSITIONS: dict[str, frozenset[str]] = {
    POOLED: frozenset({QUEUED}),
    QUEUED: frozenset({POOLED, SHIPPED}),
    SHIPPED: frozenset({LABELLED}),
    LABELLED: frozenset(),
}
DB_NAME = "pool.sqlite"
SCHEMA_VERSION = 1

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS samples (
    sample_id     TEXT PRIMARY KEY,
    capture_time  REAL NOT NULL,
    source        TEXT NOT NULL,
    model_version TEXT NOT NULL,
    score         REAL NOT NULL,
    feature       BLOB NOT NULL,             -- float32 little-endian
    detections    TEXT NOT NULL,             -- JSON
    ground_truth  TEXT,                      -- JSON, replays only
    jpeg_path     TEXT NOT NULL UNIQUE,      -- relative to the pool folder
    bytes         INTEGER NOT NULL,
    sha256        TEXT NOT NULL,
    width         INTEGER NOT NULL,
    height        INTEGER NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ({", ".join(repr(s) for s in STATES)})),
    inserted_at   REAL NOT NULL,
    updated_at    REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_state_score ON samples (state, score, capture_time);
"""
COLUMNS = (
    "sample_id, capture_time, source, model_version, score, feature, detections, ground_truth, "
    "jpeg_path, bytes, sha256, width, height, state, inserted_at, updated_at"
)


@dataclass(frozen=True, eq=False)
class PoolSample:
    """One `samples` row; the fields are in COLUMNS order."""

    sample_id: str
    capture_time: float
    source: str
    model_version: str
    score: float
    feature: np.ndarray  # float32 [D]
    detections: Any  # parsed JSON
    ground_truth: Any | None
    jpeg_path: Path  # absolute
    bytes: int
    sha256: str
    width: int
    height: int
    state: str
    inserted_at: float
    updated_at: float


@dataclass(frozen=True)
class PoolStats:
    count: int
    bytes: int
    by_state: dict[str, int]
    evicted: int  # since this Pool object was opened
    rejected: int  # newcomers refused (least informative, or only queued ones left)


class Scored(NamedTuple):
    """What a rescore function returns for one image."""

    score: float
    feature: np.ndarray
    detections: Any  # JSON-ready


class Victim(NamedTuple):
    sample_id: str
    jpeg_path: str
    bytes: int


def feature_blob(feature: np.ndarray) -> bytes:
    return np.asarray(feature, dtype="<f4").reshape(-1).tobytes()


def sample_from_row(root: Path, row: Sequence[Any]) -> PoolSample:
    """A `samples` row in COLUMNS order (PoolSample's field order) as a PoolSample."""
    fields = list(row)
    fields[5] = np.frombuffer(row[5], dtype="<f4").astype(np.float32)  # feature
    fields[6] = json.loads(row[6])  # detections
    fields[7] = None if row[7] is None else json.loads(row[7])  # ground truth
    fields[8] = root / row[8]  # jpeg_path
    return PoolSample(*fields)


class InvalidTransitionError(DalError, ValueError):
    """A sample was asked to move to a state its current state cannot reach."""


def storage_error(err: sqlite3.Error, db: Path) -> StorageError:
    text = str(err)
    if "full" in text.lower():
        return StorageError(
            f"disk full: cannot write the pool database {db} ({text})",
            hint="free space on that disk or lower [pool] max_bytes",
        )
    return StorageError(
        f"pool database {db}: {text}",
        hint="run `PRAGMA integrity_check` (Pool.integrity_check) or move the "
        "pool folder away to start a new one",
    )


def connect(db_path: Path, synchronous: str) -> sqlite3.Connection:
    """Open (creating or checking the schema) in WAL mode, autocommit, for several threads."""
    try:
        conn = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            logger.warning("pool %s: WAL mode refused (journal_mode=%s)", db_path, mode)
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("PRAGMA busy_timeout=5000")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise StorageError(
                f"pool database {db_path} has schema {version}, this agent knows {SCHEMA_VERSION}",
                hint="upgrade the agent or move the pool folder away",
            )
        conn.executescript(SCHEMA)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except sqlite3.Error as err:
        raise storage_error(err, db_path) from None
    return conn


def check_states(states: Iterable[str]) -> tuple[str, ...]:
    states = tuple(states)
    unknown = [s for s in states if s not in STATES]
    if unknown or not states:
        raise ValueError(f"unknown pool state(s) {unknown}; states are {STATES}")
    return states


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def move_state(
    conn: sqlite3.Connection, sample_ids: Iterable[str], state: str, now: float, *, strict: bool
) -> list[str]:
    """Move samples to `state` inside the caller's open transaction; the ids that changed.

    strict: unknown ids raise KeyError and impossible moves InvalidTransitionError (the caller's
    transaction rolls back). Not strict: those samples are skipped (evicted or moved on
    meanwhile), which is what a cycle and an ack want."""
    check_states([state])
    ids = list(dict.fromkeys(sample_ids))
    current: dict[str, str] = {}
    for chunk in chunks(ids, 500):
        marks = ", ".join("?" * len(chunk))
        current.update(
            conn.execute(
                f"SELECT sample_id, state FROM samples WHERE sample_id IN ({marks})", chunk
            ).fetchall()
        )
    bad = {i: s for i, s in current.items() if s != state and state not in TRANSITIONS[s]}
    if strict:
        unknown = [i for i in ids if i not in current]
        if unknown:
            raise KeyError(f"not in the pool: {unknown[:5]}")
        if bad:
            first = next(iter(bad))
            raise InvalidTransitionError(
                f"pool: cannot move {len(bad)} sample(s) to {state!r}, e.g. {first} is "
                f"{bad[first]!r}",
                hint=f"allowed from {bad[first]!r}: {sorted(TRANSITIONS[bad[first]]) or 'nothing'}",
            )
    moving = [i for i in ids if i in current and i not in bad and current[i] != state]
    conn.executemany(
        "UPDATE samples SET state = ?, updated_at = ? WHERE sample_id = ?",
        [(state, now, i) for i in moving],
    )
    return moving


def plan_eviction(
    conn: sqlite3.Connection, score: float, size: int, max_images: int, max_bytes: int
) -> list[Victim] | None:
    """Samples to evict so a newcomer of `size` bytes fits (order: see pool.py); None = refuse
    the newcomer. Queued samples are never planned: the outbox must be able to send them."""
    count, total = conn.execute("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM samples").fetchone()
    if size > max_bytes:
        return None
    victims: list[Victim] = []
    freed = 0

    def fits() -> bool:
        return count + 1 - len(victims) <= max_images and total + size - freed <= max_bytes

    if fits():
        return victims
    done_sql = (
        "SELECT sample_id, jpeg_path, bytes FROM samples WHERE state IN (?, ?) "
        "ORDER BY updated_at, capture_time"
    )
    pooled_sql = (
        "SELECT sample_id, jpeg_path, bytes FROM samples WHERE state = ? "
        "AND score < ? ORDER BY score, capture_time"
    )
    for sql, params in ((done_sql, (SHIPPED, LABELLED)), (pooled_sql, (POOLED, score))):
        for row in conn.execute(sql, params):
            victims.append(Victim(*row))
            freed += row[2]
            if fits():
                return victims
    return None


def count_in_state(conn: sqlite3.Connection, state: str = POOLED) -> int:
    """Samples in `state` (an index count: cheap enough to poll on a 100k pool)."""
    check_states([state])
    return int(conn.execute("SELECT COUNT(*) FROM samples WHERE state = ?", (state,)).fetchone()[0])


def read_candidates(conn: sqlite3.Connection, states: Iterable[str]) -> Candidates:
    """Ids, scores and features of samples in `states`, ready for dal.strategies."""
    states = check_states(states)
    marks = ", ".join("?" * len(states))
    rows = conn.execute(
        f"SELECT sample_id, score, feature FROM samples WHERE state IN ({marks}) "
        "ORDER BY sample_id",
        states,
    ).fetchall()
    if not rows:
        return Candidates([], np.empty(0), np.empty((0, FEATURE_DIM), np.float32))
    features = np.frombuffer(b"".join(r[2] for r in rows), dtype="<f4")
    return Candidates(
        [r[0] for r in rows],
        np.array([r[1] for r in rows], dtype=np.float64),
        features.reshape(len(rows), -1).astype(np.float32),
    )


def forget_scores(conn: sqlite3.Connection) -> int:
    """Mark every pooled sample as not scored by any model, so the next rescore redoes it."""
    return conn.execute("UPDATE samples SET model_version = '' WHERE state = ?", (POOLED,)).rowcount
