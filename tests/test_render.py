"""`dal render`: real Cycles renders (bpy) of generated parts, tiny and few, plus the pure parts.

Renders are 160x90 or smaller with 2 samples and no denoising: a few tenths of a second each.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from dal import config as dal_config
from dal.blender import parts
from dal.blender.annotate import instance_masks, rle_decode, rle_encode
from dal.blender.camera import Intrinsics, look_at, project
from dal.blender.config import RenderConfig, replace_in
from dal.blender.job import ModelSpec, RenderJob
from dal.blender.sampling import (
    Assets,
    LightPlan,
    MaterialPlan,
    ObjectPlan,
    ScenePlan,
    ShapeInfo,
    plan_scene,
    plan_to_dict,
)
from dal.blender.silhouette import silhouette
from dal.errors import ConfigError, DalError, DatasetError

if os.environ.get("CI"):
    import bpy  # CI installs the blender extra: a missing bpy must fail there, not skip
else:
    bpy = pytest.importorskip("bpy", reason="bpy (Blender as a module) is not installed")

from dal.blender.render import render_dataset
from dal.blender.worker import Worker

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def meshes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("meshes")
    return {
        "bracket_obj": parts.write_bracket(folder / "bracket.obj"),
        "bracket_stl": parts.write_bracket(folder / "bracket.stl"),
        "blade_ply": parts.write_blade(folder / "blade.ply"),
    }


def tiny(**sections: dict) -> RenderConfig:
    """Small, fast renders with the parts filling a good share of the frame."""
    base = {
        "render": {"width": 160, "height": 90, "samples": 2, "denoise": False, "threads": 2},
        "camera": {"distance": (0.25, 0.45)},
        "scene": {"offset": (0.04, 0.04, 0.04)},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return replace_in(RenderConfig(), **base)


def job_for(
    meshes: dict[str, Path], out: Path, count: int = 3, seed: int = 0, **sections: dict
) -> RenderJob:
    models = (ModelSpec(meshes["bracket_obj"], "bracket"), ModelSpec(meshes["blade_ply"], "blade"))
    return RenderJob(tiny(**sections), models, count, out, seed)


def labels(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "labels").glob("*.json"))]


# ---------------------------------------------------------------------------------------------
# pure parts (no bpy needed, but cheap)


@pytest.mark.parametrize("make", [parts.bracket_mesh, parts.blade_mesh])
def test_generated_parts_are_closed_outward_and_part_sized(make) -> None:
    mesh = make()
    tris = parts.triangles(mesh)
    v = mesh.vertices
    volume = np.einsum("ij,ij->i", v[tris[:, 0]], np.cross(v[tris[:, 1]], v[tris[:, 2]])).sum() / 6
    assert volume > 0  # faces point outwards
    size = v.max(0) - v.min(0)
    assert 0.03 < size.max() < 0.2  # metres: a hand-sized part
    np.testing.assert_allclose((v.max(0) + v.min(0)) / 2, 0, atol=1e-9)


def test_mesh_writers_reject_an_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"part\.fbx"):
        parts.write_bracket(tmp_path / "part.fbx")


def test_rle_round_trip_and_masks() -> None:
    rng = np.random.default_rng(0)
    index_map = rng.integers(0, 3, size=(7, 11))
    index_map[0, 0] = 1  # a mask that starts with a set pixel
    for inst in (1, 2):
        mask = index_map == inst
        np.testing.assert_array_equal(rle_decode(rle_encode(mask)), mask)
    boxes = instance_masks(index_map, [1, 2, 9])
    assert boxes[9] is None
    ys, xs = np.nonzero(index_map == 1)
    x, y, w, h = boxes[1].bbox
    assert (x, y, x + w - 1, y + h - 1) == (xs.min(), ys.min(), xs.max(), ys.max())
    assert boxes[1].pixels == len(xs)


def test_silhouette_area_of_a_projected_square() -> None:
    """A 0.1 m square 1 m in front of a 100 px focal length: 10 x 10 = 100 px."""
    k = Intrinsics(100.0, 100.0, 79.5, 44.5, 160, 90)
    pose = look_at(np.array([0.0, 0.0, 1.0]), np.zeros(3))
    square = np.array([[-0.05, -0.05, 0], [0.05, -0.05, 0], [0.05, 0.05, 0], [-0.05, 0.05, 0]])
    tris = np.array([[0, 1, 2], [0, 2, 3]])
    sil = silhouette(square, tris, pose, k, near=0.01)
    assert sil.total == pytest.approx(100, rel=0.03) and sil.in_frame_fraction == 1.0
    right_edge = square + np.array([0.8, 0.0, 0.0])  # centred on the last pixel column
    assert silhouette(right_edge, tris, pose, k, 0.01).in_frame_fraction == pytest.approx(
        0.5, abs=0.05
    )
    behind = silhouette(square + np.array([0.0, 0.0, 2.0]), tris, pose, k, near=0.01)
    assert behind.clipped


def test_scene_plans_depend_only_on_the_seed() -> None:
    mesh = parts.bracket_mesh()
    info = ShapeInfo(
        mesh.vertices, parts.triangles(mesh), float(np.linalg.norm(mesh.vertices, axis=1).max())
    )
    assets = Assets({"m": info, "p": info}, [("m", "bracket")], ["p"], {"p": True}, [], [], [])
    cfg = RenderConfig()

    def plan(seed: int) -> dict:
        return plan_to_dict(plan_scene(np.random.default_rng(seed), cfg, assets))

    assert json.dumps(plan(5)) == json.dumps(plan(5))
    assert json.dumps(plan(5)) != json.dumps(plan(6))


def test_unknown_config_key_is_rejected_by_name(tmp_path: Path) -> None:
    path = tmp_path / "render.toml"
    path.write_text("[camera]\ndistnce = [0.5, 1.0]\n")
    with pytest.raises(ConfigError, match=r"distnce.*did you mean 'distance'"):
        dal_config.load(RenderConfig, path)
    path.write_text("[camera]\ndistance = [1.0, 0.5]\n")
    with pytest.raises(ConfigError, match="distance"):
        dal_config.load(RenderConfig, path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a/part.obj:bracket", ("part.obj", "bracket", 1.0)),
        ("a/part.stl:blade:0.001", ("part.stl", "blade", 0.001)),
        ("c:/x/part.obj:blade", ("part.obj", "blade", 1.0)),
    ],
)
def test_model_argument(text: str, expected: tuple) -> None:
    spec = ModelSpec.parse(text)
    assert (spec.path.name, spec.class_name, spec.scale) == expected


@pytest.mark.parametrize("text", ["part.obj", "part.obj:", "part.obj:x:-1"])
def test_bad_model_argument(text: str) -> None:
    with pytest.raises(ConfigError):
        ModelSpec.parse(text)


def test_relative_paths_in_a_config_file_are_taken_from_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse

    from dal.blender.render import add_arguments, build_job

    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "render.toml").write_text(
        'models = ["parts/blade.obj:blade:0.001"]\n[background]\nimage_dir = "photos"\n'
        "[render]\nsamples = 3\n"
    )
    monkeypatch.chdir(tmp_path)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            "--config",
            "project/render.toml",
            "--out",
            "out",
            "--samples",
            "5",
            "--model",
            "other.stl:bracket",
        ]
    )
    job = build_job(args)
    assert [m.path for m in job.models] == [folder / "parts" / "blade.obj", tmp_path / "other.stl"]
    assert job.models[0].scale == 0.001 and job.class_names == ["blade", "bracket"]
    assert job.config.background.image_dir == str(folder / "photos")
    assert job.config.render.samples == 5  # the command line beats the file
    assert job.out_dir == tmp_path / "out"


def test_docs_list_every_knob_with_its_default() -> None:
    """docs/rendering.md carries the generated reference; regenerate it when knobs change."""
    text = (ROOT / "docs" / "rendering.md").read_text()
    block = re.search(r"```toml\n(.*?)```", text, re.S)
    assert block, "docs/rendering.md has no ```toml block"
    expected = dal_config.render_toml(RenderConfig, title=RenderConfig.TITLE)
    assert block.group(1) == expected, (
        "regenerate the block: python -m dal.config dal.blender.config:RenderConfig"
    )


# ---------------------------------------------------------------------------------------------
# rendering


def test_dataset_boxes_masks_and_coco(meshes: dict[str, Path], tmp_path: Path) -> None:
    from pycocotools.coco import COCO

    from dal.coco import load_coco

    job = job_for(
        meshes, tmp_path / "out", count=4, scene={"instances": (1, 2)}, render={"masks": True}
    )
    summary = render_dataset(job, progress=False, preview=True)
    assert summary.rendered == 4 and summary.preview_path.exists()
    for rec in labels(job.out_dir):
        assert (job.out_dir / rec["file_name"]).exists()
        for ann in rec["annotations"]:
            mask = rle_decode(ann["segmentation"])
            ys, xs = np.nonzero(mask)
            x, y, w, h = ann["bbox"]
            assert (x, y, x + w - 1, y + h - 1) == (xs.min(), ys.min(), xs.max(), ys.max())
            assert ann["area"] == mask.sum() > 0
            assert 0 < ann["visible_fraction"] <= 1 and ann["in_frame_fraction"] >= 0.9
    coco = COCO(str(summary.coco_path))
    assert sorted(c["name"] for c in coco.loadCats(coco.getCatIds())) == ["blade", "bracket"]
    assert min(coco.getCatIds()) == 1 and len(coco.getImgIds()) == 4
    ann = coco.loadAnns(coco.getAnnIds())[0]
    assert ann["iscrowd"] == 0 and ann["area"] > 0
    assert coco.annToMask(ann).sum() == ann["area"]
    dataset = load_coco(summary.coco_path)  # the project's own strict loader, files checked
    assert len(dataset.images) == 4


def test_boxes_match_the_rendered_alpha_and_the_projection(
    meshes: dict[str, Path], tmp_path: Path
) -> None:
    """No distractors: the index-pass box, the alpha box and the projected mesh agree."""
    job = job_for(meshes, tmp_path, distractors={"count": (0, 0)})
    worker = Worker(job, threads=2)
    checked = 0
    try:
        for index in range(6):
            rng = np.random.default_rng(index)
            plan = plan_scene(rng, job.config, worker.assets)
            sils = worker.silhouettes(plan)
            if any(s.clipped or s.in_frame_fraction < 1 for s in sils.values()):
                continue
            worker.builder.build(plan)
            rgba, index_map = worker.builder.render()
            target = plan.targets[0]
            box = instance_masks(index_map, [1])[1]
            ys, xs = np.nonzero(rgba[..., 3] > 127)
            x, y, w, h = box.bbox
            got = np.array([x, y, x + w - 1, y + h - 1])
            np.testing.assert_allclose(got, [xs.min(), ys.min(), xs.max(), ys.max()], atol=1)
            info = worker.assets.shapes[target.shape]
            uv, _ = project(
                target.world_vertices(info), np.asarray(plan.camera_pose), job.intrinsics
            )
            projected = np.concatenate([uv.min(0), uv.max(0)])
            np.testing.assert_allclose(got, projected, atol=2.0)  # thin tips may miss a pixel
            assert box.pixels / sils[1].total == pytest.approx(1.0, abs=0.08)
            checked += 1
    finally:
        worker.close()
    assert checked >= 3


def _occlusion_plan(occluder: bool) -> ScenePlan:
    eye = np.array([0.0, -0.3, 0.0])
    eye_pose = look_at(eye, np.zeros(3)).tolist()
    plain = MaterialPlan("principled", (0.6, 0.6, 0.6), roughness=0.5)
    identity = np.eye(3).tolist()
    objects = [ObjectPlan("model0", "target", "bracket", 1, 1.0, identity, [0.0, 0.0, 0.0], plain)]
    if occluder:  # a 4 cm cube between the camera and the bracket's right half
        objects.append(
            ObjectPlan(
                "primitive_cube", "distractor", None, 2, 0.04, identity, [0.02, -0.12, 0.0], plain
            )
        )
    light = LightPlan(
        "POINT",
        [0.3, -0.5, 0.5],
        look_at(np.array([0.3, -0.5, 0.5]), np.zeros(3)).tolist(),
        50,
        5000,
        0.2,
        0.8,
    )
    return ScenePlan(objects, eye_pose, "lights", lights=[light], ambient=0.3)


def test_an_occluder_shrinks_the_visible_box_and_fraction(
    meshes: dict[str, Path], tmp_path: Path
) -> None:
    job = job_for(meshes, tmp_path, distractors={"count": (0, 1), "shapes": ("cube",)})
    worker = Worker(job, threads=2)
    try:
        results = {}
        for occluder in (False, True):
            plan = _occlusion_plan(occluder)
            worker.builder.build(plan)
            _, index_map = worker.builder.render()
            results[occluder] = worker.annotations(plan, worker.silhouettes(plan), index_map)[0]
    finally:
        worker.close()
    clear, hidden = results[False], results[True]
    assert clear["visible_fraction"] > 0.9
    assert hidden["visible_fraction"] < clear["visible_fraction"] - 0.1
    assert hidden["area"] < clear["area"]
    assert hidden["bbox"][2] * hidden["bbox"][3] < clear["bbox"][2] * clear["bbox"][3]


def test_same_seed_same_annotations_and_resume(meshes: dict[str, Path], tmp_path: Path) -> None:
    first = job_for(meshes, tmp_path / "a", count=3, seed=7)
    second = job_for(meshes, tmp_path / "b", count=3, seed=7)
    other = job_for(meshes, tmp_path / "c", count=3, seed=8)
    for job in (first, second, other):
        render_dataset(job, progress=False)

    def annotations(job: RenderJob) -> list:
        return [(r["index"], r["annotations"]) for r in labels(job.out_dir)]

    assert annotations(first) == annotations(second)
    assert annotations(first) != annotations(other)

    # Resume: one label lost, one more image asked for: exactly two are rendered.
    (first.out_dir / "labels" / "000001.json").unlink()
    more = job_for(meshes, first.out_dir, count=4, seed=7)
    summary = render_dataset(more, progress=False)
    assert (summary.rendered, summary.skipped) == (2, 2)
    assert annotations(more)[:3] == annotations(second)
    coco = json.loads(summary.coco_path.read_text())
    assert [im["id"] for im in coco["images"]] == [1, 2, 3, 4]

    # Other settings in the same folder would mix two datasets.
    with pytest.raises(ConfigError, match="other settings"):
        render_dataset(job_for(meshes, first.out_dir, count=4, seed=9), progress=False)


def test_two_workers_render_the_same_dataset(meshes: dict[str, Path], tmp_path: Path) -> None:
    one = job_for(meshes, tmp_path / "one", count=3, seed=3, render={"width": 96, "height": 64})
    two = job_for(meshes, tmp_path / "two", count=3, seed=3, render={"width": 96, "height": 64})
    render_dataset(one, workers=1, progress=False)
    render_dataset(two, workers=2, progress=False)
    assert [r["annotations"] for r in labels(one.out_dir)] == [
        r["annotations"] for r in labels(two.out_dir)
    ]


def test_workbench_preset_rests_parts_on_a_rendered_bench(
    meshes: dict[str, Path], tmp_path: Path
) -> None:
    from dal.blender.presets import PRESETS

    cfg = dal_config.from_dict(RenderConfig, PRESETS["workbench"], "preset workbench")
    cfg = replace_in(cfg, render={"width": 96, "height": 64, "samples": 2, "denoise": False})
    job = RenderJob(cfg, (ModelSpec(meshes["bracket_obj"], "bracket"),), 2, tmp_path, seed=4)
    render_dataset(job, progress=False)
    for rec in labels(tmp_path):
        target = rec["plan"]["objects"][0]
        rot = np.asarray(target["rotation"])
        assert rot[2, 2] == pytest.approx(1.0)  # turned about the vertical only
        lowest = (parts.bracket_mesh().vertices @ rot.T)[:, 2].min() + target["location"][2]
        assert lowest == pytest.approx(0.0, abs=1e-6)  # resting on the bench at z = 0
        assert rec["plan"]["ground"] is not None and rec["annotations"]


def test_missing_mesh_fails_naming_it(meshes: dict[str, Path], tmp_path: Path) -> None:
    job = RenderJob(tiny(), (ModelSpec(tmp_path / "nowhere.obj", "x"),), 1, tmp_path / "out")
    with pytest.raises(DatasetError, match=r"nowhere\.obj"):
        render_dataset(job, progress=False)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("broken.obj", b"this is not a mesh\nv 1 2\nf 1 2 3\n"),
        (
            "broken.ply",
            b"ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nend_header\n1\n",
        ),
        ("empty.stl", b""),
    ],
)
def test_broken_mesh_fails_naming_it(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    job = RenderJob(tiny(), (ModelSpec(path, "x"),), 1, tmp_path / "out")
    with pytest.raises(DatasetError, match=re.escape(name)):
        render_dataset(job, progress=False)


def test_formats_load_to_the_same_geometry(meshes: dict[str, Path], tmp_path: Path) -> None:
    """OBJ, STL and a GLB exported by Blender itself give the same normalised part."""
    from dal.blender.meshes import load_mesh
    from dal.blender.scene import quiet_stdout

    bpy.ops.wm.read_factory_settings(use_empty=True)
    with quiet_stdout():
        bpy.ops.wm.obj_import(filepath=str(meshes["bracket_obj"]), forward_axis="Y", up_axis="Z")
        glb = tmp_path / "bracket.glb"
        bpy.ops.export_scene.gltf(filepath=str(glb), export_format="GLB")
    bpy.ops.wm.read_factory_settings(use_empty=True)
    radii = {}
    for key, path in (("obj", meshes["bracket_obj"]), ("stl", meshes["bracket_stl"]), ("glb", glb)):
        _, info = load_mesh(bpy, path, 1.0, f"m_{key}", "target")
        radii[key] = info.radius
        np.testing.assert_allclose(info.vertices.max(0), [0.04, 0.025, 0.03], atol=1e-5)
    assert radii["obj"] == pytest.approx(radii["stl"]) == pytest.approx(radii["glb"])


def test_cli_renders_and_reports_speed(meshes: dict[str, Path], tmp_path: Path, capsys) -> None:
    from dal.cli import main

    out = tmp_path / "cli"
    code = main(
        [
            "render",
            "--model",
            f"{meshes['bracket_obj']}:bracket",
            "--out",
            str(out),
            "--count",
            "1",
            "--size",
            "96x64",
            "--samples",
            "1",
            "--no-denoise",
            "--no-progress",
            "--seed",
            "1",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "1 images rendered" in printed and "images/min" in printed
    assert (out / "annotations.json").exists()
    shutil.rmtree(out)
    assert main(["render", "--out", str(out), "--count", "1"]) == 1  # no model: one clean line
    assert "no model to render" in capsys.readouterr().err


def test_bpy_missing_is_a_clear_error(monkeypatch) -> None:
    """Where bpy cannot be imported, the error says how to install it."""
    import builtins

    from dal.blender.bpy_env import import_bpy

    real_import = builtins.__import__

    def no_bpy(name, *args, **kwargs):
        if name == "bpy":
            raise ImportError("No module named 'bpy'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bpy)
    with pytest.raises(DalError, match="needs bpy") as info:
        import_bpy()
    assert "pip install" in str(info.value)
