"""The one write-transaction pattern of every SQLite store here (pool, outbox, store, registry)."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def immediate_transaction(
    conn: sqlite3.Connection,
    lock: threading.Lock | threading.RLock,
    on_error: Callable[[sqlite3.Error], Exception] | None = None,
) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT under `lock`; any exception rolls back.

    IMMEDIATE takes the write lock up front, so two writers never deadlock upgrading a read
    lock. `on_error` turns an sqlite3.Error into the caller's error (a StorageError naming the
    file, say)."""
    with lock:
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except BaseException as err:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if on_error is not None and isinstance(err, sqlite3.Error):
                raise on_error(err) from None
            raise
