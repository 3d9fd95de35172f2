"""The epoch loop of `dal train`: device, precision, data, validation schedule, checkpoints.

One object per run so that each step (build the loader, one epoch, validate, save) is a short
method, and DDP, AMP and the validation schedule stay out of the settings code in train.py.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from dal.coco import CocoDataset
from dal.errors import DalError
from dal.fileio import atomic_write_json
from dal.trainer import distributed
from dal.trainer.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from dal.trainer.data import CocoDetection, collate, training_augmentation
from dal.trainer.detector import DetectorConfig
from dal.trainer.device import Precision, autocast, choose_precision, resolve_device
from dal.trainer.evaluate import evaluate, torch_predictor
from dal.trainer.train import (
    FINE_TUNE_LR_FACTOR,
    PRESETS,
    TrainResult,
    TrainSettings,
    new_version,
)

log = logging.getLogger("dal.trainer.train")

# AP gain between the last two validations above which a finished run counts as still learning.
STILL_RISING_GAIN = 0.005


class WarmupCosine:
    """Linear warm-up, then cosine decay to 5% of the base rate over `total` steps.

    An object, not a closure: a time budget re-plans `total` after the first epoch, and
    LambdaLR saves its attributes with the scheduler state."""

    def __init__(self, total: int, warmup: int) -> None:
        self.total = total
        self.warmup = warmup

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return 0.1 + 0.9 * step / max(1, self.warmup)
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def spread_sample(val: CocoDataset, size: int | None) -> CocoDataset:
    """Every n-th validation image: consecutive frames are near-duplicates, a prefix is not."""
    if not size or size >= len(val.images):
        return val
    step = len(val.images) / size
    ids = [val.images[int(i * step)].id for i in range(size)]
    return val.subset(ids)


def device_free(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights on the CPU, contiguous: a checkpoint that loads on any machine."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def to_device(images, targets, device: torch.device):
    images = [image.to(device, non_blocking=True) for image in images]
    targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
    return images, targets


class TrainingRun:
    """One call of train(): built from settings, run once."""

    def __init__(
        self,
        settings: TrainSettings,
        config: DetectorConfig,
        model: torch.nn.Module,
        parent_version: str,
        train_set: CocoDataset,
        val_set: CocoDataset | None,
    ) -> None:
        self.s = settings
        self.config = config
        self.parent_version = parent_version
        self.train_set = train_set
        self.world = distributed.world_from_env()
        self.device = distributed.start(self.world, resolve_device(settings.device))
        self.precision: Precision = choose_precision(self.device, settings.amp)
        log.info("training on %s in %s", self.device, self.precision.name)
        self.model = model.to(self.device)
        if settings.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.val_full = val_set
        self.val_set = spread_sample(val_set, settings.val_sample) if val_set else None
        self.loader, self.sampler = self._make_loader()
        self.steps_per_epoch = len(self.loader)
        if settings.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, settings.max_steps_per_epoch)
        self.epochs = settings.total_epochs(self.steps_per_epoch)
        self.optimizer, self.scheduler = self._make_optimizer()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.scaled)
        self.ddp = (
            DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
            if self.world.distributed
            else None
        )
        self.out = Path(settings.out)
        self.history: list[dict[str, Any]] = []
        self.best_ap: float | None = None
        self.best_version = ""
        self.best_epoch = 0
        self.eval_every = settings.eval_every or 1
        self.next_eval = settings.eval_every or 1  # auto: time one validation after epoch 1

    # ------------------------------------------------------------------ set-up

    def _make_loader(self) -> tuple[DataLoader, DistributedSampler | None]:
        s = self.s
        augment = training_augmentation(seed=s.seed + self.world.rank) if s.augment else None
        dataset = CocoDetection(self.train_set, augment)
        drop_last = len(dataset) > s.batch_size * self.world.size
        sampler = (
            DistributedSampler(dataset, self.world.size, self.world.rank, seed=s.seed)
            if self.world.distributed
            else None
        )
        cuda = self.device.type == "cuda"
        workers = s.workers if s.workers is not None else (4 if cuda else 0)
        loader = DataLoader(
            dataset,
            batch_size=s.batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            collate_fn=collate,
            num_workers=workers,
            pin_memory=cuda,
            persistent_workers=workers > 0,
            generator=torch.Generator().manual_seed(s.seed),
            drop_last=drop_last,
        )
        return loader, sampler

    def _make_optimizer(self):
        s = self.s
        lr = s.lr
        if lr is None:
            lr = PRESETS["default"]["lr"] * (FINE_TUNE_LR_FACTOR if s.init else 1.0)
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=lr, momentum=s.momentum, weight_decay=s.weight_decay)
        total = self.steps_per_epoch * self.epochs
        warmup = min(s.warmup_steps, total // 4)
        self.schedule = WarmupCosine(total, warmup)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.schedule)
        return optimizer, scheduler

    def _resume(self) -> int:
        last_path = self.out / "last.pt"
        if not (self.s.resume and last_path.exists()):
            return 1
        last = load_checkpoint(last_path)
        self.model.load_state_dict(last.model)
        if last.optimizer:
            self.optimizer.load_state_dict(last.optimizer)
        if last.scheduler:
            self.scheduler.load_state_dict(last.scheduler)
        self.history, self.best_ap = last.history, last.best_ap
        self.best_epoch = last.training_summary.get("best_epoch", last.epoch)
        self.next_eval = last.training_summary.get("next_eval", last.epoch + 1)
        self.eval_every = last.training_summary.get("eval_every", self.eval_every)
        log.info("resuming from %s at epoch %d", last_path, last.epoch + 1)
        return last.epoch + 1

    # ------------------------------------------------------------------ the loop

    def run(self) -> TrainResult:
        self.out.mkdir(parents=True, exist_ok=True)
        start_epoch = self._resume()
        self.summary = self._summary()
        log.info(
            "%d epochs of %d steps (batch %d x %d process(es)), validation %s",
            self.epochs,
            self.steps_per_epoch,
            self.s.batch_size,
            self.world.size,
            self._eval_plan(),
        )
        epoch = start_epoch
        try:
            while epoch <= self.epochs:
                stop = self._one_epoch(epoch)
                # Rank 0 decides (early stop, a re-planned epoch count); the others follow.
                stop, self.epochs = distributed.share(self.world, int(stop), self.epochs)
                self.schedule.total = self.steps_per_epoch * self.epochs
                if stop:
                    break
                epoch += 1
            epoch = min(epoch, self.epochs)
        finally:
            distributed.stop(self.world)
        return self._result(epoch)

    def _fit_time_budget(self, epoch: int, epoch_seconds: float) -> None:
        """After the first epoch: as many epochs as fit the budget, the schedule re-planned."""
        budget = self.s.time_budget_s
        if not budget or epoch != 1:
            return
        fits = max(1, int(budget // max(epoch_seconds, 1e-3)))
        if fits < self.epochs:
            log.info(
                "time budget %.0f s: %d epochs of %.0f s fit (of %d planned)",
                budget,
                fits,
                epoch_seconds,
                self.epochs,
            )
            self.epochs = fits
            self.schedule.total = self.steps_per_epoch * fits

    def _one_epoch(self, epoch: int) -> bool:
        """Train one epoch, validate when due, save; True when early stop says enough."""
        started = time.perf_counter()
        losses = self._train_epoch(epoch)
        record: dict[str, Any] = {
            "epoch": epoch,
            **losses,
            "train_seconds": round(time.perf_counter() - started, 2),
        }
        if not self.world.is_main:
            return False
        due = self.val_set is not None and (epoch >= self.next_eval or epoch == self.epochs)
        improved = self.val_set is None or (due and self._validate(epoch, record))
        self._fit_time_budget(epoch, time.perf_counter() - started)
        self.history.append(record)
        state = device_free(self.model)
        if improved:
            self.best_ap = record.get("AP", self.best_ap)
            self.best_epoch = epoch
            self.best_version = new_version(state)
            self._save(state, self.best_version, epoch, self.out / "best.pt", best=True)
        self._save(state, new_version(state), epoch, self.out / "last.pt", best=False)
        atomic_write_json(self.out / "history.json", self.history)
        stale = epoch - self.best_epoch
        if due and stale >= self.s.patience:
            log.info("early stop: no AP gain for %d epochs (best %.3f)", stale, self.best_ap)
            return True
        return False

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        forward = self.ddp if self.ddp is not None else self.model
        totals: dict[str, float] = {}
        steps = self.steps_per_epoch
        bar = tqdm(
            total=steps,
            desc=f"epoch {epoch}/{self.epochs}",
            unit="step",
            disable=not (self.s.progress and self.world.is_main),
        )
        for step, (images, targets) in enumerate(self.loader):
            if step >= steps:
                break
            images, targets = to_device(images, targets, self.device)
            with autocast(self.device, self.precision):
                losses = forward(images, targets)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise DalError(
                    f"training diverged at epoch {epoch} step {step} (loss {loss.item()})",
                    hint="lower --lr or check the boxes in the training set",
                )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            for name, value in losses.items():
                totals[name] = totals.get(name, 0.0) + value.item()
            totals["loss"] = totals.get("loss", 0.0) + loss.item()
            bar.update(1)
            bar.set_postfix(
                loss=f"{totals['loss'] / (step + 1):.3f}",
                lr=f"{self.scheduler.get_last_lr()[0]:.2g}",
            )
        bar.close()
        return {name: value / max(1, steps) for name, value in totals.items()}

    def _validate(self, epoch: int, record: dict[str, Any]) -> bool:
        """AP on the validation set (or its sample); schedules the next validation."""
        assert self.val_set is not None
        started = time.perf_counter()
        metrics, _ = evaluate(
            torch_predictor(self.model, self.device),
            self.val_set,
            list(self.config.class_names),
            progress=False,
        )
        eval_s = time.perf_counter() - started
        record.update(
            AP=metrics["AP"],
            AP50=metrics["AP50"],
            AP75=metrics["AP75"],
            eval_seconds=round(eval_s, 2),
        )
        if self.s.eval_every is None:
            # As often as costs no more than the training between two validations.
            self.eval_every = max(1, math.ceil(eval_s / max(record["train_seconds"], 1e-3)))
        self.next_eval = epoch + self.eval_every
        improved = self.best_ap is None or metrics["AP"] > self.best_ap
        log.info(
            "epoch %d: loss %.3f, val AP %.3f (AP50 %.3f) on %d images in %.0f s; next at epoch %d",
            epoch,
            record["loss"],
            metrics["AP"],
            metrics["AP50"],
            len(self.val_set.images),
            eval_s,
            self.next_eval,
        )
        return improved

    # ------------------------------------------------------------------ records

    def _eval_plan(self) -> str:
        if self.val_set is None:
            return "none (no --val)"
        assert self.val_full is not None
        images = (
            f"{len(self.val_set.images)} of {len(self.val_full.images)} images (spread sample)"
            if self.val_set is not self.val_full
            else f"all {len(self.val_set.images)} images"
        )
        when = (
            f"every {self.s.eval_every} epoch(s)"
            if self.s.eval_every
            else "after epoch 1, then as often as costs no more than training"
        )
        return f"{when}, on {images}"

    def _summary(self) -> dict[str, Any]:
        return {
            "settings": self.s.to_json(),
            "train_images": len(self.train_set.images),
            "train_boxes": self.train_set.num_annotations,
            "val_images": len(self.val_set.images) if self.val_set else 0,
            "device": str(self.device),
            "precision": self.precision.name,
            "processes": self.world.size,
            "epochs_planned": self.epochs,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **self.s.extra_summary,
        }

    def _save(self, state, version: str, epoch: int, path: Path, best: bool) -> None:
        extra = (
            {"best_epoch": epoch}
            if best
            else {
                "best_epoch": self.best_epoch,
                "next_eval": self.next_eval,
                "eval_every": self.eval_every,
            }
        )
        save_checkpoint(
            Checkpoint(
                config=self.config,
                model=state,
                version=version,
                parent_version=self.parent_version,
                epoch=epoch,
                best_ap=self.best_ap,
                history=list(self.history),
                training_summary={**self.summary, **extra},
                optimizer=None if best else self.optimizer.state_dict(),
                scheduler=None if best else self.scheduler.state_dict(),
            ),
            path,
        )

    def still_rising(self) -> bool:
        """The last validation was the best and clearly above the one before it."""
        aps = [r["AP"] for r in self.history if "AP" in r]
        return len(aps) >= 2 and aps[-1] >= max(aps) and aps[-1] - aps[-2] > STILL_RISING_GAIN

    def _result(self, epoch: int) -> TrainResult:
        best_path, last_path = self.out / "best.pt", self.out / "last.pt"
        rising = self.world.is_main and self.still_rising()
        if rising:
            aps = [r["AP"] for r in self.history if "AP" in r]
            log.warning(
                "validation AP was still rising when training ended (%.3f -> %.3f): the model "
                "is likely undertrained; train longer (--epochs, or --min-steps)",
                aps[-2],
                aps[-1],
            )
        if not self.best_version and best_path.exists():
            self.best_version = load_checkpoint(best_path).version
        return TrainResult(
            best_path, last_path, self.best_ap, epoch, self.history, self.best_version, rising
        )
