"""Live view of every agent, built from the MQTT topics alone (no database, no trainer needed).

Subscribes to the same topics any MQTT dashboard would (see docs/mqtt.md):

    {root}/agents/+/status     retained AgentStatus: online/offline, model, pool, fps, backlog
    {root}/agents/+/metrics    Metrics: fps and whatever else the agent measures
    {root}/agents/+/events     Event: cycles, model swaps, command results
    {root}/trainer/status      retained TrainerStatus
    {root}/models/manifest     retained ModelManifest: the model agents should run

and redraws a table every second. `--once` waits a moment for the retained messages, prints
one snapshot to stdout and exits (scripts, cron, tests). Connection settings come from the
[mqtt] table of a trainer or agent config file (`--config`), or from the flags.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from dal import config as cfg
from dal.link import (
    ANY_AGENT,
    AgentStatus,
    Event,
    Link,
    Metrics,
    ModelManifest,
    TrainerStatus,
    agent_of,
)
from dal.link.settings import MqttSection

CLEAR = "\x1b[H\x1b[2J"
COLUMNS = ("AGENT", "STATE", "MODEL", "POOL", "FPS", "LAST CYCLE", "BACKLOG", "SEEN", "LAST EVENT")


@dataclass
class AgentView:
    """What the monitor knows about one agent. `seen` is the newest time the agent wrote into
    a message (a retained status from last night was not seen just now); the `*_at` times are
    when this machine got them."""

    agent: str
    status: AgentStatus | None = None
    metrics: Metrics | None = None
    metrics_at: float = 0.0
    status_at: float = 0.0
    event: Event | None = None
    seen: float = 0.0


class MonitorState:
    """The latest message of each kind, per agent; fed by Link handlers (thread-safe)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._agents: dict[str, AgentView] = {}
        self.trainer: TrainerStatus | None = None
        self.manifest: ModelManifest | None = None

    def _view(self, topic: str) -> AgentView:
        agent = agent_of(topic, self.root)
        return self._agents.setdefault(agent, AgentView(agent))

    def on_status(self, topic: str, status: AgentStatus) -> None:
        with self._lock:
            view = self._view(topic)
            view.status, view.status_at = status, time.time()
            view.seen = max(view.seen, status.time)

    def on_metrics(self, topic: str, metrics: Metrics) -> None:
        with self._lock:
            view = self._view(topic)
            view.metrics, view.metrics_at = metrics, time.time()
            view.seen = max(view.seen, metrics.time)

    def on_event(self, topic: str, event: Event) -> None:
        with self._lock:
            view = self._view(topic)
            view.event = event
            view.seen = max(view.seen, event.time)

    def on_trainer(self, topic: str, status: TrainerStatus) -> None:
        with self._lock:
            self.trainer = status

    def on_manifest(self, topic: str, manifest: ModelManifest) -> None:
        with self._lock:
            self.manifest = manifest

    def snapshot(self) -> tuple[list[AgentView], TrainerStatus | None, ModelManifest | None]:
        with self._lock:
            views = [replace(v) for _, v in sorted(self._agents.items())]
            return views, self.trainer, self.manifest

    def attach(self, link: Link) -> None:
        """Subscribe `link` to every topic the view needs."""
        handlers: list[tuple[str, str | None, type, Any]] = [
            ("agent_status", ANY_AGENT, AgentStatus, self.on_status),
            ("agent_metrics", ANY_AGENT, Metrics, self.on_metrics),
            ("agent_events", ANY_AGENT, Event, self.on_event),
            ("trainer_status", None, TrainerStatus, self.on_trainer),
            ("model_manifest", None, ModelManifest, self.on_manifest),
        ]
        for name, agent, message_type, handler in handlers:
            link.subscribe_message(link.topic(name, agent), message_type, handler)


def age(seconds: float | None) -> str:
    """'4s', '3m', '2h', '5d' ago; '-' for never."""
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def agent_row(view: AgentView, manifest: ModelManifest | None, now: float) -> list[str]:
    status = view.status
    fps = status.fps if status else None
    if view.metrics is not None and view.metrics_at >= view.status_at:
        fps = view.metrics.values.get("fps", fps)
    model = status.model_version if status and status.model_version else "-"
    # an agent that follows a group's or its own manifest is told another model than the global
    wanted = status.manifest_version if status and status.manifest_version else None
    if wanted is None and manifest is not None:
        wanted = manifest.version
    if wanted is not None and status is not None and model not in ("-", wanted):
        model += " (not current)"
    event = "-"
    if view.event is not None:
        event = f"{view.event.kind} {age(now - view.event.time)} ago"
    last_cycle = status.last_cycle if status else None
    return [
        view.agent,
        status.state if status else "?",
        model,
        str(status.pool_size) if status else "-",
        f"{fps:.1f}" if isinstance(fps, int | float) else "-",
        f"{age(now - last_cycle)} ago" if last_cycle else "-",
        str(status.outbox_backlog) if status else "-",
        f"{age(now - view.seen)} ago" if view.seen else "-",
        event,
    ]


def render(
    views: list[AgentView],
    trainer: TrainerStatus | None,
    manifest: ModelManifest | None,
    now: float | None = None,
) -> str:
    """The whole screen as text (pure: the tests and --once print it as it is)."""
    now = time.time() if now is None else now
    lines = []
    if trainer is None:
        lines.append("trainer: no status seen")
    else:
        lines.append(
            f"trainer: {trainer.state}, model {trainer.model_version or '-'}, "
            f"{trainer.samples_stored} samples stored, {trainer.labelling_queue} to label"
        )
    if manifest is None:
        lines.append("published model: none")
    else:
        ap = manifest.meta.get("AP")
        ap_text = f", AP {ap:.3f}" if isinstance(ap, int | float) else ""
        lines.append(
            f"published model: {manifest.version} ({manifest.size / 1e6:.1f} MB{ap_text}, "
            f"{age(now - manifest.created)} ago)"
        )
    online = sum(1 for v in views if v.status and v.status.state == "online")
    lines.append(f"agents: {len(views)} known, {online} online")
    lines.append("")
    rows = [list(COLUMNS)] + [agent_row(v, manifest, now) for v in views]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    for row in rows:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, help="read the [mqtt] table of this trainer or agent config file"
    )
    parser.add_argument("--host", help="broker host (overrides the config)")
    parser.add_argument("--port", type=int, help="broker port")
    parser.add_argument("--root", help="topic root (default dal/v1)")
    parser.add_argument("--username", help="broker user (e.g. operator)")
    parser.add_argument("--password-file", type=Path, help="file holding the password")
    parser.add_argument("--ca-file", type=Path, help="CA certificate for TLS")
    parser.add_argument("--once", action="store_true", help="print one snapshot and exit")
    parser.add_argument(
        "--wait", type=float, default=2.0, help="with --once: seconds to collect messages"
    )
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between redraws")


def mqtt_settings(args: argparse.Namespace) -> MqttSection:
    """The [mqtt] table of --config (if any), then the flags on top."""
    section = MqttSection()
    if args.config is not None:
        data = cfg.read_toml(args.config)
        section = cfg.from_dict(MqttSection, data.get("mqtt", {}), source=f"{args.config} [mqtt]")
    overrides = {
        "host": args.host,
        "port": args.port,
        "root": args.root,
        "username": args.username,
        "password_file": args.password_file,
        "ca_file": args.ca_file,
    }
    return replace(section, **{k: v for k, v in overrides.items() if v is not None})


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    settings = mqtt_settings(args)
    state = MonitorState(settings.root)
    link = Link(settings.link_config(f"dal-monitor-{os.getpid()}"))
    state.attach(link)
    link.start(wait_s=10.0)
    try:
        if args.once:
            time.sleep(max(0.0, args.wait))
            out.write(render(*state.snapshot()))
            return 0
        while True:
            out.write(CLEAR + render(*state.snapshot()))
            out.flush()
            time.sleep(max(0.2, args.interval))
    except KeyboardInterrupt:
        return 0
    finally:
        link.stop()
