"""The output folder of a render: layout, resume bookkeeping, the COCO file (no bpy).

    out/job.json               settings every image depends on (checked when resuming)
    out/images/000123.jpg      image of render index 123
    out/labels/000123.json     its annotations and scene plan; written last, so it marks done
    out/annotations.json       COCO detection file, rebuilt from labels/ at the end of each run

Every file is written atomically, so a run killed at any point resumes where it stopped: an
image without a label is rendered again, and the COCO file never lists a half-written image.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dal.blender.annotate import coco_document
from dal.blender.job import RenderJob
from dal.errors import ConfigError, DatasetError
from dal.fileio import atomic_write_json

logger = logging.getLogger(__name__)

COCO_NAME = "annotations.json"


def image_name(index: int, fmt: str) -> str:
    return f"{index:06d}.{fmt}"


def label_path(out_dir: Path, index: int) -> Path:
    return out_dir / "labels" / f"{index:06d}.json"


def prepare(job: RenderJob) -> None:
    """Create the folder or check that an existing one was rendered with the same settings."""
    out = job.out_dir
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    settings_path = out / "job.json"
    wanted = json.loads(json.dumps(job.settings()))  # tuples -> lists, as read back
    if settings_path.exists():
        try:
            existing = json.loads(settings_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise DatasetError(
                f"{settings_path} is unreadable: {err}", hint="delete it to start the folder afresh"
            ) from None
        if existing != wanted:
            changed = sorted(_diff(existing, wanted))
            raise ConfigError(
                f"{out} was rendered with other settings ({', '.join(changed[:5])} differ); "
                "resuming would mix two datasets",
                hint="render into a new folder, or delete this one",
            )
        return
    atomic_write_json(settings_path, wanted)


def _diff(a: Any, b: Any, path: str = "") -> Iterable[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            yield from _diff(a.get(key), b.get(key), f"{path}.{key}" if path else key)
    elif a != b:
        yield path or "settings"


def done_indices(job: RenderJob) -> set[int]:
    """Indices below job.count whose label and image both exist."""
    done = set()
    fmt = job.config.render.format
    for index in range(job.count):
        if (
            label_path(job.out_dir, index).exists()
            and (job.out_dir / "images" / image_name(index, fmt)).exists()
        ):
            done.add(index)
    return done


def read_labels(job: RenderJob) -> list[dict[str, Any]]:
    records = []
    for index in sorted(done_indices(job)):
        path = label_path(job.out_dir, index)
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as err:
            raise DatasetError(
                f"label file {path} is unreadable: {err}",
                hint="delete it; the next run renders that image again",
            ) from None
    return records


def write_coco(job: RenderJob) -> Path:
    """Rebuild annotations.json from every finished image."""
    records = read_labels(job)
    info = {
        "description": "dal render: synthetic images from 3D models",
        "seed": job.seed,
        "images": len(records),
        "width": job.config.render.width,
        "height": job.config.render.height,
    }
    doc = coco_document(records, job.class_names, info)
    return atomic_write_json(job.out_dir / COCO_NAME, doc, indent=None)
