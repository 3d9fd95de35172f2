"""The procedural parts dataset: valid COCO, honest boxes, deterministic, two distinct looks."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest

from dal import cli
from dal.coco import load_coco, read_image
from dal.errors import ConfigError
from dal.procedural import make_dataset, make_tiny, part_classes


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(
        tmp_path_factory.mktemp("syn"),
        16,
        classes=4,
        width=320,
        height=180,
        seed=3,
        max_objects=5,
        min_visible=0.3,
    )


def _chroma(pixels: np.ndarray) -> np.ndarray:
    """Colour with brightness divided out: the parts' shading and shadows only scale it."""
    pixels = pixels.astype(np.float64)
    return pixels / np.maximum(pixels.sum(axis=-1, keepdims=True), 1.0)


def test_loads_in_pycocotools_and_validator(synthetic: Path) -> None:
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO

    gt = COCO(str(synthetic))
    ds = load_coco(synthetic)  # our validator: boxes inside images, files present, ids unique
    assert len(gt.getImgIds()) == len(ds.images) == 16
    assert len(gt.getAnnIds()) == ds.num_annotations > 16
    assert sorted(gt.getCatIds()) == [1, 2, 3, 4]


def test_every_box_shows_its_class_colour(synthetic: Path) -> None:
    ds = load_coco(synthetic)
    colours = {c.label: np.asarray(c.colour) for c in part_classes(4)}
    doc = json.loads(synthetic.read_text())
    area = {a["id"]: a["area"] for a in doc["annotations"]}
    for rec in ds.images:
        image = read_image(ds.image_path(rec))
        for box, cat, ann_id in zip(rec.boxes, rec.category_ids, rec.annotation_ids, strict=True):
            x1, y1, x2, y2 = box.astype(int)
            patch = image[y1:y2, x1:x2]
            bright = patch.sum(axis=-1) > 60
            close = np.abs(_chroma(patch) - _chroma(colours[int(cat)])).max(axis=-1) < 0.07
            matching = int((close & bright).sum())
            # Most visible pixels of the part carry its colour (rim and JPEG edges aside).
            assert matching >= 0.3 * area[ann_id], (rec.file_name, cat, matching, area[ann_id])


def test_boxes_are_tight_on_the_visible_colour(synthetic: Path) -> None:
    """Each box edge touches the part: a pixel of the class colour lies near every edge."""
    ds = load_coco(synthetic)
    colours = {c.label: np.asarray(c.colour) for c in part_classes(4)}
    for rec in ds.images[:6]:
        image = read_image(ds.image_path(rec))
        for box, cat in zip(rec.boxes, rec.category_ids, strict=True):
            x1, y1, x2, y2 = box.astype(int)
            close = np.abs(_chroma(image[y1:y2, x1:x2]) - _chroma(colours[int(cat)])).max(-1)
            hit = close < 0.1
            rows, cols = np.flatnonzero(hit.any(axis=1)), np.flatnonzero(hit.any(axis=0))
            h, w = hit.shape
            assert rows[0] <= 3 and rows[-1] >= h - 4 and cols[0] <= 3 and cols[-1] >= w - 4


def test_visible_fraction_and_occlusion(synthetic: Path, tmp_path: Path) -> None:
    doc = json.loads(synthetic.read_text())
    fractions = [a["visible_fraction"] for a in doc["annotations"]]
    assert min(fractions) >= 0.3
    assert min(fractions) < 1.0  # some parts really are occluded
    # With min_visible=1 only untouched parts are labelled.
    strict = make_dataset(tmp_path, 6, width=160, height=96, max_objects=4, min_visible=1.0)
    assert all(a["visible_fraction"] == 1.0 for a in json.loads(strict.read_text())["annotations"])


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a = make_tiny(tmp_path / "a", 4, seed=11)
    b = make_tiny(tmp_path / "b", 4, seed=11)
    make_tiny(tmp_path / "c", 4, seed=12)
    assert a.read_bytes() == b.read_bytes()
    for image in sorted((tmp_path / "a" / "images").iterdir()):
        assert image.read_bytes() == (tmp_path / "b" / "images" / image.name).read_bytes()
        assert image.read_bytes() != (tmp_path / "c" / "images" / image.name).read_bytes()


def test_styles_share_classes_but_look_different(tmp_path: Path) -> None:
    syn = load_coco(make_tiny(tmp_path / "syn", 6, classes=3))
    wb = load_coco(make_tiny(tmp_path / "wb", 6, classes=3, style="workbench"))
    assert syn.categories == wb.categories
    syn_px = np.stack([read_image(syn.image_path(r)) for r in syn.images]).astype(np.float64)
    wb_px = np.stack([read_image(wb.image_path(r)) for r in wb.images]).astype(np.float64)
    # Workbench: warm cast (more red than blue) and softer, blurred edges.
    syn_cast = syn_px[..., 0].mean() - syn_px[..., 2].mean()
    wb_cast = wb_px[..., 0].mean() - wb_px[..., 2].mean()
    assert wb_cast > syn_cast + 5
    syn_edges = np.abs(np.diff(syn_px.mean(-1), axis=2)).mean()
    wb_edges = np.abs(np.diff(wb_px.mean(-1), axis=2)).mean()
    assert wb_edges < syn_edges


@pytest.mark.parametrize("classes", [1, 3, 11])
def test_class_count_respected(tmp_path: Path, classes: int) -> None:
    ds = load_coco(make_tiny(tmp_path, 12, classes=classes))
    assert sorted(ds.categories) == list(range(1, classes + 1))
    assert len(set(ds.class_names)) == classes
    used = {int(c) for r in ds.images for c in r.category_ids}
    assert used <= set(range(1, classes + 1))
    if classes <= 3:
        assert used == set(range(1, classes + 1))


def test_part_classes_are_distinct_shape_colour_pairs() -> None:
    classes = part_classes(40)
    assert len({(c.shape, c.colour) for c in classes}) == 40
    assert len({c.name for c in classes}) == 40


@pytest.mark.parametrize(
    "kwargs",
    [
        {"classes": 0},
        {"width": 16},
        {"min_visible": 1.5},
        {"style": "cartoon"},
        {"max_objects": 0},
    ],
)
def test_bad_arguments_raise_config_error(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ConfigError, match="procedural dataset"):
        make_dataset(tmp_path, 1, **kwargs)


def test_cli_makes_a_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    options = shlex.split("--images 3 --classes 2 --size 128x72 --seed 5 --style workbench")
    rc = cli.main(["dataset", str(tmp_path / "cli"), *options])
    assert rc == 0
    out = capsys.readouterr().out.splitlines()
    ds = load_coco(out[0])
    assert len(ds.images) == 3 and (ds.images[0].width, ds.images[0].height) == (128, 72)
    assert out[1].startswith("3 images, ")


def test_cli_rejects_bad_size(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        cli.main(["dataset", str(tmp_path), "--size", "640by360"])
