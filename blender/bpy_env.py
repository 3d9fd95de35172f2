"""Access to Blender-as-a-module: bpy itself, its bundled OpenImageIO, HDRIs and render devices.

bpy 5.0.1 exists only for Python 3.11 and is built against numpy 1.x, so the project pins
numpy 1.26.4 in its one environment (docs/rendering.md). Everything that needs bpy imports it
through `import_bpy`, so a machine without it gets one clear error instead of a traceback.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path
from types import ModuleType

from dal.errors import DependencyError

logger = logging.getLogger(__name__)

GPU_BACKENDS = ("OPTIX", "CUDA", "HIP", "ONEAPI", "METAL")
_INSTALL_HINT = (
    "install it with `pip install 'dal[blender]'` (bpy 5.0.1 needs Python 3.11 and numpy<2; "
    "see docs/rendering.md)"
)


def import_bpy() -> ModuleType:
    """The bpy module, or a DependencyError that says how to install it."""
    try:
        import bpy
    except ImportError as err:
        raise DependencyError(
            f"dal render needs bpy (Blender as a Python module): {err}", hint=_INSTALL_HINT
        ) from None
    return bpy


def _bpy_root() -> Path:
    spec = importlib.util.find_spec("bpy")
    if spec is None or spec.origin is None:
        raise DependencyError(
            "dal render needs bpy (Blender as a Python module)", hint=_INSTALL_HINT
        )
    return Path(spec.origin).parent


def _resource_dir() -> Path:
    """bpy/<version>/ next to the module: datafiles, bundled Python packages."""
    versions = sorted(p for p in _bpy_root().iterdir() if p.is_dir() and p.name[:1].isdigit())
    if not versions:
        raise DependencyError(f"bpy at {_bpy_root()} has no resource folder", hint="reinstall bpy")
    return versions[-1]


def import_oiio() -> ModuleType:
    """OpenImageIO as bundled with bpy (reads the multilayer EXR with the index pass)."""
    try:
        import OpenImageIO
    except ImportError:
        bundled = sorted((_resource_dir() / "python" / "lib").glob("python3*/site-packages"))
        if not bundled:
            raise DependencyError(
                "bpy's bundled OpenImageIO was not found", hint="reinstall bpy 5.0.1"
            ) from None
        sys.path.append(str(bundled[-1]))
        import OpenImageIO
    return OpenImageIO


def default_hdris() -> list[Path]:
    """The CC0 studio-light environment maps shipped in bpy's datafiles (sorted)."""
    folder = _resource_dir() / "datafiles" / "studiolights" / "world"
    return sorted(p for p in folder.glob("*.exr"))


def setup_device(bpy: ModuleType, wanted: str) -> str:
    """Point Cycles at a GPU ('auto' or 'gpu') or the CPU; returns what was chosen."""
    scene = bpy.context.scene
    scene.cycles.device = "CPU"
    if wanted == "cpu":
        return "CPU"
    prefs = bpy.context.preferences.addons["cycles"].preferences
    for backend in GPU_BACKENDS:
        try:
            prefs.compute_device_type = backend
        except TypeError:  # backend not compiled into this build
            continue
        prefs.refresh_devices()
        gpus = [d for d in prefs.devices if d.type == backend]
        if not gpus:
            continue
        for device in prefs.devices:
            device.use = device.type == backend
        scene.cycles.device = "GPU"
        logger.info("Cycles renders on %s: %s", backend, ", ".join(d.name for d in gpus))
        return backend
    if wanted == "gpu":
        raise DependencyError(
            f"no GPU found for Cycles (tried {', '.join(GPU_BACKENDS)})",
            hint="use --device cpu, or install the GPU driver",
        )
    logger.info("Cycles renders on the CPU (no GPU found)")
    return "CPU"
