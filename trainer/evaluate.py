"""Evaluate a detector: COCO AP@[0.5:0.95], AP50, AP75 (pycocotools), per class, as JSON.

Works on a training checkpoint (.pt) or an exported model (.onnx, run through the same
onnxruntime code as the agent). `--grid` draws ground truth beside predictions on a sheet of
frames spread over the whole set.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from dal.coco import (
    CocoDataset,
    ImageRecord,
    load_coco,
    predictions_to_coco_results,
    read_image,
)
from dal.errors import DalError
from dal.trainer.device import add_device_arguments
from dal.trainer.grid import GRID_THRESHOLD, save_grid, spread_positions

if TYPE_CHECKING:
    from dal.agent.detector import Detector

log = logging.getLogger(__name__)

# image (uint8 HWC RGB) -> (boxes [n,4] xyxy, labels [n] 1..C, scores [n])
Predictor = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


def coco_eval(
    coco: CocoDataset, results: list[dict[str, Any]], configure: Callable[[Any], None] | None = None
) -> Any:
    """pycocotools' COCOeval of `results` on every image of the dataset, per image evaluated
    (`evaluate()`) but not yet accumulated; `configure(params)` may narrow the parameters
    first. One place builds the evaluation, so every AP in the project is the same AP."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO()
        gt.dataset = coco.to_json()
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = [rec.id for rec in coco.images]
        if configure is not None:
            configure(ev.params)
        ev.evaluate()
    return ev


def mean_precision(precision: np.ndarray) -> float:
    """AP from COCOeval's precision array at one area range and max-detections setting
    ([iou thresholds, recall points, classes]): the mean over entries with ground truth, as
    COCOeval.summarize takes it (0 where no class has any)."""
    valid = precision[precision > -1]
    return max(0.0, float(valid.mean())) if valid.size else 0.0


def coco_metrics(coco: CocoDataset, results: list[dict[str, Any]]) -> dict[str, Any]:
    """AP, AP50, AP75 and per-class AP of `results` against the dataset's boxes."""
    names = coco.categories
    empty = {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "per_class": {n: 0.0 for n in names.values()}}
    if not coco.images:
        raise DalError(f"{coco.json_path}: no images to evaluate on")
    if not results:
        return empty
    ev = coco_eval(coco, results)
    with contextlib.redirect_stdout(io.StringIO()):
        ev.accumulate()
        ev.summarize()
    # precision: [iou thresholds, recall points, classes, area ranges, max dets]; -1 = no GT
    precision = ev.eval["precision"][:, :, :, 0, -1]
    per_class = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[:, :, k]
        per_class[names[cat_id]] = float(p[p > -1].mean()) if (p > -1).any() else None
    stats = [max(0.0, float(v)) for v in ev.stats[:3]]
    return {"AP": stats[0], "AP50": stats[1], "AP75": stats[2], "per_class": per_class}


def torch_predictor(model: torch.nn.Module, device: torch.device | str | None = None) -> Predictor:
    """Wrap a torchvision detector as a Predictor (eval mode, no grad) on `device` (default:
    where the model's weights are)."""
    model.eval()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)

    @torch.no_grad()
    def predict(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        tensor = torch.from_numpy(np.array(image, dtype=np.uint8)).to(device)
        out = model([tensor.permute(2, 0, 1).float() / 255])[0]
        return tuple(out[k].cpu().numpy() for k in ("boxes", "labels", "scores"))  # type: ignore[return-value]

    return predict


def predict_dataset(
    predict: Predictor, coco: CocoDataset, progress: bool = True
) -> Iterator[tuple[int, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Yield (image id, image, prediction) for every image of the dataset."""
    for rec in tqdm(coco.images, desc="evaluating", unit="img", disable=not progress):
        image = read_image(coco.image_path(rec))
        yield rec.id, image, predict(image)


def label_map_by_name(coco: CocoDataset, class_names: list[str]) -> dict[int, int]:
    """Model label (1..C over `class_names`) -> the dataset's category id with the same name."""
    by_name = {name: cat for cat, name in coco.categories.items()}
    missing = [n for n in class_names if n not in by_name]
    if missing:
        raise DalError(
            f"{coco.json_path}: the model's classes {missing} are not among the dataset's "
            f"categories {sorted(by_name)}",
            hint="evaluate on a dataset labelled with the model's classes",
        )
    return {i + 1: by_name[name] for i, name in enumerate(class_names)}


class Kept(NamedTuple):
    """One image kept for a picture: its place in the dataset, record, pixels, prediction."""

    position: int
    record: ImageRecord
    image: np.ndarray
    prediction: tuple[np.ndarray, np.ndarray, np.ndarray]


def predict_results(
    predict: Predictor,
    coco: CocoDataset,
    class_names: list[str] | None = None,
    progress: bool = True,
    keep: Collection[int] = (),
) -> tuple[list[dict[str, Any]], list[Kept]]:
    """COCO result dicts of the predictions on every image, plus the images at the positions
    `keep` (for pictures).

    Model labels are matched to the dataset's categories by class name (`class_names`, label 1
    first); without names they are taken to follow the dataset's category order.
    """
    results: list[dict[str, Any]] = []
    kept: list[Kept] = []
    if class_names is None:
        label_to_category = coco.label_to_category
    else:
        label_to_category = label_map_by_name(coco, class_names)
    wanted = set(keep)
    records = iter(coco.images)
    for position, (image_id, image, prediction) in enumerate(
        predict_dataset(predict, coco, progress)
    ):
        record = next(records)
        results += predictions_to_coco_results(image_id, *prediction, label_to_category)
        if position in wanted:
            kept.append(Kept(position, record, image, prediction))
    return results, kept


def evaluate(
    predict: Predictor,
    coco: CocoDataset,
    class_names: list[str] | None = None,
    progress: bool = True,
    keep: Collection[int] = (),
) -> tuple[dict[str, Any], list[Kept]]:
    """Metrics over the dataset, plus the images at the positions `keep` with their
    predictions (see predict_results)."""
    results, kept = predict_results(predict, coco, class_names, progress, keep)
    metrics = coco_metrics(coco, results)
    metrics["images"] = len(coco.images)
    metrics["detections"] = len(results)
    return metrics, kept


def detector_predictor(detector: Detector) -> Predictor:
    """A Predictor over the agent's Detector: an exported model evaluated as the agent runs it."""

    def predict(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        det = detector.detect(image)
        return det.boxes, det.labels, det.scores

    return predict


def load_predictor(
    model_path: Path, score_threshold: float | None, device: str = "cpu"
) -> tuple[Predictor, list[str]]:
    """A Predictor and class names for a .pt checkpoint (on `device`) or an exported .onnx
    model (onnxruntime picks its own providers, as on the agent)."""
    if model_path.suffix == ".onnx":
        from dal.agent.detector import Detector

        detector = Detector(model_path)
        return detector_predictor(detector), list(detector.info.class_names[1:])
    from dal.trainer.checkpoint import load_checkpoint

    ckpt = load_checkpoint(model_path)
    model = ckpt.build()
    if score_threshold is not None:
        model.roi_heads.score_thresh = score_threshold
    from dal.trainer.device import resolve_device

    return torch_predictor(model, resolve_device(device)), list(ckpt.config.class_names)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="checkpoint (.pt) or exported model (.onnx)")
    parser.add_argument("coco", type=Path, help="COCO JSON with the ground truth")
    parser.add_argument("--images", type=Path, help="image folder (default: the JSON's folder)")
    parser.add_argument("--out", type=Path, help="write the metrics JSON here")
    parser.add_argument(
        "--grid",
        type=Path,
        help="write a PNG/JPEG sheet here: ground truth beside the predictions, per frame",
    )
    parser.add_argument(
        "--grid-images", type=int, default=16, help="frames on the sheet, spread over the set"
    )
    parser.add_argument(
        "--grid-threshold",
        type=float,
        default=GRID_THRESHOLD,
        help="draw predictions scoring at least this",
    )
    parser.add_argument("--score-threshold", type=float, help="override the model's threshold")
    add_device_arguments(parser, amp=False, scope="for .pt checkpoints")


def run(args: argparse.Namespace) -> int:
    coco = load_coco(args.coco, args.images)
    predict, class_names = load_predictor(args.model, args.score_threshold, args.device)
    keep = spread_positions(len(coco.images), args.grid_images) if args.grid else []
    metrics, kept = evaluate(predict, coco, class_names, keep=keep)
    metrics["model"] = str(args.model)
    metrics["dataset"] = str(args.coco)
    text = json.dumps(metrics, indent=2)
    print(text)
    if args.out:
        from dal.fileio import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    if args.grid:
        save_grid(kept, coco, class_names, args.grid, args.grid_threshold)
        print(f"prediction sheet: {args.grid}")
    return 0
