"""Label formats (COCO, CVAT COCO 1.0, Label Studio) and the ground-truth oracle.

Each format round-trips (export -> import gives the same boxes); malformed files are refused
with the file and the line or field at fault, and nothing is stored from them.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from trainer_samples import put_sample

from dal.coco import load_coco
from dal.errors import DatasetError
from dal.link import Detection
from dal.procedural import make_tiny
from dal.trainer.labels import CVAT_JSON, FORMATS
from dal.trainer.labels.export import export_labels
from dal.trainer.labels.importer import import_labels
from dal.trainer.labels.oracle import GroundTruthOracle
from dal.trainer.store import Label, SampleStore

CLASSES = ("washer", "l_bracket")


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


@pytest.fixture
def gt_json(tmp_path: Path) -> Path:
    return make_tiny(tmp_path / "gt", 4, classes=2, seed=3)


@pytest.fixture
def store(tmp_path: Path, gt_json: Path) -> SampleStore:
    """Four samples: two labelled with boxes, one labelled empty, one unlabelled with the
    model's detections."""
    gt = load_coco(gt_json)
    s = SampleStore(tmp_path / "store")
    spool = tmp_path / "spool"
    det = Detection(box=(10.0, 12.5, 60.25, 70.0), label=2, score=0.8)
    ids = [
        put_sample(s, gt.image_path(rec).read_bytes(), spool, detections=(det,)).sample_id
        for rec in gt.images
    ]
    s.set_labels(
        [
            Label(ids[0], [[1.5, 2.25, 40.0, 50.5], [100, 10, 159.5, 95.5]], CLASSES, "test"),
            Label(ids[1], [[0, 0, 160, 96]], ("l_bracket",), "test"),
            Label(ids[2], np.zeros((0, 4)), (), "test"),
        ]
    )
    yield s
    s.close()


def _snapshot(store: SampleStore) -> dict[str, tuple[list, tuple]]:
    return {k: (v.boxes.round(3).tolist(), v.classes) for k, v in store.labels().items()}


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_then_import_gives_the_same_boxes(
    store: SampleStore, tmp_path: Path, fmt: str
) -> None:
    before = _snapshot(store)
    result = export_labels(store, tmp_path / "out", fmt, CLASSES, which="all", images="copy")
    assert result.images == 4 and result.labelled == 3
    assert len(list((tmp_path / "out" / "images").iterdir())) == 4
    store.clear_labels(before)
    assert store.counts().labelled == 0
    imported = import_labels(result.path, store, CLASSES)
    assert imported.fmt == fmt and len(imported.labels) == 3 and imported.unlabelled == 1
    after = _snapshot(store)
    assert after.keys() == before.keys()
    for sample_id, (boxes, classes) in before.items():
        assert after[sample_id][1] == classes
        np.testing.assert_allclose(after[sample_id][0], boxes, atol=1e-3)


def test_cvat_zip_has_the_coco_1_0_layout(store: SampleStore, tmp_path: Path) -> None:
    result = export_labels(store, tmp_path / "out", "cvat", CLASSES, images="none")
    with zipfile.ZipFile(result.path) as archive:
        assert archive.namelist() == [CVAT_JSON]
        doc = json.loads(archive.read(CVAT_JSON))
    assert {"licenses", "info", "images", "annotations", "categories"} <= doc.keys()
    assert all("segmentation" in a and "attributes" in a for a in doc["annotations"])
    assert [c["name"] for c in doc["categories"]] == list(CLASSES)


def test_label_studio_tasks_carry_predictions_and_a_matching_config(
    store: SampleStore, tmp_path: Path
) -> None:
    result = export_labels(store, tmp_path / "out", "labelstudio", CLASSES, images="none")
    tasks = json.loads(result.path.read_text())
    unlabelled = [t for t in tasks if "annotations" not in t]
    assert len(unlabelled) == 1
    (pred,) = unlabelled[0]["predictions"]
    value = pred["result"][0]["value"]
    assert value["rectanglelabels"] == ["l_bracket"] and pred["score"] == pytest.approx(0.8)
    assert value["x"] == pytest.approx(10 / 160 * 100) and value["height"] == pytest.approx(
        57.5 / 96 * 100
    )
    config = (tmp_path / "out" / "label_config.xml").read_text()
    assert '<Label value="washer"/>' in config and 'toName="image"' in config


def test_coco_pre_annotations_only_on_request(store: SampleStore, tmp_path: Path) -> None:
    plain = export_labels(store, tmp_path / "a", "coco", CLASSES, which="unlabelled", images="none")
    assert json.loads(plain.path.read_text())["annotations"] == []
    pre = export_labels(
        store, tmp_path / "b", "coco", CLASSES, which="unlabelled", images="none", predictions=True
    )
    (ann,) = json.loads(pre.path.read_text())["annotations"]
    assert ann["bbox"] == [10, 12.5, 50.25, 57.5] and ann["category_id"] == 2


# -- malformed files ---------------------------------------------------------------------------

Mutate = Callable[[Any], Any]


def _set(path: list, value: Any) -> Mutate:
    def mutate(doc: Any) -> Any:
        node = doc
        for key in path[:-1]:
            node = node[key]
        if value is KeyError:
            del node[path[-1]]
        else:
            node[path[-1]] = value
        return doc

    return mutate


def _first_labelled_task(doc: list) -> int:
    return next(
        i for i, t in enumerate(doc) if t.get("annotations") and t["annotations"][0]["result"]
    )


MALFORMED: list[tuple[str, str, Mutate, list[str]]] = [
    ("coco", "bbox", _set(["annotations", 0, "bbox"], [1, 2, -3, 4]), ["annotations[0].bbox"]),
    (
        "coco",
        "class",
        _set(["categories", 0, "name"], "sprocket"),
        ["categories[0].name", "'sprocket'", "model's classes"],
    ),
    ("coco", "missing", _set(["images"], KeyError), ["images: missing"]),
    (
        "coco",
        "unknown image",
        lambda d: _set(["images", 0, "file_name"], "elsewhere.jpg")(
            _set(["images", 0, "dal_sample_id"], KeyError)(d)
        ),
        ["images[0].file_name", "elsewhere.jpg", "not a sample"],
    ),
    ("coco", "size", _set(["images", 0, "width"], 320), ["images[0].width/height", "320x96"]),
    (
        "coco",
        "twice",
        lambda d: {**d, "images": d["images"] + [{**d["images"][0], "id": 99}]},
        ["appears twice"],
    ),
    (
        "cvat",
        "category",
        _set(["annotations", 0, "category_id"], 99),
        ["annotations[0].category_id"],
    ),
    (
        "labelstudio",
        "width",
        lambda d: _set(
            [_first_labelled_task(d), "annotations", 0, "result", 0, "value", "width"], -5
        )(d),
        ["annotations[0].result[0].value", "non-positive"],
    ),
    (
        "labelstudio",
        "x",
        lambda d: _set(
            [_first_labelled_task(d), "annotations", 0, "result", 0, "value", "x"], KeyError
        )(d),
        ["result[0].value.x: missing"],
    ),
    (
        "labelstudio",
        "class",
        lambda d: _set(
            [_first_labelled_task(d), "annotations", 0, "result", 0, "value", "rectanglelabels"],
            ["sprocket"],
        )(d),
        ["value.rectanglelabels[0]", "'sprocket'"],
    ),
    (
        "labelstudio",
        "rotation",
        lambda d: _set(
            [_first_labelled_task(d), "annotations", 0, "result", 0, "value", "rotation"], 30
        )(d),
        ["value.rotation", "rotated"],
    ),
    ("labelstudio", "image", _set([0, "data", "image"], KeyError), ["[0].data.image", "missing"]),
    (
        "labelstudio",
        "size",
        lambda d: _set(
            [_first_labelled_task(d), "annotations", 0, "result", 0, "original_width"], 999
        )(d),
        ["original_width/original_height", "999x96"],
    ),
]


def _exported_doc(store: SampleStore, out: Path, fmt: str) -> tuple[Path, Any]:
    result = export_labels(store, out, fmt, CLASSES, images="none")
    if fmt == "cvat":
        with zipfile.ZipFile(result.path) as archive:
            return result.path, json.loads(archive.read(CVAT_JSON))
    return result.path, json.loads(result.path.read_text())


def _write_back(path: Path, fmt: str, doc: Any) -> None:
    text = json.dumps(doc, indent=1)
    if fmt == "cvat":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr(CVAT_JSON, text)
    else:
        path.write_text(text)


@pytest.mark.parametrize(
    ("fmt", "mutate", "needles"),
    [(f, m, n) for f, _, m, n in MALFORMED],
    ids=[f"{f}-{name}" for f, name, _, _ in MALFORMED],
)
def test_malformed_files_are_refused_naming_file_and_field(
    store: SampleStore, tmp_path: Path, fmt: str, mutate: Mutate, needles: list[str]
) -> None:
    path, doc = _exported_doc(store, tmp_path / "out", fmt)
    _write_back(path, fmt, mutate(doc))
    revision = store.label_revision()
    store.clear_labels(list(store.labels()))
    with pytest.raises(DatasetError) as err:
        import_labels(path, store, CLASSES)
    message = str(err.value)
    assert path.name in message
    for needle in needles:
        assert needle in message, message
    assert store.counts().labelled == 0 and store.label_revision() == revision, "nothing stored"


@pytest.mark.parametrize("fmt", FORMATS)
def test_broken_json_names_the_line(store: SampleStore, tmp_path: Path, fmt: str) -> None:
    path, doc = _exported_doc(store, tmp_path / "out", fmt)
    text = json.dumps(doc, indent=1)
    broken = text[: len(text) // 2]  # truncated download
    if fmt == "cvat":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr(CVAT_JSON, broken)
    else:
        path.write_text(broken)
    with pytest.raises(DatasetError, match=r"line \d+, column \d+: invalid JSON") as err:
        import_labels(path, store, CLASSES)
    assert path.name in str(err.value)


def test_a_cvat_zip_without_annotations_is_refused(store: SampleStore, tmp_path: Path) -> None:
    path = tmp_path / "task.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("images/a.jpg", b"")
    with pytest.raises(DatasetError, match=r"task.zip: expected one annotations/\*.json"):
        import_labels(path, store, CLASSES)


# -- the oracle ------------------------------------------------------------------------------


def test_oracle_matches_by_each_rule_and_scales_boxes(tmp_path: Path, gt_json: Path) -> None:
    gt = load_coco(gt_json)
    images = [Image.open(gt.image_path(rec)).convert("RGB") for rec in gt.images]
    other = make_tiny(tmp_path / "other", 1, classes=2, seed=11)
    other_bytes = (other.parent / "images" / "000000.jpg").read_bytes()
    spool = tmp_path / "spool"
    with SampleStore(tmp_path / "store") as store:
        by_name = put_sample(
            store, _jpeg(images[0], 60), spool, meta={"file_name": "/replay/images/000000.jpg"}
        )
        by_id = put_sample(
            store, _jpeg(images[1], 60), spool, meta={"ground_truth": {"image_id": 2}}
        )
        by_sha = put_sample(store, gt.image_path(gt.images[2]).read_bytes(), spool)
        resized = images[3].resize((320, 192), Image.Resampling.BILINEAR)
        by_pixels = put_sample(store, _jpeg(resized, 70), spool)
        stranger = put_sample(store, other_bytes, spool)

        oracle = GroundTruthOracle(gt_json)
        rules = {
            h.sample_id: oracle.match(store.get(h.sample_id))
            for h in (by_name, by_id, by_sha, by_pixels, stranger)
        }
        assert rules[by_name.sample_id][1] == "file_name"
        assert rules[by_id.sample_id][1] == "image_id"
        assert rules[by_sha.sample_id][1] == "sha256"
        assert rules[by_pixels.sample_id][1] == "pixels"
        assert rules[stranger.sample_id] is None

        assert oracle.label_pending(store) == 4
        assert oracle.label_pending(store) == 0, "each sample is looked at once"
        assert store.label(stranger.sample_id) is None
        for header, rec in zip((by_name, by_id, by_sha), gt.images[:3], strict=True):
            label = store.label(header.sample_id)
            np.testing.assert_allclose(label.boxes, rec.boxes, atol=1e-3)
            assert label.source == "oracle"
        scaled = store.label(by_pixels.sample_id)
        np.testing.assert_allclose(scaled.boxes, gt.images[3].boxes * 2, atol=1e-2)
        names = gt.categories
        assert scaled.classes == tuple(names[int(c)] for c in gt.images[3].category_ids)


def test_label_cli_queue_export_import(tmp_path: Path, gt_json: Path, capsys) -> None:
    from dal.cli import main

    config = tmp_path / "trainer.toml"
    config.write_text(f'[trainer]\ndata_dir = "{tmp_path / "data"}"\n')
    gt = load_coco(gt_json)
    with SampleStore(tmp_path / "data" / "samples") as store:
        for rec, score in zip(gt.images[:2], (0.3, 0.9), strict=True):
            put_sample(store, gt.image_path(rec).read_bytes(), tmp_path / "spool", score=score)
    assert (
        main(["label", "queue", "--config", str(config), "--sheet", str(tmp_path / "q.jpg")]) == 0
    )
    out = capsys.readouterr().out
    assert out.index("0.900") < out.index("0.300") and (tmp_path / "q.jpg").is_file()

    out_dir = tmp_path / "export"
    args = ["label", "export", "--config", str(config), "--format", "coco", "--out", str(out_dir)]
    assert main([*args, "--which", "unlabelled"]) == 0
    doc = json.loads((out_dir / "annotations.json").read_text())
    doc["categories"] = [{"id": 1, "name": "washer"}]
    doc["annotations"] = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 6, 20, 30]}]
    for image in doc["images"]:
        image.pop("dal_labelled")  # what a labelling tool does
    (out_dir / "annotations.json").write_text(json.dumps(doc))
    assert (
        main(["label", "import", str(out_dir / "annotations.json"), "--config", str(config)]) == 0
    )
    assert "stored labels for 2 samples" in capsys.readouterr().out
    with SampleStore(tmp_path / "data" / "samples") as store:
        first, second = (image["dal_sample_id"] for image in doc["images"])
        assert store.label(first).boxes.tolist() == [[5, 6, 25, 36]]
        assert store.label(second).classes == (), "an image without boxes: nothing in it"

    doc["annotations"][0]["bbox"] = [5, 6, 20]
    (out_dir / "annotations.json").write_text(json.dumps(doc))
    assert (
        main(["label", "import", str(out_dir / "annotations.json"), "--config", str(config)]) == 1
    )
    err = capsys.readouterr().err
    assert "annotations.json: annotations[0].bbox" in err and "Traceback" not in err
