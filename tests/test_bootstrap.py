"""Bootstrap intervals of AP differences: pycocotools' AP on resampled validation images.

Hand-made ground truth and detections on a few images, so the answers are known: the same
detections give a zero difference on every resample, detections better on every image give an
interval above zero, and the resampled AP agrees with dal eval's AP on the full set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dal.coco import coco_from_dict
from dal.trainer.bootstrap import (
    ImageAP,
    paired_difference,
    percentile_interval,
    resample_positions,
    seconds_per_ap,
)
from dal.trainer.detections import read_detections, write_detections
from dal.trainer.evaluate import coco_metrics

N_IMAGES = 12


def _dataset():
    images, annotations = [], []
    for i in range(1, N_IMAGES + 1):
        images.append({"id": i, "file_name": f"{i}.jpg", "width": 320, "height": 240})
        for j in range(2):
            box = [20 + 120 * j, 30 + 5 * i, 80, 60]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i,
                    "category_id": 3,
                    "bbox": box,
                    "area": 80 * 60,
                    "iscrowd": 0,
                }
            )
    doc = {"images": images, "annotations": annotations, "categories": [{"id": 3, "name": "cap"}]}
    return coco_from_dict(doc, check_files=False)


def _detections(shift: float, seed: int = 0) -> list[dict]:
    """One detection per box, moved `shift` px right (IoU falls as the shift grows), plus a
    low-score false positive per image; scores vary per image."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(1, N_IMAGES + 1):
        for j in range(2):
            score = float(rng.uniform(0.5, 1.0))
            box = [20 + 120 * j + shift, 30 + 5 * i, 80, 60]
            out.append({"image_id": i, "category_id": 3, "bbox": box, "score": score})
        out.append({"image_id": i, "category_id": 3, "bbox": [250, 180, 40, 40], "score": 0.3})
    return out


def test_full_set_ap_is_dal_evals_ap() -> None:
    coco = _dataset()
    for shift in (0.0, 8.0, 20.0):
        results = _detections(shift)
        assert ImageAP(coco, results).ap() == pytest.approx(coco_metrics(coco, results)["AP"])


def test_a_duplicated_image_counts_twice() -> None:
    coco = _dataset()
    # a perfect image and a missed one: drawing the perfect one twice must raise AP
    results = [r for r in _detections(0.0) if r["image_id"] == 1]
    model = ImageAP(coco, results)
    once, twice = model.ap(np.array([0, 1])), model.ap(np.array([0, 0, 1]))
    assert twice > once
    subset = coco_from_dict(
        {
            "images": [coco.to_json()["images"][i] for i in (0, 1)],
            "annotations": [a for a in coco.to_json()["annotations"] if a["image_id"] in (1, 2)],
            "categories": [{"id": 3, "name": "cap"}],
        },
        check_files=False,
    )
    assert once == pytest.approx(coco_metrics(subset, results)["AP"])


def test_identical_models_give_a_tight_interval_around_zero() -> None:
    coco = _dataset()
    a, b = ImageAP(coco, _detections(6.0)), ImageAP(coco, _detections(6.0))
    interval = paired_difference(a, b, resample_positions(N_IMAGES, 200))
    assert interval.value == 0.0
    assert interval.low <= 0.0 <= interval.high
    assert interval.high - interval.low < 1e-9
    assert not interval.excludes_zero


def test_a_model_better_on_every_image_has_an_interval_above_zero() -> None:
    coco = _dataset()
    better, worse = ImageAP(coco, _detections(2.0)), ImageAP(coco, _detections(25.0))
    interval = paired_difference(better, worse, resample_positions(N_IMAGES, 300))
    assert interval.value > 0.0
    assert interval.low > 0.0 and interval.excludes_zero
    assert interval.low <= interval.value <= interval.high


def test_noisy_differences_give_an_interval_that_covers_them() -> None:
    coco = _dataset()
    # the two models differ image by image, in both directions
    a_results = _detections(4.0, seed=1)
    b_results = _detections(4.0, seed=2)
    for r in a_results:
        if r["image_id"] % 2 and r["score"] > 0.4:
            r["bbox"][0] += 18
    for r in b_results:
        if not r["image_id"] % 2 and r["score"] > 0.4:
            r["bbox"][0] += 18
    a, b = ImageAP(coco, a_results), ImageAP(coco, b_results)
    interval = paired_difference(a, b, resample_positions(N_IMAGES, 300))
    assert interval.low < 0.0 < interval.high
    assert interval.high - interval.low > 0.05


def test_a_model_without_detections_scores_zero() -> None:
    model = ImageAP(_dataset(), [])
    assert model.ap() == 0.0
    assert (model.aps(resample_positions(N_IMAGES, 5)) == 0.0).all()


def test_percentiles_and_resamples() -> None:
    interval = percentile_interval(0.5, np.arange(1001) / 1000)
    assert (interval.low, interval.high) == pytest.approx((0.025, 0.975))
    rows = resample_positions(7, 50, seed=3)
    assert rows.shape == (50, 7) and rows.min() >= 0 and rows.max() < 7
    assert np.array_equal(rows, resample_positions(7, 50, seed=3))
    assert seconds_per_ap(ImageAP(_dataset(), _detections(0.0))) > 0


def test_detections_survive_the_file(tmp_path: Path) -> None:
    coco = _dataset()
    results = _detections(5.0)
    path = write_detections(tmp_path / "d.json", [rec.id for rec in coco.images], results)
    ids, again = read_detections(path)
    assert ids == list(range(1, N_IMAGES + 1)) and len(again) == len(results)
    assert ImageAP(coco, again).ap() == pytest.approx(ImageAP(coco, results).ap(), abs=1e-4)
