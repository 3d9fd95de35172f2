"""Convert YCB-Video frames (`<frame>-color.png` + `<frame>-box.txt`) into a COCO detection set.

YCB-Video keeps one folder per scene; every frame has a colour image and a box file with one
object per line, `class x1 y1 x2 y2` in pixels. Consecutive frames of a scene are near-duplicates,
so a validation set must come from other scenes than the training pool: `--scenes` picks the
scenes of one split, and each call writes one split.

- `--classes` keeps only those objects (the others stay in the picture, unlabelled: for this
  detector they are background). A frame left without a box stays in the set as a negative
  image unless `--skip-empty` is given.
- Category ids are 1..C over the class names sorted (YCB names start with their object number,
  so that is YCB order): two imports with the same class list agree on ids.
- Image ids are scene·1,000,000 + frame, so the splits of one dataset never share an id.
- Boxes that stick out of the image (objects cut by the border) are clipped; a box with less than
  a pixel left is dropped and counted.

    dal import-ycb ycbv/scenes --scenes 0001 --classes 006_mustard_bottle --out data/pool
    dal import-ycb ycbv/scenes --scenes 0002 --classes 006_mustard_bottle --out data/val

Torch-free: it reads image headers with PIL and writes JSON.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from dal.errors import ConfigError, DatasetError
from dal.fileio import atomic_write_json, storage_error

log = logging.getLogger(__name__)

COLOR_SUFFIX = "-color.png"
BOX_SUFFIX = "-box.txt"
JSON_NAME = "annotations.json"
IMAGE_DIR = "images"
SCENE_ID_FACTOR = 1_000_000
MIN_BOX_PX = 1.0


@dataclass(frozen=True)
class YcbBox:
    """One line of a box file: class name and x1, y1, x2, y2 in pixels."""

    name: str
    x1: float
    y1: float
    x2: float
    y2: float


@dataclass(frozen=True)
class YcbFrame:
    scene: str
    frame: str
    color: Path
    boxes: tuple[YcbBox, ...]

    @property
    def image_id(self) -> int:
        return int(self.scene) * SCENE_ID_FACTOR + int(self.frame)


def parse_box_line(line: str, path: Path, lineno: int) -> YcbBox:
    """`class x1 y1 x2 y2` -> YcbBox; anything else is a DatasetError naming file and line."""
    fields = line.split()
    where = f"{path}:{lineno}"
    if len(fields) != 5:
        raise DatasetError(
            f"{where}: expected 'class x1 y1 x2 y2', got {len(fields)} fields: {line.strip()!r}",
            hint="fix or remove the line; YCB-Video box files have one object per line",
        )
    try:
        x1, y1, x2, y2 = (float(v) for v in fields[1:])
    except ValueError:
        raise DatasetError(
            f"{where}: coordinates must be numbers, got {' '.join(fields[1:])!r}",
            hint="fix or remove the line",
        ) from None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 <= x1 or y2 <= y1:
        raise DatasetError(
            f"{where}: box {x1:g} {y1:g} {x2:g} {y2:g} is empty or not finite (x2 must exceed "
            "x1 and y2 exceed y1)",
            hint="fix or remove the line",
        )
    return YcbBox(fields[0], x1, y1, x2, y2)


def read_box_file(path: Path) -> tuple[YcbBox, ...]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(
            f"{path}: box file not found",
            hint="every <frame>-color.png needs its <frame>-box.txt",
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: cannot read box file ({err})") from err
    lines = text.splitlines()
    return tuple(
        parse_box_line(line, path, n) for n, line in enumerate(lines, start=1) if line.strip()
    )


def list_scenes(root: Path) -> list[str]:
    """Scene folder names under root (all-digit names, as YCB-Video has them), sorted."""
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder", hint="pass the folder holding the scenes")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.isdigit())


def scan_scene(root: Path, scene: str) -> list[YcbFrame]:
    """The frames of one scene in frame order, each with its parsed boxes."""
    folder = root / scene
    if not folder.is_dir():
        raise DatasetError(
            f"{folder}: scene not found",
            hint=f"scenes under {root}: {', '.join(list_scenes(root)) or 'none'}",
        )
    frames = []
    for color in sorted(folder.glob(f"*{COLOR_SUFFIX}")):
        frame = color.name[: -len(COLOR_SUFFIX)]
        if not frame.isdigit():
            raise DatasetError(f"{color}: frame name {frame!r} is not a number")
        boxes = read_box_file(folder / f"{frame}{BOX_SUFFIX}")
        frames.append(YcbFrame(scene, frame, color, boxes))
    if not frames:
        raise DatasetError(f"{folder}: no *{COLOR_SUFFIX} frames in this scene")
    return frames


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, UnidentifiedImageError) as err:
        raise DatasetError(f"{path}: cannot read image ({err})") from None


def _clip(box: YcbBox, width: int, height: int) -> list[float] | None:
    """COCO [x, y, w, h] of the box inside the image, or None when under a pixel is left."""
    x1, y1 = max(0.0, box.x1), max(0.0, box.y1)
    x2, y2 = min(float(width), box.x2), min(float(height), box.y2)
    if x2 - x1 < MIN_BOX_PX or y2 - y1 < MIN_BOX_PX:
        return None
    return [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)]


def _choose_classes(frames: list[YcbFrame], wanted: list[str] | None) -> list[str]:
    seen = sorted({b.name for f in frames for b in f.boxes})
    if not wanted:
        if not seen:
            raise DatasetError("no objects in any box file of the chosen scenes")
        return seen
    missing = [c for c in wanted if c not in seen]
    if missing:
        raise ConfigError(
            f"--classes {', '.join(missing)}: not in any box file of the chosen scenes",
            hint=f"classes found: {', '.join(seen) or 'none'}",
        )
    return sorted(set(wanted))


def _place_image(frame: YcbFrame, out: Path, mode: str) -> str:
    """Copy or link the frame into out/images; returns its file name relative to out."""
    name = f"{IMAGE_DIR}/{frame.scene}-{frame.frame}{COLOR_SUFFIX}"
    target = out / name
    if target.exists() or target.is_symlink():
        target.unlink()
    try:
        if mode == "symlink":
            os.symlink(frame.color.resolve(), target)
        else:
            shutil.copyfile(frame.color, target)
    except OSError as err:
        raise storage_error(err, target) from err
    return name


def build_coco(
    frames: list[YcbFrame],
    classes: list[str],
    file_names: dict[int, str],
    sizes: dict[int, tuple[int, int]],
    skip_empty: bool,
) -> tuple[dict[str, Any], Counter]:
    """The COCO dict for these frames; also counts per class and the boxes dropped."""
    cat_ids = {name: i + 1 for i, name in enumerate(classes)}
    images, annotations = [], []
    counts: Counter = Counter()
    for frame in frames:
        width, height = sizes[frame.image_id]
        anns = []
        for box in frame.boxes:
            if box.name not in cat_ids:
                continue
            bbox = _clip(box, width, height)
            if bbox is None:
                counts["dropped (outside the image)"] += 1
                continue
            counts[box.name] += 1
            anns.append({"category_id": cat_ids[box.name], "bbox": bbox, "iscrowd": 0})
        if not anns:
            counts["empty images"] += 1
            if skip_empty:
                continue
        images.append(
            {
                "id": frame.image_id,
                "file_name": file_names[frame.image_id],
                "width": width,
                "height": height,
                "scene": frame.scene,
                "frame": frame.frame,
            }
        )
        for ann in anns:
            w, h = ann["bbox"][2], ann["bbox"][3]
            annotations.append(
                {"id": len(annotations) + 1, "image_id": frame.image_id, **ann, "area": w * h}
            )
    categories = [{"id": cat_ids[n], "name": n, "supercategory": "ycb"} for n in classes]
    doc = {
        "info": {"description": "YCB-Video frames (dal import-ycb)"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    return doc, counts


def import_ycb(
    scenes_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    scenes: list[str] | None = None,
    classes: list[str] | None = None,
    skip_empty: bool = False,
    images: str = "copy",
) -> Path:
    """Write out_dir/annotations.json (+ out_dir/images/) for the given scenes; returns the path.

    `images`: 'copy' makes the set self-contained, 'symlink' points at the originals.
    """
    if images not in ("copy", "symlink"):
        raise ConfigError(f"images must be 'copy' or 'symlink', got {images!r}")
    root = Path(scenes_dir)
    chosen = scenes or list_scenes(root)
    if not chosen:
        raise DatasetError(f"{root}: no scene folders (all-digit names) found")
    frames = [f for scene in chosen for f in scan_scene(root, scene)]
    wanted = _choose_classes(frames, classes)
    out = Path(out_dir)
    try:
        (out / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise storage_error(err, out / IMAGE_DIR) from err
    sizes = {f.image_id: _image_size(f.color) for f in frames}
    file_names = {f.image_id: _place_image(f, out, images) for f in frames}
    doc, counts = build_coco(frames, wanted, file_names, sizes, skip_empty)
    path = atomic_write_json(out / JSON_NAME, doc)
    log.info(
        "wrote %s: %d images from scenes %s, %d boxes (%s)",
        path,
        len(doc["images"]),
        ",".join(chosen),
        len(doc["annotations"]),
        ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())),
    )
    return path


def _name_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenes_dir", type=Path, help="folder with one sub-folder per scene")
    parser.add_argument("--out", type=Path, required=True, help="output folder (COCO + images)")
    parser.add_argument(
        "--scenes", type=_name_list, help="comma-separated scene names (default: all)"
    )
    parser.add_argument(
        "--classes", type=_name_list, help="comma-separated class names to keep (default: all)"
    )
    parser.add_argument(
        "--skip-empty", action="store_true", help="leave out frames with no box of the classes"
    )
    parser.add_argument(
        "--symlink", action="store_true", help="link the images instead of copying them"
    )


def run(args: argparse.Namespace) -> int:
    path = import_ycb(
        args.scenes_dir,
        args.out,
        scenes=args.scenes,
        classes=args.classes,
        skip_empty=args.skip_empty,
        images="symlink" if args.symlink else "copy",
    )
    print(path)
    return 0
