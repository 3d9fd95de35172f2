"""Load target and distractor meshes into bpy once per process: the scene's library.

Each file becomes one mesh datablock, scaled to metres and centred on its bounding-box centre,
kept with a fake user so per-image objects can share it. OBJ, PLY and STL coordinates are
taken as they are (z up, like CAD files and blender-gen's import); glTF is converted from its
y-up convention by Blender's importer. A file that is missing, unreadable or holds no faces
fails with a DatasetError naming it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from dal.blender.sampling import ShapeInfo
from dal.errors import DatasetError

logger = logging.getLogger(__name__)

MESH_SUFFIXES = (".obj", ".ply", ".stl", ".glb", ".gltf")


def check_mesh_path(path: Path, what: str) -> None:
    """Fail early (before bpy starts) for a missing file or an unsupported type."""
    if not path.is_file():
        raise DatasetError(f"{what} mesh {path} does not exist", hint="check the path")
    if path.suffix.lower() not in MESH_SUFFIXES:
        raise DatasetError(
            f"{what} mesh {path}: unsupported type {path.suffix!r}",
            hint=f"convert it to one of {', '.join(MESH_SUFFIXES)}",
        )


def _run_importer(bpy: Any, path: Path) -> None:
    suffix = path.suffix.lower()
    kwargs = {"filepath": str(path)}
    if suffix == ".obj":
        bpy.ops.wm.obj_import(forward_axis="Y", up_axis="Z", **kwargs)
    elif suffix == ".ply":
        bpy.ops.wm.ply_import(forward_axis="Y", up_axis="Z", **kwargs)
    elif suffix == ".stl":
        bpy.ops.wm.stl_import(forward_axis="Y", up_axis="Z", **kwargs)
    else:
        bpy.ops.import_scene.gltf(**kwargs)


def _join(bpy: Any, objects: list[Any]) -> Any:
    """One object holding all imported meshes, transforms applied (glTF files nest nodes)."""
    with bpy.context.temp_override(
        active_object=objects[0],
        object=objects[0],
        selected_objects=objects,
        selected_editable_objects=objects,
    ):
        if len(objects) > 1:
            bpy.ops.object.join()
    obj = objects[0]
    obj.data.transform(obj.matrix_world)
    return obj


def shape_info(mesh: Any) -> ShapeInfo:
    """Vertices and triangles of a (normalised) mesh datablock as numpy arrays."""
    verts = np.empty(len(mesh.vertices) * 3)
    mesh.vertices.foreach_get("co", verts)
    mesh.calc_loop_triangles()
    tris = np.empty(len(mesh.loop_triangles) * 3, dtype=np.int64)
    mesh.loop_triangles.foreach_get("vertices", tris)
    verts = verts.reshape(-1, 3)
    radius = float(np.linalg.norm(verts, axis=1).max()) if len(verts) else 0.0
    return ShapeInfo(verts, tris.reshape(-1, 3), radius)


def _normalise(bpy: Any, mesh: Any, scale: float, name: str) -> Any:
    from mathutils import Matrix

    mesh.transform(Matrix.Scale(scale, 4))
    coords = np.empty(len(mesh.vertices) * 3)
    mesh.vertices.foreach_get("co", coords)
    coords = coords.reshape(-1, 3)
    centre = (coords.min(axis=0) + coords.max(axis=0)) / 2
    mesh.transform(Matrix.Translation(tuple(-centre)))
    mesh.name = name
    mesh.use_fake_user = True
    if not mesh.materials:  # per-object material slots need at least one slot
        mesh.materials.append(bpy.data.materials.new(f"{name}_default"))
    return mesh


def load_mesh(bpy: Any, path: Path, scale: float, name: str, what: str) -> tuple[Any, ShapeInfo]:
    """Import one file into a normalised library mesh; remove the objects the importer made."""
    check_mesh_path(path, what)
    before = set(bpy.data.objects)
    try:
        _run_importer(bpy, path)
    except RuntimeError as err:
        raise DatasetError(
            f"{what} mesh {path} cannot be read: {str(err).strip()}",
            hint="open it in Blender or a mesh viewer, and re-export it",
        ) from None
    new = [o for o in bpy.data.objects if o not in before]
    meshes = [o for o in new if o.type == "MESH"]
    try:
        if not meshes or not any(len(o.data.polygons) for o in meshes):
            raise DatasetError(
                f"{what} mesh {path} holds no faces",
                hint="the file is empty, broken or only has points/lines; "
                "re-export it as a surface mesh",
            )
        obj = _join(bpy, meshes)
        mesh = _normalise(bpy, obj.data, scale, name)
    finally:
        for o in [o for o in bpy.data.objects if o not in before]:
            bpy.data.objects.remove(o, do_unlink=True)
    info = shape_info(mesh)
    logger.info(
        "%s mesh %s: %d vertices, %d triangles, %.3f m across",
        what,
        path.name,
        len(info.vertices),
        len(info.triangles),
        2 * info.radius,
    )
    if info.radius < 1e-4 or info.radius > 100:
        logger.warning(
            "%s mesh %s is %.4g m across: is its scale right (metres per unit)?",
            what,
            path,
            2 * info.radius,
        )
    return mesh, info


_PRIMITIVE_OPS = {
    "cube": ("primitive_cube_add", {}),
    "uv_sphere": ("primitive_uv_sphere_add", {"segments": 24, "ring_count": 12}),
    "ico_sphere": ("primitive_ico_sphere_add", {"subdivisions": 2}),
    "cylinder": ("primitive_cylinder_add", {"vertices": 24}),
    "cone": ("primitive_cone_add", {"vertices": 24}),
    "torus": ("primitive_torus_add", {}),
    "monkey": ("primitive_monkey_add", {}),
}


def make_primitive(bpy: Any, shape: str) -> tuple[Any, ShapeInfo]:
    """A library mesh of a Blender primitive, scaled so its largest dimension is 1 m."""
    before = set(bpy.data.objects)
    op_name, kwargs = _PRIMITIVE_OPS[shape]
    getattr(bpy.ops.mesh, op_name)(**kwargs)
    new = [o for o in bpy.data.objects if o not in before]
    obj = new[0]
    mesh = obj.data
    if shape in ("uv_sphere", "cylinder", "cone", "torus", "monkey"):
        for poly in mesh.polygons:
            poly.use_smooth = True
    largest = max(obj.dimensions)
    mesh = _normalise(bpy, mesh, 1.0 / largest, f"dal_primitive_{shape}")
    for o in new:
        bpy.data.objects.remove(o, do_unlink=True)
    return mesh, shape_info(mesh)
