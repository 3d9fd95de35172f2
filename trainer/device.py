"""Where training runs and in which precision: `--device auto|cpu|cuda|cuda:N`, `--amp`.

`auto` takes the first CUDA device when torch sees one, else the CPU, and says which. Mixed
precision: bf16 on GPUs that support it (no loss scaling needed), else fp16 with a GradScaler;
on a CPU only where the processor has bf16 instructions (AVX512-BF16 or AMX), since emulated
bf16 is slower than fp32.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dal.errors import ConfigError

log = logging.getLogger(__name__)

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def parse_device(spec: str) -> str:
    """Check a --device value's form (argparse type); the device itself is checked later."""
    if not _DEVICE_PATTERN.match(spec):
        raise ConfigError(f"device {spec!r} is not one of {DEVICE_CHOICES}")
    return spec


def resolve_device(spec: str = "auto", *, cuda_available: bool | None = None) -> torch.device:
    """The torch device for a --device value; CUDA asked for but absent is a ConfigError."""
    parse_device(spec)
    available = torch.cuda.is_available() if cuda_available is None else cuda_available
    if spec == "auto":
        device = torch.device("cuda" if available else "cpu")
        log.info("device auto: %s (%s)", device, "CUDA found" if available else "no CUDA device")
        return device
    device = torch.device(spec)
    if device.type == "cuda":
        if not available:
            raise ConfigError(
                f"device {spec} asked for, but torch sees no CUDA device",
                hint="use --device cpu (or auto), or check the NVIDIA driver with nvidia-smi",
            )
        count = torch.cuda.device_count() if cuda_available is None else None
        if count is not None and device.index is not None and device.index >= count:
            raise ConfigError(f"device {spec} asked for, but there are {count} CUDA devices")
    log.info("device: %s", device)
    return device


def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the processor computes bf16 natively (flags read from /proc/cpuinfo)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return any(flag in flags for flag in _CPU_BF16_FLAGS)


@dataclass(frozen=True)
class Precision:
    """The autocast dtype (None: fp32) and whether gradients need loss scaling (fp16 only)."""

    dtype: torch.dtype | None
    scaled: bool = False

    @property
    def name(self) -> str:
        return "fp32" if self.dtype is None else str(self.dtype).removeprefix("torch.")


def choose_precision(device: torch.device, amp: bool | None) -> Precision:
    """`amp` None means: on for CUDA, off for CPU (measured: bf16 gains little on a CPU)."""
    if device.type == "cuda":
        if amp is False:
            return Precision(None)
        if torch.cuda.is_bf16_supported():
            return Precision(torch.bfloat16)
        return Precision(torch.float16, scaled=True)
    if not amp:
        return Precision(None)
    if not cpu_has_bf16():
        log.warning("--amp: this CPU has no bf16 instructions (AVX512-BF16/AMX); training in fp32")
        return Precision(None)
    return Precision(torch.bfloat16)


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """The autocast context for one forward pass (a no-op in fp32)."""
    if precision.dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=precision.dtype)


def set_cpu_threads(threads: int | None) -> int:
    """Intra-op threads: all cores unless told; one inter-op thread (detection runs serially)."""
    count = threads or os.cpu_count() or 1
    torch.set_num_threads(count)
    with contextlib.suppress(RuntimeError):  # only settable before the first parallel work
        torch.set_num_interop_threads(1)
    return count


def add_device_arguments(parser: Any, *, amp: bool = True, scope: str = "training") -> None:
    """--device (and --amp) for every command that runs torch: one definition, one help."""
    parser.add_argument(
        "--device",
        type=parse_device,
        default="auto",
        help=f"{scope}: auto (CUDA when torch sees it, else CPU; logged), cpu, cuda or cuda:N",
    )
    if amp:
        parser.add_argument(
            "--amp",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="mixed precision: default on with CUDA (bf16, else fp16 + GradScaler), off on "
            "a CPU (bf16 only where the CPU has AVX512-BF16/AMX)",
        )
