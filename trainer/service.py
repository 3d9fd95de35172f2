"""The trainer service: ingest from every agent, label, fine-tune, gate and publish models.

Threads, each with one job:
- the Link's dispatcher: sample transfers (TransferAssembler -> SampleStore, then the Ack),
  model chunk requests (ModelPublisher), agent status and events (per-agent state);
- housekeeping, every second: the oracle labels new samples, the published model follows the
  registry's current one, the retained trainer status is refreshed, and an automatic fine-tune
  is requested once new labels have settled;
- the job thread: runs one fine-tune job at a time (jobs.run_finetune).

`TrainerService(config).start()` is the programmatic API (the demo uses it); trainer/serve.py
runs it as `dal trainer serve` under systemd (notify, watchdog). Nothing here blocks an Ack on
training: a sample is acked as soon as the store made it durable.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import asdict
from typing import Any

from dal.errors import DalError, LinkError
from dal.link import (
    ANY_AGENT,
    AgentStatus,
    Event,
    Link,
    LinkConfig,
    Metrics,
    ModelPublisher,
    SampleReceiver,
    TrainerStatus,
    TransferAssembler,
    agent_of,
    trainer_will,
)
from dal.link.topics import TOPICS
from dal.lockfile import PidLock
from dal.metrics_http import MetricsServer
from dal.trainer import jobs
from dal.trainer.config import TrainerConfig, optional_path, resolve_path
from dal.trainer.labels.oracle import GroundTruthOracle
from dal.trainer.metrics import start_trainer_metrics
from dal.trainer.registry import Registry
from dal.trainer.rollout import TargetSync
from dal.trainer.rollout_store import TargetStore
from dal.trainer.store import SampleStore

logger = logging.getLogger(__name__)

TICK_S = 1.0
LOCK_FILE = "trainer.lock"  # in [trainer] data_dir, held while the service runs
ORACLE_BATCH = 64
EXPIRE_EVERY_S = 30.0
STALE_HEARTBEAT_S = 60.0


class TrainerService:
    """See the module docstring. Not restartable: make a new one after stop()."""

    def __init__(self, config: TrainerConfig, link_config: LinkConfig | None = None) -> None:
        self.config = config
        self._link_config = link_config or config.mqtt.link_config(config.trainer.id)
        self.store: SampleStore | None = None
        self.registry: Registry | None = None
        self.targets: TargetStore | None = None
        self.link: Link | None = None
        self.publisher: ModelPublisher | None = None
        self.assembler: TransferAssembler | None = None
        self.oracle: GroundTruthOracle | None = None
        self.label_server = None  # the Label Studio ML backend, with [labelstudio] enabled
        self.last_job: jobs.JobResult | None = None
        self._ctx: jobs.JobContext | None = None
        self._stop = threading.Event()
        self._job_wanted = threading.Event()
        self._job_force = False
        self._job_running = threading.Event()
        self._attempted_revision = 0
        self._metrics: dict[str, dict[str, Any]] = {}
        self._status_sent: tuple[Any, ...] | None = None
        self._status_at = 0.0
        self._expired_at = time.monotonic()
        self._heartbeat = time.monotonic()
        self._threads: list[threading.Thread] = []
        self._lock: PidLock | None = None
        self.job_outcomes: collections.Counter[str] = collections.Counter()  # metrics
        self.models_published = 0
        self._metrics_server: MetricsServer | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, wait_connected_s: float | None = None) -> TrainerService:
        """Open the store and registry, adopt the initial model, connect, start the threads.
        With `wait_connected_s`, raise LinkError (after stopping) if the broker does not answer."""
        try:
            self._open()
        except BaseException:
            self.stop(timeout_s=1.0)
            raise
        self._connect()
        try:
            self._metrics_server = start_trainer_metrics(self)
        except BaseException:
            self.stop(timeout_s=1.0)
            raise
        for name, target in (("housekeeping", self._housekeeping), ("jobs", self._job_loop)):
            thread = threading.Thread(target=target, name=f"trainer-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        if wait_connected_s is not None and not self.link.wait_connected(wait_connected_s):
            self.stop()
            raise LinkError(
                f"trainer: no MQTT connection to {self._link_config.host}:"
                f"{self._link_config.port} within {wait_connected_s:g} s",
                hint="check that the broker runs and the [mqtt] settings",
            )
        logger.info("trainer service started (data in %s)", self.config.trainer.data_dir)
        return self

    def _open(self) -> None:
        """The databases, the current model (released), the oracle: all before connecting."""
        cfg = self.config
        cfg.trainer.data_dir.mkdir(parents=True, exist_ok=True)
        # before anything opens: two services on one folder would ingest into one store and
        # knock each other off the broker under one client id
        self._lock = PidLock(cfg.trainer.data_dir / LOCK_FILE, "trainer service").acquire()
        self.store = SampleStore(resolve_path(cfg, cfg.ingest.dir), cfg.ingest.synchronous)
        self.store.sweep()
        self.registry = Registry(resolve_path(cfg, cfg.models.dir))
        self._ctx = jobs.JobContext(cfg, self.store, self.registry, self._stop)
        self._recover_interrupted_jobs()
        self._prepare_current_model()
        oracle_path = optional_path(cfg, cfg.labels.oracle)
        if oracle_path is not None:
            self.oracle = GroundTruthOracle(
                oracle_path,
                optional_path(cfg, cfg.labels.oracle_images),
                cfg.labels.oracle_max_pixel_diff,
            )
        if cfg.labelstudio.enabled:
            from dal.trainer.labels.ls_server import label_server

            self.label_server = label_server(
                cfg.labelstudio, self.store, self.registry, self._label_studio_train
            )
            self.label_server.start()

    def _connect(self) -> None:
        cfg = self.config
        self.link = Link(self._link_config, trainer_will(self._link_config.root))
        self.assembler = TransferAssembler(
            resolve_path(cfg, cfg.ingest.spool_dir),
            self.store.store,
            self.store.has,
            stale_after_s=cfg.ingest.stale_after_s,
            max_transfer_bytes=cfg.ingest.max_sample_mib << 20,
            max_partials=cfg.ingest.max_transfers_per_agent,
            headerless_after_s=cfg.ingest.headerless_after_s,
        )
        SampleReceiver(self.link, self.assembler)
        self.publisher = ModelPublisher(self.link)
        self.targets = TargetStore(resolve_path(cfg, cfg.models.dir))
        self._target_sync = TargetSync(self.registry, self.targets, self.publisher)
        link = self.link
        link.subscribe_message(link.topic("agent_status", ANY_AGENT), AgentStatus, self._on_status)
        link.subscribe_message(link.topic("agent_metrics", ANY_AGENT), Metrics, self._on_metrics)
        link.subscribe_message(link.topic("agent_events", ANY_AGENT), Event, self._on_event)
        link.on_connected(self._on_connected)
        link.start(wait_s=None)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the threads and the link (the Will says 'offline'); close the databases unless
        a fine-tune job is still running (it is abandoned; the next start marks it failed)."""
        self._stop.set()
        self._job_wanted.set()
        if self._metrics_server is not None:
            self._metrics_server.stop()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        if self.link is not None:
            self.link.stop()
        if self.label_server is not None:
            self.label_server.stop()
        busy = any(t.is_alive() for t in self._threads)
        if busy:
            logger.warning("a fine-tune job is still running; abandoning it")
            return
        for db in (self.store, self.registry, self.targets):
            if db is not None:
                db.close()
        if self._lock is not None:
            self._lock.release()
        logger.info("trainer service stopped")

    def __enter__(self) -> TrainerService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_connected(self, timeout_s: float) -> bool:
        return self.link is not None and self.link.wait_connected(timeout_s)

    def healthy(self) -> bool:
        """For the watchdog: housekeeping ticks and every thread is alive."""
        fresh = time.monotonic() - self._heartbeat < STALE_HEARTBEAT_S
        return fresh and all(t.is_alive() for t in self._threads)

    # -- models --------------------------------------------------------------------------------

    def _recover_interrupted_jobs(self) -> None:
        """Candidates left by a job that died with the process are marked failed."""
        with jobs.job_lock(self._ctx.jobs_dir) as free:
            if not free:
                return  # a `dal trainer finetune` is running right now
            for record in self.registry.list():
                if record.state == "candidate":
                    self.registry.mark(record.version, "failed", "interrupted: the job stopped")

    def _prepare_current_model(self) -> None:
        """Adopt the configured initial model into an empty registry; make sure the current
        model is released with the current signing key."""
        initial = optional_path(self.config, self.config.models.initial_checkpoint)
        if self.registry.current() is None and initial is not None:
            logger.info("registering the initial model %s", initial)
            jobs.adopt_initial(self._ctx, initial)
        current = self.registry.current()
        if current is None:
            logger.warning("no current model: ingest only until one is promoted")
            return
        jobs.release(self._ctx, current.version)

    def _sync_published(self) -> None:
        """Publish the registry's current model if it is not the one offered now."""
        current = self.registry.current()
        if current is None or current.manifest is None or current.onnx is None:
            return
        offered = self.publisher.manifest
        if offered is not None and offered.signature == current.manifest.signature:
            return
        if not current.onnx.is_file():
            logger.error("current model file %s is missing; not published", current.onnx)
            return
        try:
            self.publisher.publish(current.onnx, current.manifest)
            self.models_published += 1
            logger.info("published model %s", current.version)
        except LinkError as err:
            # the publisher keeps it and publishes again after the next connect
            logger.info("model %s not published yet: %s", current.version, err)

    def _sync_targets(self) -> None:
        """Group and agent manifests follow the registry's targets (trainer/rollout.py)."""
        self._target_sync.step()

    # -- fine-tune jobs ------------------------------------------------------------------------

    def run_finetune(self, force: bool = True) -> jobs.JobResult:
        """Run a fine-tune job now in the caller's thread and publish a promoted model."""
        return self._run_job(force)

    def _label_studio_train(self) -> None:
        """Label Studio's /train or START_TRAINING: a job if labels changed since the last."""
        self.request_finetune(force=False)

    def request_finetune(self, force: bool = True) -> None:
        """Ask the job thread to run a job soon (returns at once)."""
        self._job_force = self._job_force or force
        self._job_wanted.set()

    @property
    def job_running(self) -> bool:
        return self._job_running.is_set()

    @property
    def job_queued(self) -> bool:
        return self._job_wanted.is_set() and not self._stop.is_set()

    def _run_job(self, force: bool) -> jobs.JobResult:
        self._job_running.set()
        try:
            self._attempted_revision = self.store.label_revision()
            result = jobs.run_finetune(self._ctx, force=force)
        finally:
            self._job_running.clear()
        self.last_job = result
        self.job_outcomes[result.outcome] += 1
        if result.outcome == jobs.PROMOTED:
            self._sync_published()
            self._publish_status(force=True)
        return result

    def _job_loop(self) -> None:
        while not self._stop.is_set():
            self._job_wanted.wait()
            self._job_wanted.clear()
            if self._stop.is_set():
                return
            force, self._job_force = self._job_force, False
            try:
                self._run_job(force)
            except DalError as err:
                self.job_outcomes["error"] += 1
                logger.error("fine-tune job failed: %s", err)
            except Exception:
                self.job_outcomes["error"] += 1
                logger.exception("fine-tune job crashed")

    def _maybe_request_job(self) -> None:
        ft = self.config.finetune
        if not ft.auto or self.job_running or self._job_wanted.is_set() or ft.val is None:
            return
        since = max(jobs.last_trained_revision(self.registry), self._attempted_revision)
        count, newest = self.store.labels_since(since)
        if count >= ft.min_new_labels and time.time() - newest >= ft.settle_s:
            logger.info("%d new labels: starting a fine-tune job", count)
            self.request_finetune(force=False)

    # -- housekeeping --------------------------------------------------------------------------

    def _housekeeping(self) -> None:
        while not self._stop.wait(TICK_S):
            self._heartbeat = time.monotonic()
            for step in (
                self._oracle_step,
                self._sync_published,
                self._sync_targets,
                self._publish_status,
                self._maybe_request_job,
                self._expire_step,
            ):
                try:
                    step()
                except DalError as err:
                    logger.warning("housekeeping %s: %s", step.__name__, err)
                except Exception:
                    logger.exception("housekeeping %s crashed", step.__name__)

    def _oracle_step(self) -> None:
        if self.oracle is not None:
            labelled = self.oracle.label_pending(self.store, ORACLE_BATCH)
            if labelled:
                logger.info("oracle labelled %d samples", labelled)

    def _expire_step(self) -> None:
        if time.monotonic() - self._expired_at > EXPIRE_EVERY_S:
            self._expired_at = time.monotonic()
            self.assembler.expire()

    # -- status --------------------------------------------------------------------------------

    def _on_connected(self) -> None:
        self._publish_status(force=True)

    def _publish_status(self, force: bool = False) -> None:
        """Retained trainer status when something changed or the interval passed."""
        if self.link is None or not self.link.connected:
            return
        current = self.registry.current()
        counts = self.store.counts()
        key = (current.version if current else None, counts.samples, counts.unlabelled)
        interval = self.config.trainer.status_interval_s
        if not force and key == self._status_sent and time.monotonic() - self._status_at < interval:
            return
        status = TrainerStatus(
            state="online",
            time=time.time(),
            model_version=key[0],
            samples_stored=counts.samples,
            labelling_queue=counts.unlabelled,
        )
        self.link.publish(self.link.topic("trainer_status"), status, retain=True)
        self._publish_metrics(counts)
        self._status_sent, self._status_at = key, time.monotonic()

    def _publish_metrics(self, counts: Any) -> None:
        """Trainer metrics go out once the contract has a `trainer_metrics` topic."""
        if not any(spec.name == "trainer_metrics" for spec in TOPICS):
            return
        values = {
            "samples": counts.samples,
            "labelled": counts.labelled,
            "unlabelled": counts.unlabelled,
            "agents": counts.agents,
            "job_running": int(self.job_running),
        }
        message = Metrics(agent=self.config.trainer.id, time=time.time(), values=values)
        self.link.publish_nowait(self.link.topic("trainer_metrics"), message, qos=0)

    def _on_status(self, topic: str, status: AgentStatus) -> None:
        if status.agent != agent_of(topic, self._link_config.root):
            raise LinkError(f"status on {topic} names agent {status.agent}")
        self.store.record_status(status)

    def _on_metrics(self, topic: str, metrics: Metrics) -> None:
        self._metrics[agent_of(topic, self._link_config.root)] = {
            "time": metrics.time,
            **metrics.values,
        }

    def _on_event(self, topic: str, event: Event) -> None:
        logger.info("agent %s: %s %s", event.agent, event.kind, event.message)
        self.store.record_event(event)

    def status(self) -> dict[str, Any]:
        """Everything `dal trainer status` shows, from the running service."""
        current = self.registry.current()
        agents = self.store.agents()
        for agent in agents:
            agent["live_metrics"] = self._metrics.get(agent["agent"])
        return {
            "connected": bool(self.link and self.link.connected),
            "model_version": current.version if current else None,
            "store": asdict(self.store.counts()),
            "agents": agents,
            "ingest": dict(self.assembler.stats) if self.assembler else {},
            "oracle": dict(self.oracle.stats) if self.oracle else None,
            "job_running": self.job_running,
            "last_job": self.last_job.to_dict() if self.last_job else None,
            "link_errors": self.link.errors() if self.link else {},
        }
