"""Labels from Label Studio over real HTTP: webhook annotations land in the sample store
through the file import's reader, updates replace, deletions remove, bad input changes nothing."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from labelstudio_live import (
    PROJECT,
    PROJECT_UID,
    Live,
    annotation_event,
    call,
    guarded_server,
    live_server,
    region,
    sample_of,
    snapshot,
)

from dal.trainer.jobs import real_dataset
from dal.trainer.store import Label


@pytest.fixture
def live(tmp_path: Path, tiny_model: Any) -> Iterator[Live]:
    yield from live_server(tmp_path, tiny_model)


@pytest.fixture
def guarded(tmp_path: Path, tiny_model: Any) -> Iterator[Live]:
    yield from guarded_server(tmp_path, tiny_model)


# -- labels by webhook -------------------------------------------------------------------------


def test_annotation_created_lands_in_the_labelled_set_and_an_update_replaces_it(
    live: Live, tmp_path: Path
) -> None:
    task = live.tasks[1]
    sample = sample_of(live, task)
    size = (sample.width, sample.height)
    revision = live.store.label_revision()
    event = annotation_event(live, task, [region(10, 20, 25, 30, "Washer", size)])
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
        region(50, 10, 20, 20, live.classes[1], size),
        region(5, 60, 10, 30, "Washer", size),
    ]
    status, _ = call(live, "/webhook", annotation_event(live, task, regions, "ANNOTATION_UPDATED"))
    assert status == 201
    assert list(live.store.labels()) == [sample.sample_id]
    label = live.store.label(sample.sample_id)
    assert label.classes == (live.classes[1], live.classes[0])
    assert label.boxes[0].tolist() == pytest.approx([0.5 * w, 0.1 * h, 0.7 * w, 0.3 * h])


def _bad_regions(live: Live, size: tuple[int, int]) -> dict[str, list[dict]]:
    ok = region(10, 10, 20, 20, "Washer", size)
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
    sample = sample_of(live, task)
    call(
        live,
        "/webhook",
        annotation_event(live, task, [region(1, 1, 5, 5, "Washer", (sample.width, sample.height))]),
    )
    before = snapshot(live.store)
    for why, result in _bad_regions(live, (sample.width, sample.height)).items():
        status, body = call(live, "/webhook", annotation_event(live, task, result))
        assert status == 400, why
        assert body["status"] == "error" and body["error"], why
        assert snapshot(live.store) == before, why
    stranger = {**task, "data": {"image": "/data/upload/3/unknown.jpg"}}
    status, _ = call(live, "/webhook", annotation_event(live, stranger, []))
    assert status == 404 and snapshot(live.store) == before
    missing = annotation_event(live, task, [])
    del missing["task"]
    assert call(live, "/webhook", missing)[0] == 400 and snapshot(live.store) == before


def test_annotations_deleted_removes_that_label_only(live: Live) -> None:
    first, second = live.tasks[0], live.tasks[1]
    for task, ann_id in ((first, 41), (second, 42)):
        sample = sample_of(live, task)
        event = annotation_event(
            live, task, [region(1, 1, 5, 5, "Washer", (sample.width, sample.height))]
        )
        event["annotation"]["id"] = ann_id
        assert call(live, "/webhook", event)[0] == 201
    deleted = {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 41}], "project": PROJECT}
    status, body = call(live, "/webhook", deleted)
    assert status == 201 and body["result"]["cleared"] == [first["data"]["dal_sample_id"]]
    assert list(live.store.labels()) == [second["data"]["dal_sample_id"]]


def test_unknown_webhook_events_are_acknowledged_and_ignored(live: Live) -> None:
    before = snapshot(live.store)
    status, body = call(live, "/webhook", {"action": "PROJECT_UPDATED", "project": PROJECT})
    assert (status, body["status"]) == (200, "Unknown event") and snapshot(live.store) == before


def test_train_imports_every_annotated_task_it_is_sent(live: Live) -> None:
    annotated = []
    for n, task in enumerate(live.tasks[:2]):
        sample = sample_of(live, task)
        box = region(30, 30, 10 + n, 10, "Washer", (sample.width, sample.height))
        annotated.append({**task, "annotations": [{"id": 60 + n, "result": [box]}]})
    body = {"annotations": annotated, "project": PROJECT_UID, "label_config": live.config}
    status, reply = call(live, "/train", body)
    assert status == 201 and reply["job"]
    assert sorted(live.store.labels()) == sorted(t["data"]["dal_sample_id"] for t in annotated)
    assert call(live, "/train", {**body, "annotations": []})[0] == 400


def test_oversized_bodies_are_refused_before_they_are_read(tmp_path: Path, tiny_model) -> None:
    for server in live_server(tmp_path, tiny_model, max_body_mib=1):
        host, port = server.server.server_address[:2]
        conn = http.client.HTTPConnection(host, port, timeout=30)
        conn.putrequest("POST", "/webhook")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str((1 << 20) + 1))
        conn.endheaders()  # the answer comes before any of the body is sent
        response = conn.getresponse()
        assert response.status == 413 and "limit" in json.loads(response.read())["error"]
        conn.close()
        assert server.store.labels() == {}


def test_a_skipped_annotation_removes_the_label_it_made_and_leaves_imports_alone(
    live: Live,
) -> None:
    task = live.tasks[0]
    sample = sample_of(live, task)
    event = annotation_event(
        live, task, [region(1, 1, 5, 5, "Washer", (sample.width, sample.height))]
    )
    assert call(live, "/webhook", event)[0] == 201
    skipped = annotation_event(live, task, [], "ANNOTATION_UPDATED")
    skipped["annotation"]["was_cancelled"] = True
    status, body = call(live, "/webhook", skipped)
    assert status == 201 and body["result"]["cleared"] == [sample.sample_id]
    assert live.store.label(sample.sample_id) is None
    other = live.tasks[1]
    imported = Label(other["data"]["dal_sample_id"], [[1, 1, 9, 9]], (live.classes[0],), "coco")
    live.store.set_labels([imported])
    skipped = annotation_event(live, other, [], "ANNOTATION_CREATED")
    skipped["annotation"]["was_cancelled"] = True
    assert call(live, "/webhook", skipped)[1]["result"]["cleared"] == []
    assert live.store.label(imported.sample_id).source == "coco"
