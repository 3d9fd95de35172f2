"""COCO AP with pycocotools on hand-made cases whose answer is known."""

from __future__ import annotations

import pytest

from dal.coco import coco_from_dict
from dal.errors import DalError
from dal.trainer.evaluate import coco_metrics, label_map_by_name


def _dataset(boxes: list[list[float]]):
    doc = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 640, "height": 360}],
        "annotations": [
            {
                "id": i + 1,
                "image_id": 1,
                "category_id": 7,
                "bbox": box,
                "area": box[2] * box[3],
                "iscrowd": 0,
            }
            for i, box in enumerate(boxes)
        ],
        "categories": [{"id": 7, "name": "bracket"}],
    }
    return coco_from_dict(doc, check_files=False)


def test_perfect_predictions_give_ap_one() -> None:
    boxes = [[100, 100, 100, 100], [300, 50, 80, 120]]
    results = [{"image_id": 1, "category_id": 7, "bbox": b, "score": 0.9} for b in boxes]
    metrics = coco_metrics(_dataset(boxes), results)
    assert metrics["AP"] == pytest.approx(1.0)
    assert metrics["per_class"]["bracket"] == pytest.approx(1.0)


def test_a_known_shift_gives_the_hand_computed_ap() -> None:
    # shifted 20 px right: IoU = 80*100 / (2*100*100 - 80*100) = 2/3, a match at the IoU
    # thresholds 0.50, 0.55, 0.60, 0.65 and a miss at the other six: AP = 4/10.
    results = [{"image_id": 1, "category_id": 7, "bbox": [120, 100, 100, 100], "score": 0.9}]
    metrics = coco_metrics(_dataset([[100, 100, 100, 100]]), results)
    assert metrics["AP"] == pytest.approx(0.4)
    assert metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AP75"] == pytest.approx(0.0)


def test_no_predictions_give_zero() -> None:
    assert coco_metrics(_dataset([[10, 10, 50, 50]]), [])["AP"] == 0.0


def test_labels_map_to_categories_by_name() -> None:
    assert label_map_by_name(_dataset([[10, 10, 50, 50]]), ["bracket"]) == {1: 7}
    with pytest.raises(DalError, match="'washer'"):
        label_map_by_name(_dataset([[10, 10, 50, 50]]), ["washer"])
