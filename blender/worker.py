"""Render a list of indices in this process: plan, reject, render, annotate, write.

Image `i` draws everything from numpy's SeedSequence([seed, i]), so it comes out the same
whichever worker renders it and whatever else that worker rendered before. Scenes are drawn
again (same stream, so still reproducible) when a target is mostly out of frame, the camera is
inside an object, or, after rendering, a target is hidden.
"""

from __future__ import annotations

import io
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dal.blender import dataset
from dal.blender.annotate import instance_masks, rle_encode
from dal.blender.backgrounds import composite, list_images, photo_background, procedural_background
from dal.blender.bpy_env import default_hdris
from dal.blender.job import RenderJob, hdri_files
from dal.blender.sampling import Assets, ScenePlan, camera_inside, plan_scene, plan_to_dict
from dal.blender.scene import SceneBuilder
from dal.blender.silhouette import Silhouette, silhouette
from dal.errors import DatasetError
from dal.fileio import atomic_write_bytes, atomic_write_json

logger = logging.getLogger(__name__)


def image_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def asset_files(job: RenderJob) -> tuple[list[Path], list[Path], list[Path]]:
    """Texture images, environment maps (bpy's studio maps by default) and background photos."""
    cfg = job.config
    textures = (
        list_images(cfg.materials.texture_dir, "texture") if cfg.materials.texture_dir else []
    )
    hdri_dir = cfg.lighting.hdri_dir
    hdris = hdri_files(Path(hdri_dir)) if hdri_dir else default_hdris()
    photo_dir = cfg.background.image_dir
    photos = list_images(photo_dir, "background") if photo_dir else []
    return textures, hdris, photos


class Worker:
    """A SceneBuilder plus the job's assets; renders any index on demand."""

    def __init__(self, job: RenderJob, threads: int, quiet: bool = True) -> None:
        self.job = job
        cfg = job.config
        self.k = job.intrinsics
        self.builder = SceneBuilder(cfg, self.k, threads, quiet)
        textures, hdris, photos = asset_files(job)
        self.assets: Assets = self.builder.load_assets(
            [(m.path, m.class_name, m.scale) for m in job.models],
            [Path(p) for p in cfg.distractors.meshes],
            textures,
            hdris,
            photos,
        )

    def close(self) -> None:
        self.builder.close()

    def silhouettes(self, plan: ScenePlan) -> dict[int, Silhouette]:
        pose = np.asarray(plan.camera_pose)
        near = self.job.config.camera.clip_start
        out = {}
        for obj in plan.targets:
            info = self.assets.shapes[obj.shape]
            out[obj.pass_index] = silhouette(
                obj.world_vertices(info), info.triangles, pose, self.k, near
            )
        return out

    def render_index(self, index: int) -> dict[str, Any]:
        """Render image `index`, write it and its label file; returns the label record."""
        cfg, started = self.job.config, time.perf_counter()
        rng = image_rng(self.job.seed, index)
        rejected: Counter[str] = Counter()
        for attempt in range(1, cfg.scene.max_attempts + 1):
            plan = plan_scene(rng, cfg, self.assets)
            if camera_inside(plan, self.assets, cfg.scene.ground):
                rejected["camera inside an object"] += 1
                continue
            sils = self.silhouettes(plan)
            if any(
                s.clipped or s.in_frame_fraction < cfg.scene.min_in_frame for s in sils.values()
            ):
                rejected["target out of frame"] += 1
                continue
            self.builder.build(plan)
            rgba, index_map = self.builder.render()
            anns = self.annotations(plan, sils, index_map)
            if anns is None:
                rejected["target hidden"] += 1
                continue
            seconds = time.perf_counter() - started
            return self._write(index, plan, rgba, anns, attempt, dict(rejected), seconds)
        reasons = ", ".join(f"{n}x {why}" for why, n in rejected.most_common())
        raise DatasetError(
            f"image {index}: no usable scene in {cfg.scene.max_attempts} attempts ({reasons})",
            hint="the camera and offset ranges put the targets out of view: bring "
            "camera.distance closer to the part's size, shrink scene.offset, or lower "
            "scene.min_in_frame",
        )

    def annotations(
        self, plan: ScenePlan, sils: dict[int, Silhouette], index_map: np.ndarray
    ) -> list[dict[str, Any]] | None:
        """One annotation per target, or None when a target is (nearly) hidden."""
        masks = instance_masks(index_map, sils)
        anns = []
        for obj in plan.targets:
            mask, sil = masks[obj.pass_index], sils[obj.pass_index]
            if mask is None:
                return None
            fraction = min(1.0, mask.pixels / sil.total) if sil.total else 0.0
            if fraction < self.job.config.scene.min_visible_fraction:
                return None
            ann: dict[str, Any] = {
                "class": obj.class_name,
                "bbox": list(mask.bbox),
                "area": mask.pixels,
                "visible_fraction": round(fraction, 4),
                "in_frame_fraction": round(sil.in_frame_fraction, 4),
            }
            if self.job.config.render.masks:
                ann["segmentation"] = rle_encode(index_map == obj.pass_index)
            anns.append(ann)
        return anns

    def _background(self, plan: ScenePlan) -> np.ndarray:
        w, h = self.k.width, self.k.height
        if plan.photo:
            return photo_background(Path(plan.photo), w, h, plan.photo_crop, plan.photo_flip)
        return procedural_background(np.random.default_rng(plan.background_seed), w, h)

    def _write(
        self,
        index: int,
        plan: ScenePlan,
        rgba: np.ndarray,
        anns: list[dict[str, Any]],
        attempts: int,
        rejected: dict[str, int],
        seconds: float,
    ) -> dict[str, Any]:
        rs = self.job.config.render
        rgb = composite(rgba, self._background(plan))
        buf = io.BytesIO()
        if rs.format == "jpg":
            Image.fromarray(rgb).save(buf, "JPEG", quality=rs.jpeg_quality)
        else:
            Image.fromarray(rgb).save(buf, "PNG")
        name = dataset.image_name(index, rs.format)
        atomic_write_bytes(self.job.out_dir / "images" / name, buf.getvalue())
        record = {
            "index": index,
            "file_name": f"images/{name}",
            "width": self.k.width,
            "height": self.k.height,
            "annotations": anns,
            "attempts": attempts,
            "rejected": rejected,
            "seconds": round(seconds, 3),
            "device": self.builder.device,
            "plan": plan_to_dict(plan),
        }
        atomic_write_json(dataset.label_path(self.job.out_dir, index), record, indent=None)
        return record


def render_indices(
    job: RenderJob,
    indices: Sequence[int],
    threads: int,
    on_done: Callable[[int], None] | None = None,
    quiet: bool = True,
) -> None:
    """Render `indices` in this process (bpy state included), calling on_done after each."""
    worker = Worker(job, threads, quiet)
    try:
        for index in indices:
            worker.render_index(index)
            if on_done is not None:
                on_done(index)
    finally:
        worker.close()
