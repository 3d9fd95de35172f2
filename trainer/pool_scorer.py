"""Score the experiment's pool the way the edge agent does, once per starting model.

The checkpoint is exported to ONNX and every pool image goes through the agent's own
`Detector` (letterboxed input): its image score (`dal.scoring.image_score`) and its P2 feature
are what a query strategy sees on the edge. Scores are cached per checkpoint, so the strategies
of one seed that start from the same model share one scoring pass.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from dal.coco import CocoDataset, read_image
from dal.scoring import image_score
from dal.strategies import Candidates


class PoolScorer:
    """Candidates (ids, scores, features) of the whole pool under a checkpoint."""

    def __init__(
        self, pool: CocoDataset, method: str, aggregate: str, progress: bool = False
    ) -> None:
        self.pool = pool
        self.method = method
        self.aggregate = aggregate
        self.progress = progress
        self._cache: dict[Path, Candidates] = {}

    @property
    def ids(self) -> list[str]:
        return [str(rec.id) for rec in self.pool.images]

    def unscored(self) -> Candidates:
        """The pool without scores: what random needs (its picks ignore them)."""
        n = len(self.pool.images)
        return Candidates(self.ids, np.zeros(n), np.zeros((n, 1)))

    def scored(self, checkpoint: Path) -> Candidates:
        if checkpoint not in self._cache:
            self._cache[checkpoint] = self._score(checkpoint)
        return self._cache[checkpoint]

    def _score(self, checkpoint: Path) -> Candidates:
        import torch

        from dal.agent.detector import Detector
        from dal.trainer.export import export_onnx

        onnx_path = export_onnx(checkpoint, checkpoint.with_suffix(".onnx"))
        # onnxruntime gets as many threads as torch was given (--threads): on a shared CPU
        # more threads than free cores spin-wait and run several times slower
        detector = Detector(
            onnx_path,
            providers=("CPUExecutionProvider",),
            warmup=False,
            threads=torch.get_num_threads(),
        )
        images = tqdm(self.pool.images, desc="scoring pool", unit="img", disable=not self.progress)
        try:
            scores, features = [], []
            for rec in images:
                det = detector.detect(read_image(self.pool.image_path(rec)))
                scores.append(image_score(det.probs, self.method, self.aggregate))
                features.append(det.feature)
        finally:
            images.close()
            detector.close()
        onnx_path.unlink(missing_ok=True)
        return Candidates(self.ids, np.asarray(scores), np.stack(features))
