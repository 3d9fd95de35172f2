"""The ground-truth oracle: labels samples of replayed recordings from a COCO file (demos,
experiments), so a loop runs without a person; see `GroundTruthOracle` for the matching."""

from __future__ import annotations

import logging
import os
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from dal.coco import ImageRecord, load_coco
from dal.fileio import sha256_file
from dal.trainer.labels import record_boxes
from dal.trainer.store import Label, Sample, SampleStore

logger = logging.getLogger(__name__)


_THUMB = (32, 32)


def _thumbnail(path: Path) -> np.ndarray | None:
    try:
        with Image.open(path) as img:
            small = img.convert("L").resize(_THUMB, Image.Resampling.BILINEAR)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        logger.warning("oracle: cannot read %s (%s)", path, err)
        return None
    return np.asarray(small, dtype=np.float32)


def _meta_names(meta: dict[str, Any]) -> list[str]:
    truth = meta.get("ground_truth") if isinstance(meta.get("ground_truth"), dict) else {}
    found = [truth.get("file_name"), meta.get("file_name"), meta.get("source_image")]
    return [n for n in found if isinstance(n, str) and n]


def _meta_image_id(meta: dict[str, Any]) -> int | None:
    truth = meta.get("ground_truth") if isinstance(meta.get("ground_truth"), dict) else {}
    for value in (truth.get("image_id"), meta.get("image_id")):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


class GroundTruthOracle:
    """Labels samples from a ground-truth COCO file (replays, experiments).

    A sample is matched to a ground-truth image by the first rule that applies:
      1. a file name in the sample header's meta (`ground_truth.file_name`, `file_name` or
         `source_image`): the image with that `file_name`, else the one image with that base name;
      2. without a file name: an image id in the meta (`ground_truth.image_id` or `image_id`);
      3. the sample's bytes are a ground-truth image file (same sha256);
      4. the same picture: 32x32 grey thumbnails differ by at most `max_pixel_diff` grey
         levels on average (agents that re-encode frames), the closest image wins.
    No match: the sample waits for a person. The boxes are scaled from the ground-truth image's
    size to the sample's when they differ (a camera that stores frames resized).
    """

    def __init__(
        self,
        coco_path: str | os.PathLike[str],
        image_root: str | os.PathLike[str] | None = None,
        max_pixel_diff: float = 4.0,
    ) -> None:
        self.coco = load_coco(coco_path, image_root, check_files=False)
        self.max_pixel_diff = max_pixel_diff
        self._by_name = {rec.file_name: rec for rec in self.coco.images}
        self._by_base: dict[str, list[ImageRecord]] = {}
        for rec in self.coco.images:
            self._by_base.setdefault(PurePosixPath(rec.file_name).name, []).append(rec)
        self._by_id = {rec.id: rec for rec in self.coco.images}
        self._by_sha: dict[str, ImageRecord] | None = None
        self._thumbs: list[tuple[ImageRecord, np.ndarray]] | None = None
        self.stats = {"matched": 0, "unmatched": 0}

    def _sha_index(self) -> dict[str, ImageRecord]:
        if self._by_sha is None:
            self._by_sha = {}
            for rec in self.coco.images:
                path = self.coco.image_path(rec)
                if path.is_file():
                    self._by_sha[sha256_file(path)] = rec
        return self._by_sha

    def _thumb_index(self) -> list[tuple[ImageRecord, np.ndarray]]:
        if self._thumbs is None:
            self._thumbs = []
            for rec in self.coco.images:
                thumb = _thumbnail(self.coco.image_path(rec))
                if thumb is not None:
                    self._thumbs.append((rec, thumb))
        return self._thumbs

    def match(self, sample: Sample) -> tuple[ImageRecord, str] | None:
        """The ground-truth image of a sample and the rule that found it, or None."""
        names = _meta_names(sample.meta)
        for name in names:
            if name in self._by_name:
                return self._by_name[name], "file_name"
            same_base = self._by_base.get(PurePosixPath(name.replace("\\", "/")).name, [])
            if len(same_base) == 1:
                return same_base[0], "file_name"
        image_id = _meta_image_id(sample.meta)
        if not names and image_id is not None and image_id in self._by_id:
            return self._by_id[image_id], "image_id"
        rec = self._sha_index().get(sample.sha256)
        if rec is not None:
            return rec, "sha256"
        if self.max_pixel_diff > 0:
            return self._match_pixels(sample)
        return None

    def _match_pixels(self, sample: Sample) -> tuple[ImageRecord, str] | None:
        thumb = _thumbnail(sample.path)
        if thumb is None:
            return None
        best: tuple[float, ImageRecord] | None = None
        for rec, other in self._thumb_index():
            diff = float(np.abs(thumb - other).mean())
            if best is None or diff < best[0]:
                best = (diff, rec)
        if best is not None and best[0] <= self.max_pixel_diff:
            return best[1], "pixels"
        return None

    def label(self, sample: Sample) -> Label | None:
        """The ground truth of one sample, scaled to its size; None when nothing matches."""
        found = self.match(sample)
        if found is None or not sample.width or not sample.height:
            return None
        rec, rule = found
        sx, sy = sample.width / rec.width, sample.height / rec.height
        boxes, classes = record_boxes(self.coco, rec)
        boxes = boxes * np.array([sx, sy, sx, sy])
        logger.debug("oracle: %s is %s (by %s)", sample.sample_id, rec.file_name, rule)
        return Label(sample.sample_id, boxes, classes, "oracle")

    def label_pending(self, store: SampleStore, limit: int = 64) -> int:
        """Label up to `limit` samples the oracle has not seen; return how many it labelled."""
        pending = store.oracle_pending(limit)
        if not pending:
            return 0
        labels = []
        for sample in pending:
            label = self.label(sample)
            if label is None:
                self.stats["unmatched"] += 1
                logger.info("oracle: no ground truth for %s; left for a person", sample.sample_id)
            else:
                self.stats["matched"] += 1
                labels.append(label)
        if labels:
            store.set_labels(labels)
        store.mark_oracle_checked(s.sample_id for s in pending)
        return len(labels)
