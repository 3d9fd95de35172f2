"""The edge daemon: capture -> keep/skip -> infer -> score -> pool -> cycle -> outbox -> MQTT.

Workers (one thread each, supervised like Frigate's watchdog):

    capture  reads the source (reconnecting with back-off) into a small frame queue
    infer    rate limit, inference, score, near-duplicate skip, drift statistics
    store    writes kept frames into the pool (JPEG + fsync + commit beside inference)
    cycle    re-scores the pool after a model change, then starts cycles when one is due
    ship     sends queued samples until the trainer acks them (outbox.Shipper)
    update   verifies, smoke-tests and swaps in downloaded models (model_update.ModelManager)

The supervisor (the thread that calls `run()`, or a thread of its own after `start()`) checks
every `check_s`: a crashed worker is restarted (at most `max_restarts` per window, then the
agent exits with an error for systemd to restart it), a worker silent for `stall_s` stops the
systemd watchdog pings, and status, metrics, events and `data_dir/status.json` go out.

In-process use (tests, the demo):

    daemon = AgentDaemon(load_agent_config("agent.toml")).start()
    ...
    daemon.stop()
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dal.agent.config import AgentConfig, agent_id, resolve_path
from dal.agent.cycle import COMMAND, DRIFT, CycleTrigger, QuerySettings, run_cycle
from dal.agent.detector import Detections
from dal.agent.model_update import ActiveModel, ModelManager, ModelStore
from dal.agent.outbox import Outbox, Shipper
from dal.agent.policy import DriftMonitor, DriftReport, KeepPolicy, ReferenceStats
from dal.agent.pool import Pool, Scored, decode_jpeg
from dal.agent.sources import Frame, ReconnectingSource, open_source
from dal.agent.sources.reconnect import CONNECTED, ENDED, RECONNECTING
from dal.agent.sources.video import is_live
from dal.config import to_dict
from dal.errors import ConfigError, DalError, DependencyError, LinkError, ModelError, StorageError
from dal.fileio import atomic_write_json
from dal.link import (
    AckWaiter,
    AgentStatus,
    Command,
    Event,
    Link,
    Metrics,
    ModelDownloader,
    ModelManifest,
    TransferSender,
    agent_will,
)
from dal.link.signing import load_public_key
from dal.notify import Notifier
from dal.scoring import image_score

logger = logging.getLogger(__name__)

STATUS_FILE = "status.json"
FRAME_QUEUE = 2
WRITE_QUEUE = 8
RECENT_EVENTS = 50
PENDING_EVENTS = 500
FATAL = (ConfigError, DependencyError)  # waiting or restarting will not fix these


# ---------------------------------------------------------------------------------------------
# supervision


@dataclass
class Worker:
    """One supervised thread: restarted when it crashes, watched for stalls."""

    name: str
    target: Callable[[], None]
    thread: threading.Thread | None = None
    beat: float = field(default_factory=time.monotonic)
    restarts: collections.deque[float] = field(default_factory=collections.deque)
    error: str | None = None
    fatal: DalError | None = None
    finished: bool = False  # returned by itself (a recording ended)
    stalled: bool = False

    def start(self) -> None:
        self.beat = time.monotonic()
        self.error = None
        self.thread = threading.Thread(target=self._main, name=f"agent-{self.name}", daemon=True)
        self.thread.start()

    def _main(self) -> None:
        try:
            self.target()
            self.finished = True
        except FATAL as err:
            self.fatal = err
            logger.error("worker %s cannot go on: %s", self.name, err)
        except DalError as err:  # e.g. the camera gone for good: restarted, no traceback
            self.error = str(err)
            logger.error("worker %s failed: %s", self.name, err)
        except Exception as err:  # the one broad catch: logged, counted, restarted
            self.error = f"{type(err).__name__}: {err}"
            logger.exception("worker %s crashed", self.name)

    @property
    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def touch(self) -> None:
        self.beat = time.monotonic()

    def summary(self) -> dict[str, Any]:
        return {
            "alive": self.alive,
            "finished": self.finished,
            "restarts": len(self.restarts),
            "error": self.error,
            "stalled": self.stalled,
            "beat_age_s": round(time.monotonic() - self.beat, 2),
        }


@dataclass(frozen=True, eq=False)
class _Keep:
    """A kept frame on its way to the pool."""

    frame: Frame
    detections: Detections
    model: ActiveModel
    score: float


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
    cycles: int = 0
    commands: int = 0


# ---------------------------------------------------------------------------------------------
# the daemon


class AgentDaemon:
    """The whole agent; see the module docstring. Config is read-only; state lives here."""

    def __init__(self, config: AgentConfig, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.agent = agent_id(config)
        self.data_dir = config.agent.data_dir
        self.stop_event = threading.Event()
        self.notifier = Notifier(env)
        self.counters = Counters()
        self.fps = RateMeter()
        self.fatal: DalError | None = None
        self.started_at = time.time()
        self.workers: dict[str, Worker] = {}
        self.frames: queue.Queue[Frame] = queue.Queue(maxsize=FRAME_QUEUE)
        self._writes: queue.Queue[_Keep] = queue.Queue(maxsize=WRITE_QUEUE)
        self.updates: queue.Queue[tuple[ModelManifest, Path]] = queue.Queue()
        self.recent_events: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=RECENT_EVENTS
        )
        self._pending_events: collections.deque[Event] = collections.deque(maxlen=PENDING_EVENTS)
        self._events_lock = threading.Lock()
        self._closers: list[Callable[[], None]] = []
        self._supervisor: threading.Thread | None = None
        self._ship_wake = threading.Event()
        self._rescore_wanted = threading.Event()
        self._drift_lock = threading.Lock()
        self._seen_version: str | None = None
        self._source_seen: tuple[str | None, int] = (None, 0)
        self._status_dirty = threading.Event()
        self._due: dict[str, float] = {}
        self.link: Link | None = None
        self.downloader: ModelDownloader | None = None
        self.shipper: Shipper | None = None
        self.source: ReconnectingSource | None = None

    # -- opening -------------------------------------------------------------------------------

    def _open(self) -> None:
        """Open storage, model, source and link; on failure close what was opened."""
        try:
            self._open_storage()
            self._open_models()
            self._open_pipeline()
            self._open_link()
        except BaseException:
            self._close_all()
            raise

    def _open_storage(self) -> None:
        cfg = self.config
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StorageError(
                f"cannot create [agent] data_dir {self.data_dir}: {err.strerror}",
                hint="create it for the service user, or choose another data_dir",
            ) from None
        self.pool = Pool.from_config(resolve_path(cfg, cfg.pool.dir), cfg.pool)
        self._closers.append(self.pool.close)
        self.outbox = Outbox(self.pool.db_path, self.agent, cfg.pool.synchronous)
        self._closers.append(self.outbox.close)
        scoring = {"method": cfg.scoring.method, "aggregate": cfg.scoring.aggregate}
        if self.outbox.get_state("scoring", scoring) != scoring:
            n = self.outbox.forget_scores()
            logger.info("scoring changed to %s: %d pooled samples will be re-scored", scoring, n)
        self.outbox.set_state("scoring", scoring)

    def _open_models(self) -> None:
        cfg = self.config
        key = None
        if cfg.update.enabled and cfg.update.public_key is not None:
            key = load_public_key(resolve_path(cfg, cfg.update.public_key))
        self.public_key = key
        self.models = ModelManager(
            ModelStore(self.data_dir / "models", cfg.update.keep_previous),
            cfg.detector,
            public_key=key,
            max_latency_s=cfg.update.max_latency_s,
            probation_frames=cfg.update.probation_frames,
            report=self.emit,
        )
        self._closers.append(self.models.close)
        configured = resolve_path(cfg, cfg.detector.model) if cfg.detector.model else None
        if self.models.load_initial(configured) is None:
            logger.warning("no model yet: frames are skipped until one is pushed or configured")

    def _open_pipeline(self) -> None:
        cfg = self.config
        self.policy = KeepPolicy.from_config(cfg.policy)
        self.drift = DriftMonitor.from_config(cfg.drift)
        self.trigger = CycleTrigger(cfg.cycle)
        self.query = self._initial_query()
        self.source = open_source(cfg.source, stop=self.stop_event)
        self._live = cfg.source.kind == "kinect" or is_live(cfg.source.uri)

    def _initial_query(self) -> QuerySettings:
        """The config's query settings, or an operator's set_query made since, while the
        config's own values stay what they were then."""
        base = QuerySettings.from_config(self.config.query)
        saved = self.outbox.get_state("query")
        if isinstance(saved, dict) and saved.get("config") == base.to_dict():
            try:
                return QuerySettings(**saved["settings"])
            except (ConfigError, TypeError) as err:
                logger.warning("ignoring saved query settings: %s", err)
        return base

    def _open_link(self) -> None:
        cfg = self.config
        if not cfg.link.enabled:
            logger.info("link disabled: samples wait in the outbox")
            return
        root = cfg.mqtt.root
        self.link = Link(cfg.mqtt.link_config(self.agent), will=agent_will(self.agent, root))
        acks = AckWaiter(self.link, self.agent, on_ack=self._on_ack)
        sender = TransferSender(self.link, self.agent, acks, window=cfg.link.window)
        self.shipper = Shipper(
            self.outbox,
            self.pool,
            sender,
            chunk_size=cfg.mqtt.chunk_kib * 1024,
            ack_timeout_s=cfg.link.ack_timeout_s,
            attempts=cfg.link.attempts,
            retry_max_s=cfg.link.retry_max_s,
        )
        self.link.subscribe_message(
            self.link.topic("agent_cmd", self.agent), Command, self._on_command
        )
        if cfg.update.enabled and self.public_key is not None:
            self.downloader = ModelDownloader(
                self.link,
                self.agent,
                self.models.store.incoming,
                self.public_key,
                on_complete=self._on_model_downloaded,
                on_failed=self._on_model_failed,
                accept=self.models.wants,
                max_model_bytes=cfg.update.max_model_mb << 20,
            )
        elif cfg.update.enabled:
            logger.warning("[update] public_key is not set: pushed models will not be installed")
        self.link.on_connected(self._on_connected)
        self.link.start(wait_s=None)
        self._closers.append(self.link.stop)
        if self.downloader is not None:
            self.downloader.start()
            self._closers.append(self.downloader.stop)

    def _close_all(self) -> None:
        while self._closers:
            closer = self._closers.pop()
            try:
                closer()
            except (DalError, OSError) as err:
                logger.warning("closing %s failed: %s", closer, err)

    # -- lifecycle -----------------------------------------------------------------------------

    def _start_workers(self) -> None:
        targets = {
            "capture": self._capture_loop,
            "infer": self._infer_loop,
            "store": self._store_loop,
            "cycle": self._cycle_loop,
            "update": self._update_loop,
        }
        if self.shipper is not None:
            targets["ship"] = self._ship_loop
        for name, target in targets.items():
            self.workers[name] = Worker(name, target)
            self.workers[name].start()
        self._rescore_wanted.set()  # finish a rescore a crash interrupted

    def start(self) -> AgentDaemon:
        """Open everything and run the workers and the supervisor in background threads."""
        self._open()
        self._start_workers()
        self._supervisor = threading.Thread(
            target=self._supervise_then_close, name="agent-supervisor", daemon=True
        )
        self._supervisor.start()
        return self

    def run(self) -> None:
        """Open, run until `stop()` (or a signal handler sets stop_event), close. Raises the
        error that stopped the agent, if one did."""
        self._open()
        self._start_workers()
        self._supervise_then_close()
        if self.fatal is not None:
            raise self.fatal

    def stop(self, timeout_s: float = 15.0) -> None:
        self.stop_event.set()
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join(timeout_s)

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the agent stopped (after `start()`); False on timeout."""
        if self._supervisor is None:
            return True
        self._supervisor.join(timeout_s)
        return not self._supervisor.is_alive()

    def __enter__(self) -> AgentDaemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _supervise_then_close(self) -> None:
        try:
            self._supervise()
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        self.stop_event.set()
        self.notifier.stopping()
        for worker in list(self.workers.values()):
            if worker.thread is not None:
                worker.thread.join(10.0)
                if worker.thread.is_alive():
                    logger.warning("worker %s did not stop in time", worker.name)
        if self.source is not None:
            self.source.close()
        self._flush_events()
        if self.workers:  # opened: the status can still be read from the pool
            self._write_status_file("stopped")
        self._close_all()
        self.notifier.close()
        logger.info("agent %s stopped", self.agent)

    # -- supervisor ----------------------------------------------------------------------------

    def _supervise(self) -> None:
        check = self.config.supervisor.check_s
        self._write_status_file("running")
        self.notifier.ready(self._status_line())
        logger.info("agent %s running (model %s)", self.agent, self.models.version)
        self._publish_status()
        while not self.stop_event.wait(check):
            healthy = self._check_workers()
            if self.fatal is not None:
                break
            if healthy:
                self._feed_watchdog()
            try:
                self._report_tick()
            except DalError as err:  # e.g. the database busy for a moment: report next tick
                logger.warning("status report failed: %s", err)

    def _check_workers(self) -> bool:
        """Restart crashed workers; False when one is stuck (the watchdog goes hungry)."""
        cfg = self.config.supervisor
        healthy = True
        now = time.monotonic()
        for worker in list(self.workers.values()):
            if worker.fatal is not None:
                self.fatal = worker.fatal
                return False
            if not worker.alive and not worker.finished:
                while worker.restarts and now - worker.restarts[0] > cfg.restart_window_s:
                    worker.restarts.popleft()
                if len(worker.restarts) >= cfg.max_restarts:
                    self.fatal = DalError(
                        f"worker {worker.name} crashed {len(worker.restarts) + 1} times "
                        f"within {cfg.restart_window_s:g} s: {worker.error}",
                        hint="see the log; systemd restarts the agent",
                    )
                    return False
                worker.restarts.append(now)
                logger.warning("restarting worker %s after: %s", worker.name, worker.error)
                self.emit("worker_restarted", f"{worker.name}: {worker.error}", worker.summary())
                worker.start()
            stalled = worker.alive and now - worker.beat > cfg.stall_s
            if stalled and not worker.stalled:
                logger.error("worker %s silent for %.0f s", worker.name, now - worker.beat)
            worker.stalled = stalled
            healthy = healthy and not stalled
        return healthy

    def _feed_watchdog(self) -> None:
        interval = self.notifier.watchdog_s
        if interval is not None and self._is_due("watchdog", interval / 3):
            self.notifier.watchdog()

    def _is_due(self, name: str, every_s: float) -> bool:
        now = time.monotonic()
        if now - self._due.get(name, -1e18) >= every_s:
            self._due[name] = now
            return True
        return False

    def _report_tick(self) -> None:
        cfg = self.config
        self._watch_source()
        self._flush_events()
        if self._status_dirty.is_set() or self._is_due("status", cfg.link.status_interval_s):
            self._status_dirty.clear()
            self._publish_status()
        if self._is_due("metrics", cfg.link.metrics_interval_s):
            self._publish_metrics()
        if self._is_due("status_file", cfg.supervisor.status_file_s):
            self._write_status_file("running")
            self.notifier.status(self._status_line())

    def _watch_source(self) -> None:
        """Turn source state changes into events (camera lost, back, recording ended). Polled:
        a loss and a reconnect between two polls still show up through the reconnect count."""
        if self.source is None:
            return
        state = self.source.state
        seen_status, seen_reconnects = self._source_seen
        if (state.status, state.reconnects) == self._source_seen:
            return
        self._source_seen = (state.status, state.reconnects)
        data = dataclasses.asdict(state)
        lost_unseen = state.reconnects > seen_reconnects and seen_status != RECONNECTING
        if (state.status == RECONNECTING and seen_status != RECONNECTING) or lost_unseen:
            self.emit("source_lost", f"source lost: {state.last_error}", data)
        if state.reconnects > seen_reconnects:
            self.emit("source_connected", "source is back", data)
        if state.status == ENDED and seen_status != ENDED:
            self.emit("source_ended", "the recording ended", data)

    # -- capture and inference -----------------------------------------------------------------

    def _capture_loop(self) -> None:
        worker = self.workers["capture"]
        source = self.source
        if source is None:
            return
        while not self.stop_event.is_set():
            frame = source.read()
            worker.touch()
            if frame is None:
                return  # stopped, or the recording ended: the rest of the agent carries on
            self._put_frame(frame, worker)

    def _put_frame(self, frame: Frame, worker: Worker) -> None:
        """Live sources drop the oldest waiting frame; recordings wait (no frame lost)."""
        while not self.stop_event.is_set():
            try:
                self.frames.put(frame, timeout=0.5)
                return
            except queue.Full:
                worker.touch()
                if self._live:
                    with contextlib.suppress(queue.Empty):
                        self.frames.get_nowait()

    def _infer_loop(self) -> None:
        worker = self.workers["infer"]
        while not self.stop_event.is_set():
            worker.touch()
            try:
                frame = self.frames.get(timeout=0.5)
            except queue.Empty:
                continue
            self.process(frame)

    def _score(self, detections: Detections) -> float:
        s = self.config.scoring
        return image_score(detections.probs, s.method, s.aggregate)

    def _model_changed(self, version: str) -> None:
        """Features of a new model are not comparable: fresh duplicate window and drift."""
        self._seen_version = version
        self.policy.reset_features()
        saved = self.outbox.get_state("drift_reference")
        reference = None
        if isinstance(saved, dict) and saved.get("model_version") == version:
            reference = ReferenceStats.from_dict(saved)
        with self._drift_lock:
            self.drift.reset(reference, version)

    def process(self, frame: Frame) -> bool:
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
        if model.version != self._seen_version:
            self._model_changed(model.version)
        score = self._score(detections)
        self._update_drift(score, detections.feature)
        if not self.policy.offer(frame.timestamp, detections.feature).keep:
            c.duplicates += 1
            return False
        keep = _Keep(frame, detections, model, score)
        while not self.stop_event.is_set():
            try:  # the JPEG + fsync + commit happen on the store worker, beside inference
                self._writes.put(keep, timeout=0.5)
                return True
            except queue.Full:
                self.workers["infer"].touch()
        return False

    def _update_drift(self, score: float, feature: np.ndarray) -> None:
        if not self.config.drift.enabled:
            return
        with self._drift_lock:
            had_reference = self.drift.reference is not None
            self.drift.update(score, feature)
            reference = self.drift.reference
        if reference is not None and not had_reference:
            self.outbox.set_state("drift_reference", reference.to_dict())

    def _rebase_drift(self) -> None:
        """After a drift cycle the current statistics become the reference: the next drift
        cycle needs a new shift, not the same one seen again."""
        with self._drift_lock:
            if self.drift.stats.feature_mean is None:
                return
            self.drift.reference = ReferenceStats.from_running(
                self.drift.stats, self.drift.model_version
            )
            self.drift.last = DriftReport(False, 0.0, 0.0, self.drift.stats.count)
            reference = self.drift.reference
        self.outbox.set_state("drift_reference", reference.to_dict())

    def _store_loop(self) -> None:
        worker = self.workers["store"]
        while not (self.stop_event.is_set() and self._writes.empty()):
            worker.touch()
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
            logger.error("frame %d not pooled: %s", frame.index, err)
            return None
        if sample_id is None:
            self.counters.pool_refused += 1
            return None
        self.counters.kept += 1
        self.trigger.added()
        return sample_id

    # -- cycles and rescoring ------------------------------------------------------------------

    def _cycle_loop(self) -> None:
        worker = self.workers["cycle"]
        while not self.stop_event.wait(0.2):
            worker.touch()
            if self.models.changed.is_set():
                self.models.changed.clear()
                self._rescore_wanted.set()
            if self._rescore_wanted.is_set():
                self._rescore_wanted.clear()
                self._rescore(worker)
            self._maybe_cycle()

    def _rescore_fn(self, image: np.ndarray) -> Scored:
        detections, model = self.models.infer(image)
        return Scored(
            self._score(detections), detections.feature, detections.to_records(model.class_names)
        )

    def _rescore(self, worker: Worker) -> None:
        """Bring every pooled sample to the current model, before the next query."""
        version = self.models.version
        if version is None:
            return
        started = time.perf_counter()
        count = 0
        try:
            # A second pass catches frames the old model scored while the first one ran.
            for _ in range(3):
                done = self.pool.rescore(
                    self._rescore_fn, version, progress=lambda done, total: worker.touch()
                )
                count += done
                if not done:
                    break
        except ModelError as err:
            # A rollback sets `changed` and the next pass rescores with the restored model.
            logger.error("rescoring with %s stopped: %s", version, err)
            return
        if count:
            seconds = time.perf_counter() - started
            logger.info("re-scored %d pooled samples with %s in %.1f s", count, version, seconds)
            self.emit(
                "pool_rescored",
                f"{count} pooled samples re-scored with {version}",
                {"version": version, "count": count, "seconds": round(seconds, 3)},
            )
            self._status_dirty.set()

    def _maybe_cycle(self) -> None:
        if self.models.changed.is_set() or self._rescore_wanted.is_set():
            return  # a new model: the pool is re-scored before the next query
        drift = self.drift.last.drift
        if self.trigger.check(1 << 62, drift=drift) is None:
            return  # nothing due even with a huge pool: skip counting it
        due = self.trigger.check(self.outbox.pooled(), drift=drift)
        if due is None:
            return
        reason, params = due
        try:
            settings = self.query.changed(k=params.get("k"))
            result = run_cycle(self.pool, self.outbox, settings, reason, self.models.version or "")
        except DalError as err:
            self.trigger.done(reason)  # no tight retry loop; the next trigger tries again
            logger.error("cycle (%s) failed: %s", reason, err)
            self.emit("cycle_failed", str(err), {"reason": reason})
            if params.get("id"):
                self._command_result(params["id"], False, f"cycle failed: {err}")
            return
        self.trigger.done(reason)
        self.counters.cycles += 1
        if reason == DRIFT:
            self._rebase_drift()
        record = result.record
        self.emit(
            "cycle_done",
            f"cycle {record.cycle} ({reason}): {len(result.queued)} samples queued",
            {
                **record.to_dict(),
                "samples": [self.outbox.wire_id(i) for i in result.queued],
                "seconds": round(result.seconds, 3),
            },
        )
        if reason == COMMAND and params.get("id"):
            self._command_result(
                params["id"], True, f"cycle {record.cycle}: {len(result.queued)} samples queued"
            )
        self._status_dirty.set()
        self._ship_wake.set()

    # -- shipping ------------------------------------------------------------------------------

    def _ship_loop(self) -> None:
        worker = self.workers["ship"]
        shipper = self.shipper
        if shipper is None:
            return
        while not self.stop_event.is_set():
            worker.touch()
            pause = shipper.ship_round(self.stop_event, worker.touch)
            if pause:
                self._ship_wake.wait(pause)
                self._ship_wake.clear()

    def _on_ack(self, ack: Any) -> None:
        if self.shipper is not None:
            self.shipper.settle(ack)
            self._status_dirty.set()

    # -- model updates -------------------------------------------------------------------------

    def _on_model_downloaded(self, manifest: ModelManifest, path: Path) -> None:
        self.updates.put((manifest, path))

    def _on_model_failed(self, manifest: ModelManifest, reason: str) -> None:
        self.models.refuse(manifest, reason)
        self._status_dirty.set()

    def smoke_images(self) -> list[np.ndarray]:
        """The most informative pooled images, decoded: what a new model must handle."""
        images = []
        for sample in self.pool.top(self.config.update.smoke_images):
            with contextlib.suppress(OSError):
                image = decode_jpeg(sample.jpeg_path.read_bytes())
                if image is not None:
                    images.append(image)
        return images

    def _update_loop(self) -> None:
        worker = self.workers["update"]
        while not self.stop_event.is_set():
            worker.touch()
            try:
                manifest, path = self.updates.get(timeout=0.5)
            except queue.Empty:
                continue
            self.models.apply_update(manifest, path, self.smoke_images())
            self._status_dirty.set()

    # -- commands ------------------------------------------------------------------------------

    def _on_command(self, topic: str, command: Command) -> None:
        self.counters.commands += 1
        handlers = {
            "trigger_cycle": self._cmd_trigger_cycle,
            "set_query": self._cmd_set_query,
            "rescore": self._cmd_rescore,
        }
        handler = handlers.get(command.action)
        if handler is None:  # Command.from_json already refuses unknown actions
            self._command_result(command.id, False, f"unknown action {command.action}")
            return
        handler(command)

    def _cmd_trigger_cycle(self, command: Command) -> None:
        if self.outbox.pooled() == 0:
            self._command_result(command.id, False, "the pool is empty")
            return
        self.trigger.request(id=command.id, **command.params)

    def _cmd_set_query(self, command: Command) -> None:
        try:
            settings = self.query.changed(**command.params)
        except ConfigError as err:
            self._command_result(command.id, False, str(err))
            return
        self.set_query(settings)
        self._command_result(command.id, True, f"query settings now {settings.to_dict()}")

    def _cmd_rescore(self, command: Command) -> None:
        count = self.outbox.forget_scores()
        self._rescore_wanted.set()
        self._command_result(command.id, True, f"re-scoring {count} pooled samples")

    def set_query(self, settings: QuerySettings) -> None:
        """New strategy/k/β for the next cycles; kept across restarts while the config's own
        [query] values stay the same."""
        self.query = settings
        base = QuerySettings.from_config(self.config.query).to_dict()
        self.outbox.set_state("query", {"config": base, "settings": settings.to_dict()})

    def request_cycle(self, k: int | None = None) -> None:
        """Start a cycle at the next check, like the trigger_cycle command."""
        self.trigger.request(**({"k": k} if k else {}))

    def _command_result(self, command_id: str, ok: bool, message: str) -> None:
        log = logger.info if ok else logger.warning
        log("command %s: %s", command_id, message)
        self.emit("command_result", message, {"id": command_id, "ok": ok, "message": message})

    # -- reporting -----------------------------------------------------------------------------

    def emit(self, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        """An event: logged, kept for status.json, published (or queued while offline)."""
        event = Event(
            agent=self.agent,
            time=time.time(),
            kind=kind,
            message=message,
            data=_jsonable(data or {}),
        )
        with self._events_lock:
            self.recent_events.append(event.to_dict())
            self._pending_events.append(event)
        self._flush_events()

    def _flush_events(self) -> None:
        link = self.link
        if link is None or not link.connected:
            return
        topic = link.topic("agent_events", self.agent)
        with self._events_lock:  # several threads emit; each event goes out once, in order
            while self._pending_events:
                event = self._pending_events[0]
                try:
                    link.publish_nowait(topic, event)
                except LinkError as err:
                    logger.debug("event %s waits: %s", event.kind, err)
                    return
                self._pending_events.popleft()

    def _on_connected(self) -> None:
        self._status_dirty.set()
        self._ship_wake.set()

    def agent_status(self) -> AgentStatus:
        last = self.outbox.last_cycle()
        return AgentStatus(
            agent=self.agent,
            state="online",
            time=time.time(),
            model_version=self.models.version,
            pool_size=self.outbox.pooled(),
            fps=round(self.fps.rate(), 3),
            last_cycle=last.started if last else None,
            outbox_backlog=self.outbox.backlog(),
        )

    def _publish_status(self) -> None:
        link = self.link
        if link is None or not link.connected:
            return
        try:
            link.publish_nowait(
                link.topic("agent_status", self.agent), self.agent_status(), retain=True
            )
        except LinkError as err:
            logger.debug("status not published: %s", err)
            self._status_dirty.set()

    def metrics(self) -> dict[str, float]:
        c = self.counters
        values: dict[str, float] = {
            "fps": round(self.fps.rate(), 3),
            "pool": self.outbox.pooled(),
            "backlog": self.outbox.backlog(),
            **{k: v for k, v in dataclasses.asdict(c).items()},
            "drift_score_z": round(self.drift.last.score_z, 4),
            "drift_feature_distance": round(self.drift.last.feature_distance, 5),
        }
        active = self.models.active
        if active is not None:
            latency = active.detector.latency.summary()
            values["infer_ms"] = round(1000 * float(latency.get("mean_s", 0.0)), 2)
        if self.source is not None:
            state = self.source.state
            values["source_connected"] = int(state.status == CONNECTED)
            values["source_reconnects"] = state.reconnects
            values["source_attempts"] = state.attempts
        return values

    def _publish_metrics(self) -> None:
        link = self.link
        if link is None or not link.connected:
            return
        message = Metrics(agent=self.agent, time=time.time(), values=self.metrics())
        with contextlib.suppress(LinkError):
            link.publish_nowait(link.topic("agent_metrics", self.agent), message, qos=0)

    def status(self, state: str = "running") -> dict[str, Any]:
        """Everything `dal agent status` shows (also written to data_dir/status.json)."""
        active = self.models.active
        last = self.outbox.last_cycle()
        link = self.link
        return _jsonable(
            {
                "agent": self.agent,
                "pid": os.getpid(),
                "state": state,
                "time": time.time(),
                "started": self.started_at,
                "fatal": str(self.fatal) if self.fatal else None,
                "model": {
                    "version": active.version if active else None,
                    "path": str(active.path) if active else None,
                    "provider": active.detector.provider if active else None,
                    "latency": active.detector.latency.summary() if active else {},
                    "updates": self.downloader is not None,
                    "last_update": self.models.last_outcome,
                    "download": self.downloader.progress() if self.downloader else None,
                },
                "source": dataclasses.asdict(self.source.state) if self.source else None,
                "pipeline": {**dataclasses.asdict(self.counters), "fps": self.fps.rate()},
                "pool": dataclasses.asdict(self.pool.stats()),
                "outbox": self.outbox.counts(),
                "query": self.query.to_dict(),
                "last_cycle": last.to_dict() if last else None,
                "drift": dataclasses.asdict(self.drift.last),
                "link": {
                    "enabled": link is not None,
                    "connected": bool(link and link.connected),
                    "broker": f"{self.config.mqtt.host}:{self.config.mqtt.port}",
                    "errors": link.errors() if link else {},
                    "shipper": self.shipper.stats if self.shipper else None,
                },
                "workers": {name: w.summary() for name, w in list(self.workers.items())},
                "recent_events": list(self.recent_events)[-10:],
                "config": to_dict(self.config),
            }
        )

    def _write_status_file(self, state: str) -> None:
        try:
            atomic_write_json(self.data_dir / STATUS_FILE, self.status(state))
        except (StorageError, DalError) as err:
            logger.warning("status file not written: %s", err)

    def _status_line(self) -> str:
        link = "up" if self.link and self.link.connected else "down"
        return (
            f"model {self.models.version or '-'}, pool {self.outbox.pooled()}, "
            f"{self.fps.rate():.1f} fps, backlog {self.outbox.backlog()}, link {link}"
        )


def _jsonable(value: Any) -> Any:
    """numpy scalars, tuples and Paths made plain, so json.dumps takes it."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
