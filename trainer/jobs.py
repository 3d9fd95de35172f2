"""The fine-tune job: labelled samples -> train -> evaluate -> gate -> export -> verify -> sign.

One straight line (`run_finetune`), each step a small function:

1. snapshot the labelled samples into a COCO file (optionally merged with the synthetic set);
2. fine-tune from the current model's checkpoint (`dal.trainer.train.train`), keeping the epoch
   with the best AP on the fixed validation set;
3. the current model's AP on the same set (cached in the registry per validation-file sha256,
   evaluated with the same test-time settings as the candidate);
4. the gate: promote only if candidate AP ≥ current AP - tolerance; otherwise `rejected`;
5. release: export to ONNX, check torch/onnxruntime parity on validation images, sign the
   manifest with the trainer's Ed25519 key; a failure marks the model `failed`;
6. promote in the registry. Publishing is the service's job: it publishes whatever the
   registry says is current.

Only one job runs at a time, across processes too (an flock on `jobs/.lock`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from dal.coco import CocoDataset, ImageRecord, load_coco, merge, write_coco
from dal.errors import ConfigError, DalError, DatasetError, ModelError
from dal.fileio import atomic_write_json, sha256_file
from dal.link import build_manifest
from dal.link.signing import key_id, load_private_key
from dal.lockfile import held_if_free
from dal.trainer.config import TrainerConfig, optional_path, resolve_path
from dal.trainer.registry import ModelRecord, Registry
from dal.trainer.store import SampleStore

logger = logging.getLogger(__name__)

PROMOTED, REJECTED, FAILED, SKIPPED = "promoted", "rejected", "failed", "skipped"


@dataclass(frozen=True)
class JobResult:
    """What one job did; written to the job folder as result.json."""

    outcome: str  # promoted | rejected | failed | skipped
    reason: str
    version: str | None = None
    candidate_ap: float | None = None
    current_ap: float | None = None
    current_version: str | None = None
    labelled: int = 0
    label_revision: int = 0
    seconds: float = 0.0
    folder: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class JobContext:
    """Everything a job touches; the service and `dal trainer finetune` build one."""

    config: TrainerConfig
    store: SampleStore
    registry: Registry
    stop: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def open(cls, config: TrainerConfig) -> JobContext:
        """Open the store and the registry of `config` (for the CLI; close() after)."""
        store = SampleStore(resolve_path(config, config.ingest.dir), config.ingest.synchronous)
        return cls(config, store, Registry(resolve_path(config, config.models.dir)))

    def close(self) -> None:
        self.store.close()
        self.registry.close()

    def __enter__(self) -> JobContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def class_names(self) -> tuple[str, ...]:
        """The current model's classes (empty before the first model)."""
        current = self.registry.current()
        return current.class_names if current else ()

    @property
    def jobs_dir(self) -> Path:
        return resolve_path(self.config, Path("jobs"))

    @property
    def models_dir(self) -> Path:
        return resolve_path(self.config, self.config.models.dir)


# ---------------------------------------------------------------------------------------------
# pure parts


def gate(
    candidate_ap: float, current_ap: float, tolerance: float, relative: float = 0.0
) -> tuple[bool, str]:
    """The promotion rule: not worse than the current model by more than the larger of
    `tolerance` (AP points) and `relative` times the current AP.

    A relative margin scales with the model: 0.02 AP is noise at AP 0.6 but half of AP 0.04."""
    margin = max(tolerance, relative * current_ap)
    threshold = current_ap - margin
    ok = candidate_ap >= threshold
    why = (
        f"{'promoted' if ok else 'refused'}: candidate AP {candidate_ap:.4f} "
        f"{'≥' if ok else '<'} {threshold:.4f} = current {current_ap:.4f} - margin {margin:.4f} "
        f"(larger of tolerance {tolerance:g} and {relative:.0%} of the current AP)"
    )
    return ok, why


def last_trained_revision(registry: Registry) -> int:
    """The newest label revision any registered model was trained on."""
    revisions = [int(r.training.get("label_revision", 0)) for r in registry.list()]
    return max(revisions, default=0)


# ---------------------------------------------------------------------------------------------
# steps


@contextlib.contextmanager
def job_lock(folder: Path) -> Iterator[bool]:
    """Hold the one-job-at-a-time lock if free; yields whether it was taken."""
    folder.mkdir(parents=True, exist_ok=True)
    with held_if_free(folder / ".lock") as free:
        yield free


def real_dataset(
    store: SampleStore, class_names: tuple[str, ...], json_path: Path, first_id: int = 1
) -> tuple[CocoDataset, dict[str, Any]]:
    """The labelled samples as a COCO dataset rooted at the store folder.

    Samples whose labels use a class the model does not know are left out (and counted):
    dropping only those boxes would teach the model that the object is background."""
    cat_of = {name: i + 1 for i, name in enumerate(class_names)}
    labels = store.labels()
    records: list[ImageRecord] = []
    skipped: list[str] = []
    next_ann = 1
    for sample in store.samples(labelled=True):
        label = labels[sample.sample_id]
        unknown = [c for c in label.classes if c not in cat_of]
        if unknown or not sample.width or not sample.height:
            skipped.append(sample.sample_id)
            logger.warning(
                "sample %s left out of training: %s",
                sample.sample_id,
                f"classes {unknown} unknown to the model" if unknown else "unreadable image",
            )
            continue
        n = len(label.classes)
        records.append(
            ImageRecord(
                id=first_id + len(records),
                file_name=sample.path.relative_to(store.folder).as_posix(),
                width=sample.width,
                height=sample.height,
                boxes=label.boxes.astype("float32"),
                category_ids=np.asarray([cat_of[c] for c in label.classes]),
                annotation_ids=list(range(next_ann, next_ann + n)),
                extra={"dal_sample_id": sample.sample_id},
            )
        )
        next_ann += n
    dataset = CocoDataset(
        json_path=json_path,
        image_root=store.folder,
        categories={i + 1: name for i, name in enumerate(class_names)},
        images=records,
    )
    summary = {
        "real_images": len(records),
        "real_boxes": next_ann - 1,
        "skipped_samples": skipped,
        "sample_ids": [r.extra["dal_sample_id"] for r in records],
    }
    return dataset, summary


def training_set(
    ctx: JobContext, class_names: tuple[str, ...], job_dir: Path
) -> tuple[Path, Path, dict[str, Any]]:
    """Write the job's training COCO file; returns (json, image root, data summary)."""
    ft = ctx.config.finetune
    synthetic_path = optional_path(ctx.config, ft.synthetic)
    json_path = job_dir / "train.json"
    if synthetic_path is None:
        real, summary = real_dataset(ctx.store, class_names, json_path)
        write_coco(real, json_path)
        return json_path, ctx.store.folder, {**summary, "synthetic_images": 0}
    synthetic = load_coco(synthetic_path, optional_path(ctx.config, ft.synthetic_images))
    if synthetic.class_names != list(class_names):
        raise DatasetError(
            f"{synthetic_path}: classes {synthetic.class_names} (by category id) differ from the "
            f"model's {list(class_names)}",
            hint="the synthetic set must use the model's class names in the same order",
        )
    first_id = max((rec.id for rec in synthetic.images), default=0) + 1
    real, summary = real_dataset(ctx.store, class_names, json_path, first_id)
    real = dataclasses.replace(real, categories=dict(synthetic.categories))
    to_syn = dict(zip(range(1, len(class_names) + 1), sorted(synthetic.categories), strict=True))
    real.images = [
        dataclasses.replace(
            rec, category_ids=np.asarray([to_syn[int(c)] for c in rec.category_ids])
        )
        for rec in real.images
    ]
    # The one folder holding both image sets: file names never climb out of the image root.
    root = Path(os.path.commonpath([synthetic.image_root.resolve(), ctx.store.folder.resolve()]))
    merged = merge([synthetic, real], image_root=root, json_path=json_path)
    write_coco(merged, json_path)
    summary["synthetic"] = str(synthetic_path)
    summary["synthetic_images"] = len(synthetic.images)
    return json_path, root, summary


def evaluate_checkpoint(checkpoint: Path, val: CocoDataset, device: str = "auto") -> dict[str, Any]:
    """AP, AP50, AP75 of a checkpoint on the validation set, with train()'s test settings
    (both sides of the gate are measured alike)."""
    from dal.trainer.checkpoint import load_checkpoint
    from dal.trainer.detector import set_test_proposals
    from dal.trainer.device import resolve_device
    from dal.trainer.evaluate import evaluate, torch_predictor
    from dal.trainer.train import SCORE_THRESHOLD, TEST_PROPOSALS

    ckpt = load_checkpoint(checkpoint)
    model = ckpt.build()
    model.roi_heads.score_thresh = SCORE_THRESHOLD
    set_test_proposals(model, TEST_PROPOSALS, TEST_PROPOSALS)
    predictor = torch_predictor(model, resolve_device(device))
    metrics, _ = evaluate(predictor, val, list(ckpt.config.class_names), progress=False)
    return {k: metrics[k] for k in ("AP", "AP50", "AP75")}


def current_metrics(
    registry: Registry, record: ModelRecord, val: CocoDataset, val_sha: str, device: str = "auto"
) -> dict[str, Any]:
    """The model's metrics on this validation file: cached by its sha256, else evaluated now."""
    if record.metrics.get("val_sha256") == val_sha and record.ap is not None:
        return record.metrics
    logger.info("evaluating model %s on the validation set", record.version)
    metrics = {**evaluate_checkpoint(record.checkpoint, val, device), "val_sha256": val_sha}
    return registry.update(record.version, metrics=metrics).metrics


def release(ctx: JobContext, version: str) -> ModelRecord:
    """Export to ONNX, check parity with torch, sign the manifest; stored in the registry.
    Already released with the current key: nothing to do."""
    from dal.exporter.export import export_onnx, verify
    from dal.trainer.checkpoint import load_checkpoint

    record = ctx.registry.require(version)
    key = load_private_key(resolve_path(ctx.config, ctx.config.models.private_key))
    if (
        record.onnx is not None
        and record.onnx.is_file()
        and record.manifest is not None
        and record.manifest.key_id == key_id(key.public_key())
        and record.manifest.sha256 == sha256_file(record.onnx)
    ):
        return record
    ckpt = load_checkpoint(record.checkpoint)
    onnx_path = export_onnx(ckpt, ctx.models_dir / f"{version}.onnx")
    report = verify(ckpt, onnx_path, _verify_images(ctx, ckpt.config))
    if not report["ok"]:
        raise ModelError(
            f"model {version}: onnxruntime disagrees with torch ({report})",
            hint="the export is not deployed; report it with the checkpoint",
        )
    manifest = build_manifest(
        onnx_path,
        version,
        key,
        chunk_size=ctx.config.mqtt.chunk_kib * 1024,
        filename=onnx_path.name,
        parent_version=record.parent,
        meta={
            "AP": record.metrics.get("AP"),
            "val_sha256": record.metrics.get("val_sha256"),
            "classes": list(record.class_names),
            "labelled": record.training.get("real_images"),
        },
    )
    metrics = {"parity": {k: v for k, v in report.items() if k != "ok"}}
    return ctx.registry.update(version, onnx=onnx_path, manifest=manifest, metrics=metrics)


def _verify_images(ctx: JobContext, config: Any) -> list:
    """Validation images (or labelled samples without one) at the model's input size."""
    from dal.exporter.export import load_images_at_input_size

    n = ctx.config.finetune.verify_images
    val_path = optional_path(ctx.config, ctx.config.finetune.val)
    if val_path is not None:
        val = load_coco(val_path, optional_path(ctx.config, ctx.config.finetune.val_images))
        paths = [val.image_path(rec) for rec in val.images[:n]]
    else:
        paths = [s.path for s in ctx.store.samples()[:n] if s.width]
    if not paths:
        raise ConfigError(
            "no images to check the ONNX export with",
            hint="set [finetune] val (a validation COCO file)",
        )
    return load_images_at_input_size(paths, config.input_width, config.input_height)


def register_checkpoint(
    ctx: JobContext, checkpoint: Path, reason: str, parent: str | None = None
) -> ModelRecord:
    """Copy a checkpoint into the models folder and register it as a candidate."""
    from dal.trainer.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    version = ckpt.version or f"initial-{sha256_file(checkpoint)[:12]}"
    known = ctx.registry.get(version)
    if known is not None:
        return known
    target = ctx.models_dir / f"{version}.pt"
    ctx.models_dir.mkdir(parents=True, exist_ok=True)
    if checkpoint.resolve() != target.resolve():
        shutil.copyfile(checkpoint, target)
    record = ModelRecord(
        version=version,
        checkpoint=target,
        class_names=tuple(ckpt.config.class_names),
        parent=parent if parent is not None else (ckpt.parent_version or None),
        training={"summary": _plain(ckpt.training_summary), "source": str(checkpoint)},
        reason=reason,
    )
    return ctx.registry.add(record)


def _plain(value: Any) -> Any:
    """JSON-safe copy (training summaries hold Paths and settings)."""
    return json.loads(json.dumps(value, default=str))


def adopt_initial(ctx: JobContext, checkpoint: Path) -> ModelRecord:
    """Register, release and promote the first model (e.g. the synthetic M0)."""
    record = register_checkpoint(ctx, checkpoint, "initial model from the config")
    val_path = optional_path(ctx.config, ctx.config.finetune.val)
    if val_path is not None:  # its AP goes into the manifest and the first gate needs it
        val = load_coco(val_path, optional_path(ctx.config, ctx.config.finetune.val_images))
        current_metrics(
            ctx.registry, record, val, sha256_file(val_path), ctx.config.finetune.device
        )
    release(ctx, record.version)
    return ctx.registry.promote(record.version, "initial model")


# ---------------------------------------------------------------------------------------------
# the job


def finetune_settings(
    config: TrainerConfig,
    train_json: Path,
    train_images: Path | None,
    init: Path,
    out: Path,
    extra_summary: dict[str, Any] | None = None,
):
    """The TrainSettings of a fine-tune job; `dal demo`'s random baseline uses the same."""
    from dal.trainer.train import TrainSettings

    ft = config.finetune
    return TrainSettings(
        train=train_json,
        train_images=train_images,
        val=optional_path(config, ft.val),
        val_images=optional_path(config, ft.val_images),
        out=out,
        init=init,
        backbone_weights="none",
        epochs=ft.epochs,
        min_steps=ft.min_steps,
        device=ft.device,
        amp={"auto": None, "on": True, "off": False}[ft.amp],
        batch_size=ft.batch_size,
        lr=ft.lr or None,
        patience=ft.patience,
        augment=ft.augment,
        seed=ft.seed,
        workers=ft.workers,
        max_steps_per_epoch=ft.max_steps_per_epoch or None,
        progress=False,
        extra_summary=extra_summary or {},
    )


def _train(
    ctx: JobContext,
    current: ModelRecord,
    train_json: Path,
    root: Path,
    job_dir: Path,
    summary: dict[str, Any],
):
    from dal.trainer.device import set_cpu_threads
    from dal.trainer.train import train

    set_cpu_threads(ctx.config.finetune.threads or None)
    extra = {"label_revision": summary["label_revision"], "job": job_dir.name}
    return train(
        finetune_settings(ctx.config, train_json, root, current.checkpoint, job_dir / "run", extra)
    )


def last_job_result(ctx: JobContext) -> dict[str, Any] | None:
    """The newest job's result.json, if any job ran."""
    results = sorted(ctx.jobs_dir.glob("*/result.json"))
    if not results:
        return None
    try:
        return json.loads(results[-1].read_text())
    except (OSError, ValueError) as err:
        logger.warning("cannot read %s: %s", results[-1], err)
        return None


def _skip(reason: str, **fields: Any) -> JobResult:
    logger.info("fine-tune job skipped: %s", reason)
    return JobResult(SKIPPED, reason, **fields)


def run_finetune(ctx: JobContext, force: bool = False) -> JobResult:
    """Run one job now (see the module docstring); `force` trains even without new labels."""
    with job_lock(ctx.jobs_dir) as got:
        if not got:
            return _skip("another fine-tune job is running")
        started = time.monotonic()
        result = _run_locked(ctx, force)
        result = dataclasses.replace(result, seconds=round(time.monotonic() - started, 2))
        if result.folder:
            atomic_write_json(Path(result.folder) / "result.json", result.to_dict())
        logger.info("fine-tune job: %s (%s)", result.outcome, result.reason)
        return result


def _run_locked(ctx: JobContext, force: bool) -> JobResult:
    current = ctx.registry.current()
    if current is None:
        return _skip("no current model to fine-tune from (set [models] initial_checkpoint)")
    val_path = optional_path(ctx.config, ctx.config.finetune.val)
    if val_path is None:
        return _skip("no validation set: set [finetune] val")
    revision = ctx.store.label_revision()
    if not force and revision <= last_trained_revision(ctx.registry):
        return _skip("no new labels since the last job", label_revision=revision)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    job_dir = ctx.jobs_dir / stamp
    job_dir.mkdir(parents=True, exist_ok=True)
    common: dict[str, Any] = {
        "label_revision": revision,
        "current_version": current.version,
        "folder": str(job_dir),
    }
    try:
        train_json, root, data = training_set(ctx, current.class_names, job_dir)
        common["labelled"] = data["real_images"]
        if data["real_images"] == 0:
            return _skip("no labelled samples the model can learn from", **common)
        val = load_coco(val_path, optional_path(ctx.config, ctx.config.finetune.val_images))
        val_sha = sha256_file(val_path)
        data["label_revision"] = revision
        trained = _train(ctx, current, train_json, root, job_dir, data)
    except DalError as err:
        logger.error("fine-tune job failed before a model existed: %s", err)
        return JobResult(FAILED, str(err), **common)
    if ctx.stop.is_set():
        return JobResult(FAILED, "stopped while training", **common)
    candidate = _register_candidate(ctx, current, trained, data, val_sha)
    return _gate_and_release(ctx, current, candidate, val, val_sha, common)


def _register_candidate(
    ctx: JobContext, current: ModelRecord, trained: Any, data: dict[str, Any], val_sha: str
) -> ModelRecord:
    ctx.models_dir.mkdir(parents=True, exist_ok=True)
    target = ctx.models_dir / f"{trained.version}.pt"
    shutil.copyfile(trained.best_path, target)
    training = {k: v for k, v in data.items() if k != "sample_ids"}
    training["samples"] = data["sample_ids"]
    training["epochs"] = trained.epochs_run
    training["history"] = trained.history
    return ctx.registry.add(
        ModelRecord(
            version=trained.version,
            checkpoint=target,
            class_names=current.class_names,
            parent=current.version,
            metrics={"AP": trained.best_ap, "val_sha256": val_sha},
            training=_plain(training),
            reason="fine-tune job",
        )
    )


def _gate_and_release(
    ctx: JobContext,
    current: ModelRecord,
    candidate: ModelRecord,
    val: CocoDataset,
    val_sha: str,
    common: dict[str, Any],
) -> JobResult:
    version = candidate.version
    fields = {**common, "version": version, "candidate_ap": candidate.ap}
    try:
        cur = current_metrics(ctx.registry, current, val, val_sha, ctx.config.finetune.device)
    except DalError as err:
        ctx.registry.mark(version, "failed", f"could not evaluate the current model: {err}")
        return JobResult(FAILED, str(err), **fields)
    fields["current_ap"] = cur["AP"]
    ft = ctx.config.finetune
    ok, why = gate(candidate.ap or 0.0, cur["AP"], ft.tolerance, ft.relative_tolerance)
    logger.info("promotion gate: %s", why)
    if not ok:
        ctx.registry.mark(version, "rejected", why)
        return JobResult(REJECTED, why, **fields)
    try:
        release(ctx, version)
    except DalError as err:
        ctx.registry.mark(version, "failed", str(err))
        return JobResult(FAILED, str(err), **fields)
    ctx.registry.promote(version, why)
    return JobResult(PROMOTED, why, **fields)
