"""What every frame source gives the agent: `Frame`s, one at a time, through a tiny protocol.

A source is opened, read until `read()` returns None (a recording or folder ended), and closed.
A lost camera or stream raises SourceError from `read()`; `ReconnectingSource` (reconnect.py)
turns that into back-off and reopening. A frame that cannot be decoded is skipped and counted
(`SourceStats.corrupt`), never fatal: one bad JPEG must not stop a shop-floor camera.

Timestamps are seconds on a Unix-epoch clock. Live sources stamp the capture time; recordings
and folders are anchored at the moment they were opened and advance by *media* time, so a fast
replay still steps 1/30 s per frame and a time-based keep policy behaves as it would live.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class GroundTruth:
    """Known boxes of a frame (replays of labelled data): the oracle for experiments."""

    boxes: np.ndarray  # float32 [n, 4] x1, y1, x2, y2, frame pixels
    labels: np.ndarray  # int64 [n] contiguous training labels 1..C
    category_ids: np.ndarray  # int64 [n] category ids as in the COCO file
    image_id: int | None = None
    file_name: str | None = None

    def to_json(self) -> dict[str, object]:
        """JSON-ready form (stored with pooled samples, sent along for the labelling oracle)."""
        return {
            "boxes": np.round(self.boxes, 2).tolist(),
            "labels": self.labels.tolist(),
            "category_ids": self.category_ids.tolist(),
            "image_id": self.image_id,
            "file_name": self.file_name,
        }


@dataclass(frozen=True, eq=False)
class Frame:
    """One captured colour image and where it came from."""

    image: np.ndarray  # uint8 [H, W, 3] RGB
    timestamp: float  # seconds, Unix epoch (see module docstring)
    index: int  # 0, 1, 2, ... in the order read from this source (keeps counting over loops)
    source_id: str  # e.g. "folder:/data/replay", "mkv:/rec/a.mkv", "kinect:0"
    ground_truth: GroundTruth | None = None
    depth: np.ndarray | None = None  # uint16 [h, w] millimetres, when the source has depth
    name: str | None = None  # file name within a folder source


@dataclass
class SourceStats:
    """Counters a source keeps while it runs (reported in agent metrics)."""

    frames: int = 0
    corrupt: int = 0
    loops: int = 0
    last_error: str | None = None


@runtime_checkable
class FrameSource(Protocol):
    """The interface the agent loop needs; `BaseSource` gives the shared parts."""

    source_id: str
    stats: SourceStats

    def open(self) -> None: ...

    def read(self) -> Frame | None: ...

    def close(self) -> None: ...


@dataclass
class Pacer:
    """Sleeps so that media time advances no faster than wall time (real-time replay)."""

    enabled: bool
    _origin: tuple[float, float] | None = field(default=None, init=False)  # (wall, media)

    def wait(self, media_time: float) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self._origin is None:
            self._origin = (now, media_time)
            return
        due = self._origin[0] + (media_time - self._origin[1])
        if due > now:
            time.sleep(due - now)

    def reset(self) -> None:
        self._origin = None


class BaseSource:
    """Shared plumbing: stats, context manager, iteration, the corrupt-frame counter."""

    kind = "base"
    live = False  # a camera or stream: frames not read in time are gone (a file waits)

    def __init__(self, source_id: str) -> None:
        self.source_id = source_id
        self.stats = SourceStats()
        self._next_index = 0

    def open(self) -> None:
        raise NotImplementedError

    def read(self) -> Frame | None:
        raise NotImplementedError

    def close(self) -> None:
        """Release the device or file; safe to call twice."""

    def __enter__(self) -> BaseSource:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self):
        while (frame := self.read()) is not None:
            yield frame

    def _skip_corrupt(self, what: str, reason: object) -> None:
        self.stats.corrupt += 1
        self.stats.last_error = f"{what}: {reason}"
        logger.warning(
            "%s: skipped corrupt frame %s (%s); %d so far",
            self.source_id,
            what,
            reason,
            self.stats.corrupt,
        )

    def _frame(self, image: np.ndarray, timestamp: float, **extra: object) -> Frame:
        frame = Frame(
            image=image,
            timestamp=timestamp,
            index=self._next_index,
            source_id=self.source_id,
            **extra,
        )  # type: ignore[arg-type]
        self._next_index += 1
        self.stats.frames += 1
        return frame
