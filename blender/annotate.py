"""Annotations from the rendered instance-index pass, and the COCO file built from them (no bpy).

Every target instance gets its own pass index (1..n). A pixel belongs to an instance when the
first Cycles sample through it hit that instance, so the mask holds only *visible* pixels:
occluded and out-of-frame parts are not in it, and the box drawn around it is the box a person
would draw. The visible fraction compares the mask with the instance's full silhouette (the
mesh projected with nothing in front and no image border, see silhouette.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class InstanceMask:
    """Visible pixels of one instance: box x, y, w, h (pixels, COCO order) and pixel count."""

    bbox: tuple[int, int, int, int]
    pixels: int


def instance_masks(index_map: np.ndarray, ids: Iterable[int]) -> dict[int, InstanceMask | None]:
    """Box and pixel count of each id's pixels in an integer index map [h, w]; None if absent."""
    out: dict[int, InstanceMask | None] = {}
    for inst in ids:
        mask = index_map == inst
        count = int(mask.sum())
        if count == 0:
            out[inst] = None
            continue
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        x0, x1, y0, y1 = int(cols[0]), int(cols[-1]), int(rows[0]), int(rows[-1])
        out[inst] = InstanceMask((x0, y0, x1 - x0 + 1, y1 - y0 + 1), count)
    return out


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """COCO uncompressed RLE of a boolean mask: column-major runs, starting with a zero run."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0, *runs]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": runs}


def rle_decode(rle: Mapping[str, Any]) -> np.ndarray:
    """Inverse of `rle_encode` (uncompressed counts only)."""
    h, w = rle["size"]
    values = np.zeros(h * w, dtype=bool)
    pos, on = 0, False
    for run in rle["counts"]:
        if on:
            values[pos : pos + run] = True
        pos += run
        on = not on
    return values.reshape((h, w), order="F")


def coco_document(
    records: Sequence[Mapping[str, Any]], class_names: Sequence[str], info: Mapping[str, Any]
) -> dict[str, Any]:
    """One COCO detection file from per-image records (see worker.image_record).

    Category ids are 1..C in `class_names` order; image ids are the render index + 1; annotation
    ids run from 1 in image order, so the file is the same however many workers rendered it.
    """
    categories = [
        {"id": i + 1, "name": n, "supercategory": "part"} for i, n in enumerate(class_names)
    ]
    cat_id = {n: i + 1 for i, n in enumerate(class_names)}
    images, annotations = [], []
    for rec in sorted(records, key=lambda r: r["index"]):
        image_id = rec["index"] + 1
        images.append(
            {
                "id": image_id,
                "file_name": rec["file_name"],
                "width": rec["width"],
                "height": rec["height"],
            }
        )
        for ann in rec["annotations"]:
            item = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": cat_id[ann["class"]],
                "bbox": list(ann["bbox"]),
                "area": ann["area"],
                "iscrowd": 0,
                "visible_fraction": ann["visible_fraction"],
                "in_frame_fraction": ann["in_frame_fraction"],
            }
            if "segmentation" in ann:
                item["segmentation"] = ann["segmentation"]
            annotations.append(item)
    return {
        "info": dict(info),
        "licenses": [],
        "categories": categories,
        "images": images,
        "annotations": annotations,
    }
