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
    # The 7 cm bracket at 0.2-0.4 m is 50-100 px wide in a 320 px frame, a size the light
    # detector finds; at the presets' 0.3-1.1 m it was 20-30 px and M0 stayed at AP 0.23.
    camera_distance: tuple[float, float] = (0.2, 0.4)


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
        size=(320, 192), synthetic=160, pool=60, val=30, base_epochs=8, cycle_epochs=3, samples=8
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
