"""Labels in and out of the sample store: COCO, CVAT "COCO 1.0", Label Studio; the oracle.

Export writes a folder a labelling tool can take:

    coco         annotations.json (+ images/); the image key `dal_sample_id` names the sample
    cvat         annotations.zip holding annotations/instances_default.json, CVAT's "COCO 1.0"
                 layout (+ images/ to create the task from)
    labelstudio  tasks.json for Label Studio's import (`data.image`, `data.dal_sample_id`, the
                 labels as `annotations`, the model's detections as `predictions`) and
                 label_config.xml for the project

Each exported image is named `<agent>__<name>.<ext>` after its sample id, so an import finds
the sample by `dal_sample_id` when the tool kept it, else by that file name. In COCO and CVAT
files every image counts as labelled (no boxes = "no object in it"), except images that still
carry `"dal_labelled": false` from the export (a tool that keeps unknown keys and nobody
touched them); CVAT drops that key, so export for CVAT only what will be labelled.

Import reads what the tools give back (a COCO or CVAT JSON or zip, a Label Studio JSON export),
checks all of it first and writes nothing unless the whole file is good: a malformed file is
refused with the file and the line (JSON syntax) or field (`annotations[3].bbox`,
`[2].annotations[0].result[1].value.width`) at fault. Boxes become x1, y1, x2, y2 image pixels
and classes are stored by name; a name that is not one of the model's classes is refused.

The ground-truth oracle labels samples of replayed recordings from a COCO file; see
`GroundTruthOracle` for how a sample is matched to a ground-truth image.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import shutil
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote

import numpy as np
from PIL import Image, UnidentifiedImageError

from dal.coco import ImageRecord, coco_from_dict, load_coco
from dal.errors import DatasetError
from dal.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_file
from dal.trainer.store import Label, Sample, SampleStore

logger = logging.getLogger(__name__)

FORMATS = ("coco", "cvat", "labelstudio")
WHICH = ("all", "labelled", "unlabelled")
IMAGE_MODES = ("copy", "link", "none")
CVAT_JSON = "annotations/instances_default.json"
LS_FROM, LS_TO = "label", "image"
DEFAULT_URL_PREFIX = "/data/local-files/?d=images/"
_PERCENT_SLACK = 0.5  # Label Studio rounds percentages; allow half a percent past the edge


# ---------------------------------------------------------------------------------------------
# export


@dataclass(frozen=True)
class ExportResult:
    path: Path  # the main file (annotations.json, annotations.zip or tasks.json)
    images: int
    labelled: int
    class_names: tuple[str, ...]


def export_classes(class_names: Sequence[str], labels: Iterable[Label]) -> list[str]:
    """The model's classes, then any other class a label uses (an export never drops a box)."""
    names = list(class_names)
    for label in labels:
        names += [c for c in label.classes if c not in names]
    return names


def _pick(store: SampleStore, which: str) -> list[Sample]:
    if which not in WHICH:
        raise DatasetError(f"export: which={which!r} is not one of {WHICH}")
    labelled = {"all": None, "labelled": True, "unlabelled": False}[which]
    samples = [s for s in store.samples(labelled=labelled) if s.width and s.height]
    return samples


def _place_images(samples: Sequence[Sample], folder: Path, mode: str) -> None:
    """Put each sample's file in `folder` under its export name (copy or hard link)."""
    if mode not in IMAGE_MODES:
        raise DatasetError(f"export: images={mode!r} is not one of {IMAGE_MODES}")
    if mode == "none":
        return
    folder.mkdir(parents=True, exist_ok=True)
    for sample in samples:
        target = folder / sample.export_name
        if target.exists():
            continue
        if mode == "link":
            try:
                os.link(sample.path, target)
                continue
            except OSError as err:
                logger.debug("hard link of %s failed (%s); copying", sample.path, err)
        shutil.copyfile(sample.path, target)


def _predicted(sample: Sample, class_names: Sequence[str], min_score: float) -> list[tuple]:
    """The model's detections on a sample as (box, class name, score), clipped to the image."""
    out = []
    for det in sample.detections:
        label, score = int(det["label"]), float(det["score"])
        if score < min_score or not 1 <= label <= len(class_names):
            continue
        x1, y1, x2, y2 = (float(v) for v in det["box"])
        x1, x2 = max(0.0, x1), min(float(sample.width or 0), x2)
        y1, y2 = max(0.0, y1), min(float(sample.height or 0), y2)
        if x2 > x1 and y2 > y1:
            out.append(((x1, y1, x2, y2), class_names[label - 1], score))
    return out


def _num(value: float) -> float | int:
    rounded = round(float(value), 3)
    return int(rounded) if rounded == int(rounded) else rounded


def coco_document(
    samples: Sequence[Sample],
    labels: dict[str, Label],
    class_names: Sequence[str],
    predictions: bool = False,
    min_score: float = 0.0,
    cvat: bool = False,
) -> dict[str, Any]:
    """The COCO dict of an export; `cvat` adds the keys CVAT's COCO 1.0 files carry."""
    cat_ids = {name: i + 1 for i, name in enumerate(class_names)}
    images, annotations = [], []
    for image_id, sample in enumerate(samples, start=1):
        image: dict[str, Any] = {
            "id": image_id,
            "file_name": sample.export_name,
            "width": sample.width,
            "height": sample.height,
            "dal_sample_id": sample.sample_id,
            "dal_labelled": sample.sample_id in labels,
        }
        if cvat:
            image.update(license=0, flickr_url="", coco_url="", date_captured=0)
        images.append(image)
        label = labels.get(sample.sample_id)
        if label is not None:
            boxes = [(tuple(b), c, None) for b, c in zip(label.boxes, label.classes, strict=True)]
        elif predictions:
            boxes = _predicted(sample, class_names, min_score)
        else:
            boxes = []
        for (x1, y1, x2, y2), name, _score in boxes:
            w, h = x2 - x1, y2 - y1
            ann: dict[str, Any] = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": cat_ids[name],
                "bbox": [_num(x1), _num(y1), _num(w), _num(h)],
                "area": _num(w * h),
                "iscrowd": 0,
            }
            if cvat:
                ann.update(segmentation=[], attributes={"occluded": False, "rotation": 0.0})
            annotations.append(ann)
    categories = [
        {"id": i + 1, "name": name, "supercategory": ""} for i, name in enumerate(class_names)
    ]
    doc: dict[str, Any] = {"images": images, "annotations": annotations, "categories": categories}
    if cvat:
        doc["licenses"] = [{"name": "", "id": 0, "url": ""}]
        doc["info"] = {"description": "dal samples", "version": "", "year": ""}
    return doc


def _ls_result(
    box: Sequence[float], name: str, width: int, height: int, index: int, score: float | None
) -> dict[str, Any]:
    x1, y1, x2, y2 = (float(v) for v in box)
    item: dict[str, Any] = {
        "id": f"r{index}",
        "type": "rectanglelabels",
        "from_name": LS_FROM,
        "to_name": LS_TO,
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {
            "x": x1 / width * 100.0,
            "y": y1 / height * 100.0,
            "width": (x2 - x1) / width * 100.0,
            "height": (y2 - y1) / height * 100.0,
            "rotation": 0,
            "rectanglelabels": [name],
        },
    }
    if score is not None:
        item["score"] = score
    return item


def labelstudio_tasks(
    samples: Sequence[Sample],
    labels: dict[str, Label],
    class_names: Sequence[str],
    url_prefix: str = DEFAULT_URL_PREFIX,
    min_score: float = 0.0,
) -> list[dict[str, Any]]:
    """Label Studio tasks: labels as annotations, the model's detections as predictions."""
    tasks = []
    for sample in samples:
        w, h = int(sample.width or 0), int(sample.height or 0)
        task: dict[str, Any] = {
            "data": {
                "image": url_prefix + sample.export_name,
                "dal_sample_id": sample.sample_id,
                "dal_score": sample.score,
            }
        }
        label = labels.get(sample.sample_id)
        if label is not None:
            result = [
                _ls_result(b, c, w, h, i, None)
                for i, (b, c) in enumerate(zip(label.boxes, label.classes, strict=True))
            ]
            task["annotations"] = [{"result": result, "ground_truth": False}]
        predicted = _predicted(sample, class_names, min_score)
        if predicted:
            result = [_ls_result(b, c, w, h, i, s) for i, (b, c, s) in enumerate(predicted)]
            score = max(s for _, _, s in predicted)
            task["predictions"] = [
                {"model_version": sample.model_version, "score": score, "result": result}
            ]
        tasks.append(task)
    return tasks


def labelstudio_config(class_names: Sequence[str]) -> str:
    """The labelling interface for a Label Studio project that reads these tasks."""
    lines = [
        "<View>",
        f'  <Image name="{LS_TO}" value="$image" zoom="true"/>',
        f'  <RectangleLabels name="{LS_FROM}" toName="{LS_TO}">',
        *(f'    <Label value="{_xml_escape(n)}"/>' for n in class_names),
        "  </RectangleLabels>",
        "</View>",
    ]
    return "\n".join(lines) + "\n"


def _xml_escape(text: str) -> str:
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    )


def export_labels(
    store: SampleStore,
    out_dir: str | os.PathLike[str],
    fmt: str,
    class_names: Sequence[str],
    which: str = "all",
    images: str = "copy",
    predictions: bool = False,
    min_score: float = 0.0,
    url_prefix: str = DEFAULT_URL_PREFIX,
) -> ExportResult:
    """Write an export of the store's samples for a labelling tool (see the module docstring).
    `predictions` adds the model's detections as pre-annotations to unlabelled images in
    COCO/CVAT files; Label Studio always gets them, as `predictions`."""
    if fmt not in FORMATS:
        raise DatasetError(f"unknown label format {fmt!r}", hint=f"use one of {FORMATS}")
    out = Path(out_dir)
    samples = _pick(store, which)
    all_labels = store.labels()
    labels = {s.sample_id: all_labels[s.sample_id] for s in samples if s.sample_id in all_labels}
    names = export_classes(class_names, labels.values())
    _place_images(samples, out / "images", images)
    if fmt == "labelstudio":
        tasks = labelstudio_tasks(samples, labels, names, url_prefix, min_score)
        path = atomic_write_json(out / "tasks.json", tasks)
        atomic_write_text(out / "label_config.xml", labelstudio_config(names))
    else:
        doc = coco_document(samples, labels, names, predictions, min_score, cvat=fmt == "cvat")
        if fmt == "coco":
            path = atomic_write_json(out / "annotations.json", doc)
        else:
            path = atomic_write_bytes(out / "annotations.zip", _zip_json(CVAT_JSON, doc))
    logger.info("exported %d samples (%d labelled) to %s", len(samples), len(labels), path)
    return ExportResult(path, len(samples), len(labels), tuple(names))


def _zip_json(name: str, doc: Any) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, json.dumps(doc, indent=1))
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# import


@dataclass
class ImportResult:
    labels: list[Label]
    unknown: list[str]  # images in the file that are no sample of the store (with allow_unknown)
    unlabelled: int  # tasks/images in the file with no labels given (Label Studio: none yet)
    fmt: str
    revision: int = 0


class _Where:
    """Names a place in a label file: '<file>: <field>: <problem>'."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, field: str, problem: str, hint: str | None = None) -> DatasetError:
        return DatasetError(f"{self.source}: {field}: {problem}", hint=hint)


def _parse_json(source: str, data: bytes) -> Any:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DatasetError(f"{source}: not UTF-8 text at byte {err.start}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DatasetError(
            f"{source}: line {err.lineno}, column {err.colno}: invalid JSON: {err.msg}",
            hint="the file may be truncated; export it from the tool again",
        ) from None


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{path}: label file not found") from None
    except OSError as err:
        raise DatasetError(f"{path}: cannot read: {err.strerror}") from err


def _read_zip_json(path: Path) -> tuple[str, Any]:
    """The one COCO JSON inside a CVAT zip (annotations/*.json)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith(".json")]
            preferred = [n for n in names if n == CVAT_JSON] or [
                n for n in names if n.startswith("annotations/")
            ]
            if len(preferred) != 1:
                raise DatasetError(
                    f"{path}: expected one annotations/*.json in the zip, found {names or 'none'}",
                    hint="export the task from CVAT as 'COCO 1.0'",
                )
            source = f"{path}:{preferred[0]}"
            return source, _parse_json(source, archive.read(preferred[0]))
    except zipfile.BadZipFile as err:
        raise DatasetError(f"{path}: not a zip file ({err})") from None


def detect_format(path: Path, doc: Any) -> str:
    if path.suffix.lower() == ".zip":
        return "cvat"
    if isinstance(doc, list):
        return "labelstudio"
    if isinstance(doc, dict):
        return "coco"
    raise DatasetError(
        f"{path}: cannot tell the label format (a COCO object, a Label Studio task list, or a "
        "CVAT zip)",
        hint="pass --format",
    )


class _SampleIndex:
    """Finds the sample an image of a label file means: by sample id, else by export name."""

    def __init__(self, store: SampleStore) -> None:
        self.by_id: dict[str, Sample] = {}
        self.by_name: dict[str, Sample] = {}
        for sample in store.samples():
            self.by_id[sample.sample_id] = sample
            self.by_name[sample.export_name] = sample

    def find(self, sample_id: Any, file_name: str) -> Sample | None:
        if isinstance(sample_id, str) and sample_id in self.by_id:
            return self.by_id[sample_id]
        return self.by_name.get(PurePosixPath(file_name.replace("\\", "/")).name)


def _check_class(where: _Where, field: str, name: str, class_names: Sequence[str] | None) -> None:
    if class_names and name not in class_names:
        raise where.fail(
            field,
            f"class {name!r} is not one of the model's classes {list(class_names)}",
            hint="rename it in the labelling tool; new classes need a model trained for them",
        )


def _check_size(where: _Where, field: str, sample: Sample, width: Any, height: Any) -> None:
    if (width, height) != (sample.width, sample.height):
        raise where.fail(
            field,
            f"image is {width}x{height} in the file but sample {sample.sample_id} is "
            f"{sample.width}x{sample.height}",
            hint="the tool must label the exported image unscaled",
        )


def _read_coco(
    source: str,
    doc: Any,
    index: _SampleIndex,
    class_names: Sequence[str] | None,
    fmt: str,
    allow_unknown: bool,
) -> ImportResult:
    where = _Where(source)
    coco = coco_from_dict(doc, source=source, check_files=False)  # field-level checks
    used = {int(c) for rec in coco.images for c in rec.category_ids}
    for position, category in enumerate(doc["categories"]):  # validated above
        if int(category["id"]) in used:
            _check_class(where, f"categories[{position}].name", category["name"], class_names)
    result = ImportResult(labels=[], unknown=[], unlabelled=0, fmt=fmt)
    for i, rec in enumerate(coco.images):  # same order as doc["images"]
        sample = index.find(rec.extra.get("dal_sample_id"), rec.file_name)
        if sample is None:
            if not allow_unknown:
                raise where.fail(
                    f"images[{i}].file_name",
                    f"{rec.file_name!r} is not a sample of this trainer",
                    hint="import only files exported by `dal label export` (or --allow-unknown)",
                )
            result.unknown.append(rec.file_name)
            continue
        if rec.extra.get("dal_labelled") is False:
            result.unlabelled += 1  # exported unlabelled and nobody set the flag: not a label
            continue
        _check_size(where, f"images[{i}].width/height", sample, rec.width, rec.height)
        classes = tuple(coco.categories[int(c)] for c in rec.category_ids)
        result.labels.append(Label(sample.sample_id, _as_boxes(rec), classes, fmt))
    return result


def _as_boxes(rec: ImageRecord) -> np.ndarray:
    return np.asarray(rec.boxes, dtype=np.float64).reshape(-1, 4)


def _number(where: _Where, field: str, value: Any) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value):
        raise where.fail(field, f"expected a number, got {value!r}")
    return float(value)


def _ls_box(
    where: _Where, field: str, item: Any, sample: Sample, class_names: Sequence[str] | None
) -> tuple[list[float], str] | None:
    """One Label Studio result item -> (x1, y1, x2, y2 pixels, class), None for other types."""
    if not isinstance(item, dict):
        raise where.fail(field, f"expected an object, got {type(item).__name__}")
    if item.get("type") != "rectanglelabels":
        return None
    value = item.get("value")
    if not isinstance(value, dict):
        raise where.fail(f"{field}.value", "missing or not an object")
    nums = {}
    for key in ("x", "y", "width", "height"):
        if key not in value:
            raise where.fail(f"{field}.value.{key}", "missing")
        nums[key] = _number(where, f"{field}.value.{key}", value[key])
    if _number(where, f"{field}.value.rotation", value.get("rotation", 0)) != 0:
        raise where.fail(f"{field}.value.rotation", "rotated boxes are not supported")
    if nums["width"] <= 0 or nums["height"] <= 0:
        raise where.fail(f"{field}.value", f"box has non-positive width or height {nums}")
    for lo, span in (("x", "width"), ("y", "height")):
        if nums[lo] < -_PERCENT_SLACK or nums[lo] + nums[span] > 100 + _PERCENT_SLACK:
            raise where.fail(f"{field}.value.{span}", f"box leaves the image: {nums}")
    names = value.get("rectanglelabels")
    if not isinstance(names, list) or len(names) != 1 or not isinstance(names[0], str):
        raise where.fail(
            f"{field}.value.rectanglelabels", f"expected one class name, got {names!r}"
        )
    _check_class(where, f"{field}.value.rectanglelabels[0]", names[0], class_names)
    size = (item.get("original_width", sample.width), item.get("original_height", sample.height))
    _check_size(where, f"{field}.original_width/original_height", sample, *size)
    w, h = float(sample.width or 0), float(sample.height or 0)
    x1 = max(0.0, nums["x"] / 100 * w)
    y1 = max(0.0, nums["y"] / 100 * h)
    x2 = min(w, (nums["x"] + nums["width"]) / 100 * w)
    y2 = min(h, (nums["y"] + nums["height"]) / 100 * h)
    return [x1, y1, x2, y2], names[0]


def _ls_task_sample(
    where: _Where, i: int, task: Any, index: _SampleIndex
) -> tuple[Sample | None, str]:
    if not isinstance(task, dict):
        raise where.fail(f"[{i}]", f"expected a task object, got {type(task).__name__}")
    data = task.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("image"), str):
        raise where.fail(f"[{i}].data.image", "missing (a Label Studio image task needs it)")
    url = unquote(data["image"])
    name = url.rsplit("=", 1)[-1].rsplit("/", 1)[-1]
    return index.find(data.get("dal_sample_id"), name), url


def _read_labelstudio(
    source: str,
    doc: Any,
    index: _SampleIndex,
    class_names: Sequence[str] | None,
    allow_unknown: bool,
) -> ImportResult:
    where = _Where(source)
    if not isinstance(doc, list):
        raise where.fail("top level", "expected a list of tasks (Label Studio 'JSON' export)")
    result = ImportResult(labels=[], unknown=[], unlabelled=0, fmt="labelstudio")
    for i, task in enumerate(doc):
        sample, url = _ls_task_sample(where, i, task, index)
        if sample is None:
            if not allow_unknown:
                raise where.fail(
                    f"[{i}].data.image",
                    f"{url!r} is not a sample of this trainer",
                    hint="import only tasks exported by `dal label export` (or --allow-unknown)",
                )
            result.unknown.append(url)
            continue
        annotations = task.get("annotations", [])
        if not isinstance(annotations, list):
            raise where.fail(f"[{i}].annotations", "expected a list")
        done = [
            (j, a)
            for j, a in enumerate(annotations)
            if isinstance(a, dict) and not a.get("was_cancelled", False)
        ]
        if not done:
            result.unlabelled += 1
            continue
        j, annotation = done[-1]  # the latest completed annotation wins
        items = annotation.get("result")
        if not isinstance(items, list):
            raise where.fail(f"[{i}].annotations[{j}].result", "missing or not a list")
        boxes, classes = [], []
        for k, item in enumerate(items):
            got = _ls_box(where, f"[{i}].annotations[{j}].result[{k}]", item, sample, class_names)
            if got is not None:
                boxes.append(got[0])
                classes.append(got[1])
        result.labels.append(
            Label(sample.sample_id, np.asarray(boxes), tuple(classes), "labelstudio")
        )
    return result


def read_labels(
    path: str | os.PathLike[str],
    store: SampleStore,
    class_names: Sequence[str] | None = None,
    fmt: str = "auto",
    allow_unknown: bool = False,
) -> ImportResult:
    """Parse and check a label file against the store; writes nothing."""
    path = Path(path)
    if fmt not in ("auto", *FORMATS):
        raise DatasetError(f"unknown label format {fmt!r}", hint=f"use auto or one of {FORMATS}")
    if path.suffix.lower() == ".zip":
        source, doc = _read_zip_json(path)
    else:
        source, doc = str(path), _parse_json(str(path), _read_file(path))
    if fmt == "auto":
        fmt = detect_format(path, doc)
    index = _SampleIndex(store)
    if fmt == "labelstudio":
        result = _read_labelstudio(source, doc, index, class_names, allow_unknown)
    else:
        result = _read_coco(source, doc, index, class_names, fmt, allow_unknown)
    seen: dict[str, int] = {}
    for n, label in enumerate(result.labels):
        if label.sample_id in seen:
            raise DatasetError(
                f"{source}: sample {label.sample_id} appears twice (entries {seen[label.sample_id]}"
                f" and {n})",
                hint="each image may be listed once",
            )
        seen[label.sample_id] = n
    return result


def import_labels(
    path: str | os.PathLike[str],
    store: SampleStore,
    class_names: Sequence[str] | None = None,
    fmt: str = "auto",
    allow_unknown: bool = False,
    dry_run: bool = False,
) -> ImportResult:
    """Read a label file and store all its labels in one transaction (or none on error)."""
    result = read_labels(path, store, class_names, fmt, allow_unknown)
    if not dry_run and result.labels:
        result.revision = store.set_labels(result.labels)
    return result


# ---------------------------------------------------------------------------------------------
# the ground-truth oracle


_THUMB = (32, 32)


def _thumbnail(path: Path) -> np.ndarray | None:
    try:
        with Image.open(path) as img:
            small = img.convert("L").resize(_THUMB, Image.Resampling.BILINEAR)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        logger.warning("oracle: cannot read %s (%s)", path, err)
        return None
    return np.asarray(small, dtype=np.float32)


def _meta_names(meta: dict[str, Any]) -> list[str]:
    truth = meta.get("ground_truth") if isinstance(meta.get("ground_truth"), dict) else {}
    found = [truth.get("file_name"), meta.get("file_name"), meta.get("source_image")]
    return [n for n in found if isinstance(n, str) and n]


def _meta_image_id(meta: dict[str, Any]) -> int | None:
    truth = meta.get("ground_truth") if isinstance(meta.get("ground_truth"), dict) else {}
    for value in (truth.get("image_id"), meta.get("image_id")):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


class GroundTruthOracle:
    """Labels samples from a ground-truth COCO file (replays, experiments).

    A sample is matched to a ground-truth image by the first rule that applies:
      1. a file name in the sample header's meta (`ground_truth.file_name`, `file_name` or
         `source_image`): the image with that `file_name`, else the one image with that base name;
      2. without a file name: an image id in the meta (`ground_truth.image_id` or `image_id`);
      3. the sample's bytes are a ground-truth image file (same sha256);
      4. the same picture: 32x32 grey thumbnails differ by at most `max_pixel_diff` grey
         levels on average (agents that re-encode frames), the closest image wins.
    No match: the sample waits for a person. The boxes are scaled from the ground-truth image's
    size to the sample's when they differ (a camera that stores frames resized).
    """

    def __init__(
        self,
        coco_path: str | os.PathLike[str],
        image_root: str | os.PathLike[str] | None = None,
        max_pixel_diff: float = 4.0,
    ) -> None:
        self.coco = load_coco(coco_path, image_root, check_files=False)
        self.max_pixel_diff = max_pixel_diff
        self._by_name = {rec.file_name: rec for rec in self.coco.images}
        self._by_base: dict[str, list[ImageRecord]] = {}
        for rec in self.coco.images:
            self._by_base.setdefault(PurePosixPath(rec.file_name).name, []).append(rec)
        self._by_id = {rec.id: rec for rec in self.coco.images}
        self._by_sha: dict[str, ImageRecord] | None = None
        self._thumbs: list[tuple[ImageRecord, np.ndarray]] | None = None
        self.stats = {"matched": 0, "unmatched": 0}

    def _sha_index(self) -> dict[str, ImageRecord]:
        if self._by_sha is None:
            self._by_sha = {}
            for rec in self.coco.images:
                path = self.coco.image_path(rec)
                if path.is_file():
                    self._by_sha[sha256_file(path)] = rec
        return self._by_sha

    def _thumb_index(self) -> list[tuple[ImageRecord, np.ndarray]]:
        if self._thumbs is None:
            self._thumbs = []
            for rec in self.coco.images:
                thumb = _thumbnail(self.coco.image_path(rec))
                if thumb is not None:
                    self._thumbs.append((rec, thumb))
        return self._thumbs

    def match(self, sample: Sample) -> tuple[ImageRecord, str] | None:
        """The ground-truth image of a sample and the rule that found it, or None."""
        names = _meta_names(sample.meta)
        for name in names:
            if name in self._by_name:
                return self._by_name[name], "file_name"
            same_base = self._by_base.get(PurePosixPath(name.replace("\\", "/")).name, [])
            if len(same_base) == 1:
                return same_base[0], "file_name"
        image_id = _meta_image_id(sample.meta)
        if not names and image_id is not None and image_id in self._by_id:
            return self._by_id[image_id], "image_id"
        rec = self._sha_index().get(sample.sha256)
        if rec is not None:
            return rec, "sha256"
        if self.max_pixel_diff > 0:
            return self._match_pixels(sample)
        return None

    def _match_pixels(self, sample: Sample) -> tuple[ImageRecord, str] | None:
        thumb = _thumbnail(sample.path)
        if thumb is None:
            return None
        best: tuple[float, ImageRecord] | None = None
        for rec, other in self._thumb_index():
            diff = float(np.abs(thumb - other).mean())
            if best is None or diff < best[0]:
                best = (diff, rec)
        if best is not None and best[0] <= self.max_pixel_diff:
            return best[1], "pixels"
        return None

    def label(self, sample: Sample) -> Label | None:
        found = self.match(sample)
        if found is None or not sample.width or not sample.height:
            return None
        rec, rule = found
        sx, sy = sample.width / rec.width, sample.height / rec.height
        boxes = _as_boxes(rec) * np.array([sx, sy, sx, sy])
        classes = tuple(self.coco.categories[int(c)] for c in rec.category_ids)
        logger.debug("oracle: %s is %s (by %s)", sample.sample_id, rec.file_name, rule)
        return Label(sample.sample_id, boxes, classes, "oracle")

    def label_pending(self, store: SampleStore, limit: int = 64) -> int:
        """Label up to `limit` samples the oracle has not seen; return how many it labelled."""
        pending = store.oracle_pending(limit)
        if not pending:
            return 0
        labels = []
        for sample in pending:
            label = self.label(sample)
            if label is None:
                self.stats["unmatched"] += 1
                logger.info("oracle: no ground truth for %s; left for a person", sample.sample_id)
            else:
                self.stats["matched"] += 1
                labels.append(label)
        if labels:
            store.set_labels(labels)
        store.mark_oracle_checked(s.sample_id for s in pending)
        return len(labels)
