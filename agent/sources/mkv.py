"""Azure Kinect recordings (.mkv from k4arecorder) read with PyAV: no Azure Kinect SDK needed.

The recorder writes a Matroska file with one track per camera, titled COLOR, DEPTH and IR (plus
IMU and a calibration attachment). COLOR is MJPEG, NV12, YUY2 or BGRA; DEPTH is 16-bit grey
("b16g", millimetres), which FFmpeg decodes as gray16be. We take the colour track and, when
asked, the depth frame with the same timestamp.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dal.agent.sources.base import BaseSource, Frame, Pacer
from dal.errors import DependencyError, SourceError

if TYPE_CHECKING:
    from dal.agent.config import SourceConfig

logger = logging.getLogger(__name__)

DEPTH_TITLE = "DEPTH"
DEFAULT_FPS = 30.0

# (media time, rgb, depth or None)
_Decoded = tuple[float, np.ndarray, np.ndarray | None]


def _import_av() -> Any:
    try:
        import av
    except ImportError:
        raise DependencyError(
            "PyAV is not installed: it reads .mkv recordings without the Azure Kinect SDK",
            hint="pip install 'dal[agent]' (or pip install av)",
        ) from None
    return av


def _title(stream: Any) -> str:
    return str(stream.metadata.get("title", "")).strip()


def pick_streams(streams: list[Any], color_title: str, want_depth: bool) -> tuple[Any, Any]:
    """(colour stream, depth stream or None) among a container's video streams."""
    titled = {_title(s).upper(): s for s in streams if _title(s)}
    color = titled.get(color_title.upper())
    if color is None and titled:
        raise SourceError(
            f"no video track titled {color_title!r}; tracks are {sorted(titled)}",
            hint="set [source.mkv] color_track to the colour track's title",
        )
    if color is None:  # untitled tracks: not a Kinect file, take the first video track
        color = streams[0]
    depth = titled.get(DEPTH_TITLE) if want_depth else None
    if want_depth and depth is None:
        logger.warning("recording has no %s track; frames come without depth", DEPTH_TITLE)
    return color, depth


class MkvSource(BaseSource):
    """Replays a recording as fast as possible, or in real time; optionally loops."""

    kind = "mkv"

    def __init__(
        self,
        path: str | Path,
        *,
        color_track: str = "COLOR",
        depth: bool = False,
        realtime: bool = False,
        loop: bool = False,
    ) -> None:
        super().__init__(f"mkv:{path}")
        self.path = Path(path)
        self.color_track = color_track
        self.want_depth = depth
        self.loop = loop
        self._pacer = Pacer(realtime)
        self._container: Any = None
        self._decoded: Iterator[_Decoded] | None = None
        self._anchor = 0.0
        self._offset = 0.0  # media time added by earlier loops
        self._last = 0.0  # media time of the last frame in this pass
        self._period = 1.0 / DEFAULT_FPS
        self._pass_frames = 0

    @classmethod
    def from_config(cls, config: SourceConfig) -> MkvSource:
        return cls(
            config.uri,
            color_track=config.mkv.color_track,
            depth=config.mkv.depth,
            realtime=config.realtime,
            loop=config.loop,
        )

    def open(self) -> None:
        if not self.path.is_file():
            raise SourceError(
                f"recording {self.path} not found",
                hint="set [source] uri to an .mkv file written by k4arecorder",
            )
        self._open_container()
        self._anchor = time.time()
        self._offset = 0.0
        self._pacer.reset()

    def _open_container(self) -> None:
        av = _import_av()
        try:
            self._container = av.open(str(self.path))
        except av.error.FFmpegError as err:
            raise SourceError(
                f"cannot read recording {self.path}: {err}",
                hint="is it a complete Matroska (.mkv) file?",
            ) from None
        streams = list(self._container.streams.video)
        if not streams:
            self.close()
            raise SourceError(f"recording {self.path} has no video track")
        color, depth = pick_streams(streams, self.color_track, self.want_depth)
        if color.average_rate:
            self._period = 1.0 / float(color.average_rate)
        self._decoded = self._decode(av, color, depth)
        self._pass_frames = 0

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
        self._decoded = None

    def _packets(self, av: Any, streams: list[Any]) -> Iterator[Any]:
        """Demuxed packets; a damaged tail (recorder killed mid-write) ends the recording."""
        packets = self._container.demux(streams)
        while True:
            try:
                yield next(packets)
            except StopIteration:
                return
            except av.error.FFmpegError as err:
                self.stats.last_error = f"recording ends early: {err}"
                logger.warning("%s: recording ends early: %s", self.source_id, err)
                return

    def _decode(self, av: Any, color: Any, depth: Any) -> Iterator[_Decoded]:
        """Colour frames with their media time (from the first frame) and matching depth."""
        tolerance = self._period / 2
        start: float | None = None
        pending: tuple[float, np.ndarray] | None = None
        last_depth: tuple[float, np.ndarray] | None = None
        streams = [s for s in (color, depth) if s is not None]
        for packet in self._packets(av, streams):
            try:
                frames = packet.decode()
            except av.error.FFmpegError as err:
                if packet.stream is color:
                    self._skip_corrupt(f"packet at {packet.pts}", err)
                continue
            for frame in frames:
                t = float(frame.time) if frame.time is not None else 0.0
                start = t if start is None else start
                if packet.stream is not color:
                    last_depth = (t, frame.to_ndarray().astype(np.uint16))
                    if pending is not None and abs(pending[0] - t) <= tolerance:
                        yield pending[0] - start, pending[1], last_depth[1]
                        pending = None
                    continue
                try:
                    rgb = frame.to_ndarray(format="rgb24")
                except (av.error.FFmpegError, ValueError) as err:
                    self._skip_corrupt(f"frame at {t:.3f}s", err)
                    continue
                if pending is not None:  # its depth never came
                    yield pending[0] - start, pending[1], None
                    pending = None
                if depth is None:
                    yield t - start, rgb, None
                elif last_depth is not None and abs(last_depth[0] - t) <= tolerance:
                    yield t - start, rgb, last_depth[1]
                else:
                    pending = (t, rgb)
        if pending is not None and start is not None:
            yield pending[0] - start, pending[1], None

    def read(self) -> Frame | None:
        if self._decoded is None:
            raise SourceError(f"{self.source_id}: read() before open()")
        while True:
            item = next(self._decoded, None)
            if item is not None:
                break
            if not self.loop:
                return None
            if self._pass_frames == 0:
                raise SourceError(f"recording {self.path} has no decodable colour frames")
            self.close()
            self._offset += self._last + self._period
            self._last = 0.0
            self.stats.loops += 1
            self._open_container()
        media_time, rgb, depth = item
        self._last = media_time
        self._pass_frames += 1
        self._pacer.wait(self._offset + media_time)
        return self._frame(rgb, self._anchor + self._offset + media_time, depth=depth)
