"""Small recordings for tests: Azure-Kinect-like MKV files and plain video files.

The MKV mimics what k4arecorder writes closely enough for our reader: a video track titled
COLOR (MJPEG) and one titled DEPTH (16-bit grey). The real recorder stores depth as raw "b16g";
FFmpeg's Matroska muxer will not write raw 16-bit grey, so tests use lossless FFV1 gray16le,
which the reader decodes through the same path.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np


def make_frames(n: int, width: int = 320, height: int = 180, seed: int = 0) -> list[np.ndarray]:
    """n RGB frames that differ clearly from each other but are smooth (JPEG-friendly)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for i in range(n):
        base = rng.integers(40, 200, size=3).astype(np.float32)
        img = np.empty((height, width, 3), np.float32)
        img[..., 0] = base[0] + 40 * xx / width
        img[..., 1] = base[1] + 40 * yy / height
        img[..., 2] = base[2]
        side = max(8, height // 4)
        x0 = int((i * 37) % max(1, width - side))
        y0 = int((i * 23) % max(1, height - side))
        img[y0 : y0 + side, x0 : x0 + side] = (255, 255, 255) if i % 2 else (0, 0, 0)
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return frames


def make_depth(n: int, width: int = 160, height: int = 90) -> list[np.ndarray]:
    """n uint16 depth maps (millimetres); frame i is filled around 1000 + i."""
    ramp = np.arange(width, dtype=np.uint16)[None, :].repeat(height, axis=0)
    return [(1000 + i + ramp).astype(np.uint16) for i in range(n)]


def _add_video(
    container: av.container.OutputContainer,
    codec: str,
    fps: int,
    width: int,
    height: int,
    pix_fmt: str,
    title: str,
) -> av.video.stream.VideoStream:
    stream = container.add_stream(codec, rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
    stream.metadata["title"] = title
    return stream


def write_kinect_mkv(
    path: str | Path,
    frames: Sequence[np.ndarray],
    *,
    fps: int = 30,
    depth: Sequence[np.ndarray] | None = None,
    quality: int = 2,
) -> Path:
    """Write RGB frames (and optional uint16 depth maps) as COLOR/DEPTH tracks of an MKV."""
    path = Path(path)
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w", format="matroska") as container:
        color = _add_video(container, "mjpeg", fps, width, height, "yuvj420p", "COLOR")
        color.codec_context.qmin = color.codec_context.qmax = quality
        depth_stream = None
        if depth is not None:
            dh, dw = depth[0].shape
            depth_stream = _add_video(container, "ffv1", fps, dw, dh, "gray16le", "DEPTH")
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            container.mux(color.encode(frame))
            if depth_stream is not None and depth is not None:
                dframe = av.VideoFrame.from_ndarray(depth[i], format="gray16le")
                dframe.pts, dframe.time_base = i, Fraction(1, fps)
                container.mux(depth_stream.encode(dframe))
        container.mux(color.encode())
        if depth_stream is not None:
            container.mux(depth_stream.encode())
    return path


def write_video(path: str | Path, frames: Sequence[np.ndarray], fps: int = 30) -> Path:
    """An MJPEG .avi that OpenCV's VideoCapture reads back."""
    path = Path(path)
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    try:
        for rgb in frames:
            writer.write(np.ascontiguousarray(rgb[:, :, ::-1]))
    finally:
        writer.release()
    return path


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())
