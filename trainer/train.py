"""Train or fine-tune a Faster R-CNN on COCO data, on a CPU, a GPU or several (torchrun).

From ImageNet backbone weights (or random ones) for a base model, or from a checkpoint to
fine-tune (the active-learning cycles). Validation AP on a schedule that costs at most as much
as training, early stop, the best checkpoint kept as best.pt, the latest as last.pt (--resume
continues from it). Checkpoints are device-free: they load anywhere.

Presets: `default` converges on small data (lr 0.01 from a backbone, 0.005 when fine-tuning,
warm-up + cosine); `paper` is Eversberg & Lambrecht's SGD (batch 4, lr 1e-5, momentum 0.9,
weight decay 1e-4, 640x360).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dal.coco import load_coco
from dal.contract import parse_input_size
from dal.errors import ConfigError, DalError
from dal.trainer.checkpoint import check_classes, load_checkpoint, weights_sha256
from dal.trainer.detector import (
    ARCHITECTURES,
    DetectorConfig,
    build_detector,
    count_parameters,
    replace_head,
    resolve_backbone_weights,
    set_test_proposals,
    set_trainable_layers,
    set_training_budget,
)
from dal.trainer.device import add_device_arguments, set_cpu_threads

log = logging.getLogger(__name__)

PRESETS: dict[str, dict[str, Any]] = {
    "default": {"batch_size": 4, "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4},
    "paper": {"batch_size": 4, "lr": 1e-5, "momentum": 0.9, "weight_decay": 1e-4},
}
FINE_TUNE_LR_FACTOR = 0.5  # fine-tuning starts from good weights: a smaller step keeps them
TEST_PROPOSALS = 300  # RPN proposals kept at inference
SCORE_THRESHOLD = 0.05  # detections below it are dropped at inference


@dataclass
class TrainSettings:
    """Everything one training run needs; recorded in the checkpoint's training summary."""

    train: Path
    out: Path
    val: Path | None = None
    train_images: Path | None = None
    val_images: Path | None = None
    arch: str = "mobilenet_v2_fpn"
    backbone_weights: str | None = "imagenet"
    init: Path | None = None
    reset_head: bool = False
    input_size: str = "640x360"
    epochs: int = 20
    # The budget grows with the data: at least this many SGD steps whatever the set's size
    # (small labelled sets get more epochs), at most `max_steps` (0: no cap).
    min_steps: int = 0
    max_steps: int = 0
    # Wall-clock budget in seconds (0: none): after epoch 1, as many epochs as fit.
    time_budget_s: float = 0.0
    batch_size: int = 4
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    patience: int = 5
    augment: bool = True
    seed: int = 0
    workers: int | None = None
    max_steps_per_epoch: int | None = None
    resume: bool = False
    proposals: int = TEST_PROPOSALS
    score_threshold: float = SCORE_THRESHOLD
    # None: 3 for a new model, the parent's stages for a fine-tune (see set_trainable_layers).
    trainable_layers: int | None = None
    # New light models run the RPN from P3 up (RPNWithoutP2); fine-tunes keep the parent's.
    rpn_on_p2: bool = False
    train_proposals: int = 500
    train_rois: int = 64
    device: str = "auto"
    amp: bool | None = None
    channels_last: bool = True
    # Validation: every N epochs (None: as often as costs no more than training) on all
    # validation images or an evenly spread sample of them.
    eval_every: int | None = None
    val_sample: int | None = None
    progress: bool = True
    extra_summary: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()
        }

    def total_epochs(self, steps_per_epoch: int) -> int:
        """`epochs`, raised to reach `min_steps` and lowered to stay within `max_steps`."""
        epochs = max(self.epochs, math.ceil(self.min_steps / max(1, steps_per_epoch)))
        if self.max_steps:
            epochs = min(epochs, max(1, self.max_steps // max(1, steps_per_epoch)))
        return epochs


@dataclass
class TrainResult:
    best_path: Path
    last_path: Path
    best_ap: float | None
    epochs_run: int
    history: list[dict[str, Any]]
    version: str
    still_rising: bool = False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def new_version(state: dict[str, torch.Tensor]) -> str:
    """Sortable and unique: UTC time plus the weights' hash."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{weights_sha256(state)[:8]}"


def prepare_model(settings: TrainSettings, class_names: list[str]):
    """(config, model, parent version): fine-tune from --init, or fresh from backbone weights."""
    if settings.init is not None:
        parent = load_checkpoint(settings.init)
        if settings.reset_head:
            config = dataclasses.replace(parent.config, class_names=tuple(class_names))
            model = parent.build()
            replace_head(model, config.num_classes)
        else:
            check_classes(parent, class_names, settings.init)
            config, model = parent.config, parent.build()
        config = dataclasses.replace(
            config,
            rpn_pre_nms_top_n_test=settings.proposals,
            rpn_post_nms_top_n_test=settings.proposals,
            box_score_thresh=settings.score_threshold,
        )
        if settings.trainable_layers is not None:
            config = dataclasses.replace(
                config, trainable_backbone_layers=settings.trainable_layers
            )
        model.roi_heads.score_thresh = settings.score_threshold
        set_test_proposals(model, settings.proposals, settings.proposals)
        set_trainable_layers(model, config, config.trainable_backbone_layers)
        return config, model, parent.version
    width, height = parse_input_size(settings.input_size)
    weights = resolve_backbone_weights(settings.arch, settings.backbone_weights)
    config = DetectorConfig(
        arch=settings.arch,
        class_names=tuple(class_names),
        input_width=width,
        input_height=height,
        rpn_pre_nms_top_n_test=settings.proposals,
        rpn_post_nms_top_n_test=settings.proposals,
        box_score_thresh=settings.score_threshold,
        trainable_backbone_layers=3
        if settings.trainable_layers is None
        else settings.trainable_layers,
        frozen_batchnorm=weights is not None,
        rpn_on_p2=settings.rpn_on_p2,
    )
    return config, build_detector(config, weights), ""


def train(settings: TrainSettings) -> TrainResult:
    """Run training to the end (or early stop) and return where the best checkpoint is."""
    from dal.trainer.loop import TrainingRun  # the loop needs torch's data and AMP machinery

    seed_everything(settings.seed)
    train_set = load_coco(settings.train, settings.train_images)
    if not train_set.images:
        raise DalError(f"{settings.train}: no training images")
    val_set = load_coco(settings.val, settings.val_images) if settings.val else None
    config, model, parent_version = prepare_model(settings, train_set.class_names)
    set_training_budget(model, settings.train_proposals, settings.train_rois)
    total, trainable = count_parameters(model)
    log.info(
        "model %s, %d classes, %.1fM parameters (%.1fM trainable, %d backbone stages)",
        config.arch,
        len(config.class_names),
        total / 1e6,
        trainable / 1e6,
        config.trainable_backbone_layers,
    )
    return TrainingRun(settings, config, model, parent_version, train_set, val_set).run()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("train", type=Path, help="training COCO JSON")
    parser.add_argument("--val", type=Path, help="validation COCO JSON (AP each epoch, early stop)")
    parser.add_argument("--train-images", type=Path, help="image folder (default: JSON's folder)")
    parser.add_argument("--val-images", type=Path, help="image folder (default: JSON's folder)")
    parser.add_argument("--out", type=Path, required=True, help="output folder for checkpoints")
    parser.add_argument("--arch", choices=ARCHITECTURES, default="mobilenet_v2_fpn")
    parser.add_argument(
        "--backbone-weights",
        default="imagenet",
        help="'imagenet' (local torchvision file), 'none', or a .pth file",
    )
    parser.add_argument("--init", type=Path, help="fine-tune from this checkpoint")
    parser.add_argument(
        "--reset-head",
        action="store_true",
        help="with --init: new box predictor for the dataset's classes",
    )
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="default",
        help="optimizer settings; explicit flags override them",
    )
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--momentum", type=float)
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--patience", type=int, default=5, help="epochs without AP gain")
    parser.add_argument("--input-size", default="640x360", help="model input WIDTHxHEIGHT")
    parser.add_argument("--proposals", type=int, default=300, help="test-time RPN proposals")
    parser.add_argument("--score-threshold", type=float, default=0.05)
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workers", type=int, help="data loader processes (default: 0 on a CPU, 4 with CUDA)"
    )
    parser.add_argument("--max-steps-per-epoch", type=int)
    parser.add_argument(
        "--min-steps",
        type=int,
        default=0,
        help="raise the epoch count until training has made this many SGD steps",
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        default=0.0,
        help="minutes of wall time: after epoch 1, as many epochs as fit (0: no budget)",
    )
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs)")
    add_speed_arguments(parser)


def add_speed_arguments(parser: argparse.ArgumentParser) -> None:
    """Device, precision and the CPU-speed knobs of `dal train`."""
    add_device_arguments(parser)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    parser.add_argument(
        "--trainable-layers",
        type=int,
        choices=range(6),
        help="backbone stages that learn, 0-5 (default: 3 for a new model, the parent's "
        "when fine-tuning); fewer train faster",
    )
    parser.add_argument(
        "--train-proposals",
        type=int,
        default=500,
        help="RPN proposals per training image (torchvision: 2000)",
    )
    parser.add_argument(
        "--train-rois", type=int, default=64, help="sampled RoIs per training image"
    )
    parser.add_argument(
        "--rpn-on-p2",
        action="store_true",
        help="new light models: RPN on P2 too (the layout before 0.2; slower on a CPU)",
    )
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="NHWC memory layout (faster convolutions on CPUs and tensor cores)",
    )
    parser.add_argument(
        "--eval-every",
        type=int,
        help="validate every N epochs (default: as often as costs no more than training)",
    )
    parser.add_argument(
        "--val-sample", type=int, help="validate on N images spread over the validation set"
    )


def speed_settings(args: argparse.Namespace) -> dict[str, Any]:
    """TrainSettings fields from add_speed_arguments' options."""
    for name in ("train_proposals", "train_rois", "eval_every", "val_sample"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
    return {
        "device": args.device,
        "amp": args.amp,
        "trainable_layers": args.trainable_layers,
        "train_proposals": args.train_proposals,
        "train_rois": args.train_rois,
        "rpn_on_p2": args.rpn_on_p2,
        "channels_last": args.channels_last,
        "eval_every": args.eval_every,
        "val_sample": args.val_sample,
    }


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    preset = PRESETS[args.preset]
    if args.epochs < 1:
        raise ConfigError("--epochs must be at least 1")
    lr = args.lr if args.lr is not None else (preset["lr"] if args.preset != "default" else None)
    return TrainSettings(
        train=args.train,
        val=args.val,
        train_images=args.train_images,
        val_images=args.val_images,
        out=args.out,
        arch=args.arch,
        backbone_weights=args.backbone_weights,
        init=args.init,
        reset_head=args.reset_head,
        input_size=args.input_size,
        epochs=args.epochs,
        batch_size=args.batch_size or preset["batch_size"],
        lr=lr,
        momentum=args.momentum if args.momentum is not None else preset["momentum"],
        weight_decay=args.weight_decay if args.weight_decay is not None else preset["weight_decay"],
        patience=args.patience,
        augment=not args.no_augment,
        seed=args.seed,
        workers=args.workers,
        max_steps_per_epoch=args.max_steps_per_epoch,
        min_steps=args.min_steps,
        progress=not args.no_progress,
        time_budget_s=args.time_budget * 60,
        resume=args.resume,
        proposals=args.proposals,
        score_threshold=args.score_threshold,
        **speed_settings(args),
    )


def run(args: argparse.Namespace) -> int:
    set_cpu_threads(args.threads)
    result = train(settings_from_args(args))
    print(
        json.dumps(
            {
                "best": str(result.best_path),
                "best_ap": result.best_ap,
                "version": result.version,
                "epochs": result.epochs_run,
                "still_rising": result.still_rising,
            },
            indent=2,
        )
    )
    return 0
