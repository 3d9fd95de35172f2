"""Fitting a frame of any size to the detector contract's fixed input size, and back.

The ONNX input has one fixed size (dal/contract.py: dynamic sizes break Faster R-CNN ONNX), so
the agent fits every frame to it (letterbox keeps the aspect and pads; stretch does not) and maps
the boxes back to frame pixels. The exporter's parity check fits its images the same way, so
both ends share this one module.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

RESIZE_MODES = ("letterbox", "stretch")


@dataclass(frozen=True)
class Fit:
    """How a frame maps into the model input: input = frame · scale + pad (per axis)."""

    frame_size: tuple[int, int]  # (width, height)
    input_size: tuple[int, int]  # (width, height)
    resized: tuple[int, int]  # (width, height) of the frame inside the input
    scale_x: float
    scale_y: float
    pad_x: int
    pad_y: int


def plan_fit(
    frame_w: int, frame_h: int, input_w: int, input_h: int, mode: str = "letterbox"
) -> Fit:
    """Where a frame_w x frame_h frame goes inside the input_w x input_h model input."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode {mode!r} is not one of {RESIZE_MODES}")
    if min(frame_w, frame_h, input_w, input_h) <= 0:
        raise ValueError(f"empty size: frame {frame_w}x{frame_h}, input {input_w}x{input_h}")
    if mode == "stretch":
        rw, rh = input_w, input_h
    else:
        scale = min(input_w / frame_w, input_h / frame_h)
        rw = min(input_w, max(1, round(frame_w * scale)))
        rh = min(input_h, max(1, round(frame_h * scale)))
    return Fit(
        frame_size=(frame_w, frame_h),
        input_size=(input_w, input_h),
        resized=(rw, rh),
        scale_x=rw / frame_w,
        scale_y=rh / frame_h,
        pad_x=(input_w - rw) // 2,
        pad_y=(input_h - rh) // 2,
    )


def fit_image(image: np.ndarray, fit: Fit, pad_value: int = 114) -> np.ndarray:
    """The frame resized (and padded) to the model input, uint8 HWC RGB, contiguous."""
    rw, rh = fit.resized
    if (image.shape[1], image.shape[0]) != (rw, rh):
        shrink = rw < image.shape[1] or rh < image.shape[0]
        image = cv2.resize(
            image, (rw, rh), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        )
    if (rw, rh) == fit.input_size:
        return np.ascontiguousarray(image, dtype=np.uint8)
    iw, ih = fit.input_size
    canvas = np.full((ih, iw, 3), pad_value, dtype=np.uint8)
    canvas[fit.pad_y : fit.pad_y + rh, fit.pad_x : fit.pad_x + rw] = image
    return canvas


def boxes_to_frame(boxes: np.ndarray, fit: Fit) -> np.ndarray:
    """x1, y1, x2, y2 in input pixels -> frame pixels, clipped to the frame."""
    out = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    out[:, 0::2] = (out[:, 0::2] - fit.pad_x) / fit.scale_x
    out[:, 1::2] = (out[:, 1::2] - fit.pad_y) / fit.scale_y
    fw, fh = fit.frame_size
    np.clip(out[:, 0::2], 0, fw, out=out[:, 0::2])
    np.clip(out[:, 1::2], 0, fh, out=out[:, 1::2])
    return out


def boxes_to_input(boxes: np.ndarray, fit: Fit) -> np.ndarray:
    """Frame pixels -> input pixels (the inverse of `boxes_to_frame` inside the frame)."""
    out = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    out[:, 0::2] = out[:, 0::2] * fit.scale_x + fit.pad_x
    out[:, 1::2] = out[:, 1::2] * fit.scale_y + fit.pad_y
    return out
