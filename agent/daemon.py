"""The edge agent app: opens the parts, wires them together and runs them under a supervisor.

capture -> keep/skip -> infer -> score -> pool -> cycle -> outbox -> MQTT. The parts, one file
each:

    pipeline.py      capture, infer and store workers (frames into the pool, drift statistics)
    cycle_worker.py  the cycle worker: re-scores the pool after a model change, runs cycles
    shipper.py       the ship worker: queued samples to the trainer until it acks them
    model_update.py  the update worker: verifies, smoke-tests and swaps in downloaded models
    commands.py      MQTT commands and the query settings in force
    reporting.py     events, status, metrics, data_dir/status.json
    supervisor.py    restarts crashed workers, notices stalled ones

The supervisor loop (the thread that calls `run()`, or a thread of its own after `start()`)
checks the workers every `check_s`, feeds the systemd watchdog while they are healthy and
reports. In-process use (tests, the demo):

    daemon = AgentDaemon(load_agent_config("agent.toml")).start()
    ...
    daemon.stop()
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dal.agent.commands import Commands
from dal.agent.config import AgentConfig, QueryConfig, agent_id, resolve_path
from dal.agent.cycle import CycleTrigger
from dal.agent.cycle_worker import CycleWorker
from dal.agent.homeassistant import Discovery
from dal.agent.metrics import start_agent_metrics
from dal.agent.model_store import ModelStore
from dal.agent.model_update import ActiveModel, ModelManager, UpdateWorker
from dal.agent.outbox import Outbox
from dal.agent.pipeline import Counters, Pipeline
from dal.agent.policy import DriftMonitor
from dal.agent.pool import Pool
from dal.agent.reporting import EventLog, Parts, Reporter
from dal.agent.shipper import Shipper
from dal.agent.sources import ReconnectingSource, open_source
from dal.agent.storage_gate import StorageGate
from dal.agent.supervisor import Supervisor
from dal.errors import ConfigError, DalError, ModelError, StorageError
from dal.link import AckWaiter, Link, ModelDownloader, TransferSender, agent_will
from dal.link.signing import load_public_key
from dal.lockfile import PidLock
from dal.notify import Notifier

logger = logging.getLogger(__name__)

LOCK_FILE = "agent.lock"  # in data_dir: one agent per data folder


class AgentDaemon:
    """The whole agent; see the module docstring. Config is read-only; state lives in the parts."""

    def __init__(self, config: AgentConfig, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.agent = agent_id(config)
        self.data_dir = config.agent.data_dir
        self.stop_event = threading.Event()
        self.notifier = Notifier(env)
        self.events = EventLog(self.agent)
        self.supervisor = Supervisor(config.supervisor, self.emit)
        self.workers = self.supervisor.workers
        self.started_at = time.time()
        self._status_dirty = threading.Event()
        self._closers: list[Callable[[], None]] = []
        self._thread: threading.Thread | None = None
        self.source: ReconnectingSource | None = None
        self.link: Link | None = None
        self.shipper: Shipper | None = None
        self.downloader: ModelDownloader | None = None

    # -- what tests, the demo and the CLI read ---------------------------------------------------

    @property
    def fatal(self) -> DalError | None:
        return self.supervisor.fatal

    @property
    def counters(self) -> Counters:
        return self.pipeline.counters

    @property
    def drift(self) -> DriftMonitor:
        return self.pipeline.drift

    @property
    def recent_events(self) -> collections.deque[dict[str, Any]]:
        return self.events.recent

    def emit(self, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        self.events.emit(kind, message, data)

    def status(self, state: str = "running") -> dict[str, Any]:
        return self.reporter.status(state)

    def smoke_images(self) -> list[np.ndarray]:
        return self.updater.smoke_images()

    @property
    def query(self) -> QueryConfig:
        return self.commands.query

    def set_query(self, settings: QueryConfig) -> None:
        self.commands.set_query(settings)

    def request_cycle(self, k: int | None = None) -> None:
        """Start a cycle at the next check, like the trigger_cycle command."""
        self.trigger.request(**({"k": k} if k else {}))

    # -- opening -------------------------------------------------------------------------------

    def _open(self) -> None:
        """Open storage, model, pipeline and link; on failure close what was opened."""
        try:
            self._open_storage()
            self._open_models()
            self._open_pipeline()
            self._open_link()
        except BaseException:
            self._close_all()
            raise
        parts = Parts(
            config=self.config,
            agent=self.agent,
            supervisor=self.supervisor,
            events=self.events,
            pool=self.pool,
            outbox=self.outbox,
            models=self.models,
            pipeline=self.pipeline,
            cycles=self.cycles,
            commands=self.commands,
            source=self.pipeline.source,
            link=self.link,
            shipper=self.shipper,
            downloader=self.downloader,
        )
        self.reporter = Reporter(
            parts,
            notifier=self.notifier,
            dirty=self._status_dirty,
            started_at=self.started_at,
            fatal=lambda: self.fatal,
        )
        self._open_metrics(parts)

    def _open_metrics(self, parts: Parts) -> None:
        """The Prometheus endpoint ([metrics]); a taken port closes everything (exit 78)."""
        try:
            metrics = start_agent_metrics(parts, self.started_at)
        except BaseException:
            self._close_all()
            raise
        if metrics is not None:
            self.pipeline.on_latency = metrics.observe_latency
            self._closers.append(metrics.stop)

    def _open_storage(self) -> None:
        cfg = self.config
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StorageError(
                f"cannot create [agent] data_dir {self.data_dir}: {err.strerror}",
                hint="create it for the service user, or choose another data_dir",
            ) from None
        lock = PidLock(self.data_dir / LOCK_FILE, "agent").acquire()  # before anything opens
        self._closers.append(lock.release)
        self.pool = Pool.from_config(resolve_path(cfg, cfg.pool.dir), cfg.pool)
        self._closers.append(self.pool.close)
        self.outbox = Outbox(self.pool.db_path, self.agent, cfg.pool.synchronous)
        self._closers.append(self.outbox.close)
        scoring = {"method": cfg.scoring.method, "aggregate": cfg.scoring.aggregate}
        if self.outbox.get_state("scoring", scoring) != scoring:
            n = self.pool.forget_scores()
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
        if self._load_start_model(configured) is None:
            logger.warning("no model yet: frames are skipped until one is pushed or configured")

    def _load_start_model(self, configured: Path | None) -> ActiveModel | None:
        """The model to start with; a missing or broken one is a ConfigError (exit 78): the
        same file fails again after every restart, so systemd must not loop on it."""
        fix = "point [detector] model at a good model file, or remove it to use the stored one"
        if configured is not None and not configured.is_file():
            raise ConfigError(f"[detector] model {configured} does not exist", hint=fix)
        try:
            return self.models.load_initial(configured)
        except ModelError as err:
            what = f"[detector] model {configured}" if configured else "the current model"
            raise ConfigError(f"{what} cannot be used: {err}", hint=fix) from None

    def _open_pipeline(self) -> None:
        cfg = self.config
        self.trigger = CycleTrigger(cfg.cycle)
        self.source = open_source(cfg.source, stop=self.stop_event)
        self.pipeline = Pipeline(
            cfg,
            source=self.source,
            models=self.models,
            pool=self.pool,
            outbox=self.outbox,
            trigger=self.trigger,
            stop=self.stop_event,
            storage=StorageGate(cfg.pool.full_retry_s, on_change=self._storage_changed),
        )
        self.commands = Commands(
            cfg.query,
            pool=self.pool,
            outbox=self.outbox,
            trigger=self.trigger,
            emit=self.emit,
            rescore=lambda: self.cycles.rescore_wanted.set(),
        )
        self.cycles = CycleWorker(
            pool=self.pool,
            outbox=self.outbox,
            models=self.models,
            pipeline=self.pipeline,
            trigger=self.trigger,
            query=lambda: self.commands.query,
            emit=self.emit,
            command_result=self.commands.result,
            stop=self.stop_event,
            changed=self._changed,
        )
        self.updater = UpdateWorker(
            self.models,
            self.pool,
            smoke_images=cfg.update.smoke_images,
            stop=self.stop_event,
            changed=self._status_dirty.set,
        )

    def _open_link(self) -> None:
        cfg = self.config
        if not cfg.link.enabled:
            logger.info("link disabled: samples wait in the outbox")
            return
        will = agent_will(self.agent, cfg.mqtt.root)
        self.link = Link(cfg.mqtt.link_config(self.agent), will=will)
        self.events.link = self.link
        acks = AckWaiter(self.link, self.agent, on_ack=self._on_ack)
        self.shipper = Shipper(
            self.outbox,
            self.pool,
            TransferSender(self.link, self.agent, acks, window=cfg.link.window),
            chunk_size=cfg.mqtt.chunk_kib * 1024,
            ack_timeout_s=cfg.link.ack_timeout_s,
            attempts=cfg.link.attempts,
            retry_max_s=cfg.link.retry_max_s,
        )
        topic = self.link.topic("agent_cmd", self.agent)
        self.link.subscribe(topic, self.commands.on_payload)
        if cfg.update.enabled and self.public_key is not None:
            self.downloader = ModelDownloader(
                self.link,
                self.agent,
                self.models.store.incoming,
                self.public_key,
                on_complete=self.updater.downloaded,
                on_failed=self.updater.failed,
                accept=self.models.wants,
                max_model_bytes=cfg.update.max_model_mb << 20,
                group=cfg.agent.group or None,
            )
        elif cfg.update.enabled:
            logger.warning("[update] public_key is not set: pushed models will not be installed")
        self.link.on_connected(self._changed)
        if cfg.homeassistant.discovery:
            Discovery(self.link, self.agent, cfg.homeassistant.prefix)
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

    # -- wiring --------------------------------------------------------------------------------

    def _changed(self) -> None:
        """Something the trainer should hear of soon: publish the status, ship what is queued."""
        self._status_dirty.set()
        if self.shipper is not None:
            self.shipper.wake.set()

    def _storage_changed(self, reason: str | None) -> None:
        """Capture paused (the pool cannot store) or resumed: an event, and the status now."""
        if reason is not None:
            self.emit("capture_paused", f"capture paused: {reason}", {"reason": reason})
        else:
            self.emit("capture_resumed", "capture resumed: the pool stores frames again", {})
        self._status_dirty.set()

    def _on_ack(self, ack: Any) -> None:
        if self.shipper is not None:
            self.shipper.settle(ack)
            self._status_dirty.set()

    # -- lifecycle -----------------------------------------------------------------------------

    def _start_workers(self) -> None:
        start = self.supervisor.start
        start("capture", self.pipeline.capture_loop)
        start("infer", self.pipeline.infer_loop)
        start("store", self.pipeline.store_loop)
        start("cycle", self.cycles.loop)
        start("update", self.updater.loop)
        shipper = self.shipper
        if shipper is not None:
            start("ship", lambda beat: shipper.loop(self.stop_event, beat))
        self.cycles.rescore_wanted.set()  # finish a rescore a crash interrupted

    def start(self) -> AgentDaemon:
        """Open everything and run the workers and the supervisor in background threads."""
        self._open()
        self._start_workers()
        self._thread = threading.Thread(
            target=self._supervise_then_close, name="agent-supervisor", daemon=True
        )
        self._thread.start()
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
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the agent stopped (after `start()`); False on timeout."""
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def __enter__(self) -> AgentDaemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _supervise_then_close(self) -> None:
        try:
            self._supervise()
        finally:
            self._shutdown()

    def _supervise(self) -> None:
        reporter = self.reporter
        reporter.write_status_file("running")
        self.notifier.ready(reporter.status_line())
        logger.info("agent %s running (model %s)", self.agent, self.models.version)
        reporter.publish_status()
        while not self.stop_event.wait(self.config.supervisor.check_s):
            healthy = self.supervisor.check()
            if self.fatal is not None:
                break
            interval = self.notifier.watchdog_s
            if healthy and interval is not None and reporter.is_due("watchdog", interval / 3):
                self.notifier.watchdog()
            try:
                reporter.tick()
            except DalError as err:  # e.g. the database busy for a moment: report next tick
                logger.warning("status report failed: %s", err)

    def _shutdown(self) -> None:
        self.stop_event.set()
        self.notifier.stopping()
        self.supervisor.join(10.0)
        if self.source is not None:
            self.source.close()
        self.events.flush()
        if self.workers:  # opened: the status can still be read from the pool
            self.reporter.write_status_file("stopped")
        self._close_all()
        self.notifier.close()
        logger.info("agent %s stopped", self.agent)
