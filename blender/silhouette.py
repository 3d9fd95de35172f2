"""An instance's full silhouette: its mesh projected with no occluder and no image border.

Drawn before rendering (PIL polygons, no bpy), it answers two questions: is the target mostly
out of frame (reject the scene without rendering it), and what fraction of the target do the
rendered visible pixels cover. The renderer's index pass labels a pixel by where its first
sample lands, so its pixel count estimates the true projected area; the silhouette must
estimate that area too. PIL fills every pixel the outline touches, which overstates a small
shape by about half a pixel along its whole outline, so it is drawn 4x supersampled and each
boundary subpixel counts half (measured on 2-8 px circles: -1 % bias, 1 % spread; without
both, +25 %).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from dal.blender.camera import Intrinsics, project

MAX_SUPERSAMPLE = 4
MAX_CANVAS_PIXELS = 4_000_000


@dataclass(frozen=True)
class Silhouette:
    """Projected area (pixels) of the whole silhouette and of its part inside the image.

    `clipped`: the silhouette reaches beyond one image size past the border, or a vertex lies
    behind the camera, so the counts are not trustworthy and the scene should be drawn again.
    """

    total: float
    in_frame: float
    clipped: bool

    @property
    def in_frame_fraction(self) -> float:
        return self.in_frame / self.total if self.total else 0.0


def silhouette(
    vertices_world: np.ndarray, triangles: np.ndarray, pose: np.ndarray, k: Intrinsics, near: float
) -> Silhouette:
    """Rasterise the projected triangles: pixel (i, j) is the square around (i, j)."""
    uv, depth = project(vertices_world, pose, k)
    if len(depth) == 0 or float(depth.min()) <= near:
        return Silhouette(0.0, 0.0, True)
    lo = np.floor(uv.min(axis=0) + 0.5).astype(int)  # first and last pixel touched
    hi = np.floor(uv.max(axis=0) + 0.5).astype(int)
    if (lo < -np.array([k.width, k.height])).any() or (
        hi >= 2 * np.array([k.width, k.height])
    ).any():
        return Silhouette(0.0, 0.0, True)
    span = hi - lo + 1
    scale = max(1, min(MAX_SUPERSAMPLE, int(math.sqrt(MAX_CANVAS_PIXELS / span.prod()))))
    canvas = Image.new("1", (int(span[0] * scale), int(span[1] * scale)), 0)
    draw = ImageDraw.Draw(canvas)
    # PIL floors coordinates: canvas pixel m covers [m, m + 1), i.e. image x from
    # lo - 0.5 + m / scale to lo - 0.5 + (m + 1) / scale (image pixel i spans i +- 0.5).
    pts = (uv - lo + 0.5) * scale
    for tri in pts[triangles]:
        draw.polygon([(float(x), float(y)) for x, y in tri], fill=1)
    weight = _coverage(np.asarray(canvas, dtype=bool))
    x0, y0 = max(0, -lo[0]) * scale, max(0, -lo[1]) * scale
    x1 = (min(k.width - 1, hi[0]) - lo[0] + 1) * scale
    y1 = (min(k.height - 1, hi[1]) - lo[1] + 1) * scale
    inside = float(weight[y0:y1, x0:x1].sum()) if x1 > x0 and y1 > y0 else 0.0
    area = float(scale * scale)
    return Silhouette(float(weight.sum()) / area, inside / area, False)


def _coverage(mask: np.ndarray) -> np.ndarray:
    """1 for interior subpixels, 0.5 for those on the boundary (on average half covered)."""
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return np.where(inner, 1.0, np.where(mask, 0.5, 0.0))
