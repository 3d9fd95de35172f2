"""Backgrounds behind the render: photos from a folder or procedural clutter (no bpy).

The renderer leaves the background transparent; `composite` lays the render over a background
here, in numpy, which is cheaper than Blender's compositor and the same on every Blender
version. Like the paper's COCO backgrounds, they are context-free distraction: the detector
must learn the part, not the scene.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from dal.errors import DatasetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def list_images(folder: str | os.PathLike[str], what: str) -> list[Path]:
    """Sorted image files of a folder (sorted: the same seed must pick the same file)."""
    root = Path(folder)
    if not root.is_dir():
        raise DatasetError(
            f"{what} folder {root} does not exist",
            hint="give an existing folder or leave the option empty",
        )
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetError(
            f"{what} folder {root} holds no images",
            hint=f"add {', '.join(IMAGE_SUFFIXES)} files or leave the option empty",
        )
    return files


def photo_background(
    path: Path, width: int, height: int, crop: tuple[float, float, float], flip: bool
) -> np.ndarray:
    """A random crop (scale >= 1 of the covering size, position in 0..1) of a photo, RGB uint8."""
    try:
        with Image.open(path) as im:
            photo = im.convert("RGB")
    except OSError as err:
        raise DatasetError(
            f"background image {path} cannot be read: {err}", hint="remove or replace the file"
        ) from None
    scale_extra, fx, fy = crop
    cover = max(width / photo.width, height / photo.height) * scale_extra
    w, h = max(width, round(photo.width * cover)), max(height, round(photo.height * cover))
    photo = photo.resize((w, h), Image.Resampling.BILINEAR)
    x0, y0 = round((w - width) * fx), round((h - height) * fy)
    photo = photo.crop((x0, y0, x0 + width, y0 + height))
    if flip:
        photo = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(photo)


def _noise(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Smooth value noise in 0..1: random grids at a few octaves, upsampled and summed."""
    total = np.zeros((height, width))
    weight = 0.0
    for octave, amp in ((4, 1.0), (12, 0.5), (40, 0.25)):
        grid = rng.random((octave, max(2, round(octave * width / height))))
        layer = Image.fromarray((grid * 255).astype(np.uint8)).resize(
            (width, height), Image.Resampling.BICUBIC
        )
        total += amp * np.asarray(layer, float) / 255.0
        weight += amp
    return total / weight


def procedural_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Clutter without objects: a tinted gradient, noise, and random soft shapes and lines."""
    base = rng.uniform(0.15, 0.85, 3)
    tint = rng.uniform(0.1, 0.9, 3)
    ys = np.linspace(0.0, 1.0, height)[:, None, None]
    img = base * (1 - ys) + tint * ys
    img = img * (0.6 + 0.8 * _noise(rng, width, height)[..., None])
    pil = Image.fromarray(np.clip(img * 255, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    scale = max(width, height)
    for _ in range(int(rng.integers(3, 12))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = rng.uniform(-0.1, 1.1) * width, rng.uniform(-0.1, 1.1) * height
        w, h = rng.uniform(0.03, 0.4, 2) * scale
        shape = int(rng.integers(3))
        if shape == 0:
            draw.rectangle([x, y, x + w, y + h], fill=colour)
        elif shape == 1:
            draw.ellipse([x, y, x + w, y + h], fill=colour)
        else:
            draw.line([x, y, x + w, y + h - h / 2], fill=colour, width=int(rng.integers(1, 8)))
    pil = pil.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.0, 2.5))))
    return np.asarray(pil)


def composite(rgba: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Straight-alpha RGBA render [h, w, 4] uint8 over an RGB background -> RGB uint8."""
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    out = rgba[..., :3].astype(np.float32) * alpha + background.astype(np.float32) * (1 - alpha)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
