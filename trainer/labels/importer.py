"""`read_labels` / `import_labels`: a file a labelling tool gave back, into the sample store.

The file is read (a JSON file, or the COCO JSON inside a CVAT zip), its format told when not
given, and its document checked completely by `readers` before `import_labels` stores anything.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dal.coco import parse_json_text
from dal.errors import DatasetError
from dal.trainer.labels import CVAT_JSON, FORMATS
from dal.trainer.labels.readers import ImportResult, SampleIndex, read_coco, read_labelstudio
from dal.trainer.store import SampleStore


def _parse_json(source: str, data: bytes) -> Any:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DatasetError(f"{source}: not UTF-8 text at byte {err.start}") from None
    return parse_json_text(source, text)


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
    """The format of a parsed label file, from what only that format looks like."""
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
    index = SampleIndex(store)
    if fmt == "labelstudio":
        result = read_labelstudio(source, doc, index, class_names, allow_unknown)
    else:
        result = read_coco(source, doc, index, class_names, fmt, allow_unknown)
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
