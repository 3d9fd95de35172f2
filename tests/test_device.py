"""Device choice, precision, the growing step budget, the validation schedule and a real
two-process DistributedDataParallel run (gloo on the CPU, under torchrun)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from model_fixtures import TINY_SIZE, tiny_settings

from dal.errors import ConfigError
from dal.procedural import make_tiny
from dal.trainer.checkpoint import load_checkpoint
from dal.trainer.device import (
    choose_precision,
    cpu_has_bf16,
    parse_device,
    resolve_device,
)
from dal.trainer.loop import TrainingRun
from dal.trainer.train import TrainSettings, train


def test_auto_takes_cuda_only_when_there_is_one() -> None:
    assert resolve_device("auto", cuda_available=False) == torch.device("cpu")
    assert resolve_device("auto", cuda_available=True) == torch.device("cuda")
    assert resolve_device("cuda:1", cuda_available=True) == torch.device("cuda", 1)


def test_cuda_asked_for_without_cuda_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="torch sees no CUDA device"):
        resolve_device("cuda", cuda_available=False)


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:x", "CPU", ""])
def test_malformed_device_names_are_refused(spec: str) -> None:
    with pytest.raises(ConfigError, match="auto, cpu, cuda or cuda:N"):
        parse_device(spec)


def test_cpu_bf16_follows_the_processor_flags(tmp_path: Path) -> None:
    with_amx = tmp_path / "amx"
    with_amx.write_text("processor : 0\nflags : fpu sse2 avx2 amx_bf16 amx_tile\n")
    without = tmp_path / "plain"
    without.write_text("processor : 0\nflags : fpu sse2 avx2 fma\n")
    assert cpu_has_bf16(with_amx)
    assert not cpu_has_bf16(without)
    assert not cpu_has_bf16(tmp_path / "missing")


def test_cpu_trains_in_fp32_unless_amp_is_asked_for() -> None:
    cpu = torch.device("cpu")
    assert choose_precision(cpu, None).dtype is None
    assert choose_precision(cpu, False).dtype is None
    asked = choose_precision(cpu, True)
    assert asked.dtype == (torch.bfloat16 if cpu_has_bf16() else None)
    assert not asked.scaled


def test_the_step_budget_grows_with_the_data() -> None:
    settings = TrainSettings(train=Path("t.json"), out=Path("o"), epochs=2, min_steps=30)
    assert settings.total_epochs(steps_per_epoch=3) == 10  # few labels: more epochs
    assert settings.total_epochs(steps_per_epoch=50) == 2  # many: the epochs asked for
    capped = dataclasses.replace(settings, max_steps=12)
    assert capped.total_epochs(steps_per_epoch=3) == 4


def test_still_rising_means_the_last_validation_was_a_clear_gain() -> None:
    def rising(*aps: float) -> bool:
        return TrainingRun.still_rising(SimpleNamespace(history=[{"AP": a} for a in aps]))

    assert rising(0.1, 0.2, 0.3)
    assert not rising(0.3, 0.31, 0.302)
    assert not rising(0.3, 0.302)  # within noise
    assert not rising(0.3)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny-device")
    return make_tiny(root / "train", 24, classes=2, seed=1), make_tiny(root / "val", 4, seed=2)


def test_validation_runs_on_its_schedule_and_at_the_end(
    tiny_data: tuple[Path, Path], tmp_path: Path
) -> None:
    train_json, val_json = tiny_data
    settings = tiny_settings(train_json, tmp_path / "run", val=val_json, epochs=3, eval_every=2)
    result = train(settings)
    assert [("AP" in record) for record in result.history] == [False, True, True]
    ckpt = load_checkpoint(result.best_path)
    assert ckpt.training_summary["device"] == "cpu"
    assert all(t.device.type == "cpu" and t.is_contiguous() for t in ckpt.model.values())


def test_a_time_budget_replans_the_epochs(tiny_data: tuple[Path, Path], tmp_path: Path) -> None:
    result = train(tiny_settings(tiny_data[0], tmp_path / "run", epochs=5, time_budget_s=1e-3))
    assert result.epochs_run == 1
    assert [record["epoch"] for record in result.history] == [1]
    # the new default layout (RPN from P3 up) exports and runs in onnxruntime
    import numpy as np
    import onnxruntime as ort

    from dal.trainer.export import export_onnx

    assert not load_checkpoint(result.best_path).config.rpn_on_p2
    onnx_path = export_onnx(result.best_path, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    width, height = (int(v) for v in TINY_SIZE.split("x"))
    outputs = session.run(None, {"image": np.zeros((height, width, 3), np.uint8)})
    assert any(out.shape == (256,) for out in outputs)  # the P2 feature is still there


def test_two_processes_train_one_model_with_ddp(
    tiny_data: tuple[Path, Path], tmp_path: Path
) -> None:
    train_json, val_json = tiny_data
    out = tmp_path / "ddp"
    dal = Path(sys.executable).parent / "dal"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(dal),
        "train",
        str(train_json),
        "--val",
        str(val_json),
        "--out",
        str(out),
        "--backbone-weights",
        "none",
        "--input-size",
        TINY_SIZE,
        "--epochs",
        "2",
        "--eval-every",
        "1",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--no-progress",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    assert "rank 1 of 2 on cpu (gloo)" in log
    # 24 images split over two ranks: 12 each, 3 steps of 4 per epoch (6 in one process).
    assert "2 epochs of 3 steps (batch 4 x 2 process(es))" in log
    best = load_checkpoint(out / "best.pt")
    assert best.training_summary["processes"] == 2
    assert [record["epoch"] for record in best.history] == [1, 2][: len(best.history)]
    last = load_checkpoint(out / "last.pt")
    assert last.epoch == 2 and all("AP" in record for record in last.history)
