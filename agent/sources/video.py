"""Video files, network streams (rtsp://, http://) and V4L2 cameras through OpenCV.

Files are replayed like recordings (media time, optional real-time pacing and looping). Live
streams are read by a grabber thread that keeps only the newest frame: the agent infers slower
than a camera delivers, and a reader that falls behind an RTSP stream sees ever older frames
until the server drops it.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from dal.agent.sources.base import BaseSource, Frame, Pacer
from dal.errors import SourceError

if TYPE_CHECKING:
    from dal.agent.config import SourceConfig

logger = logging.getLogger(__name__)

STALL_TIMEOUT_S = 10.0  # a live source without a new frame for this long is lost
MAX_BAD_IN_A_ROW = 50  # a file yielding only undecodable frames is broken, not noisy


def is_live(uri: str) -> bool:
    """Stream URLs and camera indices are live; anything else is a file."""
    return "://" in uri or uri.isdigit()


def _valid(image: Any) -> bool:
    return isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3


class _Grabber(threading.Thread):
    """Reads a live capture continuously; `latest()` hands out each new frame once."""

    def __init__(self, capture: Any, name: str) -> None:
        super().__init__(name=f"grab-{name}", daemon=True)
        self.capture = capture
        self.stop = threading.Event()
        self.error: str | None = None
        self.bad = 0
        self._cond = threading.Condition()
        self._frame: tuple[np.ndarray, float] | None = None

    def run(self) -> None:
        while not self.stop.is_set():
            ok, bgr = self.capture.read()
            if not ok:
                with self._cond:
                    self.error = "the stream stopped delivering frames"
                    self._cond.notify_all()
                return
            if not _valid(bgr):
                self.bad += 1
                continue
            with self._cond:
                self._frame = (bgr, time.time())
                self._cond.notify_all()

    def latest(self, timeout: float) -> tuple[np.ndarray, float]:
        with self._cond:
            if not self._cond.wait_for(lambda: self._frame is not None or self.error, timeout):
                raise SourceError(f"no frame for {timeout:.0f} s")
            if self._frame is None:
                raise SourceError(self.error or "stream lost")
            frame, self._frame = self._frame, None
            return frame


class VideoSource(BaseSource):
    """OpenCV VideoCapture on a file, stream URL or camera index."""

    kind = "video"

    def __init__(
        self,
        uri: str,
        *,
        realtime: bool = False,
        loop: bool = False,
        live: bool | None = None,
        stall_timeout_s: float = STALL_TIMEOUT_S,
    ) -> None:
        super().__init__(f"video:{uri}")
        self.uri = str(uri)
        self.live = is_live(self.uri) if live is None else live
        self.loop = loop
        self.stall_timeout_s = stall_timeout_s
        self._pacer = Pacer(realtime and not self.live)
        self._capture: Any = None
        self._grabber: _Grabber | None = None
        self._anchor = 0.0
        self._offset = 0.0
        self._last = 0.0
        self._period = 1.0 / 30.0
        self._pass_index = 0

    @classmethod
    def from_config(cls, config: SourceConfig) -> VideoSource:
        return cls(config.uri, realtime=config.realtime, loop=config.loop)

    def open(self) -> None:
        if not is_live(self.uri) and not Path(self.uri).is_file():
            raise SourceError(
                f"video file {self.uri} not found",
                hint="set [source] uri to a video file, an rtsp:// URL or a camera index",
            )
        self._open_capture()
        self._anchor = time.time()
        self._offset = 0.0
        self._pacer.reset()
        if self.live:
            self._grabber = _Grabber(self._capture, self.source_id)
            self._grabber.start()

    def _open_capture(self) -> None:
        target: str | int = int(self.uri) if self.uri.isdigit() else self.uri
        capture = cv2.VideoCapture(target)
        if not capture.isOpened():
            capture.release()
            raise SourceError(
                f"cannot open video {self.uri}",
                hint="check the path or URL, credentials and that FFmpeg in "
                "OpenCV supports its codec",
            )
        fps = capture.get(cv2.CAP_PROP_FPS)
        self._period = 1.0 / fps if fps and fps > 0 else 1.0 / 30.0
        self._capture = capture
        self._pass_index = 0

    def close(self) -> None:
        if self._grabber is not None:
            self._grabber.stop.set()
            self._grabber.join(timeout=2.0)
            self._grabber = None
        if self._capture is not None:
            self._capture.release()
            self._capture = None

    def read(self) -> Frame | None:
        if self._capture is None:
            raise SourceError(f"{self.source_id}: read() before open()")
        if self._grabber is not None:
            bgr, stamp = self._grabber.latest(self.stall_timeout_s)
            self.stats.corrupt = self._grabber.bad
            return self._frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), stamp)
        return self._read_file()

    def _read_file(self) -> Frame | None:
        bad = 0
        while True:
            ok, bgr = self._capture.read()
            if not ok:
                if not self.loop:
                    return None
                self._capture.release()
                self._offset += self._last + self._period
                self.stats.loops += 1
                self._open_capture()
                continue
            if not _valid(bgr):
                bad += 1
                self._skip_corrupt(f"frame {self._next_index}", "not a colour image")
                if bad >= MAX_BAD_IN_A_ROW:
                    raise SourceError(f"{self.uri}: {bad} undecodable frames in a row")
                continue
            pos_ms = self._capture.get(cv2.CAP_PROP_POS_MSEC)
            # some backends report no position: count frames at the nominal rate instead
            self._last = pos_ms / 1000.0 if pos_ms > 0 else self._pass_index * self._period
            self._pass_index += 1
            self._pacer.wait(self._offset + self._last)
            return self._frame(
                cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), self._anchor + self._offset + self._last
            )
