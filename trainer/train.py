"""Train or fine-tune a Faster R-CNN on COCO data.

From ImageNet backbone weights (or random ones) for a base model, or from a checkpoint to
fine-tune (the active-learning cycles). Validation AP after every epoch, early stop, the best
checkpoint kept as best.pt, the latest as last.pt (--resume continues from it).

Presets: `default` converges on small data on a CPU (lr 0.01 from a backbone, 0.005 when
fine-tuning, warm-up + cosine); `paper` is Eversberg & Lambrecht's SGD (batch 4, lr 1e-5,
momentum 0.9, weight decay 1e-4, 640x360).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from dal.coco import CocoDataset, load_coco
from dal.contract import parse_input_size
from dal.errors import ConfigError, DalError
from dal.fileio import atomic_write_json
from dal.trainer.checkpoint import (
    Checkpoint,
    check_classes,
    load_checkpoint,
    save_checkpoint,
    weights_sha256,
)
from dal.trainer.data import CocoDetection, collate, training_augmentation
from dal.trainer.detector import (
    ARCHITECTURES,
    DetectorConfig,
    build_detector,
    count_parameters,
    replace_head,
    resolve_backbone_weights,
)
from dal.trainer.evaluate import evaluate, torch_predictor

log = logging.getLogger(__name__)

PRESETS: dict[str, dict[str, Any]] = {
    "default": {"batch_size": 4, "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4},
    "paper": {"batch_size": 4, "lr": 1e-5, "momentum": 0.9, "weight_decay": 1e-4},
}
FINE_TUNE_LR_FACTOR = 0.5  # fine-tuning starts from good weights: a smaller step keeps them


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
    batch_size: int = 4
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    patience: int = 5
    augment: bool = True
    seed: int = 0
    workers: int = 0
    max_steps_per_epoch: int | None = None
    resume: bool = False
    proposals: int = 300
    score_threshold: float = 0.05
    trainable_backbone_layers: int = 3
    progress: bool = True
    extra_summary: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()
        }


@dataclass
class TrainResult:
    best_path: Path
    last_path: Path
    best_ap: float | None
    epochs_run: int
    history: list[dict[str, Any]]
    version: str


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def new_version(state: dict[str, torch.Tensor]) -> str:
    """Sortable and unique: UTC time plus the weights' hash."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{weights_sha256(state)[:8]}"


def _prepare_model(settings: TrainSettings, train_set: CocoDataset):
    """Build the model: fine-tune from --init, or fresh from backbone weights."""
    class_names = train_set.class_names
    width, height = parse_input_size(settings.input_size)
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
        model.roi_heads.score_thresh = settings.score_threshold
        model.rpn._pre_nms_top_n["testing"] = settings.proposals
        model.rpn._post_nms_top_n["testing"] = settings.proposals
        return config, model, parent.version
    config = DetectorConfig(
        arch=settings.arch,
        class_names=tuple(class_names),
        input_width=width,
        input_height=height,
        rpn_pre_nms_top_n_test=settings.proposals,
        rpn_post_nms_top_n_test=settings.proposals,
        box_score_thresh=settings.score_threshold,
        trainable_backbone_layers=settings.trainable_backbone_layers,
    )
    weights = resolve_backbone_weights(settings.arch, settings.backbone_weights)
    config = dataclasses.replace(config, frozen_batchnorm=weights is not None)
    return config, build_detector(config, weights), ""


def _lr_lambda(total_steps: int, warmup: int):
    """Linear warm-up, then cosine decay to 5% of the base rate."""

    def factor(step: int) -> float:
        if step < warmup:
            return 0.1 + 0.9 * step / max(1, warmup)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _train_one_epoch(model, loader, optimizer, scheduler, epoch, settings) -> dict[str, float]:
    model.train()
    totals: dict[str, float] = {}
    steps = len(loader)
    if settings.max_steps_per_epoch:
        steps = min(steps, settings.max_steps_per_epoch)
    bar = tqdm(total=steps, desc=f"epoch {epoch}", unit="step", disable=not settings.progress)
    for step, (images, targets) in enumerate(loader):
        if step >= steps:
            break
        losses = model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise DalError(
                f"training diverged at epoch {epoch} step {step} (loss {loss.item()})",
                hint="lower --lr or check the boxes in the training set",
            )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        for name, value in losses.items():
            totals[name] = totals.get(name, 0.0) + value.item()
        totals["loss"] = totals.get("loss", 0.0) + loss.item()
        bar.update(1)
        bar.set_postfix(
            loss=f"{totals['loss'] / (step + 1):.3f}", lr=f"{scheduler.get_last_lr()[0]:.2g}"
        )
    bar.close()
    return {name: value / max(1, steps) for name, value in totals.items()}


def train(settings: TrainSettings) -> TrainResult:
    """Run training to the end (or early stop) and return where the best checkpoint is."""
    seed_everything(settings.seed)
    train_set = load_coco(settings.train, settings.train_images)
    if not train_set.images:
        raise DalError(f"{settings.train}: no training images")
    val_set = load_coco(settings.val, settings.val_images) if settings.val else None
    config, model, parent_version = _prepare_model(settings, train_set)
    total, trainable = count_parameters(model)
    log.info(
        "model %s, %d classes, %.1fM parameters (%.1fM trainable)",
        config.arch,
        len(config.class_names),
        total / 1e6,
        trainable / 1e6,
    )

    augment = training_augmentation(seed=settings.seed) if settings.augment else None
    dataset = CocoDetection(train_set, augment)
    generator = torch.Generator().manual_seed(settings.seed)
    loader = DataLoader(
        dataset,
        batch_size=settings.batch_size,
        shuffle=True,
        collate_fn=collate,
        num_workers=settings.workers,
        generator=generator,
        drop_last=len(dataset) > settings.batch_size,
    )
    steps_per_epoch = len(loader)
    if settings.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, settings.max_steps_per_epoch)
    lr = settings.lr
    if lr is None:
        lr = PRESETS["default"]["lr"] * (FINE_TUNE_LR_FACTOR if settings.init else 1.0)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        params, lr=lr, momentum=settings.momentum, weight_decay=settings.weight_decay
    )
    warmup = min(settings.warmup_steps, steps_per_epoch * settings.epochs // 4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(steps_per_epoch * settings.epochs, warmup)
    )

    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    best_path, last_path = out / "best.pt", out / "last.pt"
    history: list[dict[str, Any]] = []
    best_ap: float | None = None
    start_epoch, stale = 1, 0
    if settings.resume and last_path.exists():
        last = load_checkpoint(last_path)
        model.load_state_dict(last.model)
        if last.optimizer:
            optimizer.load_state_dict(last.optimizer)
        if last.scheduler:
            scheduler.load_state_dict(last.scheduler)
        history, best_ap, start_epoch = last.history, last.best_ap, last.epoch + 1
        stale = last.training_summary.get("stale_epochs", 0)
        log.info("resuming from %s at epoch %d", last_path, start_epoch)

    summary = {
        "settings": settings.to_json(),
        "train_images": len(train_set.images),
        "train_boxes": train_set.num_annotations,
        "val_images": len(val_set.images) if val_set else 0,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        **settings.extra_summary,
    }
    best_version = ""
    epoch = start_epoch - 1
    for epoch in range(start_epoch, settings.epochs + 1):
        started = time.perf_counter()
        losses = _train_one_epoch(model, loader, optimizer, scheduler, epoch, settings)
        record: dict[str, Any] = {
            "epoch": epoch,
            **losses,
            "train_seconds": round(time.perf_counter() - started, 2),
        }
        improved = True
        if val_set is not None:
            metrics, _ = evaluate(
                torch_predictor(model), val_set, list(config.class_names), progress=False
            )
            record.update(AP=metrics["AP"], AP50=metrics["AP50"], AP75=metrics["AP75"])
            improved = best_ap is None or metrics["AP"] > best_ap
            log.info(
                "epoch %d: loss %.3f, val AP %.3f (AP50 %.3f)",
                epoch,
                losses["loss"],
                metrics["AP"],
                metrics["AP50"],
            )
        history.append(record)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if improved:
            best_ap = record.get("AP", best_ap)
            stale = 0
            best_version = new_version(state)
            save_checkpoint(
                Checkpoint(
                    config=config,
                    model=state,
                    version=best_version,
                    parent_version=parent_version,
                    epoch=epoch,
                    best_ap=best_ap,
                    history=list(history),
                    training_summary={**summary, "best_epoch": epoch},
                ),
                best_path,
            )
        else:
            stale += 1
        save_checkpoint(
            Checkpoint(
                config=config,
                model=state,
                version=new_version(state),
                parent_version=parent_version,
                epoch=epoch,
                best_ap=best_ap,
                history=list(history),
                training_summary={**summary, "stale_epochs": stale},
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
            ),
            last_path,
        )
        atomic_write_json(out / "history.json", history)
        if val_set is not None and stale >= settings.patience:
            log.info("early stop: no AP gain for %d epochs (best %.3f)", stale, best_ap)
            break
    if not best_version and best_path.exists():
        best_version = load_checkpoint(best_path).version
    return TrainResult(best_path, last_path, best_ap, epoch, history, best_version)


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
    parser.add_argument("--workers", type=int, default=0, help="data loader processes")
    parser.add_argument("--max-steps-per-epoch", type=int)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")


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
        resume=args.resume,
        proposals=args.proposals,
        score_threshold=args.score_threshold,
    )


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    result = train(settings_from_args(args))
    print(
        json.dumps(
            {
                "best": str(result.best_path),
                "best_ap": result.best_ap,
                "version": result.version,
                "epochs": result.epochs_run,
            },
            indent=2,
        )
    )
    return 0
