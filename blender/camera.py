"""Pinhole camera maths shared by scene sampling, silhouettes and the Blender camera (no bpy).

Conventions: world z is up. A pose is a 4x4 camera-to-world matrix in Blender's camera frame
(x right, y up, looking down -z). Intrinsics are OpenCV's (x right, y down, pixel centres at
integer coordinates), so a real camera's calibration can be used as it is; Blender puts pixel
centres at +0.5, which `blender_lens_params` accounts for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SENSOR_WIDTH_MM = 36.0  # arbitrary: only the ratio lens / sensor matters


@dataclass(frozen=True)
class Intrinsics:
    """fx, fy, cx, cy in pixels (OpenCV convention) for an image of width x height."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @classmethod
    def from_fov(cls, fov_deg: float, width: int, height: int) -> Intrinsics:
        """Square pixels, principal point at the image centre, horizontal field of view."""
        f = (width / 2.0) / math.tan(math.radians(fov_deg) / 2.0)
        return cls(f, f, (width - 1) / 2.0, (height - 1) / 2.0, width, height)

    def matrix(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class BlenderLens:
    """What a Blender camera and render settings need to reproduce some Intrinsics."""

    lens_mm: float
    sensor_width_mm: float
    shift_x: float
    shift_y: float
    pixel_aspect_x: float
    pixel_aspect_y: float


def blender_lens_params(k: Intrinsics) -> BlenderLens:
    """Lens, sensor (fit horizontal), shift and pixel aspect that project like `k`.

    Blender measures shift in units of the sensor-fit dimension (the width here); a positive
    shift moves the view right/up, i.e. the principal point left/down. Non-square pixels
    (fx != fy) become a pixel aspect ratio: with the sensor fitted to the width, Blender keeps
    fx = lens / sensor * width and sets fy = fx * aspect_x / aspect_y (one of them is 1).
    """
    cx_b, cy_b = k.cx + 0.5, k.cy + 0.5
    aspect_x, aspect_y = (1.0, k.fx / k.fy) if k.fy <= k.fx else (k.fy / k.fx, 1.0)
    return BlenderLens(
        lens_mm=k.fx * SENSOR_WIDTH_MM / k.width,
        sensor_width_mm=SENSOR_WIDTH_MM,
        shift_x=(k.width / 2.0 - cx_b) / k.width,
        shift_y=(cy_b - k.height / 2.0) / k.width * (aspect_y / aspect_x),
        pixel_aspect_x=aspect_x,
        pixel_aspect_y=aspect_y,
    )


def spherical(radius: float, inclination: float, azimuth: float) -> np.ndarray:
    """Point on a sphere; inclination from +z (0 = straight above), radians."""
    s = math.sin(inclination)
    return radius * np.array([s * math.cos(azimuth), s * math.sin(azimuth), math.cos(inclination)])


def look_at(eye: np.ndarray, target: np.ndarray, roll: float = 0.0) -> np.ndarray:
    """Camera-to-world matrix of a camera at `eye` looking at `target`, image up towards +z.

    Straight above or below the target (no defined up) the image up is +y instead.
    """
    forward = np.asarray(target, float) - np.asarray(eye, float)
    forward /= np.linalg.norm(forward)
    up = np.array([0.0, 0.0, 1.0])
    if abs(float(forward @ up)) > 0.999:
        up = np.array([0.0, 1.0, 0.0])
    x = np.cross(forward, up)
    x /= np.linalg.norm(x)
    y = np.cross(x, forward)
    if roll:
        c, s = math.cos(roll), math.sin(roll)
        x, y = c * x + s * y, -s * x + c * y
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = x, y, -forward, eye
    return pose


def to_camera(points_world: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """World points [n, 3] -> OpenCV camera coordinates [n, 3] (z forward)."""
    rot, eye = pose[:3, :3], pose[:3, 3]
    cam = (np.asarray(points_world, float) - eye) @ rot  # Blender camera frame
    return cam * np.array([1.0, -1.0, -1.0])


def project(
    points_world: np.ndarray, pose: np.ndarray, k: Intrinsics
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates [n, 2] (OpenCV convention) and depths [n] of world points."""
    cam = to_camera(points_world, pose)
    z = cam[:, 2]
    safe = np.where(np.abs(z) < 1e-12, 1e-12, z)
    u = k.fx * cam[:, 0] / safe + k.cx
    v = k.fy * cam[:, 1] / safe + k.cy
    return np.stack([u, v], axis=1), z
