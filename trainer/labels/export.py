"""`export_labels`: the store's samples as a folder a labelling tool can take (the formats are
described in the package docstring; what the files hold is in `documents`)."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dal.errors import DatasetError
from dal.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text
from dal.trainer.labels import CVAT_JSON, FORMATS
from dal.trainer.labels.documents import (
    DEFAULT_URL_PREFIX,
    coco_document,
    labelstudio_config,
    labelstudio_tasks,
)
from dal.trainer.store import Label, Sample, SampleStore

logger = logging.getLogger(__name__)

WHICH = ("all", "labelled", "unlabelled")
IMAGE_MODES = ("copy", "link", "none")


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
    image_url: Callable[[str], str] | None = None,
) -> ExportResult:
    """Write an export of the store's samples for a labelling tool (see the package docstring).
    `predictions` adds the model's detections as pre-annotations to unlabelled images in
    COCO/CVAT files; Label Studio always gets them, as `predictions`. `image_url` (export name
    -> URL) overrides `url_prefix` for Label Studio (the ML backend's /data URLs)."""
    if fmt not in FORMATS:
        raise DatasetError(f"unknown label format {fmt!r}", hint=f"use one of {FORMATS}")
    out = Path(out_dir)
    samples = _pick(store, which)
    all_labels = store.labels()
    labels = {s.sample_id: all_labels[s.sample_id] for s in samples if s.sample_id in all_labels}
    names = export_classes(class_names, labels.values())
    _place_images(samples, out / "images", images)
    if fmt == "labelstudio":
        tasks = labelstudio_tasks(samples, labels, names, url_prefix, min_score, image_url)
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
