"""The fine-tune job's gate: a candidate worse than the current model is not promoted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from trainer_samples import put_sample

from dal import config as cfg
from dal.coco import load_coco
from dal.errors import DatasetError
from dal.link.signing import generate_keypair
from dal.procedural import make_tiny
from dal.trainer.config import TrainerConfig
from dal.trainer.jobs import (
    REJECTED,
    SKIPPED,
    JobContext,
    adopt_initial,
    gate,
    run_finetune,
    training_set,
)
from dal.trainer.store import Label

CLASSES = ("washer", "l_bracket")


@pytest.mark.parametrize(
    ("candidate", "current", "tolerance", "relative", "promote"),
    [
        (0.50, 0.50, 0.0, 0.0, True),
        (0.49, 0.50, 0.0, 0.0, False),
        (0.49, 0.50, 0.02, 0.0, True),
        (0.47, 0.50, 0.02, 0.0, False),
        (0.0, 0.0, 0.0, 0.0, True),
        (0.48, 0.50, 0.0, 0.05, True),  # 5 % of 0.50 = 0.025
        (0.039, 0.044, 0.0, 0.05, False),  # the demo's case: 5 % of 0.044 is 0.0022
        (0.039, 0.044, 0.02, 0.05, True),  # the larger margin wins
    ],
)
def test_gate(
    candidate: float, current: float, tolerance: float, relative: float, promote: bool
) -> None:
    ok, why = gate(candidate, current, tolerance, relative)
    assert ok is promote
    assert f"{candidate:.4f}" in why and ("≥" if promote else "<") in why
    assert why.startswith("promoted" if promote else "refused")


@pytest.mark.timeout(600)
def test_a_worse_model_is_not_promoted(tiny_model, tmp_path: Path) -> None:
    data = tmp_path / "data"
    generate_keypair(data / "keys/model-signing.key", data / "keys/model-signing.pub")
    config = cfg.from_dict(
        TrainerConfig,
        {
            "trainer": {"data_dir": str(data)},
            "finetune": {
                "val": str(tiny_model.val_json),
                "tolerance": 0.0,
                "epochs": 1,
                "min_steps": 0,  # three steps on the bad labels, as the test means
                "batch_size": 4,
                "max_steps_per_epoch": 3,
                "lr": 0.05,
                "verify_images": 2,
            },
        },
    )
    with JobContext.open(config) as ctx:
        initial = adopt_initial(ctx, tiny_model.checkpoint)
        assert ctx.registry.current().version == initial.version
        # a careless labeller: classes mixed up and every box drawn in the empty top-left corner
        train = load_coco(tiny_model.train_json)
        swap = {"washer": "l_bracket", "l_bracket": "washer"}
        labels = []
        for rec in train.images[:8]:
            header = put_sample(ctx.store, train.image_path(rec).read_bytes(), tmp_path / "spool")
            classes = tuple(swap[train.categories[int(c)]] for c in rec.category_ids)
            wrong = np.tile(np.array([[1, 1, 14, 14]], np.float32), (len(rec.boxes), 1))
            labels.append(Label(header.sample_id, wrong, classes, "coco"))
        ctx.store.set_labels(labels)

        result = run_finetune(ctx)
        assert result.outcome == REJECTED, result
        assert result.candidate_ap < result.current_ap
        assert ctx.registry.current().version == initial.version, "the current model stays"
        candidate = ctx.registry.require(result.version)
        assert candidate.state == "rejected" and "<" in candidate.reason
        assert candidate.parent == initial.version and candidate.onnx is None
        assert candidate.training["real_images"] == 8
        assert (Path(result.folder) / "result.json").is_file()
        # the same labels do not start another job by themselves
        assert run_finetune(ctx, force=False).outcome == SKIPPED


def _context(tmp_path: Path, **finetune: object) -> JobContext:
    config = cfg.from_dict(
        TrainerConfig, {"trainer": {"data_dir": str(tmp_path / "data")}, "finetune": finetune}
    )
    return JobContext.open(config)


def test_the_training_set_mixes_real_labels_with_the_synthetic_set(tmp_path: Path) -> None:
    synthetic = make_tiny(tmp_path / "syn", 3, classes=2, seed=4)
    real = load_coco(make_tiny(tmp_path / "real", 3, classes=2, seed=5))
    with _context(tmp_path, synthetic=str(synthetic)) as ctx:
        labels = []
        for rec, classes in zip(real.images, (("washer",), ("sprocket",), ()), strict=True):
            h = put_sample(ctx.store, real.image_path(rec).read_bytes(), tmp_path / "spool")
            labels.append(Label(h.sample_id, [[1, 2, 30, 40]] * len(classes), classes, "coco"))
        ctx.store.set_labels(labels)
        job_dir = tmp_path / "job"
        job_dir.mkdir()
        path, root, summary = training_set(ctx, CLASSES, job_dir)
        merged = load_coco(path, root)  # every file exists where the file says
        assert len(merged.images) == 3 + 2 and merged.class_names == list(CLASSES)
        assert summary["real_images"] == 2 and summary["synthetic_images"] == 3
        assert summary["skipped_samples"] == [labels[1].sample_id], "unknown class: left out"
        assert sorted(len(r.boxes) for r in merged.images[3:]) == [0, 1]


def test_a_synthetic_set_with_other_classes_is_refused(tmp_path: Path) -> None:
    synthetic = make_tiny(tmp_path / "syn", 1, classes=3, seed=4)
    with (
        _context(tmp_path, synthetic=str(synthetic)) as ctx,
        pytest.raises(DatasetError, match="differ from the model's"),
    ):
        training_set(ctx, CLASSES, tmp_path)
