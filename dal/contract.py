"""The detector contract: what an exported ONNX model takes and gives, shared by both ends.

The exporter writes models that follow it; the agent reads them through it. Changing a name here
is a wire change: bump CONTRACT_VERSION.
"""

from __future__ import annotations

CONTRACT_VERSION = "1"

# Input: one RGB image, uint8, height x width x 3, at the fixed size in metadata "dal.input_size".
# uint8 HWC keeps the agent free of float conversion; normalisation happens inside the graph.
INPUT_NAME = "image"
INPUT_FORMAT = "uint8_hwc_rgb"
DEFAULT_INPUT_WIDTH = 640
DEFAULT_INPUT_HEIGHT = 360

# Outputs of the one forward pass. N may be 0.
OUTPUT_BOXES = "boxes"  # float32 [N, 4] x1, y1, x2, y2 in input pixels
OUTPUT_LABELS = "labels"  # int64 [N] class index, 1..C (0 is background)
OUTPUT_SCORES = "scores"  # float32 [N] score of the kept class
OUTPUT_PROBS = "probs"  # float32 [N, C+1] full softmax row of each kept box, background first
OUTPUT_FEATURE = "feature"  # float32 [256] global average pool of FPN level P2 (stride 4)
OUTPUT_NAMES = (OUTPUT_BOXES, OUTPUT_LABELS, OUTPUT_SCORES, OUTPUT_PROBS, OUTPUT_FEATURE)
FEATURE_DIM = 256

# ONNX metadata_props keys. Values are strings; JSON where noted.
META_CONTRACT = "dal.contract"
META_VERSION = "dal.model_version"
META_PARENT = "dal.parent_version"
META_CLASSES = "dal.class_names"  # JSON list, index 0 = "__background__"
META_INPUT_SIZE = "dal.input_size"  # "WIDTHxHEIGHT"
META_INPUT_FORMAT = "dal.input_format"
META_CREATED = "dal.created"  # ISO 8601 UTC
META_TRAINING = "dal.training_summary"  # JSON object
META_VAL_AP = "dal.val_ap"  # float as text, "" when unknown
META_WEIGHTS_SHA256 = "dal.weights_sha256"
META_ARCH = "dal.architecture"
META_SCORE_THRESHOLD = "dal.score_threshold"
# Optional, written by `dal export --quantize int8`: "int8" or "fp32" (absent = fp32), and the AP
# that export measured on its --val set for the float model and for this one.
META_PRECISION = "dal.precision"
META_FP32_AP = "dal.fp32_ap"
META_INT8_AP = "dal.int8_ap"
REQUIRED_META = (
    META_CONTRACT,
    META_VERSION,
    META_CLASSES,
    META_INPUT_SIZE,
    META_INPUT_FORMAT,
    META_WEIGHTS_SHA256,
)

BACKGROUND = "__background__"


def format_input_size(width: int, height: int) -> str:
    return f"{width}x{height}"


def parse_input_size(text: str) -> tuple[int, int]:
    """'640x360' -> (640, 360); ValueError on anything else."""
    w, sep, h = text.partition("x")
    if not sep or not w.isdigit() or not h.isdigit():
        raise ValueError(f"input size {text!r} is not WIDTHxHEIGHT")
    return int(w), int(h)
