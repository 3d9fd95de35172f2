"""ONNX export: the contract's outputs, metadata, parity with torch, N = 0, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from model_fixtures import TinyModel

from dal import contract
from dal.coco import load_coco, read_image
from dal.errors import ModelError
from dal.exporter.export import ExportOptions, verify
from dal.exporter.weights import weights_sha256
from dal.trainer.checkpoint import load_checkpoint
from dal.trainer.export import export_onnx


def _val_images(tiny: TinyModel, n: int = 6) -> list[np.ndarray]:
    coco = load_coco(tiny.val_json)
    return [read_image(coco.image_path(rec)) for rec in coco.images[:n]]


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_onnxruntime_matches_torch_on_trained_weights(tiny_model: TinyModel) -> None:
    ckpt = load_checkpoint(tiny_model.checkpoint)
    report = verify(ckpt, tiny_model.onnx, _val_images(tiny_model))
    assert report["ok"], report
    assert report["unmatched"] == 0
    assert report["max_prob_diff"] < 1e-4


def test_outputs_follow_the_contract(tiny_model: TinyModel) -> None:
    session = _session(tiny_model.onnx)
    (inp,) = session.get_inputs()
    assert (inp.name, inp.type, inp.shape) == (contract.INPUT_NAME, "tensor(uint8)", [96, 160, 3])
    assert [o.name for o in session.get_outputs()] == list(contract.OUTPUT_NAMES)
    for image in _val_images(tiny_model):
        boxes, labels, scores, probs, feature = session.run(None, {contract.INPUT_NAME: image})
        n = len(boxes)
        assert boxes.dtype == np.float32 and boxes.shape == (n, 4)
        assert labels.dtype == np.int64 and labels.shape == (n,)
        assert scores.dtype == np.float32 and probs.shape == (n, 3)
        assert feature.dtype == np.float32 and feature.shape == (contract.FEATURE_DIM,)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
        # the kept class's score is its entry in the softmax row
        np.testing.assert_allclose(probs[np.arange(n), labels], scores, atol=1e-6)
        assert (labels >= 1).all() and (boxes[:, 2:] >= boxes[:, :2]).all()


def test_metadata_describes_the_model(tiny_model: TinyModel) -> None:
    ckpt = load_checkpoint(tiny_model.checkpoint)
    meta = {p.key: p.value for p in onnx.load(str(tiny_model.onnx)).metadata_props}
    assert set(contract.REQUIRED_META) <= set(meta)
    assert json.loads(meta[contract.META_CLASSES]) == ["__background__", "washer", "l_bracket"]
    assert meta[contract.META_INPUT_SIZE] == "160x96"
    assert meta[contract.META_INPUT_FORMAT] == contract.INPUT_FORMAT
    assert meta[contract.META_VERSION] == ckpt.version
    assert meta[contract.META_WEIGHTS_SHA256] == weights_sha256(ckpt.model)
    assert float(meta[contract.META_VAL_AP]) == pytest.approx(ckpt.best_ap, abs=1e-6)
    assert json.loads(meta[contract.META_TRAINING])["train_images"] == 24


def test_no_detections_is_a_valid_answer(tiny_model: TinyModel, tmp_path: Path) -> None:
    path = export_onnx(
        tiny_model.checkpoint, tmp_path / "strict.onnx", ExportOptions(score_threshold=1.0)
    )
    image = _val_images(tiny_model, 1)[0]
    boxes, labels, scores, probs, feature = _session(path).run(None, {"image": image})
    assert boxes.shape == (0, 4) and labels.shape == (0,) and scores.shape == (0,)
    assert probs.shape == (0, 3)
    assert feature.shape == (256,) and np.isfinite(feature).all()


def test_exporting_a_damaged_checkpoint_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 64)
    out = tmp_path / "out.onnx"
    with pytest.raises(ModelError, match=r"bad\.pt"):
        export_onnx(bad, out)
    assert not out.exists()


def test_eval_gives_the_same_ap_for_checkpoint_and_onnx(
    tiny_model: TinyModel, tmp_path: Path
) -> None:
    from dal.cli import main

    results = {}
    for name, model in (("pt", tiny_model.checkpoint), ("onnx", tiny_model.onnx)):
        out = tmp_path / f"{name}.json"
        grid = tmp_path / f"{name}.png"
        assert (
            main(
                [
                    "eval",
                    str(model),
                    str(tiny_model.val_json),
                    "--out",
                    str(out),
                    "--grid",
                    str(grid),
                ]
            )
            == 0
        )
        results[name] = json.loads(out.read_text())
        assert grid.stat().st_size > 0
    assert results["onnx"]["AP"] == pytest.approx(results["pt"]["AP"], abs=0.01)
    assert results["onnx"]["images"] == 8
