"""What one `dal render` run is asked to do: models, knobs, count, seed, output folder (no bpy).

A RenderJob is plain picklable data: the parent process builds it once from the command line
and config file, checks every input file, and hands it to each worker process unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dal import config as dal_config
from dal.blender.backgrounds import list_images
from dal.blender.camera import Intrinsics
from dal.blender.config import RenderConfig
from dal.blender.meshes import check_mesh_path
from dal.errors import ConfigError, DatasetError

MAX_PIXEL_ANISOTROPY = 0.01


@dataclass(frozen=True)
class ModelSpec:
    """One target mesh: file, class name, metres per mesh unit."""

    path: Path
    class_name: str
    scale: float = 1.0

    @classmethod
    def parse(cls, text: str, base: Path | None = None) -> ModelSpec:
        """'PATH:CLASS[:SCALE]', split from the right so paths may contain ':'; a relative
        PATH is taken from `base` (default: the current folder)."""
        parts = text.rsplit(":", 2)
        scale = 1.0
        if len(parts) == 3:
            try:
                scale = float(parts[2])
            except ValueError:
                parts = [f"{parts[0]}:{parts[1]}", parts[2]]  # no scale; ':' was in the path
        if len(parts) < 2 or not parts[0] or not parts[1].strip():
            raise ConfigError(
                f"model {text!r} must be PATH:CLASS or PATH:CLASS:SCALE",
                hint="e.g. --model part.obj:bracket:0.001 for a mesh in mm",
            )
        if scale <= 0:
            raise ConfigError(f"model {text!r}: scale must be positive, got {scale}")
        return cls(absolute(parts[0], base), parts[1].strip(), scale)

    def text(self) -> str:
        return f"{self.path}:{self.class_name}:{self.scale:g}"


def absolute(path: str | Path, base: Path | None = None) -> Path:
    """`path` made absolute from `base` (or the current folder), so job.json means the same
    files wherever a later run resumes from."""
    p = Path(path).expanduser()
    return (p if p.is_absolute() or base is None else base / p).resolve()


def resolve_config_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """A raw config table with its file and folder knobs made absolute from `base` (the config
    file's folder); empty knobs stay empty."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    if isinstance(out.get("models"), list):
        out["models"] = [ModelSpec.parse(str(t), base).text() for t in out["models"]]
    for section, key in _PATH_KNOBS:
        table = out.get(section)
        if isinstance(table, dict) and isinstance(table.get(key), str) and table[key]:
            table[key] = str(absolute(table[key], base))
    distractors = out.get("distractors")
    if isinstance(distractors, dict) and isinstance(distractors.get("meshes"), list):
        distractors["meshes"] = [str(absolute(str(m), base)) for m in distractors["meshes"]]
    return out


_PATH_KNOBS = (("materials", "texture_dir"), ("background", "image_dir"), ("lighting", "hdri_dir"))


@dataclass(frozen=True)
class RenderJob:
    config: RenderConfig
    models: tuple[ModelSpec, ...]
    count: int
    out_dir: Path
    seed: int = 0

    @property
    def class_names(self) -> list[str]:
        """Category order: first appearance among the models (COCO ids 1..C)."""
        names: list[str] = []
        for m in self.models:
            if m.class_name not in names:
                names.append(m.class_name)
        return names

    @property
    def intrinsics(self) -> Intrinsics:
        """The render camera. Pixels are square: bpy 5.0.1 cannot write the multilayer EXR
        holding the index pass with a pixel aspect other than 1 ("conflicting attributes"),
        so fy is set to fx; real cameras differ by far less than the 1 % allowed here."""
        rs, cam = self.config.render, self.config.camera
        if not cam.intrinsics:
            return Intrinsics.from_fov(cam.fov_deg, rs.width, rs.height)
        fx, fy, cx, cy = cam.intrinsics
        if abs(fy / fx - 1.0) > MAX_PIXEL_ANISOTROPY:
            raise ConfigError(
                f"camera.intrinsics: fx={fx:g} and fy={fy:g} differ by "
                f"{abs(fy / fx - 1.0):.1%}; non-square pixels cannot be rendered",
                hint="resample the real images to square pixels and give their intrinsics",
            )
        return Intrinsics(fx, fx, cx, cy, rs.width, rs.height)

    def settings(self) -> dict[str, Any]:
        """Everything that shapes the images except the count: resuming needs these equal."""
        return {
            "format_version": 1,
            "seed": self.seed,
            "models": [
                {"path": str(m.path), "class": m.class_name, "scale": m.scale} for m in self.models
            ],
            "config": dal_config.to_dict(self.config),
        }

    def check_inputs(self) -> None:
        """Every file and folder the workers will need, checked before any of them starts."""
        if not self.models:
            raise ConfigError(
                "no model to render",
                hint="give --model PATH:CLASS[:SCALE] (or models = [...] in the config file)",
            )
        if self.count < 1:
            raise ConfigError(f"--count must be at least 1, got {self.count}")
        for m in self.models:
            check_mesh_path(m.path, "target")
        for p in self.config.distractors.meshes:
            check_mesh_path(Path(p), "distractor")
        folders = [
            (self.config.materials.texture_dir, "texture"),
            (self.config.background.image_dir, "background"),
        ]
        for folder, what in folders:
            if folder:
                list_images(folder, what)
        hdri_dir = self.config.lighting.hdri_dir
        if hdri_dir and not hdri_files(Path(hdri_dir)):
            raise DatasetError(
                f"HDRI folder {hdri_dir} holds no .exr or .hdr files",
                hint="add environment maps or leave lighting.hdri_dir empty",
            )


def hdri_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DatasetError(f"HDRI folder {folder} does not exist", hint="check the path")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".exr", ".hdr"))
