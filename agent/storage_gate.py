"""Whether the pool can take frames now: a full disk pauses capture instead of failing per frame.

The first storage failure is logged once, pauses capture and shows in the status; while paused
one frame every `probe_s` is let through to find out whether space came back (freed files, a
grown volume), and the first one stored resumes capture, logged once as well. Without this a
full disk wrote one ERROR line per frame (hundreds a minute) and kept the detector busy on
frames that could never be kept.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from dal.errors import StorageError

logger = logging.getLogger(__name__)

ChangeFn = Callable[[str | None], None]  # the reason capture paused, or None: it resumed


class StorageGate:
    """See the module docstring. Thread-safe: the store worker reports, capture asks."""

    def __init__(
        self,
        probe_s: float = 5.0,
        on_change: ChangeFn | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.probe_s = probe_s
        self._on_change = on_change or (lambda reason: None)
        self._clock = clock
        self._lock = threading.Lock()
        self.reason: str | None = None
        self.since: float | None = None  # wall time of the first failure of this pause
        self.failures = 0  # of this pause
        self._next_probe = 0.0

    @property
    def paused(self) -> bool:
        return self.reason is not None

    def failed(self, err: StorageError) -> None:
        """A frame could not be stored."""
        with self._lock:
            self.failures += 1
            self._next_probe = self._clock() + self.probe_s
            first = self.reason is None
            if first:
                self.reason, self.since = str(err), time.time()
        if first:
            logger.error(
                "the pool cannot store frames: %s; capture paused, trying again every %g s",
                err,
                self.probe_s,
            )
            self._on_change(str(err))
        else:
            logger.debug("still cannot store a frame: %s", err)

    def stored(self) -> None:
        """A frame was stored: resume if paused."""
        with self._lock:
            if self.reason is None:
                return
            failures, since = self.failures, self.since or time.time()
            self.reason, self.since, self.failures = None, None, 0
        logger.warning(
            "the pool stores frames again after %d failed tries in %.0f s; capture resumed",
            failures,
            time.time() - since,
        )
        self._on_change(None)

    def allow(self) -> bool:
        """May a frame go on now? Always while running; while paused, one per `probe_s`."""
        with self._lock:
            if self.reason is None:
                return True
            now = self._clock()
            if now < self._next_probe:
                return False
            self._next_probe = now + self.probe_s
            return True

    def to_dict(self) -> dict[str, Any]:
        return {
            "paused": self.paused,
            "reason": self.reason,
            "since": self.since,
            "failures": self.failures,
        }
