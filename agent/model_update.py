"""Which model the agent runs: verified hot swaps with rollback (files: agent/model_store.py).

An update (`ModelManager.apply_update`) is refused unless every step passes, and the old
model keeps serving meanwhile: the manifest's Ed25519 signature and the file's sha256 (again:
the file sat on disk), onnxruntime loads it and it follows the detector contract, the model's
own version equals the manifest's, and a smoke test on pooled images gives sane outputs
(finite, probabilities that sum to one, labels in range, a non-zero feature) within the
latency bound, and its class names are the running model's (unless the manifest says they
change). The smoke test stops at the first image that settles the latency verdict, and gives
way when a newer download is waiting. Only then is it swapped in, under the inference lock.
The previous detector stays loaded for `probation_frames` inferences: a model error in that
window rolls back to it at once. `UpdateWorker` is the agent's update worker: downloads wait in
its queue and are applied one at a time, smoke-tested on the pool's most informative images.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from dal.agent.config import DetectorConfig
from dal.agent.detector import Detections, Detector
from dal.agent.model_store import ModelStore
from dal.agent.pool import Pool, decode_jpeg
from dal.errors import DalError, LinkError, ModelError, StorageError
from dal.fileio import sha256_file
from dal.link.messages import META_CLASSES_CHANGED, ModelManifest
from dal.link.signing import verify_model_file

logger = logging.getLogger(__name__)

ReportFn = Callable[[str, str, dict[str, Any]], None]  # (event kind, message, data)

PROB_TOLERANCE = 1e-3


# ---------------------------------------------------------------------------------------------
# smoke test


def output_problem(d: Detections, num_classes: int) -> str | None:
    """What is insane about one inference's outputs, or None. Pure."""
    arrays = {"boxes": d.boxes, "scores": d.scores, "probs": d.probs, "feature": d.feature}
    for name, values in arrays.items():
        if not np.isfinite(values).all():
            return f"{name} contain NaN or infinity"
    if len(d):
        if d.probs.min() < -PROB_TOLERANCE or d.probs.max() > 1 + PROB_TOLERANCE:
            return "probs outside [0, 1]"
        sums = d.probs.sum(axis=1)
        if np.abs(sums - 1.0).max() > PROB_TOLERANCE:
            return f"probability rows sum to {float(sums.min()):.4f}..{float(sums.max()):.4f}"
        if d.labels.min() < 1 or d.labels.max() > num_classes:
            return f"labels outside 1..{num_classes}"
        if d.scores.min() < -PROB_TOLERANCE or d.scores.max() > 1 + PROB_TOLERANCE:
            return "scores outside [0, 1]"
    return None


@dataclass(frozen=True)
class SmokeReport:
    images: int
    median_latency_s: float
    detections: int


class SmokeTestCancelledError(Exception):
    """The smoke test gave way (a newer download, the agent stopping): no verdict on the model."""


# One image this many times over the latency bound decides at once: a 16 s model under a
# 0.5 s bound is refused after its first image, not after eight.
HARD_LATENCY_FACTOR = 4.0


def latency_verdict(latencies: Sequence[float], total: int, max_latency_s: float) -> str | None:
    """Why the smoke test's latency check has already failed after `latencies` of `total`
    images, or None while it can still pass. Pure."""
    if latencies and latencies[-1] > HARD_LATENCY_FACTOR * max_latency_s:
        return (
            f"image {len(latencies)} of {total} took {latencies[-1]:.3f} s, over "
            f"{HARD_LATENCY_FACTOR:g}x the bound {max_latency_s:g} s"
        )
    over = sum(1 for t in latencies if t > max_latency_s)
    if over > total // 2:  # the median of all `total` is over the bound whatever the rest take
        return (
            f"{over} of {total} images took longer than the bound {max_latency_s:g} s: "
            "the median cannot pass"
        )
    return None


def smoke_test(
    detector: Detector,
    images: Sequence[np.ndarray],
    max_latency_s: float,
    cancelled: Callable[[], bool] = lambda: False,
) -> SmokeReport:
    """Run `detector` on `images` (a grey frame if there are none); ModelError says what failed.
    It stops as soon as the latency verdict is certain, and raises SmokeTestCancelledError before
    an image when `cancelled()` says the result is no longer wanted."""
    if not images:
        w, h = detector.info.input_size
        images = [np.full((h, w, 3), 114, np.uint8)]
    latencies: list[float] = []
    boxes = 0
    feature_seen = False
    slow = "raise [update] max_latency_s, or publish a lighter model"
    for i, image in enumerate(images):
        if cancelled():
            raise SmokeTestCancelledError(f"stopped before image {i + 1} of {len(images)}")
        d = detector.detect(image)
        problem = output_problem(d, detector.info.num_classes)
        if problem:
            raise ModelError(f"smoke test image {i}: {problem}")
        latencies.append(d.latency_s)
        boxes += len(d)
        feature_seen = feature_seen or bool(np.any(d.feature))
        verdict = latency_verdict(latencies, len(images), max_latency_s)
        if verdict:
            raise ModelError(f"smoke test: {verdict}", hint=slow)
    if not feature_seen:
        raise ModelError("smoke test: the feature is all zeros on every image")
    median = statistics.median(latencies)
    if median > max_latency_s:
        raise ModelError(
            f"smoke test: median latency {median:.3f} s exceeds the bound {max_latency_s:g} s",
            hint=slow,
        )
    return SmokeReport(len(images), median, boxes)


# ---------------------------------------------------------------------------------------------
# the model in use


@dataclass(frozen=True, eq=False)
class ActiveModel:
    detector: Detector
    version: str
    path: Path

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.detector.info.class_names


@dataclass(frozen=True)
class UpdateOutcome:
    ok: bool
    version: str
    message: str
    data: dict[str, Any]


class ModelManager:
    """The active model, swaps and rollbacks. `infer` is the only way frames reach a model."""

    def __init__(
        self,
        store: ModelStore,
        detector_config: DetectorConfig,
        *,
        public_key: Ed25519PublicKey | None = None,
        max_latency_s: float = 5.0,
        probation_frames: int = 20,
        report: ReportFn | None = None,
    ) -> None:
        self.store = store
        self.detector_config = detector_config
        self.public_key = public_key
        self.max_latency_s = max_latency_s
        self.probation_frames = probation_frames
        self._report = report or (lambda kind, message, data: None)
        self._lock = threading.RLock()  # one inference at a time; swaps wait for it
        self._active: ActiveModel | None = None
        self._previous: ActiveModel | None = None  # kept loaded during probation
        self._probation_left = 0
        self.last_outcome: dict[str, Any] | None = None
        self.changed = threading.Event()  # set on every swap/rollback (the pool gets rescored)

    # -- state ---------------------------------------------------------------------------------

    @property
    def active(self) -> ActiveModel | None:
        return self._active

    @property
    def version(self) -> str | None:
        active = self._active
        return active.version if active else None

    @property
    def probation_left(self) -> int:
        """Inferences the active model still has to pass (0: passed, or no probation)."""
        return self._probation_left

    def _load(self, path: Path) -> Detector:
        return Detector.from_config(path, self.detector_config)

    def load_initial(self, configured: Path | None) -> ActiveModel | None:
        """Start-up: a newly configured `[detector] model` wins, else the store's current
        model (falling back to previous when it no longer loads); None when there is none."""
        if configured is not None and self.store.configured_changed(configured):
            detector = self._load(configured)
            version = detector.info.version
            path = self.store.install(configured, version)
            self.store.activate(version)
            self.store.remember_configured(configured)
            logger.info("imported configured model %s as version %s", configured, version)
            self._active = ActiveModel(detector, version, path)
            return self._active
        current = self.store.current()
        if current is None:
            return None
        try:
            detector = self._load(current)
        except ModelError as err:
            previous = self.store.rollback()
            if previous is None:
                raise
            logger.error("current model %s does not load (%s); rolled back", current, err)
            self._report("model_rolled_back", str(err), {"failed": current.stem})
            detector = self._load(previous)
            current = previous
        self._active = ActiveModel(detector, detector.info.version, current)
        return self._active

    # -- inference -----------------------------------------------------------------------------

    def infer(self, image: np.ndarray) -> tuple[Detections, ActiveModel]:
        """Detections from the active model; a failure in probation rolls back, then re-raises."""
        with self._lock:
            active = self._active
            if active is None:
                raise ModelError("no model loaded yet", hint="set [detector] model or push one")
            try:
                detections = active.detector.detect(image)
            except ModelError as err:
                if self._probation_left > 0 and self._previous is not None:
                    self._roll_back(f"failed in probation: {err}")
                raise
            if self._probation_left > 0:
                self._probation_left -= 1
                if self._probation_left == 0:
                    self._end_probation()
            return detections, active

    def _end_probation(self) -> None:
        previous, self._previous = self._previous, None
        if previous is not None:
            previous.detector.close()
            logger.info("model %s passed probation", self.version)

    def _roll_back(self, reason: str) -> None:
        """Back to the previous model (lock held)."""
        failed, previous = self._active, self._previous
        if failed is None or previous is None:
            return
        try:
            self.store.rollback()
        except OSError as err:
            logger.error("model store rollback failed: %s", err)
        self.store.refuse(failed.version, sha256_file(failed.path), reason)
        self._active, self._previous, self._probation_left = previous, None, 0
        failed.detector.close()
        logger.error("model %s rolled back to %s: %s", failed.version, previous.version, reason)
        self._outcome(False, failed.version, reason, {"restored": previous.version})
        self._report(
            "model_rolled_back",
            f"model {failed.version} rolled back to {previous.version}: {reason}",
            {"version": failed.version, "restored": previous.version, "reason": reason},
        )
        self.changed.set()

    # -- updates -------------------------------------------------------------------------------

    def wants(self, manifest: ModelManifest) -> bool:
        """Download this manifest? Not the version in use, not one refused before."""
        if manifest.version == self.version:
            return False
        return not self.store.is_refused(manifest.version, manifest.sha256)

    def _outcome(self, ok: bool, version: str, message: str, data: dict[str, Any]) -> None:
        self.last_outcome = {"ok": ok, "version": version, "message": message, "time": time.time()}
        self.last_outcome.update(data)

    def refuse(self, manifest: ModelManifest, reason: str) -> UpdateOutcome:
        """Record and report a refused model (also for download failures)."""
        self.store.refuse(manifest.version, manifest.sha256, reason)
        logger.warning("model %s refused: %s", manifest.version, reason)
        data = {"version": manifest.version, "reason": reason, "running": self.version}
        self._outcome(False, manifest.version, reason, data)
        self._report("model_refused", f"model {manifest.version} refused: {reason}", data)
        return UpdateOutcome(False, manifest.version, reason, data)

    def _verify(self, manifest: ModelManifest, path: Path) -> None:
        if self.public_key is None:
            raise LinkError("no trusted public key configured", hint="set [update] public_key")
        verify_model_file(manifest, path, self.public_key)

    def _check_classes(self, manifest: ModelManifest, detector: Detector) -> None:
        """Other class names (even as many) would silently relabel every detection: refused
        unless the signed manifest says the change is meant (meta classes_changed: true)."""
        active = self._active
        new = detector.info.class_names
        if active is None or new == active.class_names:
            return
        if manifest.meta.get(META_CLASSES_CHANGED) is True:
            logger.warning(
                "model %s changes the classes %s -> %s, as its manifest says",
                manifest.version,
                list(active.class_names),
                list(new),
            )
            return
        raise ModelError(
            f"its classes {list(new)} differ from the running model's {list(active.class_names)}",
            hint=f"if the change is meant, publish it with meta {META_CLASSES_CHANGED}: true",
        )

    def _candidate(
        self,
        manifest: ModelManifest,
        path: Path,
        images: Sequence[np.ndarray],
        cancelled: Callable[[], bool],
    ) -> tuple[Detector, SmokeReport]:
        detector = self._load(path)
        try:
            if detector.info.version != manifest.version:
                raise ModelError(
                    f"the model's metadata says version {detector.info.version!r}, the "
                    f"manifest {manifest.version!r}",
                    hint="publish the model under its own version",
                )
            self._check_classes(manifest, detector)
            report = smoke_test(detector, images, self.max_latency_s, cancelled)
        except BaseException:
            detector.close()
            raise
        return detector, report

    def _superseded(self, manifest: ModelManifest, why: str) -> UpdateOutcome:
        """A check that gave way: nothing is refused, the model may be offered again."""
        message = f"check of model {manifest.version} abandoned ({why}): a newer one waits"
        logger.info("%s", message)
        data = {"version": manifest.version, "running": self.version}
        self._report("model_superseded", message, data)
        return UpdateOutcome(False, manifest.version, message, data)

    def apply_update(
        self,
        manifest: ModelManifest,
        path: Path,
        images: Sequence[np.ndarray],
        cancelled: Callable[[], bool] = lambda: False,
    ) -> UpdateOutcome:
        """Verify, load, smoke-test and swap in a downloaded model; see the module docstring.
        `cancelled()` is asked between smoke images: True abandons the check (no verdict)."""
        try:
            self._verify(manifest, path)
            detector, report = self._candidate(manifest, path, images, cancelled)
        except SmokeTestCancelledError as err:
            with contextlib.suppress(OSError):
                path.unlink()
            return self._superseded(manifest, str(err))
        except (DalError, OSError) as err:
            with contextlib.suppress(OSError):
                path.unlink()
            return self.refuse(manifest, str(err))
        try:
            stored = self.store.install(path, manifest.version, move=True)
            with self._lock:
                self.store.activate(manifest.version)
                old = self._active
                if self._previous is not None:  # a swap during probation: drop the older one
                    self._previous.detector.close()
                self._active = ActiveModel(detector, manifest.version, stored)
                self._previous = old if self.probation_frames > 0 else None
                self._probation_left = self.probation_frames if old is not None else 0
                if old is not None and self._previous is None:
                    old.detector.close()
        except (StorageError, OSError) as err:
            detector.close()
            return self.refuse(manifest, f"cannot install it: {err}")
        previous_version = old.version if old else None
        data = {
            "version": manifest.version,
            "previous": previous_version,
            "smoke_images": report.images,
            "smoke_latency_s": round(report.median_latency_s, 4),
        }
        message = f"model {manifest.version} swapped in (was {previous_version})"
        logger.info("%s; smoke test %s", message, data)
        self._outcome(True, manifest.version, message, data)
        self._report("model_swapped", message, data)
        self.changed.set()
        return UpdateOutcome(True, manifest.version, message, data)

    def close(self) -> None:
        with self._lock:
            for model in (self._active, self._previous):
                if model is not None:
                    model.detector.close()
            self._active = self._previous = None


class UpdateWorker:
    """The agent's update worker: verified downloads wait here and are applied one at a time."""

    def __init__(
        self,
        models: ModelManager,
        pool: Pool,
        *,
        smoke_images: int,
        stop: threading.Event,
        changed: Callable[[], None],
    ) -> None:
        self.models = models
        self.pool = pool
        self.smoke_count = smoke_images
        self._stop = stop
        self._changed = changed  # a status worth publishing now
        self.updates: queue.Queue[tuple[ModelManifest, Path]] = queue.Queue()

    def downloaded(self, manifest: ModelManifest, path: Path) -> None:
        """ModelDownloader's on_complete (a link thread): queue it, apply it on the worker."""
        self.updates.put((manifest, path))

    def failed(self, manifest: ModelManifest, reason: str) -> None:
        """ModelDownloader's on_failed: a bad signature, hash or write is refused like the rest."""
        self.models.refuse(manifest, reason)
        self._changed()

    def smoke_images(self) -> list[np.ndarray]:
        """The most informative pooled images, decoded: what a new model must handle."""
        images = []
        for sample in self.pool.top(self.smoke_count):
            with contextlib.suppress(OSError):
                image = decode_jpeg(sample.jpeg_path.read_bytes())
                if image is not None:
                    images.append(image)
        return images

    def loop(self, beat: Callable[[], None]) -> None:
        while not self._stop.is_set():
            beat()
            try:
                manifest, path = self.updates.get(timeout=0.5)
            except queue.Empty:
                continue
            self.models.apply_update(manifest, path, self.smoke_images(), self._pre_empted)
            self._changed()

    def _pre_empted(self) -> bool:
        """A download that completed meanwhile is the newer model: check that one instead (and
        a stopping agent waits for no smoke test)."""
        return self._stop.is_set() or not self.updates.empty()
