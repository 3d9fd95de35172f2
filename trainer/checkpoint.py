"""Checkpoints: model, optimizer, scheduler, epoch, config and lineage in one safe file.

Saved atomically (a crash never leaves half a checkpoint) and loaded with weights_only=True, so
a checkpoint from elsewhere cannot run code.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torchvision.models.detection import FasterRCNN

from dal.errors import ModelError
from dal.exporter.weights import weights_sha256 as weights_sha256  # where it always was
from dal.fileio import atomic_write_bytes
from dal.trainer.detector import DetectorConfig, build_detector

FORMAT = "dal-checkpoint-1"


@dataclass
class Checkpoint:
    """What a checkpoint file holds. `model` is a state dict."""

    config: DetectorConfig
    model: dict[str, torch.Tensor]
    version: str = ""
    parent_version: str = ""
    epoch: int = 0
    best_ap: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    training_summary: dict[str, Any] = field(default_factory=dict)
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None

    def build(self) -> FasterRCNN:
        """A model with these weights (random init underneath: the weights replace it all)."""
        model = build_detector(self.config)
        try:
            model.load_state_dict(self.model)
        except RuntimeError as err:
            first = str(err).splitlines()[1:2] or [str(err)]
            raise ModelError(
                f"checkpoint weights do not fit a {self.config.arch} model: {first[0].strip()}",
                hint="the file was written by another version of dal or edited",
            ) from None
        return model


def save_checkpoint(ckpt: Checkpoint, path: str | os.PathLike[str]) -> Path:
    payload = {
        "format": FORMAT,
        "config": ckpt.config.to_dict(),
        "model": ckpt.model,
        "version": ckpt.version,
        "parent_version": ckpt.parent_version,
        "epoch": ckpt.epoch,
        "best_ap": ckpt.best_ap,
        "history": ckpt.history,
        "training_summary": ckpt.training_summary,
        "optimizer": ckpt.optimizer,
        "scheduler": ckpt.scheduler,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint written by save_checkpoint; anything else is a ModelError."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a damaged or foreign file
        raise ModelError(
            f"{path}: cannot read checkpoint ({type(err).__name__}: {err})",
            hint="is it a dal checkpoint (.pt from `dal train`)? It may be truncated",
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelError(
            f"{path}: not a dal checkpoint (format field is "
            f"{payload.get('format') if isinstance(payload, dict) else type(payload).__name__!r})",
            hint="train with `dal train`, or pass backbone weights with --backbone-weights",
        )
    try:
        config = DetectorConfig.from_dict(payload["config"])
    except (TypeError, KeyError) as err:
        raise ModelError(f"{path}: config field is malformed ({err})") from err
    return Checkpoint(
        config=config,
        model=payload["model"],
        version=payload.get("version", ""),
        parent_version=payload.get("parent_version", ""),
        epoch=payload.get("epoch", 0),
        best_ap=payload.get("best_ap"),
        history=payload.get("history", []),
        training_summary=payload.get("training_summary", {}),
        optimizer=payload.get("optimizer"),
        scheduler=payload.get("scheduler"),
    )


def check_classes(ckpt: Checkpoint, class_names: list[str], path: str | os.PathLike[str]) -> None:
    """Fine-tuning needs the same classes in the same order as the checkpoint was trained on."""
    have = list(ckpt.config.class_names)
    if have != list(class_names):
        raise ModelError(
            f"{path}: config.class_names has {len(have)} classes {have}, the dataset has "
            f"{len(class_names)} {list(class_names)}",
            hint="use a dataset with the same categories, or pass --reset-head to train a new "
            "box predictor for these classes",
        )
