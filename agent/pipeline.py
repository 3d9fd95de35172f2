"""The frame pipeline: capture -> keep/skip -> infer -> score -> drift statistics -> pool.

Three loops, each a supervised worker (agent/supervisor.py):

    capture  reads the source (reconnecting with back-off) into a small frame queue
    infer    rate limit, inference, score, near-duplicate skip, drift statistics
    store    writes kept frames into the pool (JPEG + fsync + commit beside inference)

Capture and store run at a lower priority than inference ([detector] helper_nice): see
`lower_thread_priority`.

A live source drops the oldest waiting frame when inference falls behind; a recording waits,
so no frame of it is lost. While the pool cannot store (disk full: storage_gate.py) capture
pauses the same way: a live source's frames are dropped and counted, a recording waits; one
frame every probe interval goes through to find out whether space came back.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dal.agent.config import AgentConfig
from dal.agent.cycle import CycleTrigger
from dal.agent.detector import Detections
from dal.agent.model_update import ActiveModel, ModelManager
from dal.agent.outbox import Outbox
from dal.agent.policy import DriftMonitor, KeepPolicy, ReferenceStats
from dal.agent.pool import Pool, Scored
from dal.agent.sources import Frame, ReconnectingSource
from dal.agent.storage_gate import StorageGate
from dal.agent.supervisor import Beat
from dal.errors import ModelError, StorageError
from dal.scoring import image_score

logger = logging.getLogger(__name__)

FRAME_QUEUE = 2
WRITE_QUEUE = 8
DRIFT_REFERENCE = "drift_reference"  # agent_state key: the drift reference of a model


@dataclass(frozen=True, eq=False)
class _Keep:
    """A kept frame on its way to the pool."""

    frame: Frame
    detections: Detections
    model: ActiveModel
    score: float


def lower_thread_priority(nice: int) -> None:
    """Raise the calling thread's nice value by `nice` (Linux: per thread; a no-op elsewhere).

    Why: onnxruntime splits each operator over its threads and waits for the last; a capture or
    store thread that preempts one of them stalls the whole operator. At a higher nice value the
    helpers take the CPU inference leaves idle (it does not keep every core busy) and still
    keep up, since inference waits for them when their queues are full."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError as err:
        logger.info("cannot lower this thread's priority: %s", err)


class RateMeter:
    """Events per second over the last `window` events (0 once they stop for `idle_s`)."""

    def __init__(self, window: int = 64, idle_s: float = 5.0) -> None:
        self._times: collections.deque[float] = collections.deque(maxlen=window)
        self._idle_s = idle_s

    def tick(self) -> None:
        self._times.append(time.monotonic())

    def rate(self) -> float:
        times = list(self._times)
        if len(times) < 2 or time.monotonic() - times[-1] > self._idle_s:
            return 0.0
        return (len(times) - 1) / max(times[-1] - times[0], 1e-9)


@dataclass
class Counters:
    """Pipeline counts since start (status and metrics)."""

    frames: int = 0
    too_soon: int = 0
    no_model: int = 0
    inferred: int = 0
    duplicates: int = 0
    kept: int = 0
    pool_refused: int = 0
    infer_errors: int = 0
    storage_errors: int = 0
    storage_paused: int = 0  # live frames dropped while the pool could not store


class Pipeline:
    """Frames from the source into the pool; see the module docstring."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        source: ReconnectingSource,
        models: ModelManager,
        pool: Pool,
        outbox: Outbox,
        trigger: CycleTrigger,
        stop: threading.Event,
        storage: StorageGate | None = None,
    ) -> None:
        self.config = config
        self.source = source
        self.models = models
        self.pool = pool
        self.outbox = outbox  # the agent_state store: drift references survive restarts
        self.trigger = trigger
        self.stop = stop
        self.storage = storage or StorageGate(config.pool.full_retry_s)
        self.policy = KeepPolicy.from_config(config.policy)
        self.drift = DriftMonitor.from_config(config.drift)
        self.counters = Counters()
        self.fps = RateMeter()
        self.frames: queue.Queue[Frame] = queue.Queue(maxsize=FRAME_QUEUE)
        self._writes: queue.Queue[_Keep] = queue.Queue(maxsize=WRITE_QUEUE)
        self._drift_lock = threading.Lock()
        self._seen_version: str | None = None
        self.on_latency: Callable[[float], None] | None = None  # [metrics]: the histogram

    # -- capture -------------------------------------------------------------------------------

    def capture_loop(self, beat: Beat) -> None:
        lower_thread_priority(self.config.detector.helper_nice)
        while not self.stop.is_set():
            frame = self.source.read()
            beat()
            if frame is None:
                return  # stopped, or the recording ended: the rest of the agent carries on
            if self._storage_allows(beat):
                self._put_frame(frame, beat)

    def _storage_allows(self, beat: Beat) -> bool:
        """While the pool cannot store: drop a live frame, hold a recording's until the next
        probe (none of it is lost). True: pass this frame on."""
        while not self.storage.allow():
            if self.source.live:
                self.counters.storage_paused += 1
                return False
            beat()
            if self.stop.wait(0.2):
                return False
        return True

    def _put_frame(self, frame: Frame, beat: Beat) -> None:
        """Live sources drop the oldest waiting frame; recordings wait (no frame lost)."""
        while not self.stop.is_set():
            try:
                self.frames.put(frame, timeout=0.5)
                return
            except queue.Full:
                beat()
                if self.source.live:
                    with contextlib.suppress(queue.Empty):
                        self.frames.get_nowait()

    # -- inference -----------------------------------------------------------------------------

    def infer_loop(self, beat: Beat) -> None:
        while not self.stop.is_set():
            beat()
            try:
                frame = self.frames.get(timeout=0.5)
            except queue.Empty:
                continue
            self.process(frame, beat)

    def score(self, detections: Detections) -> float:
        s = self.config.scoring
        return image_score(detections.probs, s.method, s.aggregate)

    def rescore_fn(self, image: np.ndarray) -> Scored:
        """What `Pool.rescore` calls for each pooled image: the current model's view of it."""
        detections, model = self.models.infer(image)
        return Scored(
            self.score(detections), detections.feature, detections.to_records(model.class_names)
        )

    def process(self, frame: Frame, beat: Beat | None = None) -> bool:
        """One frame through the pipeline; True when it is kept (handed to the store worker)."""
        c = self.counters
        c.frames += 1
        if not self.policy.due(frame.timestamp):
            c.too_soon += 1
            return False
        if self.models.active is None:
            c.no_model += 1
            return False
        try:
            detections, model = self.models.infer(frame.image)
        except ModelError as err:
            c.infer_errors += 1
            logger.warning("inference failed on frame %d: %s", frame.index, err)
            return False
        c.inferred += 1
        self.fps.tick()
        if self.on_latency is not None:
            self.on_latency(detections.latency_s)
        if model.version != self._seen_version:
            self._model_changed(model.version)
        score = self.score(detections)
        self._update_drift(score, detections.feature)
        if not self.policy.offer(frame.timestamp, detections.feature).keep:
            c.duplicates += 1
            return False
        keep = _Keep(frame, detections, model, score)
        while not self.stop.is_set():
            try:  # the JPEG + fsync + commit happen on the store worker, beside inference
                self._writes.put(keep, timeout=0.5)
                return True
            except queue.Full:
                if beat is not None:
                    beat()
        return False

    # -- drift ---------------------------------------------------------------------------------

    def _model_changed(self, version: str) -> None:
        """Features of a new model are not comparable: fresh duplicate window and drift."""
        self._seen_version = version
        self.policy.reset_features()
        saved = self.outbox.get_state(DRIFT_REFERENCE)
        reference = None
        if isinstance(saved, dict) and saved.get("model_version") == version:
            reference = ReferenceStats.from_dict(saved)
        with self._drift_lock:
            self.drift.reset(reference, version)

    def _update_drift(self, score: float, feature: np.ndarray) -> None:
        if not self.config.drift.enabled:
            return
        with self._drift_lock:
            before = self.drift.reference
            self.drift.update(score, feature)
            reference = self.drift.reference
        if reference is not None and reference is not before:  # calibrated, or settled
            self.outbox.set_state(DRIFT_REFERENCE, reference.to_dict())

    def drifting(self) -> bool:
        return self.drift.last.drift

    def rebase_drift(self) -> None:
        """After a drift cycle the reference moves to the new scene (DriftMonitor.rebase): the
        next drift cycle needs a new shift, not the same one seen again."""
        with self._drift_lock:
            self.drift.rebase()
            reference = self.drift.reference
        if reference is not None:
            self.outbox.set_state(DRIFT_REFERENCE, reference.to_dict())

    # -- store ---------------------------------------------------------------------------------

    def store_loop(self, beat: Beat) -> None:
        lower_thread_priority(self.config.detector.helper_nice)
        while not (self.stop.is_set() and self._writes.empty()):
            beat()
            try:
                keep = self._writes.get(timeout=0.5)
            except queue.Empty:
                continue
            self._store(keep)

    def _store(self, keep: _Keep) -> str | None:
        frame, d, model = keep.frame, keep.detections, keep.model
        try:
            sample_id = self.pool.add(
                capture_time=frame.timestamp,
                source=frame.source_id,
                model_version=model.version,
                score=keep.score,
                feature=d.feature,
                detections=d.to_records(model.class_names),
                image=frame.image,
                ground_truth=frame.ground_truth,
                sample_id=uuid.uuid4().hex,
            )
        except StorageError as err:
            self.counters.storage_errors += 1
            self.storage.failed(err)  # says it once and pauses capture
            return None
        self.storage.stored()
        if sample_id is None:
            self.counters.pool_refused += 1
            return None
        self.counters.kept += 1
        self.trigger.added()
        return sample_id
