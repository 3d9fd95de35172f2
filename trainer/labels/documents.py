"""What an export file holds: the COCO (and CVAT COCO 1.0) dict, Label Studio's tasks and the
labelling interface for them. Pure functions of samples and labels; `export` writes them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from dal.trainer.store import Label, Sample

LS_FROM, LS_TO = "label", "image"
DEFAULT_URL_PREFIX = "/data/local-files/?d=images/"


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


def ls_region(
    box: Sequence[float],
    name: str,
    width: int,
    height: int,
    index: int,
    score: float | None,
    from_name: str = LS_FROM,
    to_name: str = LS_TO,
) -> dict[str, Any]:
    """One Label Studio rectanglelabels region: the box in percent of the image."""
    x1, y1, x2, y2 = (float(v) for v in box)
    item: dict[str, Any] = {
        "id": f"r{index}",
        "type": "rectanglelabels",
        "from_name": from_name,
        "to_name": to_name,
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
    image_url: Callable[[str], str] | None = None,
) -> list[dict[str, Any]]:
    """Label Studio tasks: labels as annotations, the model's detections as predictions.
    `image_url` (export name -> URL) replaces `url_prefix`, e.g. the ML backend's /data URLs."""
    tasks = []
    for sample in samples:
        w, h = int(sample.width or 0), int(sample.height or 0)
        url = image_url(sample.export_name) if image_url else url_prefix + sample.export_name
        task: dict[str, Any] = {
            "data": {
                "image": url,
                "dal_sample_id": sample.sample_id,
                "dal_score": sample.score,
            }
        }
        label = labels.get(sample.sample_id)
        if label is not None:
            result = [
                ls_region(b, c, w, h, i, None)
                for i, (b, c) in enumerate(zip(label.boxes, label.classes, strict=True))
            ]
            task["annotations"] = [{"result": result, "ground_truth": False}]
        predicted = _predicted(sample, class_names, min_score)
        if predicted:
            result = [ls_region(b, c, w, h, i, s) for i, (b, c, s) in enumerate(predicted)]
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
