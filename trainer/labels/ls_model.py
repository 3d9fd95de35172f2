"""The registry's current model, loaded once per version for the ML backend's /predict.

The exported ONNX goes through the agent's own `Detector` (as `dal eval` on an .onnx does), so a
pre-annotation is what the edge would have seen. A promotion is picked up on the next request.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dal.coco import read_image
from dal.errors import ModelError
from dal.trainer.registry import Registry

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Boxes:
    """A model's boxes on one image: x1, y1, x2, y2 pixels, class names, scores."""

    version: str
    boxes: np.ndarray
    classes: tuple[str, ...]
    scores: np.ndarray


class CurrentModel:
    """Detects with the registry's current model; reloads when the current version changes.
    One inference at a time (the Detector allows no more), so the server's threads queue here."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._lock = threading.Lock()
        self._version: str | None = None
        self._classes: tuple[str, ...] = ()
        self._detector = None

    def version(self) -> str | None:
        current = self.registry.current()
        return current.version if current else None

    def class_names(self) -> tuple[str, ...]:
        current = self.registry.current()
        return current.class_names if current else ()

    def _load(self) -> None:
        """Must hold the lock. Loads the current model unless it is loaded already."""
        current = self.registry.current()
        if current is None:
            raise ModelError(
                "no current model to predict with",
                hint="promote one (`dal models promote`) or set [models] initial_checkpoint",
            )
        if current.version == self._version:
            return
        if current.onnx is None or not Path(current.onnx).is_file():
            raise ModelError(
                f"model {current.version} has no exported ONNX file ({current.onnx})",
                hint="`dal trainer serve` releases the current model at start-up",
            )
        from dal.agent.detector import Detector

        detector = Detector(current.onnx, warmup=False)
        if self._detector is not None:
            self._detector.close()
        self._detector, self._version = detector, current.version
        self._classes = current.class_names
        logger.info("label backend predicts with model %s", current.version)

    def detect(self, image_path: Path, min_score: float) -> Boxes:
        image = read_image(image_path)
        with self._lock:
            self._load()
            det = self._detector.detect(image)
            version, names = self._version, self._classes
        keep = [
            i
            for i, (label, score) in enumerate(zip(det.labels, det.scores, strict=True))
            if score >= min_score and 1 <= int(label) <= len(names)
        ]
        return Boxes(
            version,
            np.asarray(det.boxes, dtype=np.float64)[keep].reshape(-1, 4),
            tuple(names[int(det.labels[i]) - 1] for i in keep),
            np.asarray(det.scores, dtype=np.float64)[keep],
        )

    def close(self) -> None:
        with self._lock:
            if self._detector is not None:
                self._detector.close()
                self._detector = None
                self._version = None
