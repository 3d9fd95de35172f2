"""Make a procedural COCO dataset of simple industrial parts: no outside data needed.

Each class is a flat part with its own shape and colour (washer, L-bracket, hex nut, plate with
holes, gusset, T-bracket, gear, slotted bar; past eight classes the shapes repeat in other
colours). Parts get a random size, rotation and position on a cluttered background of greys
(lines and blobs that are never class shapes or colours); later parts occlude earlier ones.
Each annotation's box is the extent of the part's *visible* pixels, and parts with less than
`--min-visible` of their area showing are left unlabelled, as a person would.

Two looks of the same classes:
  synthetic   clean renders: flat greys, mild gradient, little noise (the "synthetic" domain)
  workbench   a camera on a workbench: mat/rubber/concrete palettes, vignetting, warm colour
              cast, blur and sensor noise (the stand-in "real" domain for demos and experiments)

The output folder gets images/NNNNNN.jpg and annotations.json (written last and atomically: a
folder without annotations.json is an unfinished run). Same arguments, same bytes.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from dal.errors import ConfigError
from dal.fileio import atomic_write_json, storage_error

logger = logging.getLogger(__name__)

STYLES = ("synthetic", "workbench")
JSON_NAME = "annotations.json"
IMAGE_DIR = "images"
_SCALE_RANGE = (0.09, 0.2)  # part radius as a fraction of the image's shorter side
_JPEG_QUALITY = {"synthetic": 92, "workbench": 85}

# A primitive is ("poly", [(x, y), ...], fill) or ("circle", (x, y), radius, fill) in unit
# coordinates (the part spans about -1..1); fill 255 adds material, 0 cuts a hole.
Primitive = tuple[Any, ...]


def _regular(n: int, radius: float = 1.0, phase: float = 0.0) -> list[tuple[float, float]]:
    return [
        (
            radius * math.cos(phase + 2 * math.pi * i / n),
            radius * math.sin(phase + 2 * math.pi * i / n),
        )
        for i in range(n)
    ]


def _gear(teeth: int = 10) -> list[tuple[float, float]]:
    points = []
    for i in range(teeth):
        base = 2 * math.pi * i / teeth
        step = 2 * math.pi / teeth
        for frac, radius in ((0.0, 0.78), (0.2, 1.0), (0.5, 1.0), (0.7, 0.78)):
            angle = base + frac * step
            points.append((radius * math.cos(angle), radius * math.sin(angle)))
    return points


def _hole(x: float, y: float, r: float) -> Primitive:
    return ("circle", (x, y), r, 0)


SHAPES: dict[str, list[Primitive]] = {
    "washer": [("circle", (0.0, 0.0), 1.0, 255), _hole(0.0, 0.0, 0.45)],
    "l_bracket": [
        ("poly", [(-1, -1), (-0.4, -1), (-0.4, 0.4), (1, 0.4), (1, 1), (-1, 1)], 255),
        _hole(-0.7, -0.6, 0.14),
        _hole(0.6, 0.7, 0.14),
    ],
    "hex_nut": [("poly", _regular(6), 255), _hole(0.0, 0.0, 0.5)],
    "plate": [
        ("poly", [(-1, -0.6), (1, -0.6), (1, 0.6), (-1, 0.6)], 255),
        _hole(-0.75, -0.35, 0.12),
        _hole(0.75, -0.35, 0.12),
        _hole(-0.75, 0.35, 0.12),
        _hole(0.75, 0.35, 0.12),
    ],
    "gusset": [("poly", [(-1, -1), (1, 1), (-1, 1)], 255), _hole(-0.45, 0.45, 0.18)],
    "t_bracket": [
        (
            "poly",
            [
                (-1, -1),
                (1, -1),
                (1, -0.45),
                (0.28, -0.45),
                (0.28, 1),
                (-0.28, 1),
                (-0.28, -0.45),
                (-1, -0.45),
            ],
            255,
        ),
        _hole(-0.7, -0.72, 0.12),
        _hole(0.7, -0.72, 0.12),
        _hole(0.0, 0.6, 0.12),
    ],
    "gear": [("poly", _gear(), 255), _hole(0.0, 0.0, 0.35)],
    "slotted_bar": [
        ("poly", [(-1, -0.3), (1, -0.3), (1, 0.3), (-1, 0.3)], 255),
        ("poly", [(-0.65, -0.1), (0.65, -0.1), (0.65, 0.1), (-0.65, 0.1)], 0),
    ],
}

# Saturated "anodised" colours: backgrounds and distractors stay near grey, so a class colour
# is never clutter. Ten colours against eight shapes: the first 40 classes are all distinct.
COLOURS: list[tuple[str, tuple[int, int, int]]] = [
    ("blue", (40, 90, 200)),
    ("red", (200, 45, 40)),
    ("gold", (215, 165, 30)),
    ("green", (40, 160, 70)),
    ("purple", (130, 60, 180)),
    ("orange", (230, 110, 20)),
    ("teal", (20, 160, 160)),
    ("magenta", (200, 40, 140)),
    ("lime", (140, 190, 30)),
    ("sky", (60, 160, 235)),
]


@dataclass(frozen=True)
class PartClass:
    """One object class: a shape and a colour; `label` is 1-based (= COCO category id)."""

    label: int
    name: str
    shape: str
    colour: tuple[int, int, int]


def part_classes(n: int) -> list[PartClass]:
    """The first n classes; the first eight are plain shape names, later ones add the colour."""
    shapes = list(SHAPES)
    classes = []
    for i in range(n):
        shape = shapes[i % len(shapes)]
        colour_name, colour = COLOURS[i % len(COLOURS)]
        name = shape if i < len(shapes) else f"{shape}_{colour_name}"
        classes.append(PartClass(label=i + 1, name=name, shape=shape, colour=colour))
    return classes


@dataclass
class _Placed:
    """A part on the canvas: its mask in patch coordinates and where the patch sits."""

    cls: PartClass
    x0: int
    y0: int
    mask: np.ndarray  # bool [h, w]
    shadow: int  # drop-shadow offset in px (the patch has this much room right and below)


@functools.lru_cache(maxsize=8)
def _grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return xs, ys


def _transform(points: Any, angle: float, radius: float, cx: float, cy: float) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    return pts @ rot.T * radius + np.array([cx, cy])


def _extent(shape: str, angle: float, radius: float) -> tuple[float, float, float, float]:
    """Bounding extent (x0, y0, x1, y1) of the part's material around its centre."""
    lows, highs = [], []
    for prim in SHAPES[shape]:
        if prim[-1] == 0:
            continue
        if prim[0] == "poly":
            pts = _transform(prim[1], angle, radius, 0.0, 0.0)
            lows.append(pts.min(axis=0))
            highs.append(pts.max(axis=0))
        else:
            centre = _transform(prim[1], angle, radius, 0.0, 0.0)[0]
            lows.append(centre - prim[2] * radius)
            highs.append(centre + prim[2] * radius)
    lo, hi = np.min(lows, axis=0), np.max(highs, axis=0)
    return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])


def _draw_mask(
    shape: str, angle: float, radius: float, cx: float, cy: float, size: tuple[int, int]
) -> np.ndarray:
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    for prim in SHAPES[shape]:
        if prim[0] == "poly":
            pts = _transform(prim[1], angle, radius, cx, cy)
            draw.polygon([tuple(p) for p in pts], fill=prim[-1])
        else:
            (x, y), r = _transform(prim[1], angle, radius, cx, cy)[0], prim[2] * radius
            draw.ellipse([x - r, y - r, x + r, y + r], fill=prim[-1])
    return np.asarray(mask) > 127


def _place(rng: np.random.Generator, cls: PartClass, width: int, height: int) -> _Placed:
    """Random size, rotation and position with the whole part (and its shadow) in frame."""
    radius = rng.uniform(*_SCALE_RANGE) * min(width, height)
    angle = rng.uniform(0, 2 * math.pi)
    shadow = max(1, round(0.05 * radius))
    while True:
        ex0, ey0, ex1, ey1 = _extent(cls.shape, angle, radius)
        span_x = (-ex0 + 1, width - ex1 - shadow - 2)
        span_y = (-ey0 + 1, height - ey1 - shadow - 2)
        if span_x[0] < span_x[1] and span_y[0] < span_y[1]:
            break
        radius *= 0.8  # too big for a small or narrow image: shrink until it fits
    cx, cy = rng.uniform(*span_x), rng.uniform(*span_y)
    x0, y0 = math.floor(cx + ex0), math.floor(cy + ey0)
    size = (math.ceil(cx + ex1) - x0 + shadow + 1, math.ceil(cy + ey1) - y0 + shadow + 1)
    mask = _draw_mask(cls.shape, angle, radius, cx - x0, cy - y0, size)
    return _Placed(cls=cls, x0=x0, y0=y0, mask=mask, shadow=shadow)


def _paint(
    canvas: np.ndarray, ids: np.ndarray, part: _Placed, index: int, rng: np.random.Generator
) -> None:
    """Drop shadow, then the part with a light gradient and a darker rim, over what is there."""
    m = part.mask
    h, w = m.shape
    region = canvas[part.y0 : part.y0 + h, part.x0 : part.x0 + w]
    d = part.shadow
    shadow = np.zeros_like(m)
    shadow[d:, d:] = m[:-d, :-d]
    region[shadow & ~m] *= 0.62
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    light = rng.uniform(0, 2 * math.pi)
    along = ((xs - w / 2) * math.cos(light) + (ys - h / 2) * math.sin(light)) / max(h, w)
    shade = np.clip(0.95 + 0.7 * along, 0.6, 1.2) * rng.uniform(0.85, 1.1)
    colour = np.asarray(part.cls.colour, dtype=np.float32)[None, None, :] * shade[..., None]
    rim = m & ~np.asarray(
        Image.fromarray(m.astype(np.uint8) * 255).filter(ImageFilter.MinFilter(3))
    ).astype(bool)
    colour[rim] *= 0.6
    region[m] = colour[m]
    ids[part.y0 : part.y0 + h, part.x0 : part.x0 + w][m] = index


def _grey(rng: np.random.Generator, lo: float, hi: float, tint: float = 6.0) -> tuple[int, ...]:
    level = rng.uniform(lo, hi)
    return tuple(int(np.clip(level + rng.normal(0, tint), 0, 255)) for _ in range(3))


def _mat_grid(img: Image.Image, rng: np.random.Generator) -> None:
    draw = ImageDraw.Draw(img)
    width, height = img.size
    side = min(width, height)
    step = int(rng.integers(max(8, side // 10), max(9, side // 6)))
    colour = _grey(rng, 90, 130, tint=3)
    for x in range(int(rng.integers(0, step)), width, step):
        draw.line([(x, 0), (x, height)], fill=colour, width=1)
    for y in range(int(rng.integers(0, step)), height, step):
        draw.line([(0, y), (width, y)], fill=colour, width=1)


def _clutter(img: Image.Image, rng: np.random.Generator) -> None:
    """Grey lines, cables and blobs: texture a detector must learn to ignore."""
    draw = ImageDraw.Draw(img)
    width, height = img.size
    side = min(width, height)
    for _ in range(int(rng.integers(2, 7))):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.05, 0.25) * side
        n = int(rng.integers(7, 13))
        radii = r * rng.uniform(0.6, 1.0, n)
        angles = np.sort(rng.uniform(0, 2 * math.pi, n))
        pts = [
            (cx + a * math.cos(t), cy + a * math.sin(t)) for a, t in zip(radii, angles, strict=True)
        ]
        draw.polygon(pts, fill=_grey(rng, 40, 210))
    for _ in range(int(rng.integers(4, 13))):
        pts = [
            (rng.uniform(-0.1, 1.1) * width, rng.uniform(-0.1, 1.1) * height)
            for _ in range(int(rng.integers(2, 4)))
        ]
        draw.line(pts, fill=_grey(rng, 20, 235), width=int(rng.integers(1, max(2, side // 60))))


# Workbench surfaces: (grey level range, RGB offset, cutting-mat grid?)
_SURFACES = (
    ((60, 110), (0, 12, 4), True),  # green-grey cutting mat
    ((35, 70), (0, 0, 3), False),  # black rubber mat
    ((120, 170), (6, 4, 0), False),  # light concrete / painted steel
)


def _background(rng: np.random.Generator, width: int, height: int, style: str) -> np.ndarray:
    xs, ys = _grid(width, height)
    grid = False
    if style == "workbench":
        levels, offset, grid = _SURFACES[int(rng.integers(len(_SURFACES)))]
        base = np.array(_grey(rng, *levels, tint=4), dtype=np.float32) + np.array(offset)
    else:
        base = np.array(_grey(rng, 100, 190), dtype=np.float32)
    t = rng.uniform(0, 2 * math.pi)
    ramp = (xs * math.cos(t) + ys * math.sin(t)) / max(width, height)
    canvas = base[None, None, :] + (ramp * rng.uniform(15, 45))[..., None]
    img = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    if grid:
        _mat_grid(img, rng)
    _clutter(img, rng)
    return np.asarray(img, dtype=np.float32).copy()


def _camera(canvas: np.ndarray, rng: np.random.Generator, style: str) -> Image.Image:
    """The look of the capture: lighting, colour cast, blur and noise."""
    height, width = canvas.shape[:2]
    if style == "workbench":
        xs, ys = _grid(width, height)
        cx, cy = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height
        dist2 = ((xs - cx) ** 2 + (ys - cy) ** 2) / (width**2 + height**2) * 4
        light = (1.1 - 0.45 * dist2)[..., None]
        gains = np.array([1.07, 1.0, 0.86], dtype=np.float32) * rng.uniform(0.95, 1.05, 3)
        canvas = canvas * light * gains.astype(np.float32)
        img = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.6, 1.3)))
        canvas, sigma = np.asarray(img, dtype=np.float32), 7.0
    else:
        sigma = 2.5
    noise = rng.standard_normal(canvas.shape, dtype=np.float32) * sigma
    return Image.fromarray(np.clip(canvas + noise, 0, 255).astype(np.uint8))


def _open3(mask: np.ndarray) -> np.ndarray:
    """Drop visible slivers under 3 px (a corner seen through another part's hole): a person
    drawing the box would not stretch it to reach them."""
    img = Image.fromarray(mask.astype(np.uint8) * 255)
    opened = img.filter(ImageFilter.MinFilter(3)).filter(ImageFilter.MaxFilter(3))
    return np.asarray(opened) > 127


def make_image(
    rng: np.random.Generator,
    classes: list[PartClass],
    width: int,
    height: int,
    max_objects: int,
    min_visible: float,
    style: str,
) -> tuple[Image.Image, list[dict[str, Any]]]:
    """One image and its annotations (without ids): visible-extent boxes, visible fractions."""
    canvas = _background(rng, width, height, style)
    ids = np.full((height, width), -1, dtype=np.int16)
    parts = []
    for index in range(int(rng.integers(1, max_objects + 1))):
        part = _place(rng, classes[int(rng.integers(len(classes)))], width, height)
        _paint(canvas, ids, part, index, rng)
        parts.append(part)
    annotations = []
    for index, part in enumerate(parts):
        h, w = part.mask.shape
        seen = ids[part.y0 : part.y0 + h, part.x0 : part.x0 + w] == index
        visible = int(seen.sum())
        fraction = visible / int(part.mask.sum())
        if visible == 0 or fraction < min_visible:
            continue
        solid = _open3(seen)
        if not solid.any():
            continue
        rows, cols = np.flatnonzero(solid.any(axis=1)), np.flatnonzero(solid.any(axis=0))
        x1, y1 = part.x0 + int(cols[0]), part.y0 + int(rows[0])
        x2, y2 = part.x0 + int(cols[-1]) + 1, part.y0 + int(rows[-1]) + 1
        annotations.append(
            {
                "category_id": part.cls.label,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": visible,
                "iscrowd": 0,
                "visible_fraction": round(fraction, 3),
            }
        )
    return _camera(canvas, rng, style), annotations


def _save_jpeg(img: Image.Image, path: Path, quality: int) -> None:
    """Plain write: images are not the commit point, annotations.json (written last) is."""
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=quality)
    try:
        path.write_bytes(buffer.getvalue())
    except OSError as err:
        raise storage_error(err, path) from err


def _check_args(
    n_images: int,
    classes: int,
    width: int,
    height: int,
    max_objects: int,
    min_visible: float,
    style: str,
) -> None:
    problems = {
        "n_images must be >= 0": n_images < 0,
        "classes must be >= 1": classes < 1,
        "width and height must be >= 32 px": min(width, height) < 32,
        "max_objects must be >= 1": max_objects < 1,
        "min_visible must be in [0, 1]": not 0.0 <= min_visible <= 1.0,
        f"style must be one of {', '.join(STYLES)}": style not in STYLES,
    }
    for message, bad in problems.items():
        if bad:
            raise ConfigError(f"procedural dataset: {message}")


def make_dataset(
    out_dir: str | os.PathLike[str],
    n_images: int,
    *,
    classes: int = 2,
    width: int = 640,
    height: int = 360,
    seed: int = 0,
    max_objects: int = 4,
    min_visible: float = 0.3,
    style: str = "synthetic",
) -> Path:
    """Write images and a COCO file to out_dir; returns the JSON path.

    Image i depends only on (seed, i): a longer run starts with the same images.
    """
    _check_args(n_images, classes, width, height, max_objects, min_visible, style)
    out = Path(out_dir)
    try:
        (out / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise storage_error(err, out / IMAGE_DIR) from err
    part_list = part_classes(classes)
    images, annotations = [], []
    for i in range(n_images):
        rng = np.random.default_rng([seed, i, STYLES.index(style)])
        img, anns = make_image(rng, part_list, width, height, max_objects, min_visible, style)
        file_name = f"{IMAGE_DIR}/{i:06d}.jpg"
        _save_jpeg(img, out / file_name, _JPEG_QUALITY[style])
        images.append({"id": i + 1, "file_name": file_name, "width": width, "height": height})
        for ann in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, **ann})
    doc = {
        "info": {"description": f"dal procedural parts, style={style}, seed={seed}"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c.label, "name": c.name, "supercategory": "part"} for c in part_list],
    }
    json_path = atomic_write_json(out / JSON_NAME, doc, indent=None)
    logger.info("wrote %s: %d images, %d boxes", json_path, len(images), len(annotations))
    return json_path


def make_tiny(
    out_dir: str | os.PathLike[str],
    n_images: int = 8,
    *,
    classes: int = 2,
    seed: int = 0,
    style: str = "synthetic",
) -> Path:
    """A tiny set (160x96, up to 3 parts) for fast tests."""
    return make_dataset(
        out_dir,
        n_images,
        classes=classes,
        width=160,
        height=96,
        seed=seed,
        max_objects=3,
        style=style,
    )


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected WIDTHxHEIGHT like 640x360, got {text!r}"
        ) from None
    return w, h


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", type=Path, help="output folder (images/ and annotations.json)")
    parser.add_argument("--images", type=int, default=100, help="number of images (default 100)")
    parser.add_argument("--classes", type=int, default=2, help="number of part classes")
    parser.add_argument("--size", type=_size, default=(640, 360), help="WIDTHxHEIGHT (640x360)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    parser.add_argument("--style", choices=STYLES, default="synthetic", help="look of the images")
    parser.add_argument("--max-objects", type=int, default=4, help="most parts per image")
    parser.add_argument(
        "--min-visible",
        type=float,
        default=0.3,
        help="label a part only if this fraction of it shows (default 0.3)",
    )


def run(args: argparse.Namespace) -> int:
    width, height = args.size
    json_path = make_dataset(
        args.out_dir,
        args.images,
        classes=args.classes,
        width=width,
        height=height,
        seed=args.seed,
        max_objects=args.max_objects,
        min_visible=args.min_visible,
        style=args.style,
    )
    doc = json.loads(json_path.read_text(encoding="utf-8"))
    print(json_path)
    print(
        f"{len(doc['images'])} images, {len(doc['annotations'])} boxes, "
        f"{len(doc['categories'])} classes, style {args.style}"
    )
    return 0
