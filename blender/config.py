"""The renderer's knobs: one frozen dataclass per TOML section, each knob with a default and help.

Defaults follow ignc-research/blender-gen (the paper authors' generator) where it has the knob:
camera sphere 0.3-1.1 m, inclination 0-90°, azimuth 0-360°, object offset ±0.2 m, horizontal
field of view 74.5°, up to three distractors, HDRI strength 1-8, 1-3 lights of 20-80 W, 640x360,
targets at most 10 % outside the frame. Knobs blender-gen lacks have defaults chosen here and
say so in their help. `python -m dal.config dal.blender.config:RenderConfig` prints the
documented default file; docs/rendering.md carries the same text (a test keeps them equal).

Ranges are two-element arrays `[low, high]`, sampled uniformly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from dal.config import doc
from dal.errors import ConfigError

TITLE = "dal render: knobs of the synthetic renderer (blender/config.py)."

# Material entries a list may name (besides "#rrggbb" colours).
MATERIAL_KINDS = (
    "gray_metal",
    "dark_blue_metal",
    "random_color",
    "procedural",
    "texture",
    "original",
)
PRIMITIVES = ("cube", "uv_sphere", "ico_sphere", "cylinder", "cone", "torus", "monkey")
LIGHT_TYPES = ("POINT", "AREA")


def check_range(
    name: str, value: tuple[float, ...], low: float | None = None, high: float | None = None
) -> None:
    """A [low, high] pair inside optional bounds; raises ValueError (the loader names the file)."""
    if len(value) != 2:
        raise ValueError(f"{name} must be a [low, high] pair, got {list(value)}")
    if value[0] > value[1]:
        raise ValueError(f"{name}: low {value[0]} is above high {value[1]}")
    if low is not None and value[0] < low:
        raise ValueError(f"{name} must be ≥ {low}, got {list(value)}")
    if high is not None and value[1] > high:
        raise ValueError(f"{name} must be ≤ {high}, got {list(value)}")


def check_materials(name: str, entries: tuple[str, ...]) -> None:
    """Each entry is a known kind or a #rrggbb colour."""
    if not entries:
        raise ValueError(f"{name} needs at least one entry")
    for entry in entries:
        if entry in MATERIAL_KINDS:
            continue
        if len(entry) == 7 and entry.startswith("#"):
            try:
                int(entry[1:], 16)
                continue
            except ValueError:
                pass
        raise ValueError(
            f"{name}: {entry!r} is neither one of {', '.join(MATERIAL_KINDS)} nor a #rrggbb colour"
        )


@dataclass(frozen=True)
class SceneConfig:
    instances: tuple[int, ...] = field(
        default=(1, 1),
        metadata=doc(
            "how many target instances per image [low, high]; each is one of the models, drawn "
            "uniformly (blender-gen: one)"
        ),
    )
    offset: tuple[float, ...] = field(
        default=(0.2, 0.2, 0.2),
        metadata=doc(
            "half-range of each object's random offset from the origin along x, y, "
            "z, metres (blender-gen obj_location)"
        ),
    )
    rotation: Literal["free", "yaw"] = field(
        default="free",
        metadata=doc(
            "object orientation: 'free' uniform over all rotations, 'yaw' only about the "
            "vertical axis (parts lying on a bench)"
        ),
    )
    ground: bool = field(
        default=False,
        metadata=doc(
            "render a workbench surface at z=0 and rest objects on it instead of "
            "compositing a background image"
        ),
    )
    avoid_overlap: bool = field(
        default=True,
        metadata=doc(
            "re-draw positions (up to 30 times) so that objects' bounding spheres do not meet"
        ),
    )
    min_in_frame: float = field(
        default=0.9,
        metadata=doc(
            "reject a scene when less than this fraction of a target's silhouette lies inside "
            "the image (blender-gen max_boundingbox 0.1)",
            min=0.0,
            max=1.0,
        ),
    )
    min_visible_fraction: float = field(
        default=0.0,
        metadata=doc(
            "reject a scene when a target shows less than this fraction of its silhouette "
            "(0: reject only fully hidden targets)",
            min=0.0,
            max=1.0,
        ),
    )
    max_attempts: int = field(
        default=50, metadata=doc("scenes drawn per image before giving up with an error", min=1)
    )

    def __post_init__(self) -> None:
        check_range("instances", self.instances, low=1)
        if len(self.offset) != 3 or min(self.offset) < 0:
            raise ValueError(f"offset must be three non-negative numbers, got {list(self.offset)}")


@dataclass(frozen=True)
class CameraConfig:
    distance: tuple[float, ...] = field(
        default=(0.3, 1.1),
        metadata=doc("distance from the look-at point, metres (blender-gen cam_rmin/cam_rmax)"),
    )
    inclination_deg: tuple[float, ...] = field(
        default=(0.0, 90.0),
        metadata=doc(
            "angle from straight above: 0 looks down, 90 looks from the side "
            "(blender-gen cam_incmin/cam_incmax)"
        ),
    )
    azimuth_deg: tuple[float, ...] = field(
        default=(0.0, 360.0),
        metadata=doc("angle around the vertical axis (blender-gen cam_azimin/cam_azimax)"),
    )
    look_at_jitter: float = field(
        default=0.05,
        metadata=doc(
            "half-range of a uniform offset of the look-at point from the origin, metres "
            "(blender-gen looks at the origin exactly)",
            min=0.0,
        ),
    )
    fov_deg: float = field(
        default=74.5,
        metadata=doc(
            "horizontal field of view, degrees, when no intrinsics are given (blender-gen cam_fov)",
            min=1.0,
            max=179.0,
        ),
    )
    intrinsics: tuple[float, ...] = field(
        default=(),
        metadata=doc(
            "fx, fy, cx, cy in pixels (OpenCV convention, pixel centres at integers) of the "
            "real camera at the output size; overrides fov_deg"
        ),
    )
    clip_start: float = field(
        default=0.01, metadata=doc("nearest distance the camera sees, metres", min=1e-6)
    )
    clip_end: float = field(
        default=50.0, metadata=doc("farthest distance the camera sees, metres", min=1e-3)
    )

    def __post_init__(self) -> None:
        check_range("distance", self.distance, low=1e-3)
        check_range("inclination_deg", self.inclination_deg, low=0.0, high=180.0)
        check_range("azimuth_deg", self.azimuth_deg)
        if self.intrinsics and (len(self.intrinsics) != 4 or min(self.intrinsics[:2]) <= 0):
            raise ValueError(
                "intrinsics must be [fx, fy, cx, cy] with positive fx and fy, "
                f"got {list(self.intrinsics)}"
            )
        if self.clip_end <= self.clip_start:
            raise ValueError("clip_end must be beyond clip_start")


@dataclass(frozen=True)
class MaterialsConfig:
    target: tuple[str, ...] = field(
        default=("gray_metal", "dark_blue_metal"),
        metadata=doc(
            "materials drawn for targets: gray_metal, "
            "dark_blue_metal (the paper's presets), random_color, procedural, texture (from "
            "texture_dir), original (the mesh's own) or a '#rrggbb' colour"
        ),
    )
    distractor: tuple[str, ...] = field(
        default=("random_color", "procedural", "texture"),
        metadata=doc(
            "materials drawn for distractors (same "
            "names; 'texture' is skipped while texture_dir is empty)"
        ),
    )
    texture_dir: str = field(
        default="",
        metadata=doc("folder of texture images (jpg/png) for the 'texture' material; empty: none"),
    )
    metallic_jitter: float = field(
        default=0.2,
        metadata=doc(
            "half-range of a uniform change of metallic (blender-gen random_metallic_value)",
            min=0.0,
            max=1.0,
        ),
    )
    roughness_jitter: float = field(
        default=0.2,
        metadata=doc(
            "half-range of a uniform change of roughness (blender-gen random_roughness_value)",
            min=0.0,
            max=1.0,
        ),
    )
    brightness_jitter: float = field(
        default=0.15,
        metadata=doc(
            "half-range of a relative change of the base colour's brightness (blender-gen "
            "random_hsv_value)",
            min=0.0,
            max=1.0,
        ),
    )

    def __post_init__(self) -> None:
        check_materials("target", self.target)
        check_materials("distractor", self.distractor)


@dataclass(frozen=True)
class DistractorsConfig:
    count: tuple[int, ...] = field(
        default=(0, 3),
        metadata=doc("how many distractor objects per image [low, high] (paper: up to three)"),
    )
    shapes: tuple[str, ...] = field(
        default=PRIMITIVES,
        metadata=doc("primitive shapes to draw distractors from: " + ", ".join(PRIMITIVES)),
    )
    meshes: tuple[str, ...] = field(
        default=(),
        metadata=doc(
            "extra distractor mesh files (obj, ply, stl, glb), at their own size in metres"
        ),
    )
    size: tuple[float, ...] = field(
        default=(0.05, 0.2), metadata=doc("largest dimension of a primitive distractor, metres")
    )

    def __post_init__(self) -> None:
        check_range("count", self.count, low=0)
        check_range("size", self.size, low=1e-4)
        for shape in self.shapes:
            if shape not in PRIMITIVES:
                raise ValueError(f"shapes: unknown shape {shape!r}; known: {', '.join(PRIMITIVES)}")
        if self.count[1] > 0 and not (self.shapes or self.meshes):
            raise ValueError("count allows distractors but shapes and meshes are both empty")


@dataclass(frozen=True)
class LightingConfig:
    mode: Literal["hdri", "lights", "mixed"] = field(
        default="hdri",
        metadata=doc(
            "'hdri': an environment map lights the scene (the paper); 'lights': 1-3 point "
            "or area lights; 'mixed': either, with equal odds"
        ),
    )
    hdri_dir: str = field(
        default="",
        metadata=doc(
            "folder of .exr/.hdr environment maps; empty: the CC0 studio lights bpy ships "
            "(datafiles/studiolights/world)"
        ),
    )
    hdri_strength: tuple[float, ...] = field(
        default=(0.4, 2.0),
        metadata=doc(
            "environment map strength; bpy's studio maps average about 1, so blender-gen's "
            "1-8 (for its own maps) burns them out"
        ),
    )
    lights: tuple[int, ...] = field(
        default=(1, 3),
        metadata=doc("number of lights in 'lights' mode (blender-gen light_number_min/max)"),
    )
    light_types: tuple[str, ...] = field(
        default=LIGHT_TYPES, metadata=doc("light types to draw from: POINT, AREA")
    )
    light_power: tuple[float, ...] = field(
        default=(20.0, 80.0),
        metadata=doc(
            "power of each light in watts as seen from 1 m (blender-gen light_energymin/max): "
            "scaled by the squared distance, and a quarter for area lights (they send it into "
            "a half-space, facing the scene), so brightness does not depend on distances"
        ),
    )
    temperature_k: tuple[float, ...] = field(
        default=(3000.0, 7000.0),
        metadata=doc(
            "colour temperature of each light, kelvin (blender-gen's 'temperature' colour mode)"
        ),
    )
    ambient: tuple[float, ...] = field(
        default=(0.05, 0.3),
        metadata=doc("strength of a uniform grey world in 'lights' mode, so shadows are not black"),
    )

    def __post_init__(self) -> None:
        check_range("hdri_strength", self.hdri_strength, low=0.0)
        check_range("lights", self.lights, low=1)
        check_range("light_power", self.light_power, low=0.0)
        check_range("temperature_k", self.temperature_k, low=800.0, high=40000.0)
        check_range("ambient", self.ambient, low=0.0)
        if not self.light_types or any(t not in LIGHT_TYPES for t in self.light_types):
            raise ValueError(f"light_types must be a non-empty list of {', '.join(LIGHT_TYPES)}")


@dataclass(frozen=True)
class BackgroundConfig:
    image_dir: str = field(
        default="",
        metadata=doc(
            "folder of photos (jpg/png) composited behind the render, randomly cropped and "
            "flipped (the paper used COCO images); empty: procedural backgrounds"
        ),
    )


@dataclass(frozen=True)
class RenderSettings:
    width: int = field(
        default=640, metadata=doc("image width, pixels (the paper's 640x360)", min=8)
    )
    height: int = field(default=360, metadata=doc("image height, pixels", min=8))
    samples: int = field(
        default=64,
        metadata=doc(
            "Cycles samples per pixel (blender-gen: 512; denoising makes far fewer enough)", min=1
        ),
    )
    denoise: bool = field(
        default=True, metadata=doc("denoise with OpenImageDenoise when the build has it")
    )
    device: Literal["auto", "cpu", "gpu"] = field(
        default="auto",
        metadata=doc(
            "'auto': a GPU when Cycles finds one (OptiX, CUDA, HIP, oneAPI, Metal), else CPU"
        ),
    )
    max_bounces: int = field(default=8, metadata=doc("light bounces (blender-gen: 8)", min=0))
    threads: int = field(
        default=0, metadata=doc("render threads per worker; 0: cores / workers", min=0)
    )
    view_transform: Literal["AgX", "Standard", "Filmic", "Khronos PBR Neutral"] = field(
        default="AgX",
        metadata=doc("colour view transform (AgX is Blender's successor to blender-gen's Filmic)"),
    )
    format: Literal["jpg", "png"] = field(default="jpg", metadata=doc("output image format"))
    jpeg_quality: int = field(default=95, metadata=doc("JPEG quality", min=1, max=100))
    masks: bool = field(
        default=False, metadata=doc("also store each instance's visible mask as COCO RLE")
    )


@dataclass(frozen=True)
class RenderConfig:
    TITLE: ClassVar[str] = TITLE

    models: tuple[str, ...] = field(
        default=(),
        metadata=doc(
            "target meshes as 'PATH:CLASS[:SCALE]' (SCALE: metres per mesh unit, default 1); "
            "--model adds to these"
        ),
    )
    scene: SceneConfig = field(
        default_factory=SceneConfig,
        metadata=doc("objects, their placement and scene rejection"),
    )
    camera: CameraConfig = field(
        default_factory=CameraConfig,
        metadata=doc("camera placement and optics"),
    )
    materials: MaterialsConfig = field(
        default_factory=MaterialsConfig,
        metadata=doc("surface materials"),
    )
    distractors: DistractorsConfig = field(
        default_factory=DistractorsConfig,
        metadata=doc("objects that are not labelled"),
    )
    lighting: LightingConfig = field(
        default_factory=LightingConfig,
        metadata=doc("environment maps or lights"),
    )
    background: BackgroundConfig = field(
        default_factory=BackgroundConfig,
        metadata=doc("what appears behind the objects"),
    )
    render: RenderSettings = field(
        default_factory=RenderSettings,
        metadata=doc("Cycles and output settings"),
    )


def replace_in(config: RenderConfig, **sections: dict[str, Any]) -> RenderConfig:
    """A copy with some knobs changed, e.g. replace_in(cfg, render={"samples": 4}).

    Goes through the dataclasses' own checks, so overrides from the command line are validated
    like the file; a bad value is a ConfigError naming the section.
    """
    changes: dict[str, Any] = {}
    for name, values in sections.items():
        current = getattr(config, name)
        try:
            if dataclasses.is_dataclass(current):
                changes[name] = dataclasses.replace(current, **values)
            else:
                changes[name] = values
        except (ValueError, TypeError) as err:
            raise ConfigError(f"[{name}]: {err}") from None
    return dataclasses.replace(config, **changes)
