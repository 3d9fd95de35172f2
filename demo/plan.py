"""What a demo run makes: image counts, image size, epochs. Two plans (fast, full), and the
command line's overrides of them."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class DemoPlan:
    size: tuple[int, int]
    synthetic: int
    pool: int
    val: int
    base_epochs: int
    cycle_epochs: int
    samples: int = 4  # Cycles samples per pixel (networked mode)
    cycle_min_steps: int = 60  # fewest SGD steps per fine-tune, however few the labels


PLANS = {
    "fast": DemoPlan(
        size=(320, 192),
        synthetic=24,
        pool=24,
        val=8,
        base_epochs=2,
        cycle_epochs=1,
        cycle_min_steps=6,
    ),
    "full": DemoPlan(
        size=(320, 192), synthetic=80, pool=60, val=20, base_epochs=6, cycle_epochs=3, samples=8
    ),
}


def plan_from_args(args: argparse.Namespace) -> DemoPlan:
    """The fast or full plan, with the counts the command line gave in place of its own."""
    plan = PLANS["fast" if args.fast else "full"]
    changes = {
        field: getattr(args, attr)
        for field, attr in (
            ("synthetic", "synthetic"),
            ("pool", "pool"),
            ("val", "val"),
            ("base_epochs", "epochs"),
            ("cycle_epochs", "cycle_epochs"),
            ("samples", "samples"),
        )
        if getattr(args, attr, None) is not None
    }
    return replace(plan, **changes)
