"""Keep a source alive: reopen it with exponential back-off when a camera or stream is lost.

The agent loop reads through `ReconnectingSource`; it sees frames, None at the true end of a
recording, or a SourceError once `max_attempts` failures in a row are spent. Only SourceError
is retried: a missing dependency or a bad annotations file will not fix itself by waiting.
The waits use a stop event so shutdown never sits out a back-off.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from dal.agent.sources.base import Frame, FrameSource
from dal.errors import SourceError

logger = logging.getLogger(__name__)

CONNECTING = "connecting"
CONNECTED = "connected"
RECONNECTING = "reconnecting"
ENDED = "ended"
FAILED = "failed"
STOPPED = "stopped"


def backoff_delay(attempt: int, initial_s: float, factor: float, max_s: float) -> float:
    """Wait before attempt `attempt` (1 = first retry): initial · factor^(attempt-1), capped."""
    if attempt <= 0:
        return 0.0
    return min(max_s, initial_s * factor ** (attempt - 1))


@dataclass(frozen=True)
class SourceState:
    """What the agent reports about its source (status and metrics messages)."""

    status: str = CONNECTING
    attempts: int = 0  # failed (re)connects in a row
    reconnects: int = 0  # successful reconnects since start
    last_error: str | None = None
    since: float = 0.0  # time.time() of the last status change
    frames: int = 0
    corrupt: int = 0


class ReconnectingSource:
    """Wraps a factory of sources; `read()` reopens a lost source after a back-off wait."""

    def __init__(
        self,
        factory: Callable[[], FrameSource],
        *,
        initial_s: float = 1.0,
        max_s: float = 60.0,
        factor: float = 2.0,
        max_attempts: int = 0,
        stop: threading.Event | None = None,
        live: bool = False,
    ) -> None:
        self._factory = factory
        self.live = live  # the wrapped source's: a camera or stream, not a file
        self._initial_s, self._max_s, self._factor = initial_s, max_s, factor
        self._max_attempts = max_attempts
        self._stop = stop or threading.Event()
        self._source: FrameSource | None = None
        self._lock = threading.Lock()
        self._state = SourceState(since=time.time())
        self._frames = 0
        self._corrupt = 0  # counted by sources already replaced

    @property
    def state(self) -> SourceState:
        with self._lock:
            live = self._source.stats if self._source is not None else None
            corrupt = self._corrupt + (live.corrupt if live else 0)
            return replace(self._state, frames=self._frames, corrupt=corrupt)

    def _set(self, **changes: object) -> None:
        with self._lock:
            if "status" in changes and changes["status"] != self._state.status:
                changes["since"] = time.time()
            self._state = replace(self._state, **changes)  # type: ignore[arg-type]

    def _drop_source(self) -> None:
        if self._source is None:
            return
        with self._lock:
            self._corrupt += self._source.stats.corrupt
            source, self._source = self._source, None
        try:
            source.close()
        except (SourceError, OSError) as err:
            logger.warning("closing %s failed: %s", source.source_id, err)

    def _failed(self, err: SourceError) -> None:
        """Record a failure; wait the back-off or raise once attempts are spent."""
        attempts = self._state.attempts + 1
        self._set(status=RECONNECTING, attempts=attempts, last_error=str(err))
        if self._max_attempts and attempts >= self._max_attempts:
            self._set(status=FAILED)
            raise SourceError(
                f"source lost after {attempts} attempts: {err}",
                hint=err.hint or "check the camera, cable or stream URL",
            ) from err
        delay = backoff_delay(attempts, self._initial_s, self._factor, self._max_s)
        logger.warning("source failed (%s); attempt %d, retrying in %.1f s", err, attempts, delay)
        self._stop.wait(delay)

    def _connect(self) -> None:
        source = self._factory()
        source.open()
        with self._lock:
            self._source = source
        reconnected = self._state.status == RECONNECTING
        self._set(
            status=CONNECTED, attempts=0, reconnects=self._state.reconnects + int(reconnected)
        )
        logger.info("source %s %s", source.source_id, "reconnected" if reconnected else "connected")

    def read(self) -> Frame | None:
        """The next frame; None when the recording ended or stop was requested."""
        while not self._stop.is_set():
            try:
                if self._source is None:
                    self._connect()
                frame = self._source.read()  # type: ignore[union-attr]
            except SourceError as err:
                self._drop_source()
                self._failed(err)
                continue
            if frame is None:
                self._set(status=ENDED)
                return None
            self._frames += 1
            return frame
        self._set(status=STOPPED)
        return None

    def close(self) -> None:
        self._drop_source()
        if self._state.status not in (ENDED, FAILED):
            self._set(status=STOPPED)

    def __enter__(self) -> ReconnectingSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self):
        while (frame := self.read()) is not None:
            yield frame
