"""A labelling tool's document -> checked `Label`s: COCO / CVAT COCO 1.0 and Label Studio.

Every check names the field at fault (`images[2].width/height`,
`[2].annotations[0].result[1].value.width`), and nothing here writes: `importer` stores the
result only when the whole document passed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote

import numpy as np

from dal.coco import coco_from_dict
from dal.errors import DatasetError
from dal.trainer.labels import record_boxes
from dal.trainer.store import Label, Sample, SampleStore

_PERCENT_SLACK = 0.5  # Label Studio rounds percentages; allow half a percent past the edge


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


class SampleIndex:
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


def read_coco(
    source: str,
    doc: Any,
    index: SampleIndex,
    class_names: Sequence[str] | None,
    fmt: str,
    allow_unknown: bool,
) -> ImportResult:
    """A COCO or CVAT COCO 1.0 dict: every image is a label unless the export's
    `dal_labelled: false` is still on it."""
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
        boxes, classes = record_boxes(coco, rec)
        result.labels.append(Label(sample.sample_id, boxes, classes, fmt))
    return result


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
    where: _Where, i: int, task: Any, index: SampleIndex
) -> tuple[Sample | None, str]:
    if not isinstance(task, dict):
        raise where.fail(f"[{i}]", f"expected a task object, got {type(task).__name__}")
    data = task.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("image"), str):
        raise where.fail(f"[{i}].data.image", "missing (a Label Studio image task needs it)")
    url = unquote(data["image"])
    name = url.rsplit("=", 1)[-1].rsplit("/", 1)[-1]
    return index.find(data.get("dal_sample_id"), name), url


def read_labelstudio(
    source: str,
    doc: Any,
    index: SampleIndex,
    class_names: Sequence[str] | None,
    allow_unknown: bool,
) -> ImportResult:
    """A Label Studio JSON export: the latest completed annotation of each task."""
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
