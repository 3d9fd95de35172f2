"""`dal eval --grid`: frames spread over the set, ground truth beside thresholded predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dal.coco import load_coco
from dal.drawing import SINGLE_COLOUR
from dal.procedural import make_tiny
from dal.trainer.evaluate import evaluate
from dal.trainer.grid import grid_tiles, save_grid, spread_positions


def test_spread_positions_cover_the_whole_set() -> None:
    assert spread_positions(100, 5) == [0, 25, 50, 74, 99]
    picks = spread_positions(1000, 16)
    assert picks[0] == 0 and picks[-1] == 999 and len(picks) == 16
    gaps = np.diff(picks)
    assert gaps.min() >= 66 and gaps.max() <= 67
    assert spread_positions(5, 16) == [0, 1, 2, 3, 4]
    assert spread_positions(0, 4) == [] and spread_positions(9, 0) == []
    assert spread_positions(9, 1) == [0]


def _predictor(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A confident box top-left and an unsure one bottom-right, on every image."""
    boxes = np.array([[10, 10, 50, 40], [100, 50, 150, 90]], dtype=np.float32)
    return boxes, np.array([1, 1]), np.array([0.9, 0.2], dtype=np.float32)


def test_grid_keeps_spread_frames_and_draws_truth_beside_predictions(tmp_path: Path) -> None:
    coco = load_coco(make_tiny(tmp_path / "val", 9, classes=1, seed=4, style="workbench"))
    keep = spread_positions(len(coco.images), 3)
    _, kept = evaluate(_predictor, coco, coco.class_names, progress=False, keep=keep)
    assert [k.position for k in kept] == [0, 4, 8]
    assert [k.record.id for k in kept] == [coco.images[i].id for i in (0, 4, 8)]

    tiles, captions = grid_tiles(kept, coco, coco.class_names, threshold=0.3)
    assert len(tiles) == 6  # two per frame
    truth, predicted = np.asarray(tiles[0]), np.asarray(tiles[1])
    raw = kept[0].image
    x1, y1 = (int(v) for v in kept[0].record.boxes[0][:2])
    edge = truth[y1 + 1 : y1 + 4, max(0, x1 - 1) : x1 + 2].reshape(-1, 3)
    assert (edge == SINGLE_COLOUR).all(axis=1).any()  # the ground-truth outline
    assert (predicted[25, 10] != raw[25, 10]).any()  # the 0.9 box's left edge is drawn
    assert (predicted[70, 150] == raw[70, 150]).all()  # the 0.2 box is not
    assert captions[1] == "predicted ≥ 0.3 (1)"
    assert captions[0].startswith("#0 ") and "truth (" in captions[0]

    sheet = save_grid(kept, coco, coco.class_names, tmp_path / "grid.png")
    with Image.open(sheet) as img:
        assert img.width > 4 * 300 and img.height > 2 * 150  # 4 tiles per row, 2 rows
