"""The agent's onnxruntime detector: fitting frames to the model, metadata checks, watchdog.

Most tests run the small hand-built ONNX graph of agent_helpers that follows dal/contract.py
(constant boxes, a feature that is the grey thumbnail of the input the model received), so they
check the agent's side exactly; the last test runs a real Faster R-CNN exported by dal.exporter.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from agent_helpers import CLASSES, H, W, model_metadata
from agent_helpers import contract_model as shared_contract_model
from model_fixtures import TinyModel

from dal import contract
from dal.agent.detector import Detector, InferenceTimeoutError
from dal.errors import ModelError
from dal.letterbox import boxes_to_frame

pytest.importorskip("onnx")

BOXES = np.array([[16, 8, 80, 56], [100, 40, 150, 90]], np.float32)  # input pixels


def metadata(**changes: str | None) -> dict[str, str]:
    """Version m7 of m6 with AP and threshold; a change of None drops that key."""
    meta = model_metadata(
        "m7",
        **{
            contract.META_PARENT: "m6",
            contract.META_WEIGHTS_SHA256: "ab" * 32,
            contract.META_VAL_AP: "0.61",
            contract.META_SCORE_THRESHOLD: "0.05",
        },
    )
    for key, value in changes.items():
        key = getattr(contract, key)
        if value is None:
            meta.pop(key)
        else:
            meta[key] = value
    return meta


def contract_model(path: Path, **kw: Any) -> Path:
    """The shared contract model with this file's two boxes and metadata."""
    kw.setdefault("boxes", BOXES)
    kw.setdefault("meta", metadata())
    return shared_contract_model(path, **kw)


def cpu_detector(path: Path, **kw: object) -> Detector:
    return Detector(path, providers=("CPUExecutionProvider",), **kw)  # type: ignore[arg-type]


# ---- real onnxruntime sessions ----------------------------------------------------------------


def test_detect_maps_boxes_and_passes_the_fitted_frame(tmp_path: Path) -> None:
    detector = cpu_detector(contract_model(tmp_path / "m.onnx"), pad_value=100)
    try:
        info = detector.info
        assert (info.version, info.parent_version, info.input_size) == ("m7", "m6", (W, H))
        assert info.class_names == tuple(CLASSES) and info.num_classes == 2
        assert (info.val_ap, info.score_threshold) == (0.61, 0.05)
        assert detector.provider == "CPUExecutionProvider"
        frame = np.zeros((240, 320, 3), np.uint8)  # 4:3 into 5:3 -> 128x96 with 16 px pads
        det = detector.detect(frame)
        fit = detector.fit_for(320, 240)
        assert fit.pad_x == 16
        np.testing.assert_allclose(det.boxes, boxes_to_frame(BOXES, fit), atol=1e-4)
        assert det.boxes[:, 0::2].max() <= 320 and det.boxes[:, 1::2].max() <= 240
        # the model saw black content and grey (100) pads: the feature is its centred grey
        # thumbnail, whose top-left cell lies in the left pad (mean grey 100 * 32 / W)
        assert det.feature.shape == (contract.FEATURE_DIM,)
        assert det.feature[0] == pytest.approx((100 - 100 * 32 / W) / 255, abs=5e-3)
        assert det.labels.tolist() == [1, 2] and det.probs.shape == (2, 3)
        assert det.latency_s > 0 and detector.latency.summary()["count"] == 2  # + warm-up
        records = det.to_records(info.class_names)
        assert records[0]["class"] == "washer" and len(records[0]["box"]) == 4
    finally:
        detector.close()


def test_zero_detections_work(tmp_path: Path) -> None:
    detector = cpu_detector(contract_model(tmp_path / "m.onnx", boxes=np.zeros((0, 4))))
    det = detector.detect(np.zeros((H, W, 3), np.uint8))
    assert det.boxes.shape == (0, 4) and det.probs.shape == (0, 3) and len(det) == 0
    assert det.to_records() == []


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"META_VERSION": None}, "'dal.model_version' is missing"),
        ({"META_CLASSES": None}, "'dal.class_names' is missing"),
        ({"META_WEIGHTS_SHA256": None}, "'dal.weights_sha256' is missing"),
        ({"META_CONTRACT": "0"}, "this agent reads '1'"),
        ({"META_INPUT_FORMAT": "float_chw"}, "expected 'uint8_hwc_rgb'"),
        ({"META_INPUT_SIZE": "640by360"}, "WIDTHxHEIGHT"),
        ({"META_INPUT_SIZE": "640x360"}, "expected tensor(uint8) [360, 640, 3]"),
        ({"META_CLASSES": '["washer"]'}, "starting with '__background__'"),
        ({"META_VAL_AP": "high"}, "not a number"),
    ],
)
def test_metadata_is_checked_against_the_contract(
    tmp_path: Path, changes: dict, needle: str
) -> None:
    path = contract_model(tmp_path / "bad.onnx", meta=metadata(**changes))
    with pytest.raises(ModelError) as err:
        cpu_detector(path)
    assert str(path) in str(err.value) and needle in str(err.value)
    assert "dal export" in (err.value.hint or "")


def test_outputs_that_break_the_contract_are_refused(tmp_path: Path) -> None:
    detector = cpu_detector(contract_model(tmp_path / "m.onnx", width=5), warmup=False)
    with pytest.raises(ModelError, match="want \\[N, 3\\]"):
        detector.detect(np.zeros((H, W, 3), np.uint8))


def test_missing_or_corrupt_model_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        cpu_detector(tmp_path / "none.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"definitely not protobuf" * 10)
    with pytest.raises(ModelError, match="cannot load"):
        cpu_detector(junk)


def test_watchdog_cancels_a_stuck_inference(tmp_path: Path) -> None:
    path = contract_model(tmp_path / "slow.onnx", slow_matmuls=400)
    detector = cpu_detector(path, timeout_s=0.2, warmup=False, threads=1)
    started = time.monotonic()
    with pytest.raises(InferenceTimeoutError, match=r"longer than 0\.2 s"):
        detector.detect(np.zeros((H, W, 3), np.uint8))
    assert time.monotonic() - started < 3.0
    assert detector.latency.timeouts == 1
    assert detector.broken is None  # onnxruntime stopped the run: the detector stays usable
    detector.close()


def test_default_providers_fall_back_to_what_is_available(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import onnxruntime as ort

    with caplog.at_level(logging.INFO, logger="dal.agent.detector"):
        detector = Detector(contract_model(tmp_path / "m.onnx"), warmup=False)
    assert detector.provider in ort.get_available_providers()
    assert detector.provider in caplog.text  # the provider in use is logged
    detector.close()


# ---- a real exported Faster R-CNN -------------------------------------------------------------


@pytest.mark.slow
def test_exported_faster_rcnn_runs_in_the_agent(tiny_model: TinyModel) -> None:
    """The session's tiny trained detector, exported by dal.exporter, through the agent."""
    import onnxruntime as ort

    from dal.coco import load_coco, read_image

    detector = cpu_detector(tiny_model.onnx)
    info = detector.info
    assert info.input_size == (W, H) and info.class_names[0] == contract.BACKGROUND
    assert info.version and len(info.weights_sha256) == 64
    dataset = load_coco(tiny_model.val_json)
    image = read_image(dataset.image_path(dataset.images[0]))
    assert image.shape == (H, W, 3)

    det = detector.detect(image)  # frame already at the model size: no resize, no padding
    raw = ort.InferenceSession(str(tiny_model.onnx), providers=["CPUExecutionProvider"]).run(
        None, {contract.INPUT_NAME: image}
    )
    np.testing.assert_allclose(det.boxes, np.clip(raw[0], 0, [W, H, W, H]), atol=1e-4)
    assert det.feature.shape == (contract.FEATURE_DIM,) and np.isfinite(det.feature).all()
    assert det.probs.shape == (len(det), len(info.class_names))
    assert len(det) > 0, "a trained model should find something in a validation image"
    np.testing.assert_allclose(det.probs.sum(axis=1), 1.0, atol=1e-3)
    rows = det.probs[np.arange(len(det)), det.labels]
    np.testing.assert_allclose(det.scores, rows, atol=1e-4)  # score = its class's probability

    # the same picture at twice the size: area-resizing gives back the exact same input,
    # so the boxes must come back exactly doubled
    big = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)
    det2 = detector.detect(big)
    np.testing.assert_allclose(det2.boxes, det.boxes * 2, atol=1e-3)
    np.testing.assert_allclose(det2.feature, det.feature, atol=1e-5)
    # a wider frame is letterboxed (grey bands above and below): boxes come back inside it
    wide = np.zeros((2 * H, 3 * W, 3), np.uint8)
    wide[:, W // 2 : W // 2 + 2 * W] = big
    det3 = detector.detect(wide)
    assert detector.fit_for(3 * W, 2 * H).pad_y > 0
    assert det3.boxes[:, 0::2].min(initial=0) >= 0 and det3.boxes[:, 0::2].max(initial=0) <= 3 * W
    assert det3.boxes[:, 1::2].min(initial=0) >= 0 and det3.boxes[:, 1::2].max(initial=0) <= 2 * H
    detector.close()


def test_gpu_providers_without_their_driver_are_skipped() -> None:
    """onnxruntime-gpu offers CUDA even without a GPU; choosing it then fails at load."""
    from dal.agent.providers import choose_providers
    from dal.agent.providers.base import library_loads

    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    expected = both if library_loads("libcuda.so.1") else ["CPUExecutionProvider"]
    assert choose_providers(both, both) == expected
    assert choose_providers(["CUDAExecutionProvider"], ["CPUExecutionProvider"]) == [
        "CPUExecutionProvider"
    ]
