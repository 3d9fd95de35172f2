"""Frame sources, found by name like detector plug-ins: `[source] kind = "mkv"` -> MkvSource.

Each plug-in is one module with a class that has a `kind`, a `from_config(SourceConfig)`
constructor and the FrameSource methods. Optional libraries (PyAV, pyk4a) are imported when a
source opens, so a missing one only breaks the source that needs it.
"""

from __future__ import annotations

import difflib
import threading
from typing import TYPE_CHECKING

from dal.agent.sources.base import BaseSource, Frame, FrameSource, GroundTruth, SourceStats
from dal.agent.sources.folder import FolderSource
from dal.agent.sources.kinect import KinectSource
from dal.agent.sources.mkv import MkvSource
from dal.agent.sources.reconnect import ReconnectingSource, SourceState, backoff_delay
from dal.agent.sources.video import VideoSource
from dal.errors import ConfigError

if TYPE_CHECKING:
    from dal.agent.config import SourceConfig

SOURCES: dict[str, type[BaseSource]] = {
    cls.kind: cls for cls in (FolderSource, MkvSource, VideoSource, KinectSource)
}


def register_source(cls: type[BaseSource]) -> type[BaseSource]:
    """Add a source class (usable as a decorator); its `kind` must be new."""
    if cls.kind in SOURCES and SOURCES[cls.kind] is not cls:
        raise ValueError(f"source kind {cls.kind!r} is already taken by {SOURCES[cls.kind]}")
    SOURCES[cls.kind] = cls
    return cls


def create_source(config: SourceConfig) -> BaseSource:
    """The source `[source] kind` names, built from its config (not opened yet)."""
    cls = SOURCES.get(config.kind)
    if cls is None:
        close = difflib.get_close_matches(config.kind, list(SOURCES), n=1)
        guess = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(
            f"[source] kind {config.kind!r} is not a known source",
            hint=f"{guess}known kinds: {', '.join(sorted(SOURCES))}",
        )
    if not config.uri and config.kind != "kinect":
        raise ConfigError(
            f"[source] uri is empty; the {config.kind} source needs one",
            hint="set it to the folder, file or URL to read",
        )
    return cls.from_config(config)  # type: ignore[attr-defined]


def open_source(config: SourceConfig, stop: threading.Event | None = None) -> ReconnectingSource:
    """The configured source behind reconnect-with-back-off (what the agent loop reads)."""
    probe = create_source(config)  # fail now on a config mistake, not in the retry loop
    rc = config.reconnect
    return ReconnectingSource(
        lambda: create_source(config),
        live=probe.live,
        initial_s=rc.initial_s,
        max_s=rc.max_s,
        factor=rc.factor,
        max_attempts=rc.max_attempts,
        stop=stop,
    )


__all__ = [
    "SOURCES",
    "BaseSource",
    "FolderSource",
    "Frame",
    "FrameSource",
    "GroundTruth",
    "KinectSource",
    "MkvSource",
    "ReconnectingSource",
    "SourceState",
    "SourceStats",
    "VideoSource",
    "backoff_delay",
    "create_source",
    "open_source",
    "register_source",
]
