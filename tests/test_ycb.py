"""YCB-Video import: a fake scene layout written here (PNG + box.txt) becomes valid COCO."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dal.cli import main
from dal.coco import load_coco, merge
from dal.errors import ConfigError, DatasetError
from dal.ycb import SCENE_ID_FACTOR, import_ycb

MUSTARD, CRACKER, MUG = "006_mustard_bottle", "003_cracker_box", "025_mug"
WIDTH, HEIGHT = 64, 48

# scene -> frame -> box file text
LAYOUT = {
    "0000": {"000001": f"{MUG} 5 5 30 30\n", "000002": f"{MUG} 6 5 31 30\n"},
    "0001": {
        "000001": f"{CRACKER} 0 0 20 20\n{MUSTARD} 10.5 5 30 40\n",
        "000002": f"{MUSTARD} 50 30 70.5 48.00\n\n",  # pokes out to the right: clipped
        "000003": f"{MUSTARD} 70 10 90 20\n{CRACKER} 1 1 9 9\n",  # mustard outside: dropped
    },
    "0002": {"000007": f"{MUSTARD} 1 2 3 4\n"},
}


def _write_layout(root: Path, layout: dict[str, dict[str, str]]) -> Path:
    rng = np.random.default_rng(0)
    for scene, frames in layout.items():
        folder = root / scene
        folder.mkdir(parents=True)
        for frame, boxes in frames.items():
            pixels = rng.integers(0, 255, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{frame}-color.png")
            (folder / f"{frame}-box.txt").write_text(boxes)
    return root


@pytest.fixture
def scenes(tmp_path: Path) -> Path:
    return _write_layout(tmp_path / "scenes", LAYOUT)


def test_all_scenes_become_valid_coco_with_every_class(scenes: Path, tmp_path: Path) -> None:
    coco = load_coco(import_ycb(scenes, tmp_path / "out"))
    assert coco.class_names == [CRACKER, MUSTARD, MUG]  # sorted: YCB object order
    assert len(coco.images) == 6
    first = coco.by_id(1 * SCENE_ID_FACTOR + 1)
    assert first.extra == {"scene": "0001", "frame": "000001"}
    assert (first.width, first.height) == (WIDTH, HEIGHT)
    pairs = zip(first.category_ids, first.boxes, strict=True)
    boxes = {coco.categories[int(c)]: b.tolist() for c, b in pairs}
    assert boxes == {CRACKER: [0, 0, 20, 20], MUSTARD: [10.5, 5, 30, 40]}
    assert np.array_equal(
        np.asarray(Image.open(coco.image_path(first))),
        np.asarray(Image.open(scenes / "0001" / "000001-color.png")),
    )


def test_class_filter_keeps_other_frames_as_negatives(scenes: Path, tmp_path: Path) -> None:
    coco = load_coco(
        import_ycb(scenes, tmp_path / "out", scenes=["0000", "0001"], classes=[MUSTARD])
    )
    assert coco.class_names == [MUSTARD]
    per_image = {rec.id: len(rec.boxes) for rec in coco.images}
    assert per_image == {1: 0, 2: 0, 1000001: 1, 1000002: 1, 1000003: 0}
    clipped = coco.by_id(1000002).boxes[0].tolist()
    assert clipped == [50, 30, WIDTH, HEIGHT]  # cut at the image border

    dropped = load_coco(
        import_ycb(scenes, tmp_path / "out2", scenes=["0001"], classes=[MUSTARD], skip_empty=True)
    )
    assert [rec.id for rec in dropped.images] == [1000001, 1000002]


def test_scene_split_gives_disjoint_sets_that_merge(scenes: Path, tmp_path: Path) -> None:
    pool = load_coco(import_ycb(scenes, tmp_path / "pool", scenes=["0001"], classes=[MUSTARD]))
    val = load_coco(import_ycb(scenes, tmp_path / "val", scenes=["0002"], classes=[MUSTARD]))
    assert {rec.extra["scene"] for rec in pool.images} == {"0001"}
    assert [rec.id for rec in val.images] == [2 * SCENE_ID_FACTOR + 7]
    assert pool.categories == val.categories
    both = merge([pool, val], tmp_path, tmp_path / "both.json")
    assert len(both.images) == 4


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (f"{MUSTARD} 10 5 abc 40", "must be numbers"),
        (f"{MUSTARD} 10 5 30", "expected 'class x1 y1 x2 y2', got 4 fields"),
        (f"{MUSTARD} 30 5 10 40", "empty or not finite"),
        (f"{MUSTARD} 10 5 nan 40", "empty or not finite"),
    ],
)
def test_a_bad_box_line_names_file_and_line(tmp_path: Path, line: str, problem: str) -> None:
    root = _write_layout(tmp_path / "scenes", {"0001": {"000004": f"{MUG} 1 1 5 5\n{line}\n"}})
    with pytest.raises(DatasetError, match=r"000004-box\.txt:2: ") as err:
        import_ycb(root, tmp_path / "out")
    assert problem in str(err.value)


def test_a_missing_box_file_is_named(scenes: Path, tmp_path: Path) -> None:
    (scenes / "0002" / "000007-box.txt").unlink()
    with pytest.raises(DatasetError, match=r"000007-box\.txt: box file not found"):
        import_ycb(scenes, tmp_path / "out", scenes=["0002"])


def test_unknown_class_or_scene_lists_what_exists(scenes: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="006_mustard_botle") as err:
        import_ycb(scenes, tmp_path / "out", scenes=["0001"], classes=["006_mustard_botle"])
    assert MUSTARD in str(err.value)
    with pytest.raises(DatasetError, match="0009: scene not found") as err:
        import_ycb(scenes, tmp_path / "out", scenes=["0009"])
    assert "0000, 0001, 0002" in str(err.value)


def test_cli_writes_the_split_and_fails_in_one_line(
    scenes: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "cli"
    args = ["import-ycb", str(scenes), "--out", str(out), "--scenes", "0001,0002"]
    assert main([*args, "--classes", MUSTARD, "--symlink"]) == 0
    coco = load_coco(out / "annotations.json")
    assert len(coco.images) == 4
    assert all(coco.image_path(rec).is_symlink() for rec in coco.images)
    assert main([*args, "--classes", "nope"]) == 1
    err = capsys.readouterr().err
    assert "dal import-ycb: error: --classes nope" in err and "Traceback" not in err
