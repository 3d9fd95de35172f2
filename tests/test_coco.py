"""COCO loading, validation, writing and prediction results; atomic writes underneath."""

from __future__ import annotations

import copy
import errno
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dal import fileio
from dal.coco import (
    CocoDataset,
    check_image_size,
    coco_from_dict,
    load_coco,
    merge,
    predictions_to_coco_results,
    read_image,
    write_coco,
)
from dal.errors import DatasetError, ModelError, StorageError
from dal.fileio import atomic_write_bytes, atomic_write_json, sha256_file
from dal.procedural import make_tiny


def _jpeg(width: int = 64, height: int = 48, colour: tuple[int, ...] = (90, 120, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _valid_doc() -> dict[str, Any]:
    return {
        "images": [
            {"id": 17, "file_name": "a.jpg", "width": 64, "height": 48},
            {"id": 18, "file_name": "b.jpg", "width": 64, "height": 48, "dal_sample": "s-1"},
        ],
        "annotations": [
            {"id": 1, "image_id": 17, "category_id": 1, "bbox": [10, 5, 20.5, 10.25]},
            {"id": 2, "image_id": 17, "category_id": 2, "bbox": [0, 0, 64, 48]},
            {"id": 3, "image_id": 18, "category_id": 1, "bbox": [30, 20, 5, 5], "iscrowd": 1},
        ],
        "categories": [{"id": 2, "name": "nut"}, {"id": 1, "name": "washer"}],
    }


@pytest.fixture
def coco_dir(tmp_path: Path) -> Path:
    """A small valid COCO file with its two images: the base every bad-input case mutates."""
    (tmp_path / "a.jpg").write_bytes(_jpeg())
    (tmp_path / "b.jpg").write_bytes(_jpeg())
    (tmp_path / "train.json").write_text(json.dumps(_valid_doc()))
    return tmp_path


def test_load_valid_file(coco_dir: Path) -> None:
    ds = load_coco(coco_dir / "train.json")
    assert ds.image_root == coco_dir
    assert ds.class_names == ["washer", "nut"]  # ordered by category id, not file order
    assert ds.category_to_label == {1: 1, 2: 2}
    rec = ds.by_id(17)
    np.testing.assert_allclose(rec.boxes, [[10, 5, 30.5, 15.25], [0, 0, 64, 48]])
    assert rec.boxes.dtype == np.float32 and rec.category_ids.dtype == np.int64
    assert rec.annotation_ids == [1, 2]
    assert ds.image_path(rec) == coco_dir / "a.jpg"
    # The crowd region is no training box, but it is remembered for evaluation.
    crowd_rec = ds.by_id(18)
    assert crowd_rec.boxes.shape == (0, 4) and len(crowd_rec.crowd) == 1
    assert crowd_rec.extra == {"dal_sample": "s-1"}


def test_labels_are_contiguous_from_one(coco_dir: Path) -> None:
    doc = _valid_doc()
    doc["categories"] = [{"id": 7, "name": "nut"}, {"id": 3, "name": "washer"}]
    for ann in doc["annotations"]:
        ann["category_id"] = 7 if ann["category_id"] == 2 else 3
    ds = coco_from_dict(doc, image_root=coco_dir)
    assert ds.category_to_label == {3: 1, 7: 2}
    assert ds.label_to_category == {1: 3, 2: 7}
    assert ds.labels(ds.by_id(17)).tolist() == [1, 2]


def test_round_trip_keeps_boxes_ids_and_crowd(coco_dir: Path) -> None:
    ds = load_coco(coco_dir / "train.json")
    out = write_coco(ds, coco_dir / "copy.json")
    again = load_coco(out)
    assert again.categories == ds.categories
    for a, b in zip(ds.images, again.images, strict=True):
        assert (a.id, a.file_name, a.width, a.height, a.extra) == (
            b.id,
            b.file_name,
            b.width,
            b.height,
            b.extra,
        )
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
        assert a.category_ids.tolist() == b.category_ids.tolist()
        assert a.annotation_ids == b.annotation_ids
        assert a.crowd == b.crowd


def test_round_trip_of_procedural_set(tmp_path: Path) -> None:
    ds = load_coco(make_tiny(tmp_path / "tiny", 6))
    again = load_coco(write_coco(ds.to_json(), tmp_path / "tiny" / "copy.json"))
    assert [r.id for r in again.images] == [r.id for r in ds.images]
    for a, b in zip(ds.images, again.images, strict=True):
        np.testing.assert_array_equal(a.boxes, b.boxes)


def _mutate(doc: dict[str, Any], case: str) -> None:
    anns, images = doc["annotations"], doc["images"]
    if case == "box_outside":
        anns[0]["bbox"] = [40, 10, 30, 10]  # reaches x=70 in a 64 px wide image
    elif case == "unknown_category":
        anns[1]["category_id"] = 9
    elif case == "duplicate_image":
        images[1]["id"] = 17
    elif case == "duplicate_annotation":
        anns[1]["id"] = 1
    elif case == "missing_key":
        del images[0]["width"]
    elif case == "missing_bbox":
        del anns[2]["bbox"]
    elif case == "missing_section":
        del doc["categories"]
    elif case == "zero_width":
        images[1]["width"] = 0
    elif case == "flat_box":
        anns[0]["bbox"] = [10, 5, 0, 10]
    elif case == "unknown_image":
        anns[0]["image_id"] = 99
    elif case == "missing_image_file":
        images[1]["file_name"] = "gone.jpg"
    elif case == "string_id":
        images[0]["id"] = "17"


BAD_CASES = {
    "box_outside": ("annotations[0].bbox", "extends past image 17 (64x48) by 6 px"),
    "unknown_category": ("annotations[1].category_id", "9 is not in categories (1, 2)"),
    "duplicate_image": ("images[1].id", "duplicate image id 17"),
    "duplicate_annotation": ("annotations[1].id", "duplicate annotation id 1"),
    "missing_key": ("images[0].width", "missing"),
    "missing_bbox": ("annotations[2].bbox", "missing"),
    "missing_section": ("categories", "missing"),
    "zero_width": ("images[1].width", "must be positive"),
    "flat_box": ("annotations[0].bbox", "non-positive width or height"),
    "unknown_image": ("annotations[0].image_id", "99 is not an image id"),
    "missing_image_file": ("images[1].file_name", "gone.jpg not found under"),
    "string_id": ("images[0].id", "expected an integer"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_file_names_file_and_field(coco_dir: Path, case: str) -> None:
    doc = _valid_doc()
    _mutate(doc, case)
    path = coco_dir / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(DatasetError) as info:
        load_coco(path)
    message = str(info.value)
    field, problem = BAD_CASES[case]
    assert message.startswith(f"{path}: {field}: "), message
    assert problem in message


def test_truncated_json_reports_line_and_column(coco_dir: Path) -> None:
    text = json.dumps(_valid_doc(), indent=2)
    path = coco_dir / "train.json"
    path.write_text(text[: len(text) // 2])
    with pytest.raises(DatasetError, match=r"train\.json: line \d+, column \d+: invalid JSON"):
        load_coco(path)


def test_missing_json_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"nowhere\.json: COCO file not found"):
        load_coco(tmp_path / "nowhere.json")


def test_check_files_can_be_skipped(coco_dir: Path) -> None:
    (coco_dir / "a.jpg").unlink()
    ds = load_coco(coco_dir / "train.json", check_files=False)
    assert len(ds.images) == 2


@pytest.mark.parametrize(
    ("bbox", "expected"),
    [
        ([-0.8, 0, 10, 10], [0, 0, 9.2, 10]),
        ([60, 40, 4.9, 8.6], [60, 40, 64, 48]),
    ],
)
def test_boxes_within_one_pixel_are_clipped(
    coco_dir: Path, bbox: list[float], expected: list[float]
) -> None:
    doc = _valid_doc()
    doc["annotations"][0]["bbox"] = bbox
    ds = coco_from_dict(doc, image_root=coco_dir)
    np.testing.assert_allclose(ds.by_id(17).boxes[0], expected, atol=1e-5)


def test_subset_and_merge(coco_dir: Path, tmp_path: Path) -> None:
    ds = load_coco(coco_dir / "train.json")
    sub = ds.subset([18])
    assert [r.id for r in sub.images] == [18] and len(ds.images) == 2
    with pytest.raises(DatasetError, match="image id 5"):
        ds.subset([5])

    other_dir = tmp_path / "other"
    other_dir.mkdir()
    (other_dir / "c.jpg").write_bytes(_jpeg())
    doc = _valid_doc()
    doc["images"] = [{"id": 30, "file_name": "c.jpg", "width": 64, "height": 48}]
    doc["annotations"] = [{"id": 1, "image_id": 30, "category_id": 2, "bbox": [1, 1, 5, 5]}]
    other = coco_from_dict(doc, image_root=other_dir)
    merged = merge([ds, other], image_root=tmp_path, json_path=tmp_path / "merged.json")
    assert [r.id for r in merged.images] == [17, 18, 30]
    ann_ids = [a for r in merged.images for a in r.annotation_ids]
    assert len(set(ann_ids)) == len(ann_ids) == 3
    write_coco(merged, tmp_path / "merged.json")
    reloaded = load_coco(tmp_path / "merged.json")  # checks every file name resolves
    assert reloaded.num_annotations == 3
    with pytest.raises(DatasetError, match="image id 17 is also in"):
        merge([ds, ds], image_root=tmp_path, json_path=tmp_path / "x.json")


def test_read_image_gives_rgb_uint8(tmp_path: Path) -> None:
    Image.new("L", (20, 10), 128).save(tmp_path / "grey.png")
    array = read_image(tmp_path / "grey.png")
    assert array.shape == (10, 20, 3) and array.dtype == np.uint8


@pytest.mark.parametrize(
    ("name", "content", "pattern"),
    [
        ("missing.jpg", None, "image not found"),
        ("noise.jpg", bytes(range(256)) * 4, "not an image file"),
        ("half.jpg", "truncate", "corrupt or truncated"),
    ],
)
def test_read_image_errors_name_the_file(
    tmp_path: Path, name: str, content: Any, pattern: str
) -> None:
    path = tmp_path / name
    if content == "truncate":
        data = _jpeg(320, 240)
        content = data[: len(data) // 2]
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DatasetError, match=pattern) as info:
        read_image(path)
    assert str(path) in str(info.value)


def test_check_image_size(coco_dir: Path) -> None:
    ds = load_coco(coco_dir / "train.json")
    rec = ds.by_id(17)
    check_image_size(rec, read_image(ds.image_path(rec)))
    with pytest.raises(DatasetError, match="image is 50x40 but the COCO file says 64x48"):
        check_image_size(rec, np.zeros((40, 50, 3), np.uint8))


def test_predictions_to_results() -> None:
    results = predictions_to_coco_results(
        5, np.array([[10, 20, 30, 60]], np.float32), np.array([2]), np.array([0.75]), {1: 3, 2: 7}
    )
    assert results == [
        {"image_id": 5, "category_id": 7, "bbox": [10.0, 20.0, 20.0, 40.0], "score": 0.75}
    ]
    assert predictions_to_coco_results(5, np.zeros((0, 4)), [], [], {1: 3}) == []
    with pytest.raises(ModelError, match="label 4 has no category"):
        predictions_to_coco_results(5, [[0, 0, 1, 1]], [4], [0.5], {1: 3})


def test_perfect_predictions_score_ap_one_in_pycocotools(tmp_path: Path) -> None:
    """Ground truth fed back as predictions must give AP 1.0: ids and xywh line up."""
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    json_path = make_tiny(tmp_path, 6, classes=2)
    ds = load_coco(json_path)
    results = []
    for rec in ds.images:
        results += predictions_to_coco_results(
            rec.id, rec.boxes, ds.labels(rec), np.ones(len(rec.boxes)), ds.label_to_category
        )
    gt = COCO(str(json_path))
    evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)


def test_dataset_to_json_loads_in_pycocotools(coco_dir: Path) -> None:
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO

    path = write_coco(load_coco(coco_dir / "train.json"), coco_dir / "out.json")
    gt = COCO(str(path))
    assert len(gt.getAnnIds(iscrowd=False)) == 2 and len(gt.getAnnIds(iscrowd=True)) == 1


# --- atomic writes (dal.fileio) --------------------------------------------------------------


def test_atomic_write_replaces_and_hashes(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "model.bin"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new content")
    assert target.read_bytes() == b"new content"
    assert sorted(os.listdir(target.parent)) == ["model.bin"]
    # sha256 of "new content", computed independently
    assert sha256_file(target) == (
        "fe32608c9ef5b6cf7e3f946480253ff76f24f4ec0678f3d0f07f9844cbff9601"
    )


def test_unserialisable_json_leaves_old_file(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    atomic_write_json(target, {"ok": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"ok": 1}


def test_disk_full_becomes_storage_error_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "pool.json"
    atomic_write_json(target, {"v": 1})

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    # Simulates the kernel reporting a full disk when the data is flushed.
    monkeypatch.setattr(fileio.os, "fsync", full)
    with pytest.raises(StorageError, match=f"disk full: free space under {tmp_path}"):
        atomic_write_json(target, {"v": 2})
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["pool.json"]
    assert json.loads(target.read_text()) == {"v": 1}


def test_coco_dataset_is_plain_data(coco_dir: Path) -> None:
    """subset/merge must not alias the original's records in a way that mutates it."""
    ds = load_coco(coco_dir / "train.json")
    before = copy.deepcopy(ds.to_json())
    merge([ds], image_root=coco_dir, json_path=coco_dir / "m.json")
    ds.subset([17])
    assert ds.to_json() == before
    assert isinstance(ds, CocoDataset)


CLIMBS = "../" * 40  # more than any temp folder is deep: this reaches /


@pytest.mark.parametrize(
    "file_name",
    [f"{CLIMBS}etc/passwd", "/etc/passwd", "sub/../../b.jpg"],
    ids=["climbs-out", "absolute", "climbs-out-later"],
)
@pytest.mark.parametrize("check_files", [True, False])
def test_file_names_that_leave_the_image_root_are_refused_at_load(
    coco_dir: Path, file_name: str, check_files: bool
) -> None:
    doc = _valid_doc()
    doc["images"][1]["file_name"] = file_name
    path = coco_dir / "escape.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(DatasetError) as info:
        load_coco(path, check_files=check_files)
    message = str(info.value)
    assert message.startswith(f"{path}: images[1].file_name: "), message
    assert repr(file_name) in message and "image id 18" in message
    assert "leaves the image root" in message


def test_names_inside_the_root_pass_and_an_explicit_option_allows_the_rest(
    coco_dir: Path,
) -> None:
    doc = _valid_doc()
    (coco_dir / "sub").mkdir()
    doc["images"][0]["file_name"] = "sub/../a.jpg"  # climbs, but stays inside
    doc["images"][1]["file_name"] = f"{CLIMBS}etc/passwd"
    path = coco_dir / "trusted.json"
    path.write_text(json.dumps(doc))
    ds = load_coco(path, allow_outside_root=True)
    assert ds.image_path(ds.by_id(18)).resolve() == Path("/etc/passwd")


def test_merge_refuses_an_image_outside_its_root(coco_dir: Path, tmp_path: Path) -> None:
    ds = load_coco(coco_dir / "train.json")
    elsewhere = tmp_path / "elsewhere"
    with pytest.raises(DatasetError, match="outside the image root"):
        merge([ds], image_root=elsewhere, json_path=elsewhere / "m.json")
