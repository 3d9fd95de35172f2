"""`dal export --quantize int8`: an INT8 model the agent loads, inside the contract, and the AP
gate that refuses one that loses too much."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_run import run_cli
from model_fixtures import TinyModel

from dal import contract
from dal.agent.detector import Detector
from dal.coco import load_coco, read_image

pytestmark = pytest.mark.timeout(300)


def _export_int8(tiny: TinyModel, out: Path, *extra: str) -> tuple[int, str]:
    return run_cli(
        [
            "export",
            str(tiny.checkpoint),
            "--out",
            str(out),
            "--quantize",
            "int8",
            "--calibration",
            str(tiny.train_json.parent / "images"),
            "--calibration-frames",
            "6",
            "--val",
            str(tiny.val_json),
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def int8(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("int8") / "model-int8.onnx"
    code, printed = _export_int8(tiny_model, out, "--max-ap-drop", "1")
    assert code == 0, printed
    return out, json.loads(printed.splitlines()[0])


def test_the_agent_loads_the_int8_model_and_its_outputs_keep_the_contract(
    tiny_model: TinyModel, int8: tuple[Path, dict]
) -> None:
    path, _ = int8
    graph = onnx.load(str(path)).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # it is quantized ...
    assert {"RoiAlign", "Softmax"} & ops  # ... and the detection head is still there, in float
    coco = load_coco(tiny_model.val_json)
    width = 3  # background + the tiny model's 2 classes
    with Detector(path, providers=("CPUExecutionProvider",)) as detector:
        assert detector.info.metadata[contract.META_PRECISION] == "int8"
        found = 0
        for rec in coco.images[:6]:
            d = detector.detect(read_image(coco.image_path(rec)))
            n = len(d)
            found += n
            assert d.boxes.shape == (n, 4) and d.probs.shape == (n, width)
            assert d.feature.shape == (contract.FEATURE_DIM,) and np.isfinite(d.feature).all()
            np.testing.assert_allclose(d.probs.sum(axis=1), 1.0, atol=1e-5)
            np.testing.assert_allclose(d.probs[np.arange(n), d.labels], d.scores, atol=1e-6)
        assert found > 0  # a trained model still finds the parts after quantization


def test_metadata_carries_both_aps(int8: tuple[Path, dict]) -> None:
    path, report = int8
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert float(meta[contract.META_FP32_AP]) == pytest.approx(report["fp32_ap"], abs=1e-6)
    assert float(meta[contract.META_INT8_AP]) == pytest.approx(report["int8_ap"], abs=1e-6)
    assert report["fp32_ap"] > 0  # the AP compared is a real one
    assert meta[contract.META_CLASSES] and meta[contract.META_VERSION]


def test_an_int8_model_past_the_ap_drop_is_refused_and_not_written(
    tiny_model: TinyModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "refused.onnx"
    # a drop of at least -1 AP point is always there: the gate must say no
    code, _ = _export_int8(tiny_model, out, "--max-ap-drop", "-1")
    assert code == 1
    assert "--max-ap-drop" in capsys.readouterr().err
    assert not out.exists()
    code, _ = _export_int8(tiny_model, out, "--max-ap-drop", "-1", "--force")
    assert code == 0 and out.exists()


def test_quantize_needs_calibration_and_val(tiny_model: TinyModel, tmp_path: Path) -> None:
    code, _ = run_cli(
        [
            "export",
            str(tiny_model.checkpoint),
            "--out",
            str(tmp_path / "q.onnx"),
            "--quantize",
            "int8",
        ]
    )
    assert code == 1 and not (tmp_path / "q.onnx").exists()


def test_export_help_lists_quantize() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dal.cli", "export", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    for flag in ("--quantize", "--calibration", "--val", "--max-ap-drop", "--force"):
        assert flag in done.stdout
