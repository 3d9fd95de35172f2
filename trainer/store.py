"""The trainer's sample store: every image the agents shipped, its labels, and each agent's state.

Layout under the store folder: `samples.db` (SQLite, WAL) and `<agent>/<name>.<ext>` per sample
(the sample id is `<agent>:<name>`, both parts safe file names by the link contract).

Durability, because an Ack makes the agent forget the sample: `store()` moves the verified file
into place, fsyncs it and its folder, then commits the row with `synchronous=FULL` (the WAL is
fsynced on every commit). Only when `store()` returns does the receiver publish `stored`. A crash
between the rename and the commit leaves a file without a row: no Ack went out, the agent sends
the sample again and the rename overwrites the orphan. Idempotency is by sample id: a second
store of a known id changes nothing (`INSERT OR IGNORE`), and `has()` lets the receiver answer
`duplicate` without even assembling it again.

Labels are stored by class *name* (boxes x1, y1, x2, y2 in image pixels), so a label survives a
change of category ids between tools. Every label write takes the next `revision` number; a
fine-tune job records the revision it trained on, and newer revisions mean new labels.

Thread-safe (one connection behind a lock); other processes (the CLI) may open the same store,
SQLite's locking and a busy timeout serialise the writers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from dal.errors import StorageError
from dal.fileio import fsync_dir, move_durably, storage_error, sync_file
from dal.link.messages import AgentStatus, Event, Metrics, SampleHeader
from dal.sqlite_tx import immediate_transaction

logger = logging.getLogger(__name__)

DB_NAME = "samples.db"
SCHEMA_VERSION = 1
_EXTENSIONS = {"image/jpeg": ".jpg", "image/png": ".png", "image/bmp": ".bmp"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    sample_id     TEXT PRIMARY KEY,
    agent         TEXT NOT NULL,
    captured_at   REAL NOT NULL,
    received_at   REAL NOT NULL,
    model_version TEXT NOT NULL,
    score         REAL NOT NULL,
    sha256        TEXT NOT NULL,
    size          INTEGER NOT NULL,
    content_type  TEXT NOT NULL,
    file          TEXT NOT NULL,        -- relative to the store folder
    width         INTEGER,              -- NULL: the file is not an image PIL can read
    height        INTEGER,
    feature       BLOB,                 -- float32 little-endian
    detections    TEXT NOT NULL,        -- JSON list of {box, label, score}
    meta          TEXT NOT NULL,        -- JSON object from the header
    oracle_checked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS samples_by_agent ON samples(agent, received_at);
CREATE TABLE IF NOT EXISTS labels (
    sample_id   TEXT PRIMARY KEY REFERENCES samples(sample_id),
    boxes       TEXT NOT NULL,          -- JSON [[x1, y1, x2, y2], ...] image pixels
    classes     TEXT NOT NULL,          -- JSON ["name", ...]
    source      TEXT NOT NULL,          -- oracle, coco, cvat, labelstudio, ...
    labelled_at REAL NOT NULL,
    revision    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS labels_by_revision ON labels(revision);
CREATE TABLE IF NOT EXISTS agents (
    agent          TEXT PRIMARY KEY,
    first_seen     REAL NOT NULL,
    samples        INTEGER NOT NULL DEFAULT 0,
    bytes          INTEGER NOT NULL DEFAULT 0,
    last_sample_at REAL,
    status         TEXT,                -- last AgentStatus JSON
    status_at      REAL,
    metrics        TEXT,                -- last Metrics values JSON
    metrics_at     REAL,
    last_event     TEXT,                -- last Event JSON
    event_at       REAL
);
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class Sample:
    """One stored sample (a row of `samples`) with its file's absolute path."""

    sample_id: str
    agent: str
    captured_at: float
    received_at: float
    model_version: str
    score: float
    sha256: str
    size: int
    content_type: str
    path: Path
    width: int | None
    height: int | None
    detections: list[dict[str, Any]]
    meta: dict[str, Any]

    @property
    def export_name(self) -> str:
        """File name used in label exports: unique, stable, and maps back to the sample."""
        return export_name(self.sample_id, self.path.suffix)


@dataclass(frozen=True)
class Label:
    """The boxes a person (or the oracle) gave one sample. Empty boxes = "nothing there"."""

    sample_id: str
    boxes: np.ndarray  # float64 [n, 4] x1, y1, x2, y2 image pixels
    classes: tuple[str, ...]
    source: str
    labelled_at: float = 0.0
    revision: int = 0

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        object.__setattr__(self, "boxes", boxes)
        if len(boxes) != len(self.classes):
            raise ValueError(f"{len(boxes)} boxes but {len(self.classes)} class names")


@dataclass
class StoreCounts:
    samples: int = 0
    labelled: int = 0
    unlabelled: int = 0
    bytes: int = 0
    agents: int = 0
    label_revision: int = 0
    extra: dict[str, int] = field(default_factory=dict)


def export_name(sample_id: str, suffix: str) -> str:
    """'cam1:abc' -> 'cam1__abc.jpg' (':' is awkward in file names on some systems)."""
    return sample_id.replace(":", "__", 1) + suffix


def _image_size(path: Path) -> tuple[int | None, int | None]:
    """Width and height from the image header (no full decode); None when unreadable."""
    try:
        with Image.open(path) as img:
            return int(img.width), int(img.height)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        logger.warning("sample file %s is not a readable image (%s)", path, err)
        return None, None


def _boxes_json(boxes: np.ndarray) -> str:
    return json.dumps([[round(float(v), 3) for v in box] for box in boxes])


class SampleStore:
    """See the module docstring."""

    def __init__(self, folder: str | os.PathLike[str], synchronous: str = "FULL") -> None:
        if synchronous not in ("FULL", "EXTRA"):
            raise StorageError(
                f"sample store synchronous={synchronous!r}",
                hint="acks promise durability: use FULL or EXTRA",
            )
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.folder / DB_NAME, timeout=30.0, check_same_thread=False, isolation_level=None
            )
        except (OSError, sqlite3.Error) as err:
            raise StorageError(
                f"cannot open the sample store in {self.folder}: {err}",
                hint="check the folder exists and the service user may write it",
            ) from err
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def integrity_check(self) -> list[str]:
        """Problems `PRAGMA integrity_check` finds in the store's database (empty = healthy)."""
        return [r[0] for r in self._query("PRAGMA integrity_check") if r[0] != "ok"]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> SampleStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return immediate_transaction(self._db, self._lock)

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # -- ingest (the TransferAssembler's callbacks) -------------------------------------------

    def has(self, sample_id: str) -> bool:
        return bool(self._query("SELECT 1 FROM samples WHERE sample_id = ?", (sample_id,)))

    def relative_file(self, header: SampleHeader) -> Path:
        ext = _EXTENSIONS.get(header.content_type, ".bin")
        agent, _, name = header.sample_id.partition(":")
        return Path(agent) / f"{name}{ext}"

    def store(self, header: SampleHeader, path: Path) -> None:
        """Make the verified file at `path` a durable sample; returns only when it is."""
        if self.has(header.sample_id):
            path.unlink(missing_ok=True)
            return
        rel = self.relative_file(header)
        target = self.folder / rel
        try:
            self._ensure_dir(target.parent)
            move_durably(path, target)
            sync_file(target)
            fsync_dir(target.parent)
        except OSError as err:
            raise storage_error(err, target) from err
        width, height = _image_size(target)
        feature = np.asarray(header.feature, dtype="<f4").tobytes() if header.feature else None
        received = time.time()
        row = (
            header.sample_id,
            header.agent,
            header.captured_at,
            received,
            header.model_version,
            header.score,
            header.sha256,
            header.size,
            header.content_type,
            rel.as_posix(),
            width,
            height,
            feature,
            json.dumps([d.to_dict() for d in header.detections]),
            json.dumps(header.meta),
        )
        with self._transaction() as db:
            added = db.execute(
                "INSERT OR IGNORE INTO samples (sample_id, agent, captured_at, received_at,"
                " model_version, score, sha256, size, content_type, file, width, height, feature,"
                " detections, meta) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            ).rowcount
            if added:
                self._touch_agent(db, header.agent, received)
                db.execute(
                    "UPDATE agents SET samples = samples + 1, bytes = bytes + ?,"
                    " last_sample_at = ? WHERE agent = ?",
                    (header.size, received, header.agent),
                )

    def _ensure_dir(self, folder: Path) -> None:
        """Create a sample folder; a new folder's own entry must be durable too."""
        if folder.is_dir():
            return
        folder.mkdir(parents=True, exist_ok=True)
        fsync_dir(folder.parent)

    def sweep(self) -> int:
        """Delete sample files that have no row (a crash before the commit); return how many.
        Run by the service at start-up, before any ingest."""
        known = {r["file"] for r in self._query("SELECT file FROM samples")}
        removed = 0
        for path in self.folder.glob("*/*"):
            rel = path.relative_to(self.folder).as_posix()
            if path.is_file() and rel not in known:
                path.unlink(missing_ok=True)
                removed += 1
        if removed:
            logger.info("removed %d sample files without a database row", removed)
        return removed

    # -- reading samples -----------------------------------------------------------------------

    def _sample(self, row: sqlite3.Row) -> Sample:
        return Sample(
            sample_id=row["sample_id"],
            agent=row["agent"],
            captured_at=row["captured_at"],
            received_at=row["received_at"],
            model_version=row["model_version"],
            score=row["score"],
            sha256=row["sha256"],
            size=row["size"],
            content_type=row["content_type"],
            path=self.folder / row["file"],
            width=row["width"],
            height=row["height"],
            detections=json.loads(row["detections"]),
            meta=json.loads(row["meta"]),
        )

    def get(self, sample_id: str) -> Sample | None:
        rows = self._query("SELECT * FROM samples WHERE sample_id = ?", (sample_id,))
        return self._sample(rows[0]) if rows else None

    def feature(self, sample_id: str) -> np.ndarray | None:
        rows = self._query("SELECT feature FROM samples WHERE sample_id = ?", (sample_id,))
        if not rows or rows[0]["feature"] is None:
            return None
        return np.frombuffer(rows[0]["feature"], dtype="<f4").copy()

    def samples(self, labelled: bool | None = None, agent: str | None = None) -> list[Sample]:
        """Samples in the order they arrived; `labelled` filters on having a label."""
        where, params = [], []
        if labelled is not None:
            where.append(
                ("" if labelled else "NOT ") + "EXISTS (SELECT 1 FROM labels l"
                " WHERE l.sample_id = s.sample_id)"
            )
        if agent is not None:
            where.append("s.agent = ?")
            params.append(agent)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._query(f"SELECT s.* FROM samples s {clause} ORDER BY s.received_at", params)
        return [self._sample(r) for r in rows]

    def queue(self, limit: int | None = None) -> list[Sample]:
        """Unlabelled samples to look at, most informative (highest score) first."""
        sql = (
            "SELECT s.* FROM samples s WHERE NOT EXISTS (SELECT 1 FROM labels l"
            " WHERE l.sample_id = s.sample_id) ORDER BY s.score DESC, s.received_at"
        )
        params: list[Any] = []
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [self._sample(r) for r in self._query(sql, params)]

    def oracle_pending(self, limit: int = 64) -> list[Sample]:
        """Unlabelled samples the oracle has not looked at yet."""
        rows = self._query(
            "SELECT s.* FROM samples s WHERE s.oracle_checked = 0 AND NOT EXISTS"
            " (SELECT 1 FROM labels l WHERE l.sample_id = s.sample_id)"
            " ORDER BY s.received_at LIMIT ?",
            (limit,),
        )
        return [self._sample(r) for r in rows]

    def mark_oracle_checked(self, sample_ids: Iterable[str]) -> None:
        ids = [(i,) for i in sample_ids]
        with self._transaction() as db:
            db.executemany("UPDATE samples SET oracle_checked = 1 WHERE sample_id = ?", ids)

    # -- labels --------------------------------------------------------------------------------

    def set_labels(self, labels: Iterable[Label]) -> int:
        """Write labels (replacing earlier ones of the same samples) in ONE transaction, so an
        import is all or nothing. Returns the new label revision."""
        with self._transaction() as db:
            revision = self._counter(db, "label_revision")
            now = time.time()
            for label in labels:
                revision += 1
                try:
                    db.execute(
                        "INSERT OR REPLACE INTO labels (sample_id, boxes, classes, source,"
                        " labelled_at, revision) VALUES (?, ?, ?, ?, ?, ?)",
                        (
                            label.sample_id,
                            _boxes_json(label.boxes),
                            json.dumps(list(label.classes)),
                            label.source,
                            label.labelled_at or now,
                            revision,
                        ),
                    )
                except sqlite3.IntegrityError:
                    raise StorageError(
                        f"cannot label {label.sample_id}: no such sample in {self.folder}"
                    ) from None
            db.execute(
                "INSERT OR REPLACE INTO counters (name, value) VALUES ('label_revision', ?)",
                (revision,),
            )
        return revision

    def clear_labels(self, sample_ids: Iterable[str]) -> None:
        with self._transaction() as db:
            db.executemany("DELETE FROM labels WHERE sample_id = ?", [(i,) for i in sample_ids])

    @staticmethod
    def _label(row: sqlite3.Row) -> Label:
        return Label(
            sample_id=row["sample_id"],
            boxes=np.asarray(json.loads(row["boxes"]), dtype=np.float64).reshape(-1, 4),
            classes=tuple(json.loads(row["classes"])),
            source=row["source"],
            labelled_at=row["labelled_at"],
            revision=row["revision"],
        )

    def label(self, sample_id: str) -> Label | None:
        rows = self._query("SELECT * FROM labels WHERE sample_id = ?", (sample_id,))
        return self._label(rows[0]) if rows else None

    def labels(self) -> dict[str, Label]:
        rows = self._query("SELECT * FROM labels ORDER BY revision")
        return {r["sample_id"]: self._label(r) for r in rows}

    def label_revision(self) -> int:
        rows = self._query("SELECT value FROM counters WHERE name = 'label_revision'")
        return int(rows[0]["value"]) if rows else 0

    def labels_since(self, revision: int) -> tuple[int, float]:
        """(how many labels are newer than `revision`, time of the newest label)."""
        row = self._query(
            "SELECT COUNT(*) AS n, MAX(labelled_at) AS t FROM labels WHERE revision > ?",
            (revision,),
        )[0]
        return int(row["n"]), float(row["t"] or 0.0)

    @staticmethod
    def _counter(db: sqlite3.Connection, name: str) -> int:
        row = db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    # -- per-agent state -----------------------------------------------------------------------

    @staticmethod
    def _touch_agent(db: sqlite3.Connection, agent: str, when: float) -> None:
        db.execute("INSERT OR IGNORE INTO agents (agent, first_seen) VALUES (?, ?)", (agent, when))

    def _update_agent(self, agent: str, columns: dict[str, Any]) -> None:
        sets = ", ".join(f"{name} = ?" for name in columns)
        with self._transaction() as db:
            self._touch_agent(db, agent, time.time())
            db.execute(f"UPDATE agents SET {sets} WHERE agent = ?", [*columns.values(), agent])

    def record_status(self, status: AgentStatus) -> None:
        self._update_agent(
            status.agent, {"status": status.to_json().decode(), "status_at": time.time()}
        )

    def record_metrics(self, metrics: Metrics) -> None:
        self._update_agent(
            metrics.agent, {"metrics": json.dumps(metrics.values), "metrics_at": time.time()}
        )

    def record_event(self, event: Event) -> None:
        self._update_agent(
            event.agent, {"last_event": event.to_json().decode(), "event_at": time.time()}
        )

    def agents(self) -> list[dict[str, Any]]:
        """Every agent seen: sample counts plus its last status, metrics and event."""
        out = []
        for row in self._query("SELECT * FROM agents ORDER BY agent"):
            item = dict(row)
            for key in ("status", "metrics", "last_event"):
                item[key] = json.loads(item[key]) if item[key] else None
            out.append(item)
        return out

    # -- summary -------------------------------------------------------------------------------

    def counts(self) -> StoreCounts:
        row = self._query(
            "SELECT COUNT(*) AS n, COALESCE(SUM(size), 0) AS b,"
            " (SELECT COUNT(*) FROM labels) AS l, (SELECT COUNT(*) FROM agents) AS a"
            " FROM samples"
        )[0]
        n, labelled = int(row["n"]), int(row["l"])
        return StoreCounts(
            samples=n,
            labelled=labelled,
            unlabelled=n - labelled,
            bytes=int(row["b"]),
            agents=int(row["a"]),
            label_revision=self.label_revision(),
        )
