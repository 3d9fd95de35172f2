"""A live Label Studio ML backend for the tests: the tiny exported model as the registry's
current model, JPEG samples in a real store, the server on a free port, and requests shaped
as Label Studio sends them (label_studio/ml/api_connector.py for /setup and /predict, the
webhook serializers for ANNOTATION_CREATED/UPDATED and ANNOTATIONS_DELETED)."""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from trainer_samples import put_sample

from dal.coco import load_coco
from dal.link import build_manifest
from dal.link.signing import generate_keypair, load_private_key
from dal.trainer.config import LabelStudioSection
from dal.trainer.labels.documents import labelstudio_tasks
from dal.trainer.labels.ls_server import LabelServer, label_server
from dal.trainer.registry import ModelRecord, Registry
from dal.trainer.store import SampleStore

# A project made by hand in Label Studio's UI: its own tag names and label spellings, one
# label mapped to a model class by `predicted_values`, as the Object Detection template does.
LABEL_CONFIG = """<View>
  <Header value="Pick the parts"/>
  <Image name="img" value="$image" zoom="true" zoomControl="true" rotateControl="false"/>
  <RectangleLabels name="parts" toName="img" strokeWidth="2">
    <Label value="Washer" predicted_values="{first}" background="#FFA39E"/>
    <Label value="{second}" background="#D4380D"/>
  </RectangleLabels>
</View>
"""
PROJECT = {"id": 3, "title": "dal picks", "created_at": "2026-12-01T09:00:00.000000Z"}
PROJECT_UID = "3.1764579600"  # what api_connector sends: f"{project.id}.{created_at}"


@dataclass
class Live:
    server: LabelServer
    store: SampleStore
    classes: tuple[str, ...]
    config: str
    tasks: list[dict[str, Any]]
    settings: LabelStudioSection
    auth: str | None = None

    @property
    def url(self) -> str:
        return self.server.url


def _registry(folder: Path, tiny_model: Any, classes: tuple[str, ...]) -> Registry:
    generate_keypair(folder / "key", folder / "key.pub")
    registry = Registry(folder / "models")
    registry.add(ModelRecord("m1", tiny_model.checkpoint, classes))
    manifest = build_manifest(tiny_model.onnx, "m1", load_private_key(folder / "key"), 4096)
    registry.update("m1", onnx=tiny_model.onnx, manifest=manifest)
    registry.promote("m1", "test")
    return registry


def _store(folder: Path, tiny_model: Any) -> SampleStore:
    """The tiny model's validation images, re-encoded as JPEG and stored as agent samples."""
    val = load_coco(tiny_model.val_json)
    store = SampleStore(folder / "store")
    for rec in val.images[:3]:
        buffer = io.BytesIO()
        Image.open(val.image_path(rec)).convert("RGB").save(buffer, "JPEG", quality=92)
        put_sample(store, buffer.getvalue(), folder / "spool")
    return store


def live_server(tmp_path: Path, tiny_model: Any, **settings: Any) -> Iterator[Live]:
    classes = tuple(load_coco(tiny_model.train_json).categories.values())
    registry = _registry(tmp_path, tiny_model, classes)
    store = _store(tmp_path, tiny_model)
    section = LabelStudioSection(port=0, min_score=0.05, **settings)
    server = label_server(section, store, registry).start()
    config = LABEL_CONFIG.format(first=classes[0], second=classes[1])
    samples = store.samples()
    tasks = labelstudio_tasks(samples, {}, classes, image_url=server.image_url)
    for n, task in enumerate(tasks):  # as Label Studio holds them once imported
        task.update(id=100 + n, meta={}, project=PROJECT["id"], is_labeled=False, inner_id=n + 1)
        task.pop("predictions", None)
    try:
        yield Live(server, store, classes, config, tasks, section)
    finally:
        server.stop()
        store.close()
        registry.close()


def guarded_server(tmp_path: Path, tiny_model: Any) -> Iterator[Live]:
    """The backend behind basic auth (user ls), the password in a file."""
    secret = tmp_path / "ls.pass"
    secret.write_text("s3cret-for-ls\n")
    servers = live_server(tmp_path, tiny_model, basic_auth_user="ls", basic_auth_pass_file=secret)
    for live in servers:
        live.auth = "ls:s3cret-for-ls"
        yield live


def call(
    live: Live, path: str, body: Any = None, auth: str | None = None, raw: bytes | None = None
) -> tuple[int, Any]:
    """One real HTTP request; (status, parsed JSON body)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(live.url + path, data=data)
    request.add_header("Content-Type", "application/json")
    auth = auth or live.auth
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def predict_body(live: Live, tasks: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "tasks": tasks,
        "model_version": "",
        "project": PROJECT_UID,
        "label_config": live.config,
        "params": {"login": None, "password": None, "context": None},
    }


def region(x: float, y: float, w: float, h: float, label: str, size: tuple[int, int]) -> dict:
    return {
        "id": "Xk2_9mDq",
        "type": "rectanglelabels",
        "from_name": "parts",
        "to_name": "img",
        "origin": "manual",
        "original_width": size[0],
        "original_height": size[1],
        "image_rotation": 0,
        "value": {
            "x": x,
            "y": y,
            "width": w,
            "height": h,
            "rotation": 0,
            "rectanglelabels": [label],
        },
    }


def annotation_event(
    live: Live, task: dict[str, Any], result: list[dict], action: str = "ANNOTATION_CREATED"
) -> dict[str, Any]:
    """A webhook body as Label Studio sends it: the annotation, its task, the project."""
    return {
        "action": action,
        "annotation": {
            "id": 41,
            "result": result,
            "created_username": " annotator@example.com, 1",
            "created_ago": "0\xa0minutes",
            "completed_by": 1,
            "was_cancelled": False,
            "ground_truth": False,
            "created_at": "2026-12-03T10:00:00.000000Z",
            "updated_at": "2026-12-03T10:00:00.000000Z",
            "draft_created_at": None,
            "lead_time": 14.2,
            "import_id": None,
            "last_action": None,
            "task": task["id"],
            "project": PROJECT["id"],
            "updated_by": 1,
            "parent_prediction": None,
            "parent_annotation": None,
            "last_created_by": None,
        },
        "task": {
            **task,
            "created_at": "2026-12-03T09:00:00.000000Z",
            "updated_at": "2026-12-03T10:00:00.000000Z",
            "is_labeled": True,
            "overlap": 1,
            "file_upload": None,
            "annotations": [41],
            "predictions": [],
        },
        "project": {**PROJECT, "label_config": live.config, "task_number": 3},
    }


def sample_of(live: Live, task: dict[str, Any]):
    return live.store.get(task["data"]["dal_sample_id"])


def snapshot(store: SampleStore) -> dict[str, tuple[list, tuple, str]]:
    return {k: (v.boxes.tolist(), v.classes, v.source) for k, v in store.labels().items()}
