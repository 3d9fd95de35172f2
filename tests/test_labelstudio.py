"""Label Studio's ML backend protocol over real HTTP, with the tiny exported model.

The server runs on a free port against a real sample store (JPEG samples) and a registry whose
current model is the tiny ONNX export; requests are shaped as Label Studio sends them
(label_studio/ml/api_connector.py for /setup and /predict, the webhook serializers for
ANNOTATION_CREATED/UPDATED and ANNOTATIONS_DELETED).
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from trainer_samples import put_sample

from dal.cli import main
from dal.coco import load_coco
from dal.errors import ConfigError
from dal.link import build_manifest
from dal.link.signing import generate_keypair, load_private_key
from dal.trainer.config import LabelStudioSection, TrainerConfig
from dal.trainer.jobs import real_dataset
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


def _live(tmp_path: Path, tiny_model: Any, **settings: Any) -> Iterator[Live]:
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


@pytest.fixture
def live(tmp_path: Path, tiny_model: Any) -> Iterator[Live]:
    yield from _live(tmp_path, tiny_model)


@pytest.fixture
def guarded(tmp_path: Path, tiny_model: Any) -> Iterator[Live]:
    secret = tmp_path / "ls.pass"
    secret.write_text("s3cret-for-ls\n")
    for live in _live(tmp_path, tiny_model, basic_auth_user="ls", basic_auth_pass_file=secret):
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


def _predict_body(live: Live, tasks: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "tasks": tasks,
        "model_version": "",
        "project": PROJECT_UID,
        "label_config": live.config,
        "params": {"login": None, "password": None, "context": None},
    }


def _region(x: float, y: float, w: float, h: float, label: str, size: tuple[int, int]) -> dict:
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


def _sample(live: Live, task: dict[str, Any]):
    return live.store.get(task["data"]["dal_sample_id"])


def _snapshot(store: SampleStore) -> dict[str, tuple[list, tuple, str]]:
    return {k: (v.boxes.tolist(), v.classes, v.source) for k, v in store.labels().items()}


# -- model routes ------------------------------------------------------------------------------


def test_health_answers_up_with_the_current_model_version(live: Live) -> None:
    for path in ("/health", "/"):
        status, body = call(live, path)
        assert status == 200 and body["status"] == "UP" and body["model_version"] == "m1"


def test_setup_takes_a_label_studio_config_and_refuses_one_without_rectangles(live: Live) -> None:
    setup = {"project": PROJECT_UID, "schema": live.config, "hostname": "http://ls:8080"}
    assert call(live, "/setup", setup) == (200, {"model_version": "m1"})
    choices = '<View><Image name="i" value="$image"/><Choices name="c" toName="i"/></View>'
    status, body = call(live, "/setup", {**setup, "schema": choices})
    assert status == 400 and "RectangleLabels" in body["error"]
    unknown = live.config.replace(f'value="{live.classes[1]}"', 'value="Bolt"')
    status, body = call(live, "/setup", {**setup, "schema": unknown})
    assert status == 400 and "'Bolt'" in body["error"] and "predicted_values" in body["hint"]


def test_predict_returns_the_models_boxes_in_percent_named_after_the_project(live: Live) -> None:
    from dal.agent.detector import Detector
    from dal.coco import read_image

    status, body = call(live, "/predict", _predict_body(live, live.tasks))
    assert status == 200 and body["model_version"] == "m1"
    assert len(body["results"]) == len(live.tasks)
    to_ls = {live.classes[0]: "Washer", live.classes[1]: live.classes[1]}
    with Detector(live.server.backend.model.registry.current().onnx, warmup=False) as det:
        for task, prediction in zip(live.tasks, body["results"], strict=True):
            sample = _sample(live, task)
            found = det.detect(read_image(sample.path))
            keep = found.scores >= 0.05
            assert prediction["model_version"] == "m1"
            assert len(prediction["result"]) == int(keep.sum())
            for region, box, label in zip(
                prediction["result"], found.boxes[keep], found.labels[keep], strict=True
            ):
                assert (region["from_name"], region["to_name"]) == ("parts", "img")
                assert region["type"] == "rectanglelabels"
                assert (region["original_width"], region["original_height"]) == (
                    sample.width,
                    sample.height,
                )
                v = region["value"]
                assert 0 <= v["x"] <= 100 and 0 <= v["y"] <= 100
                assert v["width"] > 0 and v["x"] + v["width"] <= 100 + 1e-9
                assert v["height"] > 0 and v["y"] + v["height"] <= 100 + 1e-9
                assert v["rectanglelabels"] == [to_ls[live.classes[int(label) - 1]]]
                x1 = max(0.0, float(box[0])) / sample.width * 100
                assert v["x"] == pytest.approx(x1, abs=1e-3)
    assert sum(len(p["result"]) for p in body["results"]) > 0, "the tiny model found nothing"


def test_predict_refuses_unknown_tasks_and_malformed_bodies(live: Live) -> None:
    stranger = {"id": 9, "data": {"image": "http://ls:8080/data/upload/3/elsewhere.jpg"}}
    status, body = call(live, "/predict", _predict_body(live, [stranger]))
    assert status == 404 and "no sample of this trainer" in body["error"]
    assert call(live, "/predict", {**_predict_body(live, []), "tasks": "all"})[0] == 400
    assert call(live, "/predict", raw=b"{not json")[0] == 400
    assert call(live, "/predict", raw=b"[1, 2]")[0] == 400


def test_task_image_urls_from_the_export_load_from_the_backend(guarded: Live) -> None:
    url = guarded.tasks[0]["data"]["image"]
    with urllib.request.urlopen(url, timeout=30) as response:  # a browser's <img>: no auth
        assert response.read() == _sample(guarded, guarded.tasks[0]).path.read_bytes()
        assert response.headers["Content-Type"] == "image/jpeg"
    forged = url.rsplit("/", 2)
    forged = f"{forged[0]}/{'0' * 32}/{forged[2]}"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(forged, timeout=30)
    assert err.value.code == 401


def test_the_live_export_writes_task_urls_the_backend_serves(guarded: Live, tmp_path: Path) -> None:
    settings = guarded.settings
    config = tmp_path / "trainer.toml"
    config.write_text(
        f'[trainer]\ndata_dir = "{tmp_path}"\n[ingest]\ndir = "{guarded.store.folder}"\n'
        f'[models]\ndir = "{tmp_path / "models"}"\n'
        f'[labelstudio]\npublic_url = "{guarded.url}"\n'
        f'basic_auth_user = "{settings.basic_auth_user}"\n'
        f'basic_auth_pass_file = "{settings.basic_auth_pass_file}"\n'
    )
    out = tmp_path / "ls"
    args = ["label", "export", "--config", str(config), "--format", "labelstudio", "--live"]
    assert main([*args, "--images", "none", "--out", str(out)]) == 0
    tasks = json.loads((out / "tasks.json").read_text())
    assert len(tasks) == 3
    for task in tasks:
        sample = guarded.store.get(task["data"]["dal_sample_id"])
        with urllib.request.urlopen(task["data"]["image"], timeout=30) as response:
            assert response.read() == sample.path.read_bytes()
    status, body = call(guarded, "/predict", _predict_body(guarded, tasks))
    assert status == 200 and len(body["results"]) == 3


# -- labels by webhook -------------------------------------------------------------------------


def test_annotation_created_lands_in_the_labelled_set_and_an_update_replaces_it(
    live: Live, tmp_path: Path
) -> None:
    task = live.tasks[1]
    sample = _sample(live, task)
    size = (sample.width, sample.height)
    revision = live.store.label_revision()
    event = annotation_event(live, task, [_region(10, 20, 25, 30, "Washer", size)])
    status, body = call(live, "/webhook", event)
    assert status == 201 and body["result"]["stored"] == [sample.sample_id]
    label = live.store.label(sample.sample_id)
    assert label.classes == (live.classes[0],)  # "Washer" -> the model's class
    w, h = size
    assert label.boxes[0].tolist() == pytest.approx([0.1 * w, 0.2 * h, 0.35 * w, 0.5 * h])
    assert live.store.label_revision() > revision
    assert live.store.labels_since(revision)[0] == 1  # what starts the next fine-tune
    dataset, _ = real_dataset(live.store, live.classes, tmp_path / "real.json")
    assert [r.extra["dal_sample_id"] for r in dataset.images] == [sample.sample_id]

    regions = [
        _region(50, 10, 20, 20, live.classes[1], size),
        _region(5, 60, 10, 30, "Washer", size),
    ]
    status, _ = call(live, "/webhook", annotation_event(live, task, regions, "ANNOTATION_UPDATED"))
    assert status == 201
    assert list(live.store.labels()) == [sample.sample_id]
    label = live.store.label(sample.sample_id)
    assert label.classes == (live.classes[1], live.classes[0])
    assert label.boxes[0].tolist() == pytest.approx([0.5 * w, 0.1 * h, 0.7 * w, 0.3 * h])


def _bad_regions(live: Live, size: tuple[int, int]) -> dict[str, list[dict]]:
    ok = _region(10, 10, 20, 20, "Washer", size)
    return {
        "x past the right edge": [replace_value(ok, x=120)],
        "negative width": [replace_value(ok, width=-5)],
        "not a number": [replace_value(ok, height="12")],
        "label not in the project": [replace_value(ok, rectanglelabels=["Bolt"])],
        "two labels on one box": [replace_value(ok, rectanglelabels=["Washer", "Washer"])],
        "another image size": [{**ok, "original_width": size[0] * 2}],
        "rotated": [replace_value(ok, rotation=30)],
        "another tag": [{**ok, "from_name": "other"}],
    }


def replace_value(region: dict, **value: Any) -> dict:
    return {**region, "value": {**region["value"], **value}}


def test_malformed_or_out_of_range_annotations_get_400_and_change_nothing(live: Live) -> None:
    task = live.tasks[0]
    sample = _sample(live, task)
    call(
        live,
        "/webhook",
        annotation_event(
            live, task, [_region(1, 1, 5, 5, "Washer", (sample.width, sample.height))]
        ),
    )
    before = _snapshot(live.store)
    for why, result in _bad_regions(live, (sample.width, sample.height)).items():
        status, body = call(live, "/webhook", annotation_event(live, task, result))
        assert status == 400, why
        assert body["status"] == "error" and body["error"], why
        assert _snapshot(live.store) == before, why
    stranger = {**task, "data": {"image": "/data/upload/3/unknown.jpg"}}
    status, _ = call(live, "/webhook", annotation_event(live, stranger, []))
    assert status == 404 and _snapshot(live.store) == before
    missing = annotation_event(live, task, [])
    del missing["task"]
    assert call(live, "/webhook", missing)[0] == 400 and _snapshot(live.store) == before


def test_annotations_deleted_removes_that_label_only(live: Live) -> None:
    first, second = live.tasks[0], live.tasks[1]
    for task, ann_id in ((first, 41), (second, 42)):
        sample = _sample(live, task)
        event = annotation_event(
            live, task, [_region(1, 1, 5, 5, "Washer", (sample.width, sample.height))]
        )
        event["annotation"]["id"] = ann_id
        assert call(live, "/webhook", event)[0] == 201
    deleted = {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 41}], "project": PROJECT}
    status, body = call(live, "/webhook", deleted)
    assert status == 201 and body["result"]["cleared"] == [first["data"]["dal_sample_id"]]
    assert list(live.store.labels()) == [second["data"]["dal_sample_id"]]


def test_unknown_webhook_events_are_acknowledged_and_ignored(live: Live) -> None:
    before = _snapshot(live.store)
    status, body = call(live, "/webhook", {"action": "PROJECT_UPDATED", "project": PROJECT})
    assert (status, body["status"]) == (200, "Unknown event") and _snapshot(live.store) == before


def test_train_imports_every_annotated_task_it_is_sent(live: Live) -> None:
    annotated = []
    for n, task in enumerate(live.tasks[:2]):
        sample = _sample(live, task)
        region = _region(30, 30, 10 + n, 10, "Washer", (sample.width, sample.height))
        annotated.append({**task, "annotations": [{"id": 60 + n, "result": [region]}]})
    body = {"annotations": annotated, "project": PROJECT_UID, "label_config": live.config}
    status, reply = call(live, "/train", body)
    assert status == 201 and reply["job"]
    assert sorted(live.store.labels()) == sorted(t["data"]["dal_sample_id"] for t in annotated)
    assert call(live, "/train", {**body, "annotations": []})[0] == 400


def test_oversized_bodies_are_refused_before_they_are_read(tmp_path: Path, tiny_model) -> None:
    for live in _live(tmp_path, tiny_model, max_body_mib=1):
        host, port = live.server.server_address[:2]
        conn = http.client.HTTPConnection(host, port, timeout=30)
        conn.putrequest("POST", "/webhook")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str((1 << 20) + 1))
        conn.endheaders()  # the answer comes before any of the body is sent
        response = conn.getresponse()
        assert response.status == 413 and "limit" in json.loads(response.read())["error"]
        conn.close()
        assert live.store.labels() == {}


# -- auth --------------------------------------------------------------------------------------


def test_wrong_basic_auth_gets_401_and_the_right_one_gets_in(guarded: Live) -> None:
    task = guarded.tasks[0]
    sample = _sample(guarded, task)
    event = annotation_event(
        guarded, task, [_region(1, 1, 5, 5, "Washer", (sample.width, sample.height))]
    )
    for wrong in ("ls:guess", "admin:s3cret-for-ls", "ls"):
        assert call(guarded, "/health", auth=wrong)[0] == 401
        assert call(guarded, "/webhook", event, auth=wrong)[0] == 401
    assert guarded.store.labels() == {}
    assert call(guarded, "/health")[0] == 200
    assert call(guarded, "/webhook", event)[0] == 201


def test_a_public_address_without_basic_auth_is_refused(tmp_path: Path) -> None:
    store, registry = SampleStore(tmp_path / "s"), Registry(tmp_path / "m")
    with pytest.raises(ConfigError, match="basic auth"):
        label_server(LabelStudioSection(host="0.0.0.0", port=0), store, registry)
    config = tmp_path / "trainer.toml"
    config.write_text(f'[trainer]\ndata_dir = "{tmp_path}"\n[labelstudio]\nhost = "0.0.0.0"\n')
    assert main(["label", "serve", "--config", str(config)]) == 78
    store.close()
    registry.close()


def test_half_a_credential_is_a_config_error(tmp_path: Path) -> None:
    store, registry = SampleStore(tmp_path / "s"), Registry(tmp_path / "m")
    with pytest.raises(ConfigError, match="go together"):
        label_server(LabelStudioSection(port=0, basic_auth_user="ls"), store, registry)
    store.close()
    registry.close()


def test_the_trainer_service_runs_the_backend_when_enabled(broker, tmp_path: Path) -> None:
    from dal import config as cfg
    from dal.trainer.service import TrainerService

    config = cfg.from_dict(
        TrainerConfig,
        {
            "trainer": {"data_dir": str(tmp_path / "data")},
            "mqtt": {"port": broker.port},
            "finetune": {"auto": False},
            "labelstudio": {"enabled": True, "port": 0},
        },
        source="<test>",
    )
    service = TrainerService(config).start(wait_connected_s=10)
    try:
        url = service.label_server.url
        with urllib.request.urlopen(url + "/health", timeout=30) as response:
            assert json.loads(response.read()) == {
                "status": "UP",
                "model_class": "dal",
                "model_version": None,
            }
    finally:
        service.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "/health", timeout=5)
