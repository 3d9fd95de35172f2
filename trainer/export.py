"""`dal export`: a checkpoint from `dal train` -> the ONNX detector the agent runs.

Reading a checkpoint file is the trainer's business, so this command and the path-taking
`export_onnx` live here; the work is dal/exporter's, which only ever sees a loaded Checkpoint.
`--verify IMAGE...` compares onnxruntime with torch on those images.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from dal.errors import ModelError
from dal.exporter import export as exporter
from dal.exporter.export import OPSET, ExportOptions, load_images_at_input_size, verify
from dal.trainer.checkpoint import Checkpoint, load_checkpoint


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


def run(args: argparse.Namespace) -> int:
    ckpt = load_checkpoint(args.checkpoint)
    options = ExportOptions(args.score_threshold, args.proposals, args.detections, args.opset)
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
