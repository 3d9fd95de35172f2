"""What defines an experiment's numbers, and the guard that keeps one folder to one setting.

`ProtocolConfig` is everything that changes a number in results.csv; its fingerprint goes into
experiment.json, and a later call in the same folder with other settings is refused, so one
results.csv never mixes runs that are not comparable.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dal.errors import ConfigError
from dal.fileio import atomic_write_json
from dal.trainer.protocol_plan import Chain


@dataclass(frozen=True)
class ProtocolConfig:
    """What defines the results; everything here goes into experiment.json."""

    real: Path
    val: Path
    out: Path
    synthetic: Path | None = None
    base: Path | None = None
    arch: str = "mobilenet_v2_fpn"
    backbone_weights: str = "imagenet"
    input_size: str = "640x360"
    base_epochs: int = 10
    steps: int = 40
    epochs: int = 15
    batch_size: int = 4
    lr: float | None = None
    base_lr: float | None = None
    beta: float = 2.0
    score_method: str = "margin"
    aggregate: str = "sum"
    allow_labelled: bool = False
    proposals: int = 300
    score_threshold: float = 0.05
    augment: bool = True
    base_seed: int = 0
    # R's start: 0 = the backbone alone (random only); N = M(L0) on N random pool images
    initial: int = 0
    keep_checkpoints: bool = False
    device: str = "auto"
    amp: bool | None = None

    # fields that do not change any number in results.csv (beyond floating-point noise)
    NOT_RESULTS = ("out", "keep_checkpoints", "device", "amp")

    def fingerprint(self) -> dict[str, Any]:
        data = asdict(self)
        for name in self.NOT_RESULTS:
            data.pop(name)
        return {k: str(v) if isinstance(v, Path) else v for k, v in data.items()}


def check_fingerprint(path: Path, config: ProtocolConfig) -> None:
    """Refuse to mix runs made with other settings into one results.csv."""
    if not path.exists():
        return
    try:
        recorded = json.loads(path.read_text(encoding="utf-8")).get("config", {})
    except (OSError, ValueError, AttributeError) as err:
        raise ConfigError(
            f"{path}: cannot read the recorded settings ({err})",
            hint="restore the file, or use another --out",
        ) from None
    now = config.fingerprint()
    # a setting added after the folder was made was, by then, at its default
    defaults = {f.name: f.default for f in fields(ProtocolConfig)}
    before = {k: recorded.get(k, defaults.get(k)) for k in now}
    changed = sorted(k for k in now if before[k] != now[k])
    if changed:
        detail = ", ".join(f"{k}: {before[k]!r} -> {now[k]!r}" for k in changed)
        raise ConfigError(
            f"{path}: this experiment folder was run with other settings ({detail})",
            hint="use another --out for new settings, or restore them to resume",
        )


def write_settings(path: Path, config: ProtocolConfig, chains: list[Chain]) -> None:
    """experiment.json: the settings, the plan and the software that produced results.csv."""
    import platform

    import torch
    import torchvision

    atomic_write_json(
        path,
        {
            "config": config.fingerprint(),
            "out": str(config.out),
            "plan": [asdict(ch) for ch in chains],
            "software": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "torchvision": torchvision.__version__,
                "threads": torch.get_num_threads(),
            },
            "machine": {"processor": platform.processor(), "cpus": _cpus()},
            "written": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
