"""Label Studio annotations that arrive over HTTP (webhook, /train) -> checked `Label`s.

They go through the file import's own reader (`readers.read_labelstudio`): the same percent,
size, rotation and class checks, the same boxes. This module only maps the project's label
values to model classes first and tags each label with the annotation it came from, so a
later update replaces it and a deletion in Label Studio removes exactly that label.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from dal.errors import DatasetError
from dal.trainer.labels.ls_config import ProjectInterface
from dal.trainer.labels.ls_tasks import bad, need_dict, need_list, task_sample
from dal.trainer.labels.readers import SampleIndex, read_labelstudio
from dal.trainer.store import Label, SampleStore

SOURCE = "labelstudio"
MAX_REGIONS = 2000  # boxes in one annotation


def annotation_source(project: str, annotation_id: Any) -> str:
    """The label's `source`: which project's which annotation it is."""
    return f"{SOURCE}:{project}:{annotation_id}"


def _mapped_result(
    items: list[Any], field: str, interface: ProjectInterface
) -> list[dict[str, Any]]:
    """The annotation's regions with Label Studio label values renamed to model classes."""
    out = []
    for k, item in enumerate(items):
        where = f"{field}[{k}]"
        item = need_dict(item, where)
        if item.get("type") != "rectanglelabels":
            out.append(item)  # other tools' results (choices, text) carry no boxes
            continue
        if item.get("from_name", interface.from_name) != interface.from_name:
            raise bad(
                f"{where}.from_name: {item.get('from_name')!r} is not the project's "
                f"RectangleLabels {interface.from_name!r}"
            )
        value = need_dict(item.get("value"), f"{where}.value")
        names = value.get("rectanglelabels")
        if not isinstance(names, list) or len(names) != 1 or not isinstance(names[0], str):
            raise bad(f"{where}.value.rectanglelabels: expected one label, got {names!r}")
        if names[0] not in interface.to_model:
            raise bad(
                f"{where}.value.rectanglelabels: {names[0]!r} is not one of the project's "
                f"labels {list(interface.labels)}"
            )
        renamed = {**value, "rectanglelabels": [interface.to_model[names[0]]]}
        out.append({**item, "value": renamed})
    return out


def annotation_label(
    annotation: Any,
    task: Any,
    field: str,
    project: str,
    interface: ProjectInterface,
    store: SampleStore,
    class_names: tuple[str, ...],
) -> tuple[str, Label | None]:
    """(sample id, its label) for one annotation of one task; None for a skipped one."""
    annotation = need_dict(annotation, f"{field}.annotation")
    sample, url = task_sample(task, f"{field}.task", interface, store)
    items = need_list(annotation.get("result"), f"{field}.annotation.result", MAX_REGIONS)
    doc = [
        {
            "data": {"image": url, "dal_sample_id": sample.sample_id},
            "annotations": [
                {
                    "was_cancelled": bool(annotation.get("was_cancelled", False)),
                    "result": _mapped_result(items, f"{field}.annotation.result", interface),
                }
            ],
        }
    ]
    try:
        result = read_labelstudio(field, doc, SampleIndex(store), class_names, False)
    except DatasetError as err:
        message = str(err.args[0]).replace("[0].annotations[0].", "annotation.")
        raise bad(message, err.hint) from None
    if not result.labels:
        return sample.sample_id, None
    source = annotation_source(project, annotation.get("id"))
    return sample.sample_id, dataclasses.replace(result.labels[0], source=source)


def pair_annotations(body: dict[str, Any]) -> list[tuple[Any, Any]]:
    """(annotation, task) pairs of ANNOTATION_CREATED/UPDATED (one of each) and of
    ANNOTATIONS_CREATED (lists, matched by the annotation's `task` id)."""
    annotation, task = body.get("annotation"), body.get("task")
    if not isinstance(annotation, list):
        need_dict(task, "task")
        return [(annotation, task)]
    tasks = {t.get("id"): t for t in need_list(task, "task") if isinstance(t, dict)}
    pairs = []
    for i, ann in enumerate(need_list(annotation, "annotation")):
        ann = need_dict(ann, f"annotation[{i}]")
        if ann.get("task") not in tasks:
            raise bad(f"annotation[{i}].task: {ann.get('task')!r} is not among the tasks sent")
        pairs.append((ann, tasks[ann["task"]]))
    return pairs
