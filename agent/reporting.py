"""What the agent tells the world: events, the retained status, metrics, data_dir/status.json.

`EventLog.emit` logs an event, keeps the last few for status.json and publishes it, or keeps it
(up to PENDING_EVENTS) until the link is up again. `Reporter.tick()` runs on the supervisor's
beat: source changes become events, the status goes out when something changed or every
status_interval_s, metrics every metrics_interval_s, status.json every status_file_s. Metrics
are QoS 0 and not worth keeping while offline; the ones that could not be sent are counted
(`metrics_dropped`, in status and metrics) instead of vanishing.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dal.agent.commands import Commands
from dal.agent.config import AgentConfig
from dal.agent.cycle_worker import CycleWorker
from dal.agent.model_update import ModelManager
from dal.agent.outbox import Outbox
from dal.agent.pipeline import Pipeline
from dal.agent.pool import Pool
from dal.agent.shipper import Shipper
from dal.agent.sources import ReconnectingSource
from dal.agent.sources.reconnect import CONNECTED, ENDED, RECONNECTING
from dal.agent.supervisor import Supervisor
from dal.config import to_dict
from dal.errors import DalError, LinkError
from dal.fileio import atomic_write_json
from dal.link import AgentStatus, Event, Link, Metrics, ModelDownloader
from dal.notify import Notifier

logger = logging.getLogger(__name__)

STATUS_FILE = "status.json"
RECENT_EVENTS = 50
PENDING_EVENTS = 500


def jsonable(value: Any) -> Any:
    """numpy scalars, tuples and Paths made plain, so json.dumps takes it."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


class EventLog:
    """Events: logged, kept for status.json, published in order (queued while offline)."""

    def __init__(self, agent: str) -> None:
        self.agent = agent
        self.link: Link | None = None  # set once the link is open
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT_EVENTS)
        self._pending: collections.deque[Event] = collections.deque(maxlen=PENDING_EVENTS)
        self.counts: collections.Counter[str] = collections.Counter()  # by kind, since start
        self._lock = threading.Lock()

    def emit(self, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        event = Event(
            agent=self.agent,
            time=time.time(),
            kind=kind,
            message=message,
            data=jsonable(data or {}),
        )
        with self._lock:
            self.counts[kind] += 1
            self.recent.append(event.to_dict())
            self._pending.append(event)
        self.flush()

    def flush(self) -> None:
        link = self.link
        if link is None or not link.connected:
            return
        topic = link.topic("agent_events", self.agent)
        with self._lock:  # several threads emit; each event goes out once, in order
            while self._pending:
                event = self._pending[0]
                try:
                    link.publish_nowait(topic, event)
                except LinkError as err:
                    logger.debug("event %s waits: %s", event.kind, err)
                    return
                self._pending.popleft()


@dataclasses.dataclass
class Parts:
    """What the reporter reads; the app fills it in as it opens the parts."""

    config: AgentConfig
    agent: str
    supervisor: Supervisor
    events: EventLog
    pool: Pool
    outbox: Outbox
    models: ModelManager
    pipeline: Pipeline
    cycles: CycleWorker
    commands: Commands
    source: ReconnectingSource
    link: Link | None = None
    shipper: Shipper | None = None
    downloader: ModelDownloader | None = None


class Reporter:
    """Status, metrics and status.json from the parts; see the module docstring."""

    def __init__(
        self,
        parts: Parts,
        *,
        notifier: Notifier,
        dirty: threading.Event,
        started_at: float,
        fatal: Callable[[], DalError | None],
    ) -> None:
        self.p = parts
        self.notifier = notifier
        self.started_at = started_at
        self._fatal = fatal
        self.dirty = dirty  # set by anyone: publish the status at the next tick
        self.metrics_dropped = 0
        self._status_file_failing = False
        self._due: dict[str, float] = {}
        self._source_seen: tuple[str | None, int] = (None, 0)
        self._rollout_seen: tuple[Any, ...] | None = None

    def is_due(self, name: str, every_s: float) -> bool:
        now = time.monotonic()
        if now - self._due.get(name, -1e18) >= every_s:
            self._due[name] = now
            return True
        return False

    def tick(self) -> None:
        cfg = self.p.config
        self.watch_source()
        self.watch_rollout()
        self.p.events.flush()
        if self.dirty.is_set() or self.is_due("status", cfg.link.status_interval_s):
            self.dirty.clear()
            self.publish_status()
        if self.is_due("metrics", cfg.link.metrics_interval_s):
            self.publish_metrics()
        if self.is_due("status_file", cfg.supervisor.status_file_s):
            self.write_status_file("running")
            self.notifier.status(self.status_line())

    def watch_source(self) -> None:
        """Turn source state changes into events (camera lost, back, recording ended). Polled:
        a loss and a reconnect between two polls still show up through the reconnect count."""
        state = self.p.source.state
        seen_status, seen_reconnects = self._source_seen
        if (state.status, state.reconnects) == self._source_seen:
            return
        self._source_seen = (state.status, state.reconnects)
        data = dataclasses.asdict(state)
        emit = self.p.events.emit
        lost_unseen = state.reconnects > seen_reconnects and seen_status != RECONNECTING
        if (state.status == RECONNECTING and seen_status != RECONNECTING) or lost_unseen:
            emit("source_lost", f"source lost: {state.last_error}", data)
        if state.reconnects > seen_reconnects:
            emit("source_connected", "source is back", data)
        if state.status == ENDED and seen_status != ENDED:
            emit("source_ended", "the recording ended", data)

    def watch_rollout(self) -> None:
        """Publish the status at once when probation ends or another manifest is followed: a
        canary rollout waits for exactly that."""
        downloader = self.p.downloader
        seen = (self.p.models.probation_left == 0, downloader.following() if downloader else None)
        if seen != self._rollout_seen:
            self._rollout_seen = seen
            self.dirty.set()

    # -- MQTT ----------------------------------------------------------------------------------

    def agent_status(self) -> AgentStatus:
        last = self.p.outbox.last_cycle()
        return AgentStatus(
            agent=self.p.agent,
            state="online",
            time=time.time(),
            model_version=self.p.models.version,
            pool_size=self.p.pool.count(),
            fps=round(self.p.pipeline.fps.rate(), 3),
            last_cycle=last.started if last else None,
            outbox_backlog=self.p.outbox.backlog(),
            storage_error=self.p.pipeline.storage.reason,
            **self.rollout_fields(),
        )

    def rollout_fields(self) -> dict[str, Any]:
        """Group, followed manifest and probation: what `dal models status` and a canary
        rollout read."""
        following = self.p.downloader.following() if self.p.downloader else None
        return {
            "group": self.p.config.agent.group or None,
            "manifest_scope": following[0] if following else None,
            "manifest_version": following[1] if following else None,
            "probation_left": self.p.models.probation_left,
        }

    def publish_status(self) -> None:
        link = self.p.link
        if link is None or not link.connected:
            return
        try:
            link.publish_nowait(
                link.topic("agent_status", self.p.agent), self.agent_status(), retain=True
            )
        except LinkError as err:
            logger.debug("status not published: %s", err)
            self.dirty.set()

    def counters(self) -> dict[str, int]:
        return {
            **dataclasses.asdict(self.p.pipeline.counters),
            "cycles": self.p.cycles.cycles,
            "commands": self.p.commands.received,
            "metrics_dropped": self.metrics_dropped,
        }

    def metrics(self) -> dict[str, float]:
        pipeline = self.p.pipeline
        values: dict[str, float] = {
            "fps": round(pipeline.fps.rate(), 3),
            "pool": self.p.pool.count(),
            "backlog": self.p.outbox.backlog(),
            **self.counters(),
            "drift_score_z": round(pipeline.drift.last.score_z, 4),
            "drift_feature_distance": round(pipeline.drift.last.feature_distance, 5),
        }
        active = self.p.models.active
        if active is not None:
            latency = active.detector.latency.summary()
            values["infer_ms"] = round(1000 * float(latency.get("mean_s", 0.0)), 2)
        state = self.p.source.state
        values["source_connected"] = int(state.status == CONNECTED)
        values["source_reconnects"] = state.reconnects
        values["source_attempts"] = state.attempts
        values["capture_paused"] = int(pipeline.storage.paused)
        return values

    def publish_metrics(self) -> None:
        link = self.p.link
        if link is None:
            return
        if not link.connected:
            self.metrics_dropped += 1
            return
        message = Metrics(agent=self.p.agent, time=time.time(), values=self.metrics())
        try:
            link.publish_nowait(link.topic("agent_metrics", self.p.agent), message, qos=0)
        except LinkError as err:
            self.metrics_dropped += 1
            logger.debug("metrics dropped: %s", err)

    # -- status.json ---------------------------------------------------------------------------

    def status(self, state: str = "running") -> dict[str, Any]:
        """Everything `dal agent status` shows (also written to data_dir/status.json)."""
        p = self.p
        active = p.models.active
        last = p.outbox.last_cycle()
        fatal = self._fatal()
        return jsonable(
            {
                "agent": p.agent,
                "pid": os.getpid(),
                "state": state,
                "time": time.time(),
                "started": self.started_at,
                "fatal": str(fatal) if fatal else None,
                "model": {
                    "version": active.version if active else None,
                    "path": str(active.path) if active else None,
                    "provider": active.detector.provider if active else None,
                    "latency": active.detector.latency.summary() if active else {},
                    "updates": p.downloader is not None,
                    "last_update": p.models.last_outcome,
                    "download": p.downloader.progress() if p.downloader else None,
                    **self.rollout_fields(),
                },
                "source": dataclasses.asdict(p.source.state),
                "pipeline": {**self.counters(), "fps": p.pipeline.fps.rate()},
                "pool": dataclasses.asdict(p.pool.stats()),
                "storage": p.pipeline.storage.to_dict(),
                "outbox": p.outbox.counts(),
                "query": p.commands.query.to_dict(),
                "last_cycle": last.to_dict() if last else None,
                "drift": dataclasses.asdict(p.pipeline.drift.last),
                "link": {
                    "enabled": p.link is not None,
                    "connected": bool(p.link and p.link.connected),
                    "broker": f"{p.config.mqtt.host}:{p.config.mqtt.port}",
                    "errors": p.link.errors() if p.link else {},
                    "shipper": p.shipper.stats if p.shipper else None,
                },
                "workers": p.supervisor.summary(),
                "recent_events": list(p.events.recent)[-10:],
                "config": to_dict(p.config),
            }
        )

    def write_status_file(self, state: str) -> None:
        """Rewrite status.json; a failure (a full disk) is said once, not every few seconds."""
        try:
            atomic_write_json(self.p.config.agent.data_dir / STATUS_FILE, self.status(state))
        except DalError as err:
            if not self._status_file_failing:
                logger.warning("status file not written (said once until it works): %s", err)
            self._status_file_failing = True
            return
        if self._status_file_failing:
            logger.info("status file written again")
        self._status_file_failing = False

    def status_line(self) -> str:
        link = "up" if self.p.link and self.p.link.connected else "down"
        return (
            f"model {self.p.models.version or '-'}, pool {self.p.pool.count()}, "
            f"{self.p.pipeline.fps.rate():.1f} fps, backlog {self.p.outbox.backlog()}, link {link}"
        )
