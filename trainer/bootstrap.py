"""Bootstrap confidence intervals for AP differences, over the validation images.

Two models evaluated on the same validation split differ by more than their AP says: a few
frames can decide the difference. Resampling the validation images with replacement and
recomputing the AP of both models on the same resample gives the spread of the paired
difference that another draw of validation images would show; the 2.5 and 97.5 percentiles are
the 95 % interval.

The AP is pycocotools' own (trainer/evaluate.py's `coco_eval`): every image is matched once
(`COCOeval.evaluate`), then each resample re-runs `COCOeval.accumulate` on the per-image
results listed in the resample's order, so an image drawn twice counts twice, its ground truth
and its detections alike. Only the area range "all" and 100 detections per image are evaluated:
that is exactly the cell COCO's AP@[0.5:0.95] reads.
"""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from dal.coco import CocoDataset
from dal.trainer.evaluate import coco_eval, mean_precision

RESAMPLES = 1000
LEVEL = 0.95
RESAMPLE_SEED = 0
_ALL_AREAS = [0.0, 1e5**2]


def _area_all_100(params: Any) -> None:
    params.areaRng = [_ALL_AREAS]
    params.areaRngLbl = ["all"]
    params.maxDets = [100]


class ImageAP:
    """AP@[0.5:0.95] of one model's detections on any resample of the validation images."""

    def __init__(self, coco: CocoDataset, results: list[dict[str, Any]]) -> None:
        self.image_ids = sorted(rec.id for rec in coco.images)  # COCOeval's own order
        self._eval = coco_eval(coco, results, _area_all_100) if results else None
        if self._eval is not None:
            self._per_image = list(self._eval.evalImgs)
            self._categories = len(self._eval._paramsEval.catIds)

    def __len__(self) -> int:
        return len(self.image_ids)

    def ap(self, positions: np.ndarray | None = None) -> float:
        """AP on the images at `positions` (indices into image_ids, repeats allowed); all
        images once when None. A model without detections scores 0 on every resample."""
        if self._eval is None:
            return 0.0
        n = len(self.image_ids)
        order = np.arange(n) if positions is None else np.asarray(positions)
        ev = self._eval
        ev.evalImgs = [self._per_image[k * n + i] for k in range(self._categories) for i in order]
        ids = [self.image_ids[i] for i in order]
        ev.params.imgIds = ids
        ev._paramsEval.imgIds = ids
        with contextlib.redirect_stdout(io.StringIO()):
            ev.accumulate()
        return mean_precision(ev.eval["precision"][:, :, :, 0, 0])

    def aps(self, resamples: np.ndarray) -> np.ndarray:
        """AP on every row of `resamples` ([count, n] positions)."""
        return np.array([self.ap(row) for row in resamples])


def resample_positions(n_images: int, count: int, seed: int = RESAMPLE_SEED) -> np.ndarray:
    """[count, n_images] image positions drawn with replacement; the same seed gives the same
    resamples, so every model of an experiment is measured on the same ones."""
    return np.random.default_rng(seed).integers(0, n_images, size=(count, n_images))


@dataclass(frozen=True)
class Interval:
    """A difference on the full validation set and its percentile bootstrap interval."""

    value: float
    low: float
    high: float
    resamples: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0.0 or self.high < 0.0

    def format(self) -> str:
        return f"{self.value:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def percentile_interval(value: float, samples: np.ndarray, level: float = LEVEL) -> Interval:
    """`value` with the (1-level)/2 and (1+level)/2 percentiles of its bootstrap samples."""
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(samples, [tail, 100 - tail])
    return Interval(float(value), float(low), float(high), len(samples))


def paired_difference(
    model: ImageAP, baseline: ImageAP, resamples: np.ndarray, level: float = LEVEL
) -> Interval:
    """AP(model) - AP(baseline), with both measured on the same resamples."""
    value = model.ap() - baseline.ap()
    return percentile_interval(value, model.aps(resamples) - baseline.aps(resamples), level)


def seconds_per_ap(model: ImageAP, probes: int = 10, seed: int = RESAMPLE_SEED) -> float:
    """Measured cost of one resampled AP of this model (to size the bootstrap)."""
    rows = resample_positions(len(model), probes, seed + 1)
    started = time.perf_counter()
    model.aps(rows)
    return (time.perf_counter() - started) / probes
