"""Exactly one onnxruntime build per environment: the start-up check of the agent and trainer.

The builds (onnxruntime, onnxruntime-gpu, onnxruntime-openvino, ...) are separate distributions
that install the same `onnxruntime` package: with two installed, the files of whichever went in
last win, pip still reports both, and uninstalling one breaks the other. The symptom is far from
the cause (a provider missing, or a crash in a native library), so the agent and the trainer
refuse to start (exit 78) and say which to remove. Install extras: cpu, nvidia, intel.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Iterable

from dal.errors import ConfigError

# distribution name -> the install extra that brings it (None: not one of dal's extras)
BUILDS: dict[str, str | None] = {
    "onnxruntime": "cpu",
    "onnxruntime-gpu": "nvidia",
    "onnxruntime-openvino": "intel",
    "onnxruntime-directml": None,
    "onnxruntime-qnn": None,
    "onnxruntime-rocm": None,
    "onnxruntime-migraphx": None,
    "onnxruntime-cann": None,
    "onnxruntime-training": None,
}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_builds(names: Iterable[str] | None = None) -> list[str]:
    """The onnxruntime builds among `names` (default: the installed distributions), sorted."""
    if names is None:
        names = (d.metadata["Name"] or "" for d in importlib.metadata.distributions())
    return sorted({_normalise(n) for n in names} & set(BUILDS))


def check_single_runtime(names: Iterable[str] | None = None) -> None:
    """ConfigError naming what to uninstall when more than one build is installed."""
    builds = installed_builds(names)
    if len(builds) <= 1:
        return
    choices = ", ".join(f"{b} (dal[{BUILDS[b]}])" if BUILDS[b] else b for b in builds)
    raise ConfigError(
        f"{len(builds)} onnxruntime builds are installed: {choices}; they overwrite each "
        "other's files",
        hint=f"keep one: `pip uninstall -y {' '.join(builds)}`, then `pip install "
        "--force-reinstall` the one for this machine (onnxruntime-gpu for NVIDIA GPUs, "
        "onnxruntime-openvino for Intel CPUs/GPUs/NPUs, onnxruntime otherwise)",
    )
