"""Turn a ScenePlan into Blender objects, render it with Cycles, and read the passes back.

One `SceneBuilder` lives per process: it resets Blender once, loads the mesh library once and
then, per image, replaces only what changes (objects, materials, lights, world). The render is
saved twice from the same result: a PNG (display colours, straight alpha) and a multilayer EXR
whose Object Index pass says which instance the first sample through each pixel hit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dal.blender.bpy_env import import_bpy, import_oiio, setup_device
from dal.blender.camera import Intrinsics, blender_lens_params
from dal.blender.config import RenderConfig
from dal.blender.materials import MaterialFactory
from dal.blender.meshes import load_mesh, make_primitive
from dal.blender.sampling import Assets, LightPlan, ScenePlan, ShapeInfo
from dal.errors import DatasetError

logger = logging.getLogger(__name__)

GROUND_SIZE_M = 8.0
WORLD_MAP_RESOLUTION = 256
# An area light sends its power into a half-space, with radiant intensity P/pi along its normal;
# a point light P/(4 pi) everywhere: a quarter of the power lights the parts equally.
AREA_LIGHT_FACTOR = 0.25


def light_energy(light: LightPlan) -> float:
    """Blender watts for a LightPlan whose power is "as seen from 1 m" (see LightingConfig)."""
    return light.power * light.distance**2 * (AREA_LIGHT_FACTOR if light.type == "AREA" else 1.0)


@contextlib.contextmanager
def quiet_stdout(enabled: bool = True) -> Iterator[None]:
    """Silence Blender's per-tile render chatter, which it writes to fd 1 from C."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


class SceneBuilder:
    """Blender state for one worker process."""

    def __init__(self, config: RenderConfig, k: Intrinsics, threads: int, quiet: bool = True):
        self.bpy = import_bpy()
        self.oiio = import_oiio()
        self.config = config
        self.k = k
        self.quiet = quiet
        self.meshes: dict[str, Any] = {}
        self.materials = MaterialFactory(self.bpy)
        self._frame: list[Any] = []
        self._tmp = tempfile.TemporaryDirectory(prefix="dal-render-")
        with quiet_stdout(quiet):
            self.bpy.ops.wm.read_factory_settings(use_empty=True)
        self.device = self._setup_render(threads)
        self.camera = self._setup_camera()
        self.world: Any = None
        self.ground = self._setup_ground() if config.scene.ground else None

    def close(self) -> None:
        self._tmp.cleanup()

    # -- one-time setup ------------------------------------------------------------------------

    def _setup_render(self, threads: int) -> str:
        scene = self.bpy.context.scene
        rs = self.config.render
        scene.render.engine = "CYCLES"
        device = setup_device(self.bpy, rs.device)
        scene.cycles.samples = rs.samples
        scene.cycles.max_bounces = rs.max_bounces
        import _cycles  # bpy's own module, present once bpy is imported

        scene.cycles.use_denoising = bool(rs.denoise and _cycles.with_openimagedenoise)
        if rs.denoise and not _cycles.with_openimagedenoise:
            logger.warning("this bpy build has no OpenImageDenoise: rendering without denoising")
        # The default ACCURATE prefilter denoises the albedo and normal passes first: three
        # OIDN runs instead of one, 2 s instead of 0.3 s per 640x360 image on 2 CPU cores.
        scene.cycles.denoising_prefilter = "FAST"
        scene.render.film_transparent = True
        scene.render.resolution_x, scene.render.resolution_y = self.k.width, self.k.height
        scene.render.resolution_percentage = 100
        scene.render.use_persistent_data = True
        scene.render.threads_mode = "FIXED"
        scene.render.threads = max(1, threads)
        scene.view_layers[0].use_pass_object_index = True
        scene.view_settings.view_transform = rs.view_transform
        return device

    def _setup_camera(self) -> Any:
        bpy, scene = self.bpy, self.bpy.context.scene
        lens = blender_lens_params(self.k)
        data = bpy.data.cameras.new("dal_camera")
        data.sensor_fit = "HORIZONTAL"
        data.sensor_width = lens.sensor_width_mm
        data.lens = lens.lens_mm
        data.shift_x, data.shift_y = lens.shift_x, lens.shift_y
        data.clip_start, data.clip_end = self.config.camera.clip_start, self.config.camera.clip_end
        scene.render.pixel_aspect_x = lens.pixel_aspect_x
        scene.render.pixel_aspect_y = lens.pixel_aspect_y
        cam = bpy.data.objects.new("dal_camera", data)
        scene.collection.objects.link(cam)
        scene.camera = cam
        return cam

    def _setup_ground(self) -> Any:
        bpy = self.bpy
        with quiet_stdout(self.quiet):
            bpy.ops.mesh.primitive_plane_add(size=GROUND_SIZE_M)
        plane = bpy.context.active_object
        plane.name = "dal_ground"
        plane.pass_index = 0  # background for the annotations
        plane.data.materials.append(bpy.data.materials.new("dal_ground_default"))
        return plane

    def load_assets(
        self,
        models: list[tuple[Path, str, float]],
        distractor_meshes: list[Path],
        textures: list[Path],
        hdris: list[Path],
        photos: list[Path],
    ) -> Assets:
        """Import every mesh and primitive once; the Assets describe them to the planner."""
        shapes: dict[str, ShapeInfo] = {}
        model_keys = []
        for i, (path, class_name, scale) in enumerate(models):
            key = f"model{i}"
            self.meshes[key], shapes[key] = load_mesh(self.bpy, path, scale, key, "target")
            model_keys.append((key, class_name))
        distractor_keys, primitive = [], {}
        for shape in self.config.distractors.shapes if self.config.distractors.count[1] else ():
            key = f"primitive_{shape}"
            with quiet_stdout(self.quiet):
                self.meshes[key], shapes[key] = make_primitive(self.bpy, shape)
            distractor_keys.append(key)
            primitive[key] = True
        for i, path in enumerate(distractor_meshes if self.config.distractors.count[1] else ()):
            key = f"distractor{i}"
            self.meshes[key], shapes[key] = load_mesh(self.bpy, path, 1.0, key, "distractor")
            distractor_keys.append(key)
            primitive[key] = False
        return Assets(shapes, model_keys, distractor_keys, primitive, textures, hdris, photos)

    # -- per image -----------------------------------------------------------------------------

    def _clear_frame(self) -> None:
        bpy = self.bpy
        for obj in self._frame:
            data = obj.data if obj.type == "LIGHT" else None
            bpy.data.objects.remove(obj, do_unlink=True)
            if data is not None:
                bpy.data.lights.remove(data)
        self._frame.clear()
        self.materials.clear()

    def build(self, plan: ScenePlan) -> None:
        """Replace the previous image's objects, lights and world with the plan's."""
        from mathutils import Matrix

        bpy, scene = self.bpy, self.bpy.context.scene
        self._clear_frame()
        for item in plan.objects:
            obj = bpy.data.objects.new(f"dal_{item.role}{item.pass_index}", self.meshes[item.shape])
            rot = np.asarray(item.rotation) * item.scale
            matrix = np.eye(4)
            matrix[:3, :3], matrix[:3, 3] = rot, item.location
            obj.matrix_world = Matrix(matrix.tolist())
            obj.pass_index = item.pass_index
            scene.collection.objects.link(obj)
            self.materials.assign(obj, item.material)
            self._frame.append(obj)
        if self.ground is not None and plan.ground is not None:
            self.materials.assign(self.ground, plan.ground)
        self.camera.matrix_world = Matrix(plan.camera_pose)
        self._build_world(plan)
        scene.cycles.seed = plan.cycles_seed

    def _build_world(self, plan: ScenePlan) -> None:
        """A new World per image, its importance map at 256 px: Cycles' automatic map size for
        a 1k environment costs 1.2 s of CPU per image here, 256 px costs 15 ms and still
        samples the studio maps' lights well."""
        from mathutils import Matrix

        bpy = self.bpy
        old, self.world = self.world, bpy.data.worlds.new("dal_world")
        self.world.cycles.sampling_method = "MANUAL"
        self.world.cycles.sample_map_resolution = WORLD_MAP_RESOLUTION
        bpy.context.scene.world = self.world
        if old is not None:
            bpy.data.worlds.remove(old)
        tree = self.world.node_tree
        tree.nodes.clear()
        out = tree.nodes.new("ShaderNodeOutputWorld")
        background = tree.nodes.new("ShaderNodeBackground")
        tree.links.new(background.outputs["Background"], out.inputs["Surface"])
        if plan.lighting == "hdri" and plan.hdri:
            env = tree.nodes.new("ShaderNodeTexEnvironment")
            env.image = self._hdri(plan.hdri)
            coords = tree.nodes.new("ShaderNodeTexCoord")
            mapping = tree.nodes.new("ShaderNodeMapping")
            mapping.inputs["Rotation"].default_value = (0.0, 0.0, plan.hdri_rotation)
            tree.links.new(coords.outputs["Generated"], mapping.inputs["Vector"])
            tree.links.new(mapping.outputs["Vector"], env.inputs["Vector"])
            tree.links.new(env.outputs["Color"], background.inputs["Color"])
            background.inputs["Strength"].default_value = plan.hdri_strength
            return
        background.inputs["Color"].default_value = (0.5, 0.5, 0.5, 1.0)
        background.inputs["Strength"].default_value = plan.ambient
        for i, light in enumerate(plan.lights):
            data = bpy.data.lights.new(f"dal_light{i}", light.type)
            data.energy = light_energy(light)
            data.use_temperature = True
            data.temperature = light.temperature
            if light.type == "AREA":
                data.size = light.size
            obj = bpy.data.objects.new(f"dal_light{i}", data)
            obj.matrix_world = Matrix(light.pose)
            bpy.context.scene.collection.objects.link(obj)
            self._frame.append(obj)

    def _hdri(self, path: str) -> Any:
        try:
            return self.bpy.data.images.load(path, check_existing=True)
        except RuntimeError as err:
            raise DatasetError(
                f"environment map {path} cannot be read: {err}",
                hint="remove or replace the file in the HDRI folder",
            ) from None

    def render(self) -> tuple[np.ndarray, np.ndarray]:
        """Render the built scene: RGBA uint8 [h, w, 4] and instance indices int32 [h, w]."""
        bpy, scene = self.bpy, self.bpy.context.scene
        png = os.path.join(self._tmp.name, "render.png")
        exr = os.path.join(self._tmp.name, "render.exr")
        settings = scene.render.image_settings
        with quiet_stdout(self.quiet):
            bpy.ops.render.render(write_still=False)
            result = bpy.data.images["Render Result"]
            settings.media_type = "MULTI_LAYER_IMAGE"
            settings.file_format = "OPEN_EXR_MULTILAYER"
            settings.color_depth = "16"
            settings.exr_codec = "ZIP"
            result.save_render(exr)
            settings.media_type = "IMAGE"
            settings.file_format = "PNG"
            settings.color_mode = "RGBA"
            settings.color_depth = "8"
            result.save_render(png)
        with Image.open(png) as im:
            rgba = np.asarray(im.convert("RGBA"))
        return rgba, self._read_index(exr)

    def _read_index(self, path: str) -> np.ndarray:
        inp = self.oiio.ImageInput.open(path)
        if inp is None:
            raise DatasetError(
                f"cannot read the render's passes from {path}", hint=str(self.oiio.geterror())
            )
        try:
            sub = 0
            while inp.seek_subimage(sub, 0):
                names = list(inp.spec().channelnames)
                hit = [i for i, n in enumerate(names) if "Object Index" in n or "IndexOB" in n]
                if hit:
                    pixels = inp.read_image(format="float")
                    return np.rint(pixels[..., hit[0]]).astype(np.int32)
                sub += 1
        finally:
            inp.close()
        raise DatasetError(
            f"the render {path} has no Object Index pass",
            hint="this bpy build does not write it; please report",
        )
