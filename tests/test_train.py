"""Training and fine-tuning on procedural data: real torch, real files, tiny images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from model_fixtures import TinyModel, tiny_settings

from dal.errors import ModelError
from dal.procedural import make_tiny
from dal.trainer.checkpoint import load_checkpoint
from dal.trainer.train import train


def test_training_lowers_the_loss_and_computes_ap(tiny_model: TinyModel) -> None:
    losses = [epoch["loss"] for epoch in tiny_model.history]
    assert losses[-1] < 0.8 * losses[0]
    assert all(0.0 <= epoch["AP"] <= 1.0 for epoch in tiny_model.history)
    assert max(epoch["AP50"] for epoch in tiny_model.history) > 0.0


def test_checkpoint_loads_with_weights_only(tiny_model: TinyModel) -> None:
    payload = torch.load(tiny_model.checkpoint, map_location="cpu", weights_only=True)
    assert payload["format"] == "dal-checkpoint-1"
    ckpt = load_checkpoint(tiny_model.checkpoint)
    assert ckpt.config.class_names == ("washer", "l_bracket")
    assert ckpt.version and ckpt.best_ap == max(e["AP"] for e in tiny_model.history)


def test_fine_tuning_starts_from_the_checkpoint(tiny_model: TinyModel, tmp_path: Path) -> None:
    parent = load_checkpoint(tiny_model.checkpoint)
    result = train(
        tiny_settings(
            tiny_model.train_json,
            tmp_path / "ft",
            init=tiny_model.checkpoint,
            lr=1e-9,
            max_steps_per_epoch=1,
        )
    )
    child = load_checkpoint(result.best_path)
    name = "roi_heads.box_predictor.cls_score.weight"
    assert torch.allclose(child.model[name], parent.model[name], atol=1e-6)
    assert child.parent_version == parent.version
    assert child.version != parent.version


def test_fine_tuning_with_other_classes_names_the_field(
    tiny_model: TinyModel, tmp_path: Path
) -> None:
    three = make_tiny(tmp_path / "three", 4, classes=3, seed=5)
    out = tmp_path / "out"
    with pytest.raises(ModelError, match=r"best\.pt: config\.class_names has 2 classes"):
        train(tiny_settings(three, out, init=tiny_model.checkpoint))
    assert not (out / "best.pt").exists()


def test_reset_head_trains_a_new_class_set(tiny_model: TinyModel, tmp_path: Path) -> None:
    three = make_tiny(tmp_path / "three", 4, classes=3, seed=5)
    result = train(
        tiny_settings(
            three,
            tmp_path / "out",
            init=tiny_model.checkpoint,
            reset_head=True,
            max_steps_per_epoch=1,
        )
    )
    ckpt = load_checkpoint(result.best_path)
    assert len(ckpt.config.class_names) == 3
    assert ckpt.model["roi_heads.box_predictor.cls_score.weight"].shape[0] == 4


def test_resume_continues_from_last_epoch(tmp_path: Path) -> None:
    data = make_tiny(tmp_path / "data", 8, seed=3)
    first = train(tiny_settings(data, tmp_path / "run", epochs=1, max_steps_per_epoch=1))
    assert first.epochs_run == 1
    again = tiny_settings(data, tmp_path / "run", epochs=2, max_steps_per_epoch=1, resume=True)
    second = train(again)
    assert [h["epoch"] for h in second.history] == [1, 2]


def test_a_damaged_checkpoint_is_refused_by_name(tmp_path: Path) -> None:
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ModelError, match=r"broken\.pt: cannot read checkpoint"):
        load_checkpoint(bad)


def test_a_pickled_object_is_not_executed(tmp_path: Path) -> None:
    """weights_only=True: a checkpoint carrying arbitrary objects must not load."""
    evil = tmp_path / "evil.pt"
    torch.save({"format": "dal-checkpoint-1", "payload": Path("/etc/passwd")}, evil)
    with pytest.raises(ModelError, match=r"evil\.pt"):
        load_checkpoint(evil)


def test_augmentation_repeats_for_a_seed_and_keeps_boxes_inside() -> None:
    import numpy as np

    from dal.trainer.data import training_augmentation

    image = np.random.default_rng(0).integers(0, 255, (96, 160, 3), dtype=np.uint8)
    boxes = np.array([[10, 10, 60, 60], [100, 40, 150, 90]], np.float32)
    runs = []
    for _ in range(2):
        augment = training_augmentation(seed=3)
        runs.append([augment(image=image, bboxes=boxes, labels=np.array([1, 2])) for _ in range(5)])
    for first, second in zip(*runs, strict=True):
        assert np.array_equal(first["image"], second["image"])
        out = np.asarray(first["bboxes"]).reshape(-1, 4)
        assert (out[:, :2] >= 0).all() and (out[:, 2] <= 160).all() and (out[:, 3] <= 96).all()
