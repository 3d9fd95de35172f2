"""The agent's Prometheus metrics: `[metrics] enabled` serves them on 127.0.0.1:9464/metrics.

`AgentCollector` reads the counters the daemon keeps anyway (pipeline counters, pool and outbox
counts, shipper stats, event counts) when Prometheus scrapes, so nothing on the frame path
changes for them. The one thing that is observed as it happens is inference latency: a Histogram
the pipeline feeds with the latency the detector already measured (`Pipeline.on_latency`),
whose only cost is prometheus_client's own per-observation lock. Every family carries the
`agent_id` label, so one Prometheus can scrape a whole plant. docs/metrics.md lists them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from dal.agent.sources.reconnect import CONNECTED
from dal.errors import DalError
from dal.metrics_http import MetricsServer, label, new_registry

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from dal.agent.reporting import Parts

logger = logging.getLogger(__name__)

# Frames that went no further, by pipeline.Counters field -> the `reason` label.
SKIP_REASONS = {
    "too_soon": "too_soon",
    "no_model": "no_model",
    "duplicates": "duplicate",
    "pool_refused": "pool_refused",
    "infer_errors": "infer_error",
    "storage_errors": "storage_error",
    "storage_paused": "storage_paused",
}
# The `outcome` label of dal_agent_transfers_total -> the Shipper.stats key.
TRANSFER_OUTCOMES = {
    "sent": "sent",
    "acked": "shipped",
    "rejected": "rejected",
    "lost": "lost",
    "failed": "failed_rounds",
}
# Seconds; a CPU inference of the real detector takes 0.05-2 s, a GPU one a few ms.
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LATENCY = "dal_agent_inference_latency_seconds"


def families() -> dict[str, Metric]:
    """Every family this module exposes, without samples (describe(), the dashboard test)."""
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        InfoMetricFamily,
    )

    a = ["agent_id"]
    specs: list[tuple[Callable[..., Metric], str, str, list[str]]] = [
        (CounterMetricFamily, "frames_captured", "Frames read from the source.", a),
        (CounterMetricFamily, "frames_inferred", "Frames the detector ran on.", a),
        (CounterMetricFamily, "frames_kept", "Frames stored in the pool.", a),
        (
            CounterMetricFamily,
            "frames_skipped",
            "Frames that went no further, by reason.",
            [*a, "reason"],
        ),
        (GaugeMetricFamily, "fps", "Inferences per second over the last 64 frames.", a),
        (GaugeMetricFamily, "start_time_seconds", "When the agent started (Unix time).", a),
        (GaugeMetricFamily, "pool_samples", "Samples in the pool, by state.", [*a, "state"]),
        (GaugeMetricFamily, "pool_bytes", "JPEG bytes in the pool.", a),
        (
            GaugeMetricFamily,
            "outbox_samples",
            "Outbox rows, by status (queued = backlog).",
            [*a, "status"],
        ),
        (GaugeMetricFamily, "outbox_backlog", "Samples queued for the trainer.", a),
        (CounterMetricFamily, "cycles", "Active-learning cycles run.", a),
        (InfoMetricFamily, "model", "The model in use.", a),
        (
            GaugeMetricFamily,
            "model_probation_frames",
            "Inferences left before a new model passes probation (0 = none).",
            a,
        ),
        (CounterMetricFamily, "events", "Events emitted, by kind.", [*a, "kind"]),
        (
            CounterMetricFamily,
            "transfers",
            "Sample transfers: sent (attempts), acked, rejected, lost, failed (retried later).",
            [*a, "outcome"],
        ),
        (GaugeMetricFamily, "broker_connected", "1 while the MQTT link is up.", a),
        (GaugeMetricFamily, "source_connected", "1 while the frame source delivers.", a),
        (CounterMetricFamily, "source_reconnects", "Times the source came back.", a),
        (GaugeMetricFamily, "capture_paused", "1 while the pool cannot store.", a),
        (GaugeMetricFamily, "drift_detected", "1 while the scene drifts.", a),
    ]
    found: dict[str, Metric] = {}
    for kind, name, documentation, labels in specs:
        found[name] = kind(f"dal_agent_{name}", documentation, labels=labels)
    return found


class AgentCollector:
    """Families read from the daemon's parts at scrape time; see the module docstring."""

    def __init__(self, parts: Parts, started_at: float) -> None:
        self.p = parts
        self.started_at = started_at
        self.agent = parts.agent

    def describe(self) -> Iterator[Metric]:
        """The families without samples: what the registry checks for clashes, and what the
        dashboard test reads the exposed names from."""
        return iter(families().values())

    def collect(self) -> Iterator[Metric]:
        found = families()
        for fill in (self._pipeline, self._pool, self._outbox, self._model, self._link):
            try:
                fill(found)
            except DalError as err:  # the database busy for a moment: those families wait
                logger.debug("metrics: %s skipped: %s", fill.__name__, err)
        return iter(found.values())

    # -- the families --------------------------------------------------------------------------

    def _pipeline(self, f: dict[str, Metric]) -> None:
        agent = [self.agent]
        pipeline = self.p.pipeline
        c = pipeline.counters
        f["frames_captured"].add_metric(agent, c.frames)
        f["frames_inferred"].add_metric(agent, c.inferred)
        f["frames_kept"].add_metric(agent, c.kept)
        for field, reason in SKIP_REASONS.items():
            f["frames_skipped"].add_metric([self.agent, reason], getattr(c, field))
        f["fps"].add_metric(agent, pipeline.fps.rate())
        f["start_time_seconds"].add_metric(agent, self.started_at)
        f["cycles"].add_metric(agent, self.p.cycles.cycles)
        f["capture_paused"].add_metric(agent, int(pipeline.storage.paused))
        f["drift_detected"].add_metric(agent, int(bool(pipeline.drift.last.drift)))
        state = self.p.source.state
        f["source_connected"].add_metric(agent, int(state.status == CONNECTED))
        f["source_reconnects"].add_metric(agent, state.reconnects)
        for kind, count in sorted(dict(self.p.events.counts).items()):
            f["events"].add_metric([self.agent, kind], count)

    def _pool(self, f: dict[str, Metric]) -> None:
        stats = self.p.pool.stats()
        for state, count in stats.by_state.items():
            f["pool_samples"].add_metric([self.agent, state], count)
        f["pool_bytes"].add_metric([self.agent], stats.bytes)

    def _outbox(self, f: dict[str, Metric]) -> None:
        counts = self.p.outbox.counts()
        for status, count in counts.items():
            f["outbox_samples"].add_metric([self.agent, status], count)
        f["outbox_backlog"].add_metric([self.agent], counts.get("queued", 0))

    def _model(self, f: dict[str, Metric]) -> None:
        models = self.p.models
        active = models.active
        if active is not None:
            info = {"version": label(active.version), "provider": label(active.detector.provider)}
            f["model"].add_metric([self.agent], info)
        f["model_probation_frames"].add_metric([self.agent], models.probation_left)

    def _link(self, f: dict[str, Metric]) -> None:
        link = self.p.link
        f["broker_connected"].add_metric([self.agent], int(bool(link and link.connected)))
        shipper = self.p.shipper
        stats: dict[str, Any] = dict(shipper.stats) if shipper is not None else {}
        for outcome, key in TRANSFER_OUTCOMES.items():
            f["transfers"].add_metric([self.agent, outcome], stats.get(key, 0))


@dataclasses.dataclass
class AgentMetrics:
    """The running endpoint and the latency histogram the pipeline feeds."""

    server: MetricsServer
    observe_latency: Callable[[float], None]

    def stop(self) -> None:
        self.server.stop()


def start_agent_metrics(parts: Parts, started_at: float) -> AgentMetrics | None:
    """Serve the agent's metrics when `[metrics] enabled` (ConfigError if the port is taken)."""
    section = parts.config.metrics
    if not section.enabled:
        return None
    registry = new_registry([AgentCollector(parts, started_at)])
    from prometheus_client import Histogram

    histogram = Histogram(
        LATENCY,
        "Detector inference time per frame (the model run, without JPEG or scoring).",
        ["agent_id"],
        buckets=LATENCY_BUCKETS,
        registry=registry,
    ).labels(agent_id=parts.agent)
    server = MetricsServer(registry, section.host, section.port).start()
    return AgentMetrics(server, histogram.observe)
