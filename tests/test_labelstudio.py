"""Label Studio's ML backend over real HTTP: health, setup, predict, images, auth, the service.

The fixtures (labelstudio_live.py) run the server against the tiny exported model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from labelstudio_live import (
    PROJECT_UID,
    Live,
    annotation_event,
    call,
    guarded_server,
    live_server,
    predict_body,
    region,
    sample_of,
)

from dal.cli import main
from dal.errors import ConfigError
from dal.trainer.config import LabelStudioSection, TrainerConfig
from dal.trainer.labels.ls_server import label_server
from dal.trainer.registry import Registry
from dal.trainer.store import SampleStore


@pytest.fixture
def live(tmp_path: Path, tiny_model: Any) -> Iterator[Live]:
    yield from live_server(tmp_path, tiny_model)


@pytest.fixture
def guarded(tmp_path: Path, tiny_model: Any) -> Iterator[Live]:
    yield from guarded_server(tmp_path, tiny_model)


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

    status, body = call(live, "/predict", predict_body(live, live.tasks))
    assert status == 200 and body["model_version"] == "m1"
    assert len(body["results"]) == len(live.tasks)
    to_ls = {live.classes[0]: "Washer", live.classes[1]: live.classes[1]}
    with Detector(live.server.backend.model.registry.current().onnx, warmup=False) as det:
        for task, prediction in zip(live.tasks, body["results"], strict=True):
            sample = sample_of(live, task)
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
    status, body = call(live, "/predict", predict_body(live, [stranger]))
    assert status == 404 and "no sample of this trainer" in body["error"]
    assert call(live, "/predict", {**predict_body(live, []), "tasks": "all"})[0] == 400
    assert call(live, "/predict", raw=b"{not json")[0] == 400
    assert call(live, "/predict", raw=b"[1, 2]")[0] == 400
    assert call(live, "/predict", raw=b"[" * 100_000 + b"]" * 100_000)[0] == 400
    assert call(live, "/health")[0] == 200  # and it still serves


def test_task_image_urls_from_the_export_load_from_the_backend(guarded: Live) -> None:
    url = guarded.tasks[0]["data"]["image"]
    with urllib.request.urlopen(url, timeout=30) as response:  # a browser's <img>: no auth
        assert response.read() == sample_of(guarded, guarded.tasks[0]).path.read_bytes()
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
    status, body = call(guarded, "/predict", predict_body(guarded, tasks))
    assert status == 200 and len(body["results"]) == 3


# -- auth --------------------------------------------------------------------------------------


def test_wrong_basic_auth_gets_401_and_the_right_one_gets_in(guarded: Live) -> None:
    task = guarded.tasks[0]
    sample = sample_of(guarded, task)
    event = annotation_event(
        guarded, task, [region(1, 1, 5, 5, "Washer", (sample.width, sample.height))]
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


def test_dal_label_serve_answers_until_sigterm(tmp_path: Path) -> None:
    config = tmp_path / "trainer.toml"
    config.write_text(f'[trainer]\ndata_dir = "{tmp_path}"\n[labelstudio]\nport = 0\n')
    command = [sys.executable, "-m", "dal.cli", "label", "serve", "--config", str(config)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        url = line.split(" on ", 1)[1].split()[0]
        with urllib.request.urlopen(url + "/health", timeout=30) as response:
            assert json.loads(response.read())["status"] == "UP"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


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


# -- Label Studio's own validator (optional) ---------------------------------------------------

# label-studio-sdk (numpy 2, lxml, pydantic) cannot share the project's pinned environment, so
# it lives in a side venv: python3.11 -m venv /opt/ls-sdk && /opt/ls-sdk/bin/pip install
# label-studio-sdk, then DAL_LABEL_STUDIO_SDK_PYTHON=/opt/ls-sdk/bin/python.
SDK_PYTHON = os.environ.get("DAL_LABEL_STUDIO_SDK_PYTHON", "")
_SDK_CHECK = """
import json, sys
from label_studio_sdk.label_interface import LabelInterface
job = json.load(sys.stdin)
interface = LabelInterface(job["config"])
interface.validate()
errors = [interface.validate_prediction(p, return_errors=True) for p in job["predictions"]]
errors += [interface.validate_prediction(a, return_errors=True) for a in job["annotations"]]
print(json.dumps(errors))
"""


@pytest.mark.skipif(not SDK_PYTHON, reason="set DAL_LABEL_STUDIO_SDK_PYTHON to a label-studio-sdk")
def test_predictions_and_test_annotations_pass_the_label_studio_sdk_validator(live: Live) -> None:
    status, body = call(live, "/predict", predict_body(live, live.tasks))
    assert status == 200 and any(p["result"] for p in body["results"])
    sample = sample_of(live, live.tasks[0])
    event = annotation_event(
        live, live.tasks[0], [region(10, 20, 25, 30, "Washer", (sample.width, sample.height))]
    )
    job = {
        "config": live.config,
        "predictions": body["results"],
        "annotations": [event["annotation"]],
    }
    done = subprocess.run(
        [SDK_PYTHON, "-c", _SDK_CHECK],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [[]] * (len(body["results"]) + 1)
    # and the validator does fail: a region on a tag the project does not have
    wrong = {
        **job,
        "predictions": [{"result": [{**event["annotation"]["result"][0], "from_name": "x"}]}],
    }
    done = subprocess.run(
        [SDK_PYTHON, "-c", _SDK_CHECK],
        input=json.dumps(wrong),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert json.loads(done.stdout)[0] != []
