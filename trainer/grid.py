"""`dal eval --grid`: a contact sheet that shows where a model is right and wrong.

Each frame appears twice, side by side: its ground-truth boxes, then the predictions that score
at least a threshold (0.3 by default: the low-score tail that AP counts would bury the picture).
Frames are spread evenly over the whole set, not the first few, because consecutive frames of
a video split are near-duplicates and show one scene only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from dal.coco import CocoDataset
    from dal.trainer.evaluate import Kept

GRID_THRESHOLD = 0.3


def spread_positions(n_images: int, count: int) -> list[int]:
    """`count` positions evenly spaced over 0..n_images-1, first and last included."""
    if n_images <= 0 or count <= 0:
        return []
    if count >= n_images:
        return list(range(n_images))
    return sorted({round(x) for x in np.linspace(0, n_images - 1, count)})


def grid_tiles(
    kept: Sequence[Kept], coco: CocoDataset, class_names: list[str], threshold: float
) -> tuple[list[Image.Image], list[str]]:
    """Per frame a ground-truth tile (the dataset's names, one colour) and a prediction tile
    (the model's `class_names`, scores ≥ threshold, a colour per class), with captions."""
    from dal.drawing import draw_detections

    tiles, captions = [], []
    for item in kept:
        truth = item.record.boxes
        labels = coco.labels(item.record)
        tiles.append(draw_detections(item.image, truth, labels, None, coco.class_names, False))
        captions.append(f"#{item.position} id {item.record.id}: truth ({len(truth)})")
        boxes, labels, scores = item.prediction
        keep = np.asarray(scores) >= threshold
        tiles.append(
            draw_detections(item.image, boxes[keep], labels[keep], scores[keep], class_names)
        )
        captions.append(f"predicted ≥ {threshold:g} ({int(keep.sum())})")
    return tiles, captions


def save_grid(
    kept: Sequence[Kept],
    coco: CocoDataset,
    class_names: list[str],
    path: Path,
    threshold: float = GRID_THRESHOLD,
) -> Path:
    """The sheet, two frames (four tiles) per row."""
    from dal.drawing import contact_sheet

    if not kept:
        raise ValueError("no frames to draw")
    tiles, captions = grid_tiles(kept, coco, class_names, threshold)
    contact_sheet(tiles, columns=4, captions=captions).save(path)
    return path
