"""INT8 post-training quantization of an exported detector: onnxruntime static, QDQ format.

Why only the backbone and FPN convolutions: they are nearly all of the arithmetic (MobileNetV2
plus the FPN's 3x3 convs at stride 4..64), and int8 convolutions run on VNNI/AMX cores at several
times fp32 speed. The RPN head decides which proposals survive NMS, and the RoI box head's
scores feed the probs the agent scores frames with; quantizing them saves little and moves
detections, so they, NMS, RoIAlign and the post-processing stay float. The inputs and outputs
(dal/contract.py) do not change: uint8 image in, float boxes, scores, probs and feature out.

QDQ (QuantizeLinear/DequantizeLinear pairs around each quantized conv) is the format both
onnxruntime's CPU provider and OpenVINO fuse into int8 kernels. Weights are int8 per output
channel (MobileNetV2's depthwise convs have channels of very different ranges), activations
uint8 per tensor, calibrated by min/max on frames fitted to the model input as the agent fits
them.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx

from dal import contract
from dal.coco import read_image
from dal.errors import DatasetError, ModelError
from dal.fileio import atomic_write_bytes
from dal.letterbox import fit_image, plan_fit

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "int8")
# node-name prefixes: the MobileNetV2 body and the FPN. The RPN head's shared 3x3 conv costs as
# much as a backbone stage on P2, but quantizing it too cost 0.065 AP on YCB-Video frames
# (bench_runtimes.py: 0.785 -> 0.720 on the CPU provider, 0.754 on OpenVINO); without it, none.
QUANTIZED_SCOPES = ("/backbone/",)
# Conv, and what sits between two convs there (ReLU6 as Clip, residual and top-down Add, the FPN's
# upsampling Resize): quantized too, so activations stay int8 from one conv to the next instead of
# a DequantizeLinear/QuantizeLinear round trip around every conv.
QUANTIZED_OPS = ("Conv", "Clip", "Relu", "Add", "Resize", "MaxPool")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def calibration_images(folder: Path, count: int, width: int, height: int) -> list[np.ndarray]:
    """`count` images spread evenly over the folder's images (sorted by name, subfolders too),
    letterboxed to the model input like the agent's frames."""
    if count < 1:
        raise DatasetError(f"calibration needs at least 1 frame, got {count}")
    if not folder.is_dir():
        raise DatasetError(
            f"calibration folder {folder} not found",
            hint="give --calibration a folder of frames like the ones the agent sees",
        )
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    picks = sorted({int(i) for i in np.linspace(0, len(paths) - 1, min(count, len(paths)))})
    out = []
    for i in picks:
        image = read_image(paths[i])
        out.append(fit_image(image, plan_fit(image.shape[1], image.shape[0], width, height)))
    return out


def quantizable_nodes(
    model: onnx.ModelProto, scopes: Sequence[str] = QUANTIZED_SCOPES
) -> list[str]:
    """Names of the QUANTIZED_OPS nodes under `scopes` (the exporter's torch module paths)."""
    return [
        n.name
        for n in model.graph.node
        if n.op_type in QUANTIZED_OPS and any(n.name.startswith(s) for s in scopes)
    ]


class _Frames:
    """onnxruntime's CalibrationDataReader protocol over fitted uint8 frames."""

    def __init__(self, frames: Iterable[np.ndarray]) -> None:
        self._frames: Iterator[np.ndarray] = iter(frames)

    def get_next(self) -> dict[str, np.ndarray] | None:
        frame = next(self._frames, None)
        return None if frame is None else {contract.INPUT_NAME: frame}


def fold_constants(fp32_path: Path, out_path: Path) -> Path:
    """onnxruntime's basic graph optimizations, saved: constant folding, and frozen batch norms
    (a Mul and an Add after each conv) folded into the convs' weights. Quantizing first would put
    a QuantizeLinear/DequantizeLinear pair between each conv and its Mul, which then can no longer
    be fused: the INT8 model came out slower than the float one."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(out_path)
    ort.InferenceSession(str(fp32_path), options, providers=["CPUExecutionProvider"])
    return out_path


def quantize_int8(
    fp32_path: Path,
    out_path: Path,
    frames: Sequence[np.ndarray],
    *,
    per_channel: bool = True,
    metadata: dict[str, str] | None = None,
    scopes: Sequence[str] = QUANTIZED_SCOPES,
) -> Path:
    """Write the INT8 (QDQ) model of `fp32_path` to `out_path` atomically; `metadata` is added
    to the FP32 model's. ModelError when the graph has nothing to quantize."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    source = onnx.load(str(fp32_path))
    nodes = quantizable_nodes(source, scopes)
    if not nodes:
        raise ModelError(
            f"{fp32_path}: no convolutions under {list(scopes)} to quantize",
            hint="quantize a model exported by this version of `dal export`",
        )
    if not frames:
        raise DatasetError("no calibration frames")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "int8.onnx"
        folded = fold_constants(fp32_path, Path(tmp) / "folded.onnx")
        nodes = quantizable_nodes(onnx.load(str(folded)), scopes)
        quantize_static(
            str(folded),
            str(raw),
            _Frames(frames),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OPS),
            nodes_to_quantize=nodes,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"CalibTensorRangeSymmetric": False},
        )
        model = onnx.load(str(raw))
    meta = {p.key: p.value for p in source.metadata_props}
    meta.update(metadata or {})
    meta[contract.META_PRECISION] = "int8"
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, meta)
    model.doc_string = source.doc_string + " (int8 QDQ backbone and FPN)"
    path = atomic_write_bytes(out_path, model.SerializeToString())
    log.info("quantized %d convolutions of %s into %s", len(nodes), fp32_path, path)
    return path


def copy_with_metadata(source: Path, out_path: Path, metadata: dict[str, str]) -> Path:
    """Write `source` to `out_path` atomically with `metadata` added to its own."""
    model = onnx.load(str(source))
    meta = {p.key: p.value for p in model.metadata_props}
    meta.update(metadata)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, meta)
    return atomic_write_bytes(out_path, model.SerializeToString())
