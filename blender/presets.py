"""Named starting points for the knobs; a config file and the command line apply on top.

- `paper`: the defaults (blender-gen's randomisation, backgrounds composited behind the part).
- `workbench`: the part lying on a bench surface under overhead lights, seen from above at
  a working distance: the look of a shop-floor camera over a workbench (used by `dal demo`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "workbench": {
        "scene": {"ground": True, "rotation": "yaw", "offset": [0.12, 0.08, 0.0]},
        "camera": {"distance": [0.35, 0.7], "inclination_deg": [0.0, 40.0], "look_at_jitter": 0.03},
        "distractors": {
            "count": [0, 3],
            "size": [0.03, 0.1],
            "shapes": ["cube", "cylinder", "torus", "uv_sphere"],
        },
        "lighting": {
            "mode": "mixed",
            "light_types": ["AREA"],
            "lights": [1, 2],
            "temperature_k": [4000.0, 6500.0],
        },
    },
}


def merged(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """`top` over `base`, table by table (a key in top replaces the one in base)."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out
