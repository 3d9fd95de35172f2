"""Each experiment run's validation detections on disk, so statistics need no model again.

The bootstrap intervals of `dal experiment` resample validation images and recompute AP, which
takes every run's detections per image. Checkpoints are deleted after a run (they are large);
these files are small and stay, beside results.csv under runs/, so `--report-only` can compute
the intervals from disk.

Format (compact JSON): the evaluated image ids, and one row per detection
[image_id, category_id, x, y, w, h, score] (COCO box convention, boxes to 0.01 px, scores to
6 digits: far below anything that moves an IoU threshold or a ranking in practice).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dal.errors import DatasetError
from dal.fileio import atomic_write_text

FORMAT = "dal-detections-1"
COLUMNS = ("image_id", "category_id", "x", "y", "w", "h", "score")


def write_detections(path: Path, image_ids: list[int], results: list[dict[str, Any]]) -> Path:
    """Write COCO result dicts (as `predict_results` makes them) of the images `image_ids`."""
    rows = [
        [
            int(r["image_id"]),
            int(r["category_id"]),
            *(round(float(v), 2) for v in r["bbox"]),
            round(float(r["score"]), 6),
        ]
        for r in results
    ]
    doc = {"format": FORMAT, "columns": COLUMNS, "image_ids": image_ids, "rows": rows}
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(doc, separators=(",", ":")) + "\n")


def read_detections(path: Path) -> tuple[list[int], list[dict[str, Any]]]:
    """The evaluated image ids and the COCO result dicts written by `write_detections`."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("format") != FORMAT:
            raise ValueError(f"format {doc.get('format')!r}, expected {FORMAT!r}")
        results = [
            {
                "image_id": int(image_id),
                "category_id": int(category),
                "bbox": [float(x), float(y), float(w), float(h)],
                "score": float(score),
            }
            for image_id, category, x, y, w, h, score in doc["rows"]
        ]
        return [int(i) for i in doc["image_ids"]], results
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DatasetError(
            f"{path}: cannot read the run's detections ({err})",
            hint="run `dal experiment` again without --report-only to redo that run, or "
            "delete the file to report without its interval",
        ) from None
