"""Procedural industrial parts written as mesh files: the demo's part and the tests' mesh.

No bpy: plain numpy geometry, written as OBJ (with smoothing groups), ASCII PLY or ASCII STL by
the file's suffix. Units are metres. Each part is centred near the origin, so it renders at a
sensible size with the default camera distances.

- `write_bracket`: an L-shaped angle bracket with a corner gusset (flat faces, sharp edges).
- `write_blade`: a turbine-blade-like airfoil, cambered, tapered and twisted along its span, on a
  root platform (smooth airfoil surface, flat caps): the paper's kind of part.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dal.errors import DatasetError
from dal.fileio import atomic_write_text

MESH_SUFFIXES = (".obj", ".ply", ".stl")


@dataclass
class MeshData:
    """Vertices [n, 3] (metres), polygon faces (vertex indices, counter-clockwise seen from
    outside) and per face whether it is shaded smooth."""

    vertices: np.ndarray
    faces: list[list[int]]
    smooth: list[bool]

    def add(self, vertices: np.ndarray, faces: Sequence[Sequence[int]], smooth: bool) -> None:
        """Append a shell; its face indices are relative to its own vertices."""
        base = len(self.vertices)
        self.vertices = np.vstack([self.vertices, np.asarray(vertices, float)])
        self.faces.extend([[base + i for i in f] for f in faces])
        self.smooth.extend([smooth] * len(faces))


def _empty() -> MeshData:
    return MeshData(np.zeros((0, 3)), [], [])


def _prism(profile: np.ndarray, y0: float, y1: float) -> tuple[np.ndarray, list[list[int]]]:
    """Extrude a counter-clockwise x-z profile polygon along y from y0 to y1.

    The caps list vertices starting at profile[0], so a fan triangulation from there is valid
    when profile[0] sees every other vertex (true for the profiles used here).
    """
    n = len(profile)
    front = np.column_stack([profile[:, 0], np.full(n, y0), profile[:, 1]])
    back = np.column_stack([profile[:, 0], np.full(n, y1), profile[:, 1]])
    verts = np.vstack([front, back])
    # A profile counter-clockwise in (x, z) faces -y at y0 (x cross z = -y).
    faces = [list(range(n)), [n, *range(2 * n - 1, n, -1)]]  # back cap starts at profile[0]
    for i in range(n):
        j = (i + 1) % n
        faces.append([i, n + i, n + j, j])
    return verts, faces


def bracket_mesh(
    leg_a: float = 0.08,
    leg_b: float = 0.06,
    width: float = 0.05,
    thickness: float = 0.006,
    gusset: float = 0.03,
) -> MeshData:
    """An L bracket: horizontal leg along x, vertical leg along z, extruded along y."""
    t = thickness
    # Start at the inner corner (the reflex vertex) so the caps fan-triangulate correctly.
    profile = np.array([[t, t], [t, leg_b], [0, leg_b], [0, 0], [leg_a, 0], [leg_a, t]])
    mesh = _empty()
    verts, faces = _prism(profile, -width / 2, width / 2)
    mesh.add(verts, faces, smooth=False)
    tri = np.array([[t, t], [t + gusset, t], [t, t + gusset]])
    verts, faces = _prism(tri, -t / 2, t / 2)
    mesh.add(verts, faces, smooth=False)
    mesh.vertices -= (mesh.vertices.min(0) + mesh.vertices.max(0)) / 2
    return mesh


def _airfoil(
    chord: float, n: int, camber: float = 0.06, camber_pos: float = 0.4, thick: float = 0.12
) -> np.ndarray:
    """A NACA 4-digit style section as a closed counter-clockwise loop [2n-2, 2] (x, y)."""
    beta = np.linspace(0.0, math.pi, n)
    x = (1 - np.cos(beta)) / 2
    yt = (
        5
        * thick
        * (0.2969 * np.sqrt(x) - 0.126 * x - 0.3516 * x**2 + 0.2843 * x**3 - 0.1036 * x**4)
    )
    yc = np.where(
        x < camber_pos,
        camber / camber_pos**2 * (2 * camber_pos * x - x**2),
        camber / (1 - camber_pos) ** 2 * (1 - 2 * camber_pos + 2 * camber_pos * x - x**2),
    )
    upper = np.column_stack([x, yc + yt])[::-1]  # trailing edge -> leading edge
    lower = np.column_stack([x, yc - yt])[1:-1]  # leading edge -> trailing edge, no repeats
    loop = np.vstack([upper, lower])
    loop[:, 0] -= 0.35  # rotate and twist about a point near the thickest part
    return loop * chord


def blade_mesh(
    span: float = 0.10,
    root_chord: float = 0.045,
    tip_chord: float = 0.03,
    twist_deg: float = 35.0,
    sections: int = 10,
    points: int = 20,
) -> MeshData:
    """An airfoil lofted along z over a rectangular root platform and a dovetail-ish root."""
    mesh = _empty()
    rings = []
    for s in range(sections):
        f = s / (sections - 1)
        z = -0.004 if s == 0 else span * f
        loop = _airfoil(root_chord + (tip_chord - root_chord) * f, points)
        a = math.radians(twist_deg * f)
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        xy = loop @ rot.T
        # The first ring sits inside the platform, so no faces coincide with its top.
        rings.append(np.column_stack([xy, np.full(len(xy), z)]))
    m = len(rings[0])
    verts = np.vstack(rings)
    faces = []
    for s in range(sections - 1):
        for i in range(m):
            j = (i + 1) % m
            a0, a1, b0, b1 = s * m + i, s * m + j, (s + 1) * m + i, (s + 1) * m + j
            faces.append([a0, a1, b1, b0])
    mesh.add(verts, faces, smooth=True)
    mesh.add(verts, [list(range((sections - 1) * m, sections * m))], smooth=False)
    mesh.add(verts, [list(range(m))[::-1]], smooth=False)
    platform = np.array([[-0.032, -0.018], [-0.032, 0.018], [0.032, 0.018], [0.032, -0.018]])
    mesh.add(*_box_from_footprint(platform, -0.008, 0.0), smooth=False)
    root = np.array([[-0.026, -0.008], [-0.026, 0.008], [0.026, 0.008], [0.026, -0.008]])
    mesh.add(*_box_from_footprint(root, -0.03, -0.008), smooth=False)
    mesh.vertices -= (mesh.vertices.min(0) + mesh.vertices.max(0)) / 2
    return mesh


def _box_from_footprint(xy: np.ndarray, z0: float, z1: float) -> tuple[np.ndarray, list[list[int]]]:
    """A prism over a convex footprint listed clockwise seen from above, from z0 to z1."""
    n = len(xy)
    verts = np.vstack(
        [np.column_stack([xy, np.full(n, z0)]), np.column_stack([xy, np.full(n, z1)])]
    )
    faces = [list(range(n)), list(range(2 * n - 1, n - 1, -1))]
    for i in range(n):
        j = (i + 1) % n
        faces.append([i, n + i, n + j, j])
    return verts, faces


# ---------------------------------------------------------------------------------------------
# writers


def _obj_text(mesh: MeshData) -> str:
    lines = ["# dal procedural part, metres"]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in mesh.vertices]
    current = None
    for face, smooth in zip(mesh.faces, mesh.smooth, strict=True):
        if smooth != current:
            lines.append("s 1" if smooth else "s off")
            current = smooth
        lines.append("f " + " ".join(str(i + 1) for i in face))
    return "\n".join(lines) + "\n"


def _ply_text(mesh: MeshData) -> str:
    head = [
        "ply",
        "format ascii 1.0",
        "comment dal procedural part, metres",
        f"element vertex {len(mesh.vertices)}",
        "property float x",
        "property float y",
        "property float z",
        f"element face {len(mesh.faces)}",
        "property list uchar int vertex_indices",
        "end_header",
    ]
    body = [f"{x:.6f} {y:.6f} {z:.6f}" for x, y, z in mesh.vertices]
    body += [f"{len(f)} " + " ".join(map(str, f)) for f in mesh.faces]
    return "\n".join(head + body) + "\n"


def triangles(mesh: MeshData) -> np.ndarray:
    """Fan-triangulated faces [m, 3] (valid for convex faces and the fans built above)."""
    tris = [[f[0], f[i], f[i + 1]] for f in mesh.faces for i in range(1, len(f) - 1)]
    return np.asarray(tris, dtype=np.int64).reshape(-1, 3)


def _stl_text(mesh: MeshData) -> str:
    lines = ["solid dal_part"]
    for tri in triangles(mesh):
        p = mesh.vertices[tri]
        n = np.cross(p[1] - p[0], p[2] - p[0])
        n = n / (np.linalg.norm(n) or 1.0)
        lines.append(f"facet normal {n[0]:.6f} {n[1]:.6f} {n[2]:.6f}")
        lines.append("outer loop")
        lines += [f"vertex {x:.6f} {y:.6f} {z:.6f}" for x, y, z in p]
        lines += ["endloop", "endfacet"]
    lines.append("endsolid dal_part")
    return "\n".join(lines) + "\n"


def write_mesh(path: str | os.PathLike[str], mesh: MeshData) -> Path:
    """Write by suffix (.obj, .ply, .stl), atomically."""
    target = Path(path)
    writers = {".obj": _obj_text, ".ply": _ply_text, ".stl": _stl_text}
    writer = writers.get(target.suffix.lower())
    if writer is None:
        raise DatasetError(
            f"cannot write mesh {target}: unknown suffix {target.suffix!r}",
            hint=f"use one of {', '.join(MESH_SUFFIXES)}",
        )
    return atomic_write_text(target, writer(mesh))


def write_bracket(path: str | os.PathLike[str]) -> Path:
    """An 8 cm L bracket with a gusset; see `bracket_mesh`."""
    return write_mesh(path, bracket_mesh())


def write_blade(path: str | os.PathLike[str]) -> Path:
    """A 13 cm turbine-blade-like part; see `blade_mesh`."""
    return write_mesh(path, blade_mesh())
