"""The `[source]` section of the agent's configuration: where frames come from and how a lost
camera or stream is retried. Its own file so that agent/config.py stays one screenful per
concern; `dal.agent.config` re-exports SourceConfig."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from dal.config import doc

ColorResolution = Literal["720p", "1080p", "1440p", "1536p", "2160p", "3072p"]
DepthMode = Literal["off", "nfov_2x2binned", "nfov_unbinned", "wfov_2x2binned", "wfov_unbinned"]


@dataclass(frozen=True)
class ReconnectConfig:
    initial_s: float = field(
        default=1.0, metadata=doc("First wait after a camera or stream is lost.", min=0.0)
    )
    max_s: float = field(
        default=60.0, metadata=doc("Longest wait between reconnect attempts.", min=0.0)
    )
    factor: float = field(
        default=2.0, metadata=doc("Each failed attempt multiplies the wait by this.", min=1.0)
    )
    max_attempts: int = field(
        default=0,
        metadata=doc(
            "Give up after this many failed attempts in a row (0 = retry forever).", min=0
        ),
    )

    def __post_init__(self) -> None:
        if self.max_s < self.initial_s:
            raise ValueError(f"max_s ({self.max_s}) must be ≥ initial_s ({self.initial_s})")


@dataclass(frozen=True)
class FolderSourceConfig:
    annotations: Path | None = field(
        default=None,
        metadata=doc(
            "COCO JSON with ground truth for the images (replays and experiments); optional."
        ),
    )
    interval_s: float = field(
        default=1.0,
        metadata=doc(
            "Nominal time between images: their timestamps and real-time pacing.", min=0.0
        ),
    )
    extensions: tuple[str, ...] = field(
        default=(".jpg", ".jpeg", ".png", ".bmp"),
        metadata=doc("Image file name endings to read (case-insensitive)."),
    )
    recursive: bool = field(default=False, metadata=doc("Also read images in sub-folders."))


@dataclass(frozen=True)
class MkvSourceConfig:
    color_track: str = field(
        default="COLOR",
        metadata=doc("Title of the colour track (the Azure Kinect recorder writes COLOR)."),
    )
    depth: bool = field(
        default=False, metadata=doc("Also read the DEPTH track and attach it to each frame.")
    )


@dataclass(frozen=True)
class KinectSourceConfig:
    device: int = field(default=0, metadata=doc("Index of the Azure Kinect device.", min=0))
    color_resolution: ColorResolution = field(
        default="720p", metadata=doc("Colour camera resolution.")
    )
    fps: int = field(default=15, metadata=doc("Camera frame rate: 5, 15 or 30.", min=5, max=30))
    depth_mode: DepthMode = field(
        default="off", metadata=doc("Depth camera mode; 'off' = colour only.")
    )

    def __post_init__(self) -> None:
        if self.fps not in (5, 15, 30):
            raise ValueError(f"fps must be 5, 15 or 30, got {self.fps}")


@dataclass(frozen=True)
class SourceConfig:
    kind: str = field(default="folder", metadata=doc("Frame source: folder, mkv, video or kinect."))
    uri: str = field(
        default="",
        metadata=doc("Image folder, .mkv recording, video file or rtsp:// URL, or camera index."),
    )
    realtime: bool = field(
        default=False,
        metadata=doc(
            "Honour recording timestamps (sleep between frames); false = as fast as possible."
        ),
    )
    loop: bool = field(
        default=False, metadata=doc("Start a recording or folder again when it ends.")
    )
    reconnect: ReconnectConfig = field(
        default_factory=ReconnectConfig, metadata=doc("Back-off when a source is lost.")
    )
    folder: FolderSourceConfig = field(
        default_factory=FolderSourceConfig, metadata=doc("Options of the folder source.")
    )
    mkv: MkvSourceConfig = field(
        default_factory=MkvSourceConfig, metadata=doc("Options of the Azure Kinect MKV source.")
    )
    kinect: KinectSourceConfig = field(
        default_factory=KinectSourceConfig, metadata=doc("Options of the live Azure Kinect.")
    )
