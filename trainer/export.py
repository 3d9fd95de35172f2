"""`dal export`: a checkpoint from `dal train` -> the ONNX detector the agent runs.

Reading a checkpoint file is the trainer's business, so this command and the path-taking
`export_onnx` live here; the work is dal/exporter's, which only ever sees a loaded Checkpoint.
`--verify IMAGE...` compares onnxruntime with torch on those images.

`--quantize int8` writes the INT8 model (dal/exporter/quantize.py) instead: calibrated on
`--calibration-frames` frames from `--calibration DIR`, then both models are evaluated on `--val`
through the agent's Detector, and the INT8 one is written only when its AP is at most
`--max-ap-drop` below the float one's (`--force` writes it anyway, with a warning). Its metadata
says int8 and carries both APs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from pathlib import Path

from dal import contract
from dal.errors import ConfigError, ModelError
from dal.exporter import export as exporter
from dal.exporter.export import OPSET, ExportOptions, load_images_at_input_size, verify
from dal.trainer.checkpoint import Checkpoint, load_checkpoint

log = logging.getLogger(__name__)

MAX_AP_DROP = 0.01  # AP@[.5:.95] points an INT8 model may lose against the float one
CALIBRATION_FRAMES = 64


def export_onnx(
    ckpt: Checkpoint | str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    options: ExportOptions | None = None,
) -> Path:
    """Export a checkpoint (loaded, or its file) atomically; returns the ONNX file's path."""
    if not isinstance(ckpt, Checkpoint):
        ckpt = load_checkpoint(ckpt)
    return exporter.export_onnx(ckpt, out_path, options or ExportOptions())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="checkpoint from `dal train` (.pt)")
    parser.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    parser.add_argument(
        "--score-threshold",
        type=float,
        help="detection score threshold baked in (default: the checkpoint's)",
    )
    parser.add_argument("--proposals", type=int, help="test-time RPN proposals")
    parser.add_argument("--detections", type=int, help="most boxes per image")
    parser.add_argument("--opset", type=int, default=OPSET)
    parser.add_argument(
        "--verify",
        type=Path,
        nargs="*",
        metavar="IMAGE",
        help="compare onnxruntime with torch on these images",
    )
    q = parser.add_argument_group("INT8 quantization")
    q.add_argument(
        "--quantize",
        choices=("int8",),
        help="write an INT8 model (static, QDQ: backbone and FPN convs) instead of the float one",
    )
    q.add_argument("--calibration", type=Path, help="folder of frames to calibrate on")
    q.add_argument(
        "--calibration-frames",
        type=int,
        default=CALIBRATION_FRAMES,
        help="frames taken from --calibration, spread over it",
    )
    q.add_argument("--val", type=Path, help="COCO JSON: both models' AP is measured on it")
    q.add_argument("--val-images", type=Path, help="image folder (default: the JSON's folder)")
    q.add_argument(
        "--max-ap-drop",
        type=float,
        default=MAX_AP_DROP,
        help="refuse an INT8 model whose AP is more than this below the float model's",
    )
    q.add_argument("--force", action="store_true", help="write it even past --max-ap-drop")


def onnx_ap(model: Path, val: Path, images: Path | None) -> float:
    """AP@[.5:.95] of an exported model on a COCO set, run by the agent's Detector on CPU."""
    from dal.agent.detector import Detector
    from dal.coco import load_coco
    from dal.trainer.evaluate import detector_predictor, evaluate

    coco = load_coco(val, images)
    with Detector(model, providers=("CPUExecutionProvider",)) as detector:
        predictor = detector_predictor(detector)
        metrics, _ = evaluate(predictor, coco, list(detector.info.class_names[1:]), progress=False)
    return float(metrics["AP"])


def _check_quantize_args(args: argparse.Namespace) -> None:
    missing = [f"--{n}" for n in ("calibration", "val") if getattr(args, n) is None]
    if missing:
        raise ConfigError(
            f"--quantize int8 needs {' and '.join(missing)}",
            hint="give a folder of frames to calibrate on and a COCO set to compare AP on",
        )
    if not 1 <= args.calibration_frames <= 10_000:
        raise ConfigError(f"--calibration-frames {args.calibration_frames} is not in 1..10000")
    if not -1.0 <= args.max_ap_drop <= 1.0:
        raise ConfigError(f"--max-ap-drop {args.max_ap_drop} is not in -1..1 (AP points)")


def quantize(ckpt: Checkpoint, args: argparse.Namespace, options: ExportOptions) -> Path:
    """Float export to a temporary file, INT8 from it, both evaluated; the INT8 model goes to
    --out only when it passes the AP gate (or --force)."""
    from dal.exporter.quantize import calibration_images, copy_with_metadata, quantize_int8

    _check_quantize_args(args)
    width, height = ckpt.config.input_width, ckpt.config.input_height
    frames = calibration_images(args.calibration, args.calibration_frames, width, height)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(ckpt, Path(tmp) / "fp32.onnx", options)
        trial = quantize_int8(fp32, Path(tmp) / "int8.onnx", frames)
        fp32_ap = onnx_ap(fp32, args.val, args.val_images)
        int8_ap = onnx_ap(trial, args.val, args.val_images)
        drop = fp32_ap - int8_ap
        report = {"fp32_ap": fp32_ap, "int8_ap": int8_ap, "ap_drop": drop}
        print(json.dumps(report))
        if drop > args.max_ap_drop:
            message = (
                f"INT8 AP {int8_ap:.4f} is {drop:.4f} below the float model's {fp32_ap:.4f} "
                f"on {args.val}, more than --max-ap-drop {args.max_ap_drop:g}"
            )
            if not args.force:
                raise ModelError(
                    message + f"; {args.out} not written",
                    hint="calibrate on more frames like the agent's, export the float model, "
                    "or pass --force to write it anyway",
                )
            log.warning("%s; written anyway (--force)", message)
        meta = {contract.META_FP32_AP: f"{fp32_ap:.6f}", contract.META_INT8_AP: f"{int8_ap:.6f}"}
        return copy_with_metadata(trial, args.out, meta)


def run(args: argparse.Namespace) -> int:
    ckpt = load_checkpoint(args.checkpoint)
    options = ExportOptions(args.score_threshold, args.proposals, args.detections, args.opset)
    if args.quantize:
        path = quantize(ckpt, args, options)
        print(f"exported {path} (int8, {path.stat().st_size / 1e6:.1f} MB)")
        return 0
    path = export_onnx(ckpt, args.out, options)
    print(f"exported {path} ({path.stat().st_size / 1e6:.1f} MB)")
    if args.verify:
        images = load_images_at_input_size(
            args.verify, ckpt.config.input_width, ckpt.config.input_height
        )
        report = verify(ckpt, path, images, options)
        print(json.dumps(report, indent=2))
        if not report["ok"]:
            raise ModelError(
                f"{path}: onnxruntime disagrees with torch ({report})",
                hint="report this with the checkpoint; do not deploy the file",
            )
    return 0
