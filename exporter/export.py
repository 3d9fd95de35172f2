"""Export a trained detector to the ONNX detector the agent runs (see dal/contract.py).

One forward pass gives boxes, labels, scores, the full softmax row of each kept box and the
256-d P2 feature; the model metadata carries version, lineage, classes, input format and the
weights' hash. `verify` runs torch and onnxruntime on the same images and compares them (boxes
matched by IoU).

The exporter stands below the trainer: it takes any `ExportSource` (the trainer's Checkpoint is
one) and never reads a checkpoint file itself; `dal export` (trainer/export.py) does that.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx
import torch

from dal import contract
from dal.exporter.weights import weights_sha256
from dal.exporter.wrap import ExportableDetector
from dal.fileio import atomic_write_bytes

log = logging.getLogger(__name__)

OPSET = 17


class ExportConfig(Protocol):
    """What the exporter reads of a detector's config (trainer.detector.DetectorConfig)."""

    arch: str
    class_names: Any  # the object classes, background not included
    input_width: int
    input_height: int


class ExportSource(Protocol):
    """A trained detector as the exporter needs it (trainer.checkpoint.Checkpoint is one)."""

    config: ExportConfig
    model: dict[str, torch.Tensor]  # the weights
    version: str
    parent_version: str
    epoch: int
    best_ap: float | None
    training_summary: dict[str, Any]

    def build(self) -> torch.nn.Module: ...


@dataclass(frozen=True)
class ExportOptions:
    """Test-time knobs baked into the graph; None keeps the checkpoint's value."""

    score_threshold: float | None = None
    proposals: int | None = None
    detections: int | None = None
    opset: int = OPSET


def exportable(ckpt: ExportSource, options: ExportOptions = ExportOptions()) -> ExportableDetector:
    model = ckpt.build().eval()
    if options.score_threshold is not None:
        model.roi_heads.score_thresh = options.score_threshold
    if options.proposals is not None:
        model.rpn._pre_nms_top_n["testing"] = options.proposals
        model.rpn._post_nms_top_n["testing"] = options.proposals
    if options.detections is not None:
        model.roi_heads.detections_per_img = options.detections
    return ExportableDetector(model, ckpt.config.input_width, ckpt.config.input_height)


def metadata(ckpt: ExportSource, wrapper: ExportableDetector) -> dict[str, str]:
    config = ckpt.config
    ap = ckpt.best_ap
    return {
        contract.META_CONTRACT: contract.CONTRACT_VERSION,
        contract.META_VERSION: ckpt.version or f"unversioned-{weights_sha256(ckpt.model)[:8]}",
        contract.META_PARENT: ckpt.parent_version,
        contract.META_CLASSES: json.dumps([contract.BACKGROUND, *config.class_names]),
        contract.META_INPUT_SIZE: contract.format_input_size(
            config.input_width, config.input_height
        ),
        contract.META_INPUT_FORMAT: contract.INPUT_FORMAT,
        contract.META_CREATED: datetime.now(UTC).isoformat(timespec="seconds"),
        contract.META_TRAINING: json.dumps(_summary(ckpt)),
        contract.META_VAL_AP: "" if ap is None else f"{ap:.6f}",
        contract.META_WEIGHTS_SHA256: weights_sha256(ckpt.model),
        contract.META_ARCH: config.arch,
        contract.META_SCORE_THRESHOLD: f"{wrapper.roi_heads.score_thresh:g}",
    }


def _summary(ckpt: ExportSource) -> dict[str, Any]:
    """The training summary without bulky or machine-specific parts."""
    keep = ("train_images", "train_boxes", "val_images", "started", "best_epoch")
    summary = {k: ckpt.training_summary[k] for k in keep if k in ckpt.training_summary}
    summary["epochs"] = ckpt.epoch
    return summary


def export_onnx(
    ckpt: ExportSource,
    out_path: str | os.PathLike[str],
    options: ExportOptions = ExportOptions(),
) -> Path:
    """Write the ONNX detector atomically; returns its path."""
    wrapper = exportable(ckpt, options)
    example = torch.zeros((ckpt.config.input_height, ckpt.config.input_width, 3), dtype=torch.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "model.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            # the tracer warns about every shape it turns into a constant: the input is fixed
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                (example,),
                str(raw),
                input_names=[contract.INPUT_NAME],
                output_names=list(contract.OUTPUT_NAMES),
                opset_version=options.opset,
                dynamo=False,
            )
        model = onnx.load(str(raw))
    onnx.helper.set_model_props(model, metadata(ckpt, wrapper))
    model.doc_string = "dal detector: uint8 HWC RGB in; boxes, labels, scores, probs, feature out"
    onnx.checker.check_model(model)
    path = atomic_write_bytes(out_path, model.SerializeToString())
    log.info("exported %s (version %s) to %s", ckpt.config.arch, ckpt.version, path)
    return path


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of two x1, y1, x2, y2 box sets."""
    area = lambda r: (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])  # noqa: E731
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def compare_outputs(
    reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], min_score: float = 0.2
) -> dict[str, Any]:
    """Match the reference's confident boxes to the candidate's by IoU and class; report the
    worst differences. Low-score boxes may legitimately reorder across NMS, so they are not
    required to match."""
    ref_keep = reference["scores"] >= min_score
    ref_boxes, cand_boxes = reference["boxes"][ref_keep], candidate["boxes"]
    unmatched, worst_iou, score_diff, prob_diff = 0, 1.0, 0.0, 0.0
    if len(ref_boxes):
        iou = box_iou(ref_boxes, cand_boxes) if len(cand_boxes) else np.zeros((len(ref_boxes), 0))
        same_class = reference["labels"][ref_keep][:, None] == candidate["labels"][None, :]
        iou = np.where(same_class, iou, 0.0)
        for i in range(len(ref_boxes)):
            j = int(iou[i].argmax()) if iou.shape[1] else -1
            if j < 0 or iou[i, j] < 0.9:
                unmatched += 1
                continue
            worst_iou = min(worst_iou, float(iou[i, j]))
            score_diff = max(
                score_diff, abs(float(reference["scores"][ref_keep][i] - candidate["scores"][j]))
            )
            prob_diff = max(
                prob_diff,
                float(np.abs(reference["probs"][ref_keep][i] - candidate["probs"][j]).max()),
            )
    feature_diff = float(np.abs(reference["feature"] - candidate["feature"]).max())
    scale = float(np.abs(reference["feature"]).max()) or 1.0
    return {
        "reference_boxes": int(ref_keep.sum()),
        "candidate_boxes": len(cand_boxes),
        "unmatched": unmatched,
        "worst_iou": worst_iou,
        "max_score_diff": score_diff,
        "max_prob_diff": prob_diff,
        "max_feature_rel_diff": feature_diff / scale,
    }


def torch_outputs(wrapper: ExportableDetector, image: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        values = wrapper(torch.from_numpy(np.array(image, dtype=np.uint8)))
    return {name: v.numpy() for name, v in zip(contract.OUTPUT_NAMES, values, strict=True)}


def onnx_outputs(session: Any, image: np.ndarray) -> dict[str, np.ndarray]:
    values = session.run(list(contract.OUTPUT_NAMES), {contract.INPUT_NAME: image})
    return dict(zip(contract.OUTPUT_NAMES, values, strict=True))


def verify(
    ckpt: ExportSource,
    onnx_path: Path,
    images: list[np.ndarray],
    options: ExportOptions = ExportOptions(),
    providers: list[str] | None = None,
) -> dict[str, Any]:
    """torch vs onnxruntime (CPU unless `providers` says otherwise) on images already at the
    model's input size."""
    import onnxruntime as ort

    wrapper = exportable(ckpt, options)
    session = ort.InferenceSession(str(onnx_path), providers=providers or ["CPUExecutionProvider"])
    reports = [
        compare_outputs(torch_outputs(wrapper, im), onnx_outputs(session, im)) for im in images
    ]
    worst = {
        "images": len(reports),
        "unmatched": sum(r["unmatched"] for r in reports),
        "worst_iou": min((r["worst_iou"] for r in reports), default=1.0),
        "max_score_diff": max((r["max_score_diff"] for r in reports), default=0.0),
        "max_prob_diff": max((r["max_prob_diff"] for r in reports), default=0.0),
        "max_feature_rel_diff": max((r["max_feature_rel_diff"] for r in reports), default=0.0),
    }
    worst["ok"] = (
        worst["unmatched"] == 0
        and worst["max_score_diff"] < 1e-3
        and worst["max_feature_rel_diff"] < 1e-3
    )
    return worst


def load_images_at_input_size(paths: list[Path], width: int, height: int) -> list[np.ndarray]:
    """Read images and letterbox them to the model input the way the agent does."""
    from dal.coco import read_image
    from dal.letterbox import fit_image, plan_fit

    out = []
    for path in paths:
        image = read_image(path)
        out.append(fit_image(image, plan_fit(image.shape[1], image.shape[0], width, height)))
    return out
