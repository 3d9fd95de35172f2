"""The three things every experiment run does: train, evaluate, record a row.

Shared by the start models (M0, M(L0)) and the query chains, so every model of an experiment is
trained with the same settings, evaluated on the same validation split by the same AP code, and
leaves its validation detections on disk for the bootstrap intervals.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dal.coco import CocoDataset, write_coco
from dal.trainer.detections import write_detections
from dal.trainer.protocol_config import ProtocolConfig

DETECTIONS_FILE = "detections.json"


@dataclass
class RunTimes:
    select_s: float = 0.0
    train_s: float = 0.0
    eval_s: float = 0.0


def steps_per_epoch(n_images: int, batch_size: int) -> int:
    """As train()'s DataLoader counts them (drop_last once the set exceeds one batch)."""
    return n_images // batch_size if n_images > batch_size else 1


def fine_tune_steps(labelled: int, batch_size: int, epochs: int, min_steps: int) -> int:
    """`epochs` passes over the labelled set, at least `min_steps`: grows with L."""
    return max(min_steps, epochs * -(-labelled // batch_size))


def repeated_subset(pool: CocoDataset, ids: list[int], samples: int) -> dict[str, Any]:
    """COCO dict of the images `ids`, repeated in turn up to `samples` entries.

    Copies get fresh image ids (the original stays in `source_id`) and point at the same file,
    so one epoch over the result is `samples` draws from the labelled set.
    """
    doc = pool.subset(ids).to_json()
    by_image: dict[int, list[dict]] = {}
    for ann in doc["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    images, annotations = [], []
    for n in range(max(samples, len(ids))):
        src = doc["images"][n % len(ids)]
        images.append({**src, "id": n + 1, "source_id": src["id"]})
        for ann in by_image.get(src["id"], []):
            annotations.append({**ann, "id": len(annotations) + 1, "image_id": n + 1})
    return {"images": images, "annotations": annotations, "categories": doc["categories"]}


class Steps:
    """Training and evaluation with the experiment's settings."""

    def __init__(
        self, config: ProtocolConfig, pool: CocoDataset, val: CocoDataset, progress: bool
    ) -> None:
        self.config = config
        self.pool = pool
        self.val = val
        self.progress = progress
        self.out = Path(config.out)

    def train(self, **overrides: Any):
        """train() with the experiment's model, input, batch, augmentation and device."""
        from dal.trainer.train import TrainSettings, train

        c = self.config
        settings = TrainSettings(
            **{
                "arch": c.arch,
                "backbone_weights": c.backbone_weights,
                "input_size": c.input_size,
                "batch_size": c.batch_size,
                "augment": c.augment,
                "proposals": c.proposals,
                "score_threshold": c.score_threshold,
                "progress": self.progress,
                "device": c.device,
                "amp": c.amp,
                **overrides,
            }
        )
        return train(settings)

    def train_on(
        self,
        run_dir: Path,
        init: Path | None,
        labelled: list[int],
        steps: int,
        seed: int,
        lr: float | None,
        extra: dict[str, Any],
    ) -> tuple[Path, int]:
        """Train `steps` steps on the pool images `labelled` (repeated to fill them), from
        `init` or from the backbone; returns best.pt and the steps actually run."""
        c = self.config
        samples = steps * c.batch_size
        train_json = write_coco(
            repeated_subset(self.pool, labelled, samples), run_dir / "labelled.json"
        )
        result = self.train(
            train=train_json,
            train_images=self.pool.image_root,
            out=run_dir,
            init=init,
            epochs=1,
            lr=lr,
            seed=seed,
            warmup_steps=max(1, steps // 4),
            extra_summary={"experiment": extra},
        )
        (run_dir / "last.pt").unlink(missing_ok=True)  # optimizer state: not needed again
        return result.best_path, steps_per_epoch(max(samples, len(labelled)), c.batch_size)

    def evaluate(self, checkpoint: Path, run_dir: Path) -> tuple[dict[str, Any], str]:
        """Metrics on the validation split; the detections go into `run_dir` (inside the
        experiment folder), their relative path comes back for the results row."""
        from dal.trainer.checkpoint import load_checkpoint
        from dal.trainer.evaluate import coco_metrics, predict_results, torch_predictor

        ckpt = load_checkpoint(checkpoint)
        predictor = torch_predictor(ckpt.build())
        results, _ = predict_results(
            predictor, self.val, list(ckpt.config.class_names), progress=False
        )
        path = write_detections(
            run_dir / DETECTIONS_FILE, [rec.id for rec in self.val.images], results
        )
        return coco_metrics(self.val, results), path.relative_to(self.out).as_posix()


def result_row(
    key: tuple[str, str, str, int, int, int],
    labelled: int,
    metrics: dict[str, Any],
    times: RunTimes,
    wall: float,
    steps: int,
    picked: list[int],
    detections: str = "",
) -> dict[str, Any]:
    """One results.csv row (see report.COLUMNS)."""
    setting, mode, strategy, k, seed, cycle = key
    return {
        "setting": setting,
        "mode": mode,
        "strategy": strategy,
        "k": k,
        "seed": seed,
        "cycle": cycle,
        "labelled": labelled,
        "AP": metrics["AP"],
        "AP50": metrics["AP50"],
        "AP75": metrics["AP75"],
        "wall_s": round(wall, 2),
        "select_s": round(times.select_s, 2),
        "train_s": round(times.train_s, 2),
        "eval_s": round(times.eval_s, 2),
        "steps": steps,
        "picked": ";".join(str(i) for i in picked),
        "detections": detections,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }
