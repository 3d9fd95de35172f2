"""The candidate pool U on the edge PC: scored frames waiting for a query.

Layout under the pool folder: `pool.sqlite` (WAL mode) with one row per sample, and
`images/<2 hex>/<sample id>.jpg`. The JPEG is written first, atomically (temp file, fsync,
rename, folder fsync); only then is the row inserted, in one transaction with any evictions. So
a crash can leave a file without a row, never a row without a file; `sweep()` (run at open)
deletes such orphans and leftover temp files.

Bounds: at most `max_images` rows and `max_bytes` JPEG bytes. When a new sample does not fit,
samples are evicted in this order:
  1. shipped and labelled ones, oldest first: the trainer already holds their images;
  2. pooled ones, lowest score first (ties: oldest capture first), but only those scoring
     strictly below the newcomer: if the newcomer is the least informative it is refused;
  3. never queued ones: a query picked them and the outbox must be able to send them. If
     only those are left, the newcomer is refused (and counted).

Sample states, the schema and the SQL other modules share are in pool_schema.py.

After a new model arrives, `rescore(fn, version)` re-scores pooled samples in batches; samples
already at that version are skipped, so an interrupted rescore resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from dal.agent.pool_schema import (
    COLUMNS,
    DB_NAME,
    POOLED,
    STATES,
    PoolSample,
    PoolStats,
    Scored,
    check_states,
    chunks,
    connect,
    feature_blob,
    forget_scores,
    move_state,
    plan_eviction,
    read_candidates,
    sample_from_row,
    storage_error,
)
from dal.errors import StorageError
from dal.fileio import atomic_write_bytes
from dal.sqlite_tx import immediate_transaction
from dal.strategies import Candidates

logger = logging.getLogger(__name__)

IMAGE_DIR = "images"
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """uint8 HxWx3 RGB -> JPEG bytes. cvtColor swaps the channels ~20x faster than copying
    a reversed view (0.2 ms against 4.4 ms for a 720p frame: most of the old encode time)."""
    bgr = cv2.cvtColor(np.ascontiguousarray(image, dtype=np.uint8), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"JPEG encoding failed for an image of shape {image.shape}")
    return buf.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray | None:
    """JPEG bytes -> uint8 HxWx3 RGB, or None when they do not decode."""
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class Pool:
    """One pool folder. Thread-safe: one connection, guarded by a lock."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        max_images: int = 5000,
        max_bytes: int = 1 << 30,
        min_free_bytes: int = 256 << 20,
        jpeg_quality: int = 90,
        synchronous: str = "NORMAL",
    ) -> None:
        if max_images < 1 or max_bytes < 1 or min_free_bytes < 0:
            raise ValueError("max_images and max_bytes must be ≥ 1, min_free_bytes ≥ 0")
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL, got {synchronous!r}")
        self.root = Path(root)
        self.max_images = max_images
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self.jpeg_quality = jpeg_quality
        self.db_path = self.root / DB_NAME
        self._lock = threading.RLock()
        self._evicted = 0
        self._rejected = 0
        try:
            (self.root / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StorageError(
                f"cannot create the pool folder {self.root}: {err.strerror}",
                hint="check [pool] dir and its permissions",
            ) from None
        self.connection = connect(self.db_path, synchronous)
        self.sweep()

    @classmethod
    def from_config(cls, root: str | os.PathLike[str], config: Any) -> Pool:
        """From a `PoolConfig` section; `root` is its `dir` resolved against data_dir."""
        return cls(
            root,
            max_images=config.max_images,
            max_bytes=config.max_bytes,
            min_free_bytes=config.min_free_bytes,
            jpeg_quality=config.jpeg_quality,
            synchronous=config.synchronous,
        )

    # -- connection ----------------------------------------------------------------------------

    def _transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return immediate_transaction(
            self.connection, self._lock, lambda err: storage_error(err, self.db_path)
        )

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            try:
                return self.connection.execute(sql, params).fetchall()
            except sqlite3.Error as err:
                raise storage_error(err, self.db_path) from None

    def close(self) -> None:
        """Checkpoint the WAL into the database file and close."""
        with self._lock:
            try:
                self.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as err:
                logger.warning("pool %s: checkpoint at close failed: %s", self.db_path, err)
            self.connection.close()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- files -------------------------------------------------------------------------------

    def _relative_path(self, sample_id: str) -> str:
        return f"{IMAGE_DIR}/{sample_id[:2]}/{sample_id}.jpg"

    def _unlink(self, relative: str) -> None:
        try:
            (self.root / relative).unlink()
        except FileNotFoundError:
            pass
        except OSError as err:
            logger.warning("pool: cannot delete %s: %s", relative, err)

    def sweep(self) -> tuple[int, int]:
        """Delete files without rows (and temp files), and rows without files.

        Returns (files removed, rows removed). Runs at open; safe at any time.
        """
        with self._lock:
            rows = dict(self._query("SELECT jpeg_path, sample_id FROM samples"))
            files_removed = 0
            on_disk: set[str] = set()
            for path in (self.root / IMAGE_DIR).rglob("*"):
                if not path.is_file():
                    continue
                relative = path.relative_to(self.root).as_posix()
                if relative in rows:
                    on_disk.add(relative)
                    continue
                self._unlink(relative)
                files_removed += 1
            missing = [sid for rel, sid in rows.items() if rel not in on_disk]
            if missing:
                with self._transaction() as conn:
                    conn.executemany(
                        "DELETE FROM samples WHERE sample_id = ?", [(s,) for s in missing]
                    )
        if files_removed or missing:
            logger.warning(
                "pool %s: removed %d orphan files and %d rows without a file",
                self.root,
                files_removed,
                len(missing),
            )
        return files_removed, len(missing)

    def _check_free_space(self, incoming: int) -> None:
        free = shutil.disk_usage(self.root).free
        if free - incoming < self.min_free_bytes:
            raise StorageError(
                f"disk almost full under {self.root}: {free >> 20} MiB free, the pool keeps "
                f"{self.min_free_bytes >> 20} MiB spare",
                hint="free space on that disk, or lower [pool] max_bytes / min_free_bytes",
            )

    # -- insert and evict ----------------------------------------------------------------------

    def add(
        self,
        *,
        capture_time: float,
        source: str,
        model_version: str,
        score: float,
        feature: np.ndarray,
        detections: Any,
        image: np.ndarray | None = None,
        jpeg: bytes | None = None,
        ground_truth: Any | None = None,
        sample_id: str | None = None,
    ) -> str | None:
        """Store a sample (give `image` RGB or ready `jpeg` bytes); its id, or None if refused.

        `detections` and `ground_truth` are stored as JSON (a GroundTruth's `to_json()` is
        used). Raises StorageError when the disk is full; the pool stays as it was.
        """
        if hasattr(ground_truth, "to_json"):
            ground_truth = ground_truth.to_json()
        if (image is None) == (jpeg is None):
            raise ValueError("give exactly one of image and jpeg")
        sample_id = sample_id or uuid.uuid4().hex
        if not _ID_RE.match(sample_id):
            raise ValueError(f"sample id {sample_id!r} must be 1-128 of [A-Za-z0-9_-]")
        if jpeg is None:
            jpeg = encode_jpeg(image, self.jpeg_quality)  # type: ignore[arg-type]
            height, width = image.shape[:2]  # type: ignore[union-attr]
        else:
            width, height = Image.open(io.BytesIO(jpeg)).size
        row = (
            sample_id,
            float(capture_time),
            source,
            model_version,
            float(score),
            feature_blob(feature),
            json.dumps(detections),
            None if ground_truth is None else json.dumps(ground_truth),
            self._relative_path(sample_id),
            len(jpeg),
            hashlib.sha256(jpeg).hexdigest(),
            int(width),
            int(height),
            POOLED,
        )
        return self._insert(row, jpeg)

    def _insert(self, row: tuple, jpeg: bytes) -> str | None:
        sample_id, score, relative = row[0], row[4], row[8]
        with self._lock:
            self._check_free_space(len(jpeg))
            victims = plan_eviction(
                self.connection, score, len(jpeg), self.max_images, self.max_bytes
            )
            if victims is None:
                self._rejected += 1
                logger.debug(
                    "pool: refused %s (score %.4f): nothing evictable below it", sample_id, score
                )
                return None
            atomic_write_bytes(self.root / relative, jpeg)
            now = time.time()
            try:
                with self._transaction() as conn:
                    conn.execute(
                        f"INSERT INTO samples ({COLUMNS}) VALUES ({', '.join('?' * 16)})",
                        (*row, now, now),
                    )
                    conn.executemany(
                        "DELETE FROM samples WHERE sample_id = ?", [(v.sample_id,) for v in victims]
                    )
            except BaseException:
                self._unlink(relative)
                raise
            for victim in victims:
                self._unlink(victim.jpeg_path)
            self._evicted += len(victims)
        return sample_id

    # -- reading -------------------------------------------------------------------------------

    def get(self, sample_id: str) -> PoolSample | None:
        rows = self._query(f"SELECT {COLUMNS} FROM samples WHERE sample_id = ?", (sample_id,))
        return sample_from_row(self.root, rows[0]) if rows else None

    def read_jpeg(self, sample_id: str) -> bytes:
        sample = self.get(sample_id)
        if sample is None:
            raise KeyError(sample_id)
        return sample.jpeg_path.read_bytes()

    def top(self, n: int, state: str = POOLED) -> list[PoolSample]:
        """The n highest-scoring samples in `state` (ties: newest capture first)."""
        rows = self._query(
            f"SELECT {COLUMNS} FROM samples WHERE state = ? "
            "ORDER BY score DESC, capture_time DESC LIMIT ?",
            (state, int(n)),
        )
        return [sample_from_row(self.root, r) for r in rows]

    def ids(self, states: Iterable[str] = (POOLED,)) -> list[str]:
        states = check_states(states)
        marks = ", ".join("?" * len(states))
        rows = self._query(
            f"SELECT sample_id FROM samples WHERE state IN ({marks}) ORDER BY sample_id", states
        )
        return [r[0] for r in rows]

    def candidates(self, states: Iterable[str] = (POOLED,)) -> Candidates:
        """Ids, scores and features of samples in `states`, ready for dal.strategies."""
        with self._lock:
            try:
                return read_candidates(self.connection, states)
            except sqlite3.Error as err:
                raise storage_error(err, self.db_path) from None

    def count(self, state: str = POOLED) -> int:
        """Samples in `state` (an index count: cheap enough to poll on a 100k pool)."""
        return int(
            self._query("SELECT COUNT(*) FROM samples WHERE state = ?", check_states([state]))[0][0]
        )

    def stats(self) -> PoolStats:
        rows = self._query(
            "SELECT state, COUNT(*), COALESCE(SUM(bytes), 0) FROM samples GROUP BY state"
        )
        by_state = {s: 0 for s in STATES}
        by_state.update({r[0]: int(r[1]) for r in rows})
        return PoolStats(
            count=sum(by_state.values()),
            bytes=sum(int(r[2]) for r in rows),
            by_state=by_state,
            evicted=self._evicted,
            rejected=self._rejected,
        )

    def __len__(self) -> int:
        return self.stats().count

    # -- state ---------------------------------------------------------------------------------

    def set_state(self, sample_ids: Iterable[str], state: str) -> int:
        """Move samples to `state`; returns how many changed. Unknown ids raise KeyError,
        impossible moves InvalidTransitionError (and nothing changes)."""
        ids = list(sample_ids)
        if not ids:
            return 0
        with self._transaction() as conn:
            return len(move_state(conn, ids, state, time.time(), strict=True))

    def forget_scores(self) -> int:
        """Make the next `rescore` redo every pooled sample (scoring settings changed, or an
        operator asked for it); returns how many samples that is."""
        with self._transaction() as conn:
            return forget_scores(conn)

    def delete(self, sample_ids: Iterable[str]) -> int:
        """Remove samples and their files (e.g. an operator clears the pool)."""
        ids = list(dict.fromkeys(sample_ids))
        paths: list[str] = []
        with self._transaction() as conn:
            for chunk in chunks(ids, 500):
                marks = ", ".join("?" * len(chunk))
                paths += [
                    r[0]
                    for r in conn.execute(
                        f"SELECT jpeg_path FROM samples WHERE sample_id IN ({marks})", chunk
                    )
                ]
                conn.execute(f"DELETE FROM samples WHERE sample_id IN ({marks})", chunk)
        for rel in paths:
            self._unlink(rel)
        return len(paths)

    # -- rescoring -----------------------------------------------------------------------------

    def rescore(
        self,
        fn: Callable[[np.ndarray], Scored],
        model_version: str,
        *,
        states: Iterable[str] = (POOLED,),
        batch_size: int = 32,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Re-score samples not yet scored by `model_version` with `fn(rgb) -> Scored`.

        Streams the images and commits every `batch_size`; returns how many were re-scored.
        A sample whose JPEG is gone or undecodable is dropped. Samples whose state changed
        meanwhile keep their new state (the update only touches rows still in `states`).
        """
        states = check_states(states)
        marks = ", ".join("?" * len(states))
        todo = self._query(
            f"SELECT sample_id, jpeg_path FROM samples WHERE state IN ({marks}) "
            "AND model_version != ? ORDER BY sample_id",
            (*states, model_version),
        )
        done = 0
        for batch in chunks(todo, max(1, batch_size)):
            updates, broken = [], []
            for sample_id, relative in batch:
                image = self._load_image(relative)
                if image is None:
                    broken.append(sample_id)
                    continue
                result = fn(image)
                updates.append(
                    (
                        float(result.score),
                        feature_blob(result.feature),
                        json.dumps(result.detections),
                        model_version,
                        time.time(),
                        sample_id,
                        *states,
                    )
                )
            with self._transaction() as conn:
                conn.executemany(
                    "UPDATE samples SET score = ?, feature = ?, detections = ?, "
                    "model_version = ?, updated_at = ? WHERE sample_id = ? AND "
                    f"state IN ({marks})",
                    updates,
                )
            if broken:
                logger.warning(
                    "pool: dropping %d sample(s) whose JPEG is missing or corrupt", len(broken)
                )
                self.delete(broken)
            done += len(updates)
            if progress is not None:
                progress(done, len(todo))
        return done

    def _load_image(self, relative: str) -> np.ndarray | None:
        try:
            data = (self.root / relative).read_bytes()
        except OSError as err:
            logger.warning("pool: cannot read %s: %s", relative, err)
            return None
        return decode_jpeg(data)

    # -- health --------------------------------------------------------------------------------

    def integrity_check(self) -> list[str]:
        """Problems found by SQLite's `PRAGMA integrity_check` (empty list = healthy)."""
        rows = self._query("PRAGMA integrity_check")
        problems = [r[0] for r in rows if r[0] != "ok"]
        return problems
