"""The networked demo's files: a part mesh rendered into a synthetic training set and into
workbench stand-in frames, those split into the agent's pool and a validation set, and the
key pair the trainer signs models with."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from dal.coco import load_coco, write_coco
from dal.demo import say
from dal.demo.plan import DemoPlan


@dataclass(frozen=True)
class DemoFiles:
    """Where a run's workbench data and signing keys are (the configs and the baseline read
    them)."""

    pool_dir: Path
    pool_json: Path
    val_json: Path
    private_key: Path
    public_key: Path


def render_set(
    out_dir: Path, mesh: Path, preset: str, count: int, plan: DemoPlan, seed: int
) -> Path:
    """`count` Cycles renders of the mesh with a render preset, small and quick; its COCO."""
    from dal import config as dal_config
    from dal.blender.config import RenderConfig
    from dal.blender.job import ModelSpec, RenderJob
    from dal.blender.presets import PRESETS, merged
    from dal.blender.render import render_dataset

    w, h = plan.size
    quick = {
        "render": {
            "width": w,
            "height": h,
            "samples": plan.samples,
            "denoise": False,
            "max_bounces": 3,
            "device": "cpu",
        },
        "camera": {"distance": list(plan.camera_distance)},
    }
    cfg = dal_config.from_dict(RenderConfig, merged(PRESETS[preset], quick), f"preset {preset}")
    job = RenderJob(cfg, (ModelSpec(mesh.resolve(), "bracket"),), count, out_dir.resolve(), seed)
    # worker processes keep bpy out of this process (torch and the services live here)
    return render_dataset(job, workers=min(2, count), progress=True).coco_path


def split_workbench(coco_json: Path, out: Path, n_pool: int) -> tuple[Path, Path, Path]:
    """Pool and validation folders of their own (the agent replays a whole folder)."""
    coco = load_coco(coco_json)
    ids = [rec.id for rec in coco.images]
    made = []
    for name, part in (("workbench-pool", ids[:n_pool]), ("workbench-val", ids[n_pool:])):
        folder = out / name
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        doc = coco.subset(part).to_json()
        for image in doc["images"]:
            source = coco.image_path(coco.by_id(image["id"]))
            target = folder / source.name
            try:
                os.link(source, target)
            except OSError:
                shutil.copyfile(source, target)
            image["file_name"] = source.name
        made.append(write_coco(doc, folder / "annotations.json"))
    return made[0].parent, made[0], made[1]


def make_data(out: Path, plan: DemoPlan, seed: int) -> tuple[Path, DemoFiles]:
    """Stages 1 and 2: the synthetic set's COCO, and where the workbench pool and validation
    set are (keys not made yet: `make_keys`)."""
    from dal.blender.parts import write_bracket

    mesh = write_bracket(out / "part" / "bracket.obj")
    say(f"stage 1/6: rendering {plan.synthetic} synthetic images (Cycles, preset 'paper')")
    synthetic_json = render_set(out / "synthetic", mesh, "paper", plan.synthetic, plan, seed)
    say(
        f"stage 2/6: rendering {plan.pool + plan.val} workbench stand-in frames "
        "(preset 'workbench'; rendered, NOT real camera frames)"
    )
    wb_json = render_set(
        out / "workbench-render", mesh, "workbench", plan.pool + plan.val, plan, seed + 1
    )
    pool_dir, pool_json, val_json = split_workbench(wb_json, out, plan.pool)
    keys = out / "trainer" / "keys"
    files = DemoFiles(
        pool_dir=pool_dir,
        pool_json=pool_json,
        val_json=val_json,
        private_key=keys / "model-signing.key",
        public_key=keys / "model-signing.pub",
    )
    return synthetic_json, files


def make_keys(files: DemoFiles) -> None:
    """The trainer's signing key pair, kept when an earlier run in this folder made it."""
    from dal.link.signing import generate_keypair

    if not files.private_key.exists():
        generate_keypair(files.private_key, files.public_key)
