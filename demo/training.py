"""Training by the plan (M0 and the offline fine-tunes), and the label files it trains on."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from dal.coco import write_coco
from dal.demo.plan import DemoPlan

if TYPE_CHECKING:
    from dal.trainer.train import TrainResult


def train_model(
    train_json: Path,
    val_json: Path,
    out: Path,
    plan: DemoPlan,
    epochs: int,
    init: Path | None,
    seed: int,
    device: str = "auto",
) -> TrainResult:
    """Train at the plan's size: from ImageNet weights, or fine-tune from `init`."""
    from dal.trainer.train import TrainSettings, train

    w, h = plan.size
    return train(
        TrainSettings(
            train=train_json,
            val=val_json,
            out=out,
            init=init,
            backbone_weights="imagenet" if init is None else "none",
            input_size=f"{w}x{h}",
            epochs=epochs,
            patience=epochs,
            seed=seed,
            warmup_steps=10,
            device=device,
        )
    )


def labels_json_with_root(labels_json: Path, pool_json: Path) -> Path:
    """The oracle's label file lives beside the pool's: rewrite file names to point at it."""
    doc = json.loads(labels_json.read_text())
    rel = os.path.relpath(pool_json.parent, labels_json.parent)
    for image in doc["images"]:
        image["file_name"] = os.path.join(rel, image["file_name"])
    return write_coco(doc, labels_json)
