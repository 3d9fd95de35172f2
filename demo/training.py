"""Training by the plan (M0 and the offline fine-tunes), and the label files it trains on."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

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
    train_images: Path | None = None,
) -> TrainResult:
    """Train at the plan's size: from ImageNet weights, or fine-tune from `init`. The images
    of `train_json` are under `train_images` (default: beside it)."""
    from dal.trainer.train import TrainSettings, train

    w, h = plan.size
    return train(
        TrainSettings(
            train=train_json,
            train_images=train_images,
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
