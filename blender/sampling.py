"""Draw one random scene as plain data (no bpy): objects, materials, camera, lights, background.

Everything random about an image is decided here from one numpy Generator, and only here, so
the same (seed, index) gives the same plan on any machine and with any number of workers. The
plan is JSON-friendly and stored beside each image; scene.py turns it into Blender objects.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dal.blender.camera import look_at, spherical
from dal.blender.config import RenderConfig

# The paper's target materials were texture images, either grey or dark blue metal.
METAL_PRESETS: dict[str, tuple[str, float, float]] = {
    # name: (sRGB colour, metallic, roughness)
    "gray_metal": ("#8e9196", 1.0, 0.35),
    "dark_blue_metal": ("#1c2a4a", 0.85, 0.4),
}


@dataclass(frozen=True)
class ShapeInfo:
    """Geometry the planner needs: vertices [n, 3] in metres at scale 1, centred on the bounding
    box centre; triangles [m, 3]; radius of the bounding sphere about the centre."""

    vertices: np.ndarray
    triangles: np.ndarray
    radius: float


@dataclass(frozen=True)
class Assets:
    """What a scene may be built from; file lists are sorted so that picks are reproducible."""

    shapes: dict[str, ShapeInfo]
    models: list[tuple[str, str]]  # (shape key, class name), one per target mesh
    distractor_keys: list[str]  # shape keys of primitives and distractor meshes
    distractor_is_primitive: dict[str, bool]
    textures: list[Path]
    hdris: list[Path]
    photos: list[Path]


@dataclass
class MaterialPlan:
    kind: str  # "principled", "metal", "procedural", "texture" or "original"
    color: tuple[float, float, float] = (0.5, 0.5, 0.5)  # linear RGB
    color2: tuple[float, float, float] = (0.5, 0.5, 0.5)  # second colour of "procedural"
    metallic: float = 0.0
    roughness: float = 0.5
    texture: str | None = None
    pattern_scale: float = 10.0  # noise scale of "metal"/"procedural", repeats of "texture"


@dataclass
class ObjectPlan:
    shape: str
    role: str  # "target" or "distractor"
    class_name: str | None
    pass_index: int
    scale: float
    rotation: list[list[float]]  # 3x3
    location: list[float]
    material: MaterialPlan

    def world_vertices(self, info: ShapeInfo) -> np.ndarray:
        rot = np.asarray(self.rotation)
        return (info.vertices * self.scale) @ rot.T + np.asarray(self.location)


@dataclass
class LightPlan:
    type: str  # "POINT" or "AREA"
    location: list[float]
    pose: list[list[float]]  # 4x4, area lights face the look-at point
    power: float  # watts as seen from 1 m, see LightingConfig.light_power
    temperature: float
    size: float
    distance: float  # to the look-at point, metres


@dataclass
class ScenePlan:
    objects: list[ObjectPlan]
    camera_pose: list[list[float]]
    lighting: str  # "hdri" or "lights"
    hdri: str | None = None
    hdri_strength: float = 1.0
    hdri_rotation: float = 0.0
    ambient: float = 0.0
    lights: list[LightPlan] = field(default_factory=list)
    ground: MaterialPlan | None = None
    photo: str | None = None
    photo_crop: tuple[float, float, float] = (1.0, 0.5, 0.5)
    photo_flip: bool = False
    background_seed: int = 0
    cycles_seed: int = 0

    @property
    def targets(self) -> list[ObjectPlan]:
        return [o for o in self.objects if o.role == "target"]


def srgb_to_linear(hex_colour: str) -> tuple[float, float, float]:
    """'#rrggbb' -> linear RGB, which is what Blender's shader inputs expect."""
    c = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)]) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return (float(lin[0]), float(lin[1]), float(lin[2]))


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation matrix uniform over SO(3) (unit quaternion from normal samples)."""
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def yaw_rotation(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _random_colour(rng: np.random.Generator) -> tuple[float, float, float]:
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.1, 1.0), rng.uniform(0.15, 1.0))
    return srgb_to_linear(f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}")


def plan_material(
    rng: np.random.Generator, choices: tuple[str, ...], cfg: RenderConfig, textures: list[Path]
) -> MaterialPlan:
    """Draw one material from a list of names (see MaterialsConfig), then jitter it."""
    usable = [c for c in choices if c != "texture" or textures]
    name = usable[int(rng.integers(len(usable)))] if usable else "random_color"
    m = cfg.materials
    if name == "original":
        return MaterialPlan("original")
    if name in METAL_PRESETS:
        colour, metallic, roughness = METAL_PRESETS[name]
        plan = MaterialPlan(
            "metal",
            srgb_to_linear(colour),
            metallic=metallic,
            roughness=roughness,
            pattern_scale=float(rng.uniform(5, 40)),
        )
    elif name == "random_color":
        plan = MaterialPlan(
            "principled",
            _random_colour(rng),
            metallic=float(rng.random() ** 2),
            roughness=float(rng.uniform(0.2, 0.9)),
        )
    elif name == "procedural":
        plan = MaterialPlan(
            "procedural",
            _random_colour(rng),
            _random_colour(rng),
            metallic=float(rng.random() ** 3),
            roughness=float(rng.uniform(0.3, 0.9)),
            pattern_scale=float(rng.uniform(2, 30)),
        )
    elif name == "texture":
        tex = textures[int(rng.integers(len(textures)))]
        plan = MaterialPlan(
            "texture",
            metallic=float(rng.random() ** 3),
            roughness=float(rng.uniform(0.3, 0.9)),
            texture=str(tex),
            pattern_scale=float(rng.uniform(1, 6)),
        )
    else:  # "#rrggbb"
        plan = MaterialPlan("principled", srgb_to_linear(name), metallic=0.0, roughness=0.5)
    gain = 1.0 + rng.uniform(-m.brightness_jitter, m.brightness_jitter)
    plan.color = tuple(float(min(1.0, c * gain)) for c in plan.color)  # type: ignore[assignment]
    plan.metallic = float(
        np.clip(plan.metallic + rng.uniform(-m.metallic_jitter, m.metallic_jitter), 0, 1)
    )
    plan.roughness = float(
        np.clip(plan.roughness + rng.uniform(-m.roughness_jitter, m.roughness_jitter), 0.02, 1)
    )
    return plan


def _uniform(rng: np.random.Generator, pair: tuple[float, ...]) -> float:
    return float(rng.uniform(pair[0], pair[1]))


def _place(
    rng: np.random.Generator,
    cfg: RenderConfig,
    info: ShapeInfo,
    scale: float,
    placed: list[tuple[np.ndarray, float]],
) -> tuple[np.ndarray, np.ndarray]:
    """Rotation and location of one object; redrawn while its sphere hits an earlier one."""
    sc = cfg.scene
    half = np.asarray(sc.offset)
    radius = info.radius * scale
    for _ in range(30):
        rot = (
            random_rotation(rng)
            if sc.rotation == "free"
            else yaw_rotation(rng.uniform(0, 2 * math.pi))
        )
        loc = rng.uniform(-half, half)
        if sc.ground:  # rest the lowest point on the bench
            loc[2] = -float(((info.vertices * scale) @ rot.T)[:, 2].min())
        clear = all(np.linalg.norm(loc - c) >= radius + r for c, r in placed)
        if clear or not sc.avoid_overlap:
            break
    placed.append((loc, radius))
    return rot, loc


def _lights(rng: np.random.Generator, cfg: RenderConfig, target: np.ndarray) -> list[LightPlan]:
    lc = cfg.lighting
    out = []
    for _ in range(int(rng.integers(lc.lights[0], lc.lights[1] + 1))):
        kind = lc.light_types[int(rng.integers(len(lc.light_types)))]
        distance = _uniform(rng, cfg.camera.distance)
        pos = target + spherical(
            distance, rng.uniform(0, math.radians(80)), rng.uniform(0, 2 * math.pi)
        )
        power, temperature = _uniform(rng, lc.light_power), _uniform(rng, lc.temperature_k)
        size = float(rng.uniform(0.1, 0.5))
        pose = look_at(pos, target).tolist()
        out.append(LightPlan(kind, pos.tolist(), pose, power, temperature, size, distance))
    return out


def plan_scene(rng: np.random.Generator, cfg: RenderConfig, assets: Assets) -> ScenePlan:
    """One random scene. Rejection (out of frame, hidden) is the caller's: it draws again."""
    sc, cam = cfg.scene, cfg.camera
    placed: list[tuple[np.ndarray, float]] = []
    objects: list[ObjectPlan] = []
    for i in range(int(rng.integers(sc.instances[0], sc.instances[1] + 1))):
        key, class_name = assets.models[int(rng.integers(len(assets.models)))]
        rot, loc = _place(rng, cfg, assets.shapes[key], 1.0, placed)
        material = plan_material(rng, cfg.materials.target, cfg, assets.textures)
        objects.append(
            ObjectPlan(key, "target", class_name, i + 1, 1.0, rot.tolist(), loc.tolist(), material)
        )
    n_distractors = int(rng.integers(cfg.distractors.count[0], cfg.distractors.count[1] + 1))
    for _ in range(n_distractors if assets.distractor_keys else 0):
        key = assets.distractor_keys[int(rng.integers(len(assets.distractor_keys)))]
        scale = _uniform(rng, cfg.distractors.size) if assets.distractor_is_primitive[key] else 1.0
        rot, loc = _place(rng, cfg, assets.shapes[key], scale, placed)
        material = plan_material(rng, cfg.materials.distractor, cfg, assets.textures)
        objects.append(
            ObjectPlan(
                key,
                "distractor",
                None,
                len(objects) + 1,
                scale,
                rot.tolist(),
                loc.tolist(),
                material,
            )
        )
    target = rng.uniform(-cam.look_at_jitter, cam.look_at_jitter, 3)
    eye = target + spherical(
        _uniform(rng, cam.distance),
        math.radians(_uniform(rng, cam.inclination_deg)),
        math.radians(_uniform(rng, cam.azimuth_deg)),
    )
    plan = ScenePlan(objects, look_at(eye, target).tolist(), "hdri")
    mode = cfg.lighting.mode
    if mode == "mixed":
        mode = "hdri" if rng.random() < 0.5 else "lights"
    if mode == "hdri" and assets.hdris:
        plan.hdri = str(assets.hdris[int(rng.integers(len(assets.hdris)))])
        plan.hdri_strength = _uniform(rng, cfg.lighting.hdri_strength)
        plan.hdri_rotation = float(rng.uniform(0, 2 * math.pi))
    else:
        plan.lighting = "lights"
        plan.lights = _lights(rng, cfg, target)
        plan.ambient = _uniform(rng, cfg.lighting.ambient)
    if sc.ground:
        plan.ground = plan_material(
            rng, ("procedural", "random_color", "texture"), cfg, assets.textures
        )
    elif assets.photos:
        plan.photo = str(assets.photos[int(rng.integers(len(assets.photos)))])
        plan.photo_crop = (float(rng.uniform(1.0, 1.6)), float(rng.random()), float(rng.random()))
        plan.photo_flip = bool(rng.random() < 0.5)
    plan.background_seed = int(rng.integers(2**31))
    plan.cycles_seed = int(rng.integers(2**31))
    return plan


def camera_inside(plan: ScenePlan, assets: Assets, ground: bool) -> bool:
    """True when the camera sits within an object's bounding sphere or under the bench."""
    eye = np.asarray(plan.camera_pose)[:3, 3]
    if ground and eye[2] <= 0.01:
        return True
    return any(
        np.linalg.norm(eye - np.asarray(o.location))
        <= assets.shapes[o.shape].radius * o.scale * 1.05
        for o in plan.objects
    )


def plan_to_dict(plan: ScenePlan) -> dict[str, Any]:
    """JSON-friendly copy of a plan (stored beside each image)."""
    return asdict(plan)
