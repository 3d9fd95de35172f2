"""COCO detection files: load, validate, write, and turn predictions into COCO results.

Every dataset that enters the system (renders, procedural sets, labels from people, ground truth
for replays) passes through `load_coco`, so a bad file fails here with its name and the field at
fault instead of deep inside training. Loading is pure: nothing is written, so an error leaves
nothing half-done.

Conventions:
- Boxes in memory are float32 [n, 4] x1, y1, x2, y2 in absolute pixels; COCO files keep x, y, w, h.
- Category ids are kept as the file has them; training labels are contiguous 1..C ordered by
  category id, 0 is background (`category_to_label` / `label_to_category`).
- A box may poke out of its image by up to `CLIP_TOLERANCE_PX` (renderers and labelling tools
  round); it is clipped silently. More than that is an error.
- `iscrowd=1` annotations mark regions, not objects: they are kept out of `boxes` (training and
  the agent never see them) but stay in `ImageRecord.crowd` and are written back by `to_json`,
  so pycocotools still ignores detections inside them at evaluation.
- A `file_name` must stay inside the image root: absolute names and names that climb out with
  `..` are refused at load (a label file from outside must not make the trainer read, and
  ship in a dataset, files such as /etc/passwd). `allow_outside_root=True` lets a trusted file
  through; the check is on the name, so a symlink inside the root is still followed.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from dal.errors import DatasetError, ModelError
from dal.fileio import atomic_write_json

CLIP_TOLERANCE_PX = 1.0
_IMAGE_KEYS = ("id", "file_name", "width", "height")
_ANNOTATION_KEYS = ("id", "image_id", "category_id", "bbox")
_CATEGORY_KEYS = ("id", "name")


@dataclass
class ImageRecord:
    """One image and its object boxes (crowd regions apart)."""

    id: int
    file_name: str
    width: int
    height: int
    boxes: np.ndarray  # float32 [n, 4] x1, y1, x2, y2, absolute pixels
    category_ids: np.ndarray  # int64 [n], ids as in the file
    annotation_ids: list[int]
    crowd: list[dict[str, Any]] = field(default_factory=list)  # iscrowd=1 annotations, as read
    extra: dict[str, Any] = field(default_factory=dict)  # other image keys, written back as-is


@dataclass
class CocoDataset:
    """A validated COCO detection set; `image_root / file_name` is where each image lives."""

    json_path: Path
    image_root: Path
    categories: dict[int, str]  # category id -> name, ids as in the file
    images: list[ImageRecord]

    def image_path(self, rec: ImageRecord) -> Path:
        return self.image_root / rec.file_name

    @property
    def class_names(self) -> list[str]:
        """Class names ordered by category id (label 1 first; background not included)."""
        return [self.categories[c] for c in sorted(self.categories)]

    @property
    def category_to_label(self) -> dict[int, int]:
        """Category id -> contiguous training label 1..C (0 is background)."""
        return {cat: i + 1 for i, cat in enumerate(sorted(self.categories))}

    @property
    def label_to_category(self) -> dict[int, int]:
        return {label: cat for cat, label in self.category_to_label.items()}

    @property
    def num_annotations(self) -> int:
        return sum(len(rec.annotation_ids) for rec in self.images)

    def labels(self, rec: ImageRecord) -> np.ndarray:
        """Training labels (int64 [n], 1..C) of an image's boxes."""
        mapping = self.category_to_label
        return np.asarray([mapping[int(c)] for c in rec.category_ids], dtype=np.int64)

    def by_id(self, image_id: int) -> ImageRecord:
        for rec in self.images:
            if rec.id == image_id:
                return rec
        raise DatasetError(f"{self.json_path}: no image with id {image_id}")

    def subset(self, image_ids: Iterable[int]) -> CocoDataset:
        """The images with these ids, in the order given; an unknown id is an error."""
        index = {rec.id: rec for rec in self.images}
        picked = []
        for image_id in image_ids:
            if image_id not in index:
                raise DatasetError(
                    f"{self.json_path}: subset asks for image id {image_id}, "
                    "which is not in the file"
                )
            picked.append(index[image_id])
        return replace(self, images=picked)

    def to_json(self) -> dict[str, Any]:
        """The COCO dict (x, y, w, h boxes); annotation ids and crowd regions are kept.

        `area` is written as the box area and extra annotation keys are not kept: evaluate
        against the original file when its areas (pycocotools' small/medium/large) matter.
        """
        images, annotations = [], []
        for rec in self.images:
            images.append(
                {
                    "id": rec.id,
                    "file_name": rec.file_name,
                    "width": rec.width,
                    "height": rec.height,
                    **rec.extra,
                }
            )
            for ann_id, box, cat in zip(
                rec.annotation_ids, rec.boxes, rec.category_ids, strict=True
            ):
                x1, y1, x2, y2 = (float(v) for v in box)
                w, h = x2 - x1, y2 - y1
                annotations.append(
                    {
                        "id": ann_id,
                        "image_id": rec.id,
                        "category_id": int(cat),
                        "bbox": [_num(x1), _num(y1), _num(w), _num(h)],
                        "area": _num(w * h),
                        "iscrowd": 0,
                    }
                )
            annotations.extend(rec.crowd)
        categories = [{"id": c, "name": n} for c, n in sorted(self.categories.items())]
        return {"images": images, "annotations": annotations, "categories": categories}


def _num(value: float) -> int | float:
    """Short JSON numbers: integers stay integers, the rest keeps 3 decimals (1/1000 px)."""
    rounded = round(value, 3)
    return int(rounded) if rounded == int(rounded) else rounded


class _Checker:
    """Formats every validation error as '<file>: <field>: <problem>'."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, problem: str, hint: str | None = None) -> DatasetError:
        return DatasetError(f"{self.source}: {where}: {problem}", hint=hint)

    def require(self, obj: Any, keys: Sequence[str], where: str) -> None:
        if not isinstance(obj, dict):
            raise self.fail(where, f"expected an object, got {type(obj).__name__}")
        for key in keys:
            if key not in obj:
                raise self.fail(
                    f"{where}.{key}", "missing", hint=f"every entry needs {', '.join(keys)}"
                )

    def integer(self, value: Any, where: str, positive: bool = False) -> int:
        ok = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not ok:
            raise self.fail(where, f"expected an integer, got {value!r}")
        if positive and value <= 0:
            raise self.fail(where, f"must be positive, got {value!r}")
        return int(value)

    def list_of(self, doc: dict[str, Any], key: str) -> list[Any]:
        if key not in doc:
            raise self.fail(
                key,
                "missing",
                hint="a COCO detection file needs images, annotations and categories",
            )
        if not isinstance(doc[key], list):
            raise self.fail(key, f"expected a list, got {type(doc[key]).__name__}")
        return doc[key]


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(
            f"{path}: COCO file not found",
            hint="check the path; `dal dataset` makes a small test set",
        ) from None
    except UnicodeDecodeError as err:
        raise DatasetError(
            f"{path}: not UTF-8 text at byte {err.start}", hint="is this really a COCO JSON file?"
        ) from None
    except OSError as err:
        raise DatasetError(f"{path}: cannot read: {err.strerror}") from err
    return parse_json_text(str(path), text)


def parse_json_text(source: str, text: str) -> Any:
    """json.loads with an error that names the file, line and column (a truncated export)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DatasetError(
            f"{source}: line {err.lineno}, column {err.colno}: invalid JSON: {err.msg}",
            hint="the file may be truncated; export or copy it again",
        ) from None


def _parse_categories(check: _Checker, items: list[Any]) -> dict[int, str]:
    categories: dict[int, str] = {}
    for i, item in enumerate(items):
        where = f"categories[{i}]"
        check.require(item, _CATEGORY_KEYS, where)
        cat_id = check.integer(item["id"], f"{where}.id")
        name = item["name"]
        if not isinstance(name, str) or not name:
            raise check.fail(f"{where}.name", f"expected a non-empty string, got {name!r}")
        if cat_id in categories:
            raise check.fail(f"{where}.id", f"duplicate category id {cat_id}")
        if name in categories.values():
            raise check.fail(f"{where}.name", f"duplicate category name {name!r}")
        categories[cat_id] = name
    if not categories:
        raise check.fail("categories", "empty", hint="list at least one object class")
    return categories


def inside_root(file_name: str) -> bool:
    """Does `root / file_name` stay under root, judged by the name alone?"""
    if os.path.isabs(file_name):
        return False
    parts = Path(os.path.normpath(file_name)).parts
    return not parts or parts[0] != os.pardir


def _parse_images(
    check: _Checker,
    items: list[Any],
    image_root: Path,
    check_files: bool,
    allow_outside_root: bool = False,
) -> dict[int, dict[str, Any]]:
    images: dict[int, dict[str, Any]] = {}
    for i, item in enumerate(items):
        where = f"images[{i}]"
        check.require(item, _IMAGE_KEYS, where)
        image_id = check.integer(item["id"], f"{where}.id")
        if image_id in images:
            raise check.fail(f"{where}.id", f"duplicate image id {image_id}")
        file_name = item["file_name"]
        if not isinstance(file_name, str) or not file_name:
            raise check.fail(f"{where}.file_name", f"expected a file name, got {file_name!r}")
        if not allow_outside_root and not inside_root(file_name):
            raise check.fail(
                f"{where}.file_name",
                f"{file_name!r} (image id {image_id}) leaves the image root {image_root}",
                hint="use file names relative to the image root, without climbing out with ..",
            )
        if check_files and not (image_root / file_name).is_file():
            raise check.fail(
                f"{where}.file_name",
                f"{file_name} not found under {image_root}",
                hint="pass the right image root, or copy the images there",
            )
        width = check.integer(item["width"], f"{where}.width", positive=True)
        height = check.integer(item["height"], f"{where}.height", positive=True)
        extra = {k: v for k, v in item.items() if k not in _IMAGE_KEYS}
        images[image_id] = {
            "id": image_id,
            "file_name": file_name,
            "width": width,
            "height": height,
            "extra": extra,
            "boxes": [],
            "cats": [],
            "ann_ids": [],
            "crowd": [],
        }
    return images


def _parse_box(check: _Checker, bbox: Any, where: str, image: dict[str, Any]) -> list[float]:
    """COCO x, y, w, h -> x1, y1, x2, y2, clipped to the image within the tolerance."""
    if (
        not isinstance(bbox, list)
        or len(bbox) != 4
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox)
        or not all(math.isfinite(v) for v in bbox)
    ):
        raise check.fail(where, f"expected [x, y, width, height] numbers, got {bbox!r}")
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        raise check.fail(where, f"box {bbox} has non-positive width or height")
    W, H = image["width"], image["height"]
    overflow = max(-x, -y, x + w - W, y + h - H)
    if overflow > CLIP_TOLERANCE_PX:
        raise check.fail(
            where,
            f"box {bbox} extends past image {image['id']} ({W}x{H}) by {overflow:g} px",
            hint="fix the label or the image size",
        )
    x1, y1 = max(x, 0.0), max(y, 0.0)
    x2, y2 = min(x + w, float(W)), min(y + h, float(H))
    if x2 <= x1 or y2 <= y1:
        raise check.fail(where, f"box {bbox} lies outside image {image['id']} ({W}x{H})")
    return [x1, y1, x2, y2]


def _parse_annotations(
    check: _Checker, items: list[Any], images: dict[int, dict[str, Any]], categories: dict[int, str]
) -> None:
    seen: set[int] = set()
    cat_list = tuple(sorted(categories))
    for i, item in enumerate(items):
        where = f"annotations[{i}]"
        check.require(item, _ANNOTATION_KEYS, where)
        ann_id = check.integer(item["id"], f"{where}.id")
        if ann_id in seen:
            raise check.fail(f"{where}.id", f"duplicate annotation id {ann_id}")
        seen.add(ann_id)
        image_id = check.integer(item["image_id"], f"{where}.image_id")
        if image_id not in images:
            raise check.fail(f"{where}.image_id", f"{image_id} is not an image id in images")
        cat_id = check.integer(item["category_id"], f"{where}.category_id")
        if cat_id not in categories:
            raise check.fail(f"{where}.category_id", f"{cat_id} is not in categories {cat_list}")
        image = images[image_id]
        box = _parse_box(check, item["bbox"], f"{where}.bbox", image)
        crowd = item.get("iscrowd", 0)
        if crowd not in (0, 1) or isinstance(crowd, bool):
            raise check.fail(f"{where}.iscrowd", f"expected 0 or 1, got {crowd!r}")
        if crowd == 1:
            image["crowd"].append(item)
            continue
        image["boxes"].append(box)
        image["cats"].append(cat_id)
        image["ann_ids"].append(ann_id)


def coco_from_dict(
    doc: Any,
    *,
    source: str = "<COCO dict>",
    json_path: Path | None = None,
    image_root: str | os.PathLike[str] = ".",
    check_files: bool = True,
    allow_outside_root: bool = False,
) -> CocoDataset:
    """Validate an already-parsed COCO dict (labels received in memory, say)."""
    check = _Checker(source)
    if not isinstance(doc, dict):
        raise check.fail("top level", f"expected a JSON object, got {type(doc).__name__}")
    root = Path(image_root)
    categories = _parse_categories(check, check.list_of(doc, "categories"))
    images = _parse_images(
        check, check.list_of(doc, "images"), root, check_files, allow_outside_root
    )
    _parse_annotations(check, check.list_of(doc, "annotations"), images, categories)
    records = [
        ImageRecord(
            id=im["id"],
            file_name=im["file_name"],
            width=im["width"],
            height=im["height"],
            boxes=np.asarray(im["boxes"], dtype=np.float32).reshape(-1, 4),
            category_ids=np.asarray(im["cats"], dtype=np.int64),
            annotation_ids=im["ann_ids"],
            crowd=im["crowd"],
            extra=im["extra"],
        )
        for im in images.values()
    ]
    return CocoDataset(
        json_path=json_path or Path(source), image_root=root, categories=categories, images=records
    )


def load_coco(
    path: str | os.PathLike[str],
    image_root: str | os.PathLike[str] | None = None,
    check_files: bool = True,
    allow_outside_root: bool = False,
) -> CocoDataset:
    """Load and validate a COCO detection file; file names are relative to `image_root`
    (default: the JSON file's folder) and must stay inside it unless `allow_outside_root`.
    Raises DatasetError naming the file and field."""
    json_path = Path(path)
    doc = _read_json(json_path)
    root = Path(image_root) if image_root is not None else json_path.parent
    return coco_from_dict(
        doc,
        source=str(json_path),
        json_path=json_path,
        image_root=root,
        check_files=check_files,
        allow_outside_root=allow_outside_root,
    )


def write_coco(dataset: CocoDataset | Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write a dataset (or a ready COCO dict) atomically."""
    doc = dataset.to_json() if isinstance(dataset, CocoDataset) else dict(dataset)
    return atomic_write_json(path, doc)


def merge(
    datasets: Sequence[CocoDataset],
    image_root: str | os.PathLike[str],
    json_path: str | os.PathLike[str],
) -> CocoDataset:
    """One dataset from several with the same categories (e.g. synthetic + real labels).

    File names are rewritten relative to `image_root`, which must hold every image (a name
    climbing out of it would be refused when the file is loaded again); image ids must not
    collide (they are ids other records point at, so they are never renumbered); annotation
    ids are renumbered.
    """
    if not datasets:
        raise DatasetError("merge: no datasets given")
    root = Path(image_root)
    first = datasets[0]
    records: list[ImageRecord] = []
    seen: dict[int, Path] = {}
    next_ann = 1
    for ds in datasets:
        if ds.categories != first.categories:
            raise DatasetError(
                f"{ds.json_path}: categories {ds.categories} differ from "
                f"{first.json_path}: {first.categories}",
                hint="relabel one set so both use the same category ids and names",
            )
        for rec in ds.images:
            if rec.id in seen:
                raise DatasetError(
                    f"{ds.json_path}: image id {rec.id} is also in {seen[rec.id]}",
                    hint="give the images of each source distinct ids",
                )
            seen[rec.id] = ds.json_path
            image = ds.image_path(rec).resolve()
            file_name = os.path.relpath(image, root.resolve())
            if not inside_root(file_name):
                raise DatasetError(
                    f"merge: image {image} (id {rec.id}) is outside the image root {root}",
                    hint="merge into a folder that holds the images of every source",
                )
            ann_ids = list(range(next_ann, next_ann + len(rec.annotation_ids)))
            next_ann += len(ann_ids)
            crowd = [{**c, "id": next_ann + i} for i, c in enumerate(rec.crowd)]
            next_ann += len(crowd)
            records.append(replace(rec, file_name=file_name, annotation_ids=ann_ids, crowd=crowd))
    return CocoDataset(
        json_path=Path(json_path),
        image_root=root,
        categories=dict(first.categories),
        images=records,
    )


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode an image fully into uint8 H x W x 3 RGB; bad files raise DatasetError."""
    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated JPEG fails here, not later in training
            rgb = img.convert("RGB")
    except FileNotFoundError:
        raise DatasetError(
            f"{path}: image not found",
            hint="check the image root and the file_name in the COCO file",
        ) from None
    except UnidentifiedImageError:
        raise DatasetError(
            f"{path}: not an image file PIL can read",
            hint="re-export or remove this image and its annotations",
        ) from None
    except OSError as err:
        if err.errno is None:  # PIL's own decode errors carry no errno
            raise DatasetError(
                f"{path}: corrupt or truncated image ({err})",
                hint="copy the file again or remove it from the COCO file",
            ) from None
        raise DatasetError(f"{path}: cannot read image: {err.strerror}") from err
    except (SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetError(
            f"{path}: corrupt or truncated image ({err})",
            hint="copy the file again or remove it from the COCO file",
        ) from None
    return np.asarray(rgb, dtype=np.uint8)


def check_image_size(
    rec: ImageRecord, array: np.ndarray, path: str | os.PathLike[str] = ""
) -> None:
    """The decoded image must have the size the COCO file promises (boxes depend on it)."""
    height, width = array.shape[:2]
    if (width, height) != (rec.width, rec.height):
        name = path or rec.file_name
        raise DatasetError(
            f"{name}: image is {width}x{height} but the COCO file says "
            f"{rec.width}x{rec.height} (image id {rec.id})",
            hint="fix width/height in the COCO file or resize the image",
        )


def predictions_to_coco_results(
    image_id: int,
    boxes: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    label_to_category: Mapping[int, int],
) -> list[dict[str, Any]]:
    """Detections (x1, y1, x2, y2, labels 1..C) -> COCO result dicts (x, y, w, h) for
    pycocotools' `loadRes`."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not len(boxes) == len(labels) == len(scores):
        raise ModelError(
            f"predictions for image {image_id}: {len(boxes)} boxes, "
            f"{len(labels)} labels, {len(scores)} scores"
        )
    results = []
    for (x1, y1, x2, y2), label, score in zip(boxes, labels, scores, strict=True):
        label = int(label)
        if label not in label_to_category:
            raise ModelError(
                f"predictions for image {image_id}: label {label} has no category "
                f"(known labels {sorted(label_to_category)})",
                hint="the model's classes do not match this dataset",
            )
        results.append(
            {
                "image_id": int(image_id),
                "category_id": int(label_to_category[label]),
                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                "score": float(score),
            }
        )
    return results
