"""The trainer's Prometheus metrics: `[metrics] enabled` serves them on 127.0.0.1:9465/metrics.

`TrainerCollector` reads the service's own counts when Prometheus scrapes: the ingest
assembler's counters (samples stored, duplicates, rejected, expired), the sample store (samples,
labels), the job thread (queued, running, outcomes), the registry (models by state) and the
last status each agent sent, so one dashboard shows every agent's model version even where the
agents' own endpoints cannot be reached. Agent ids and versions in labels come from MQTT
messages: they are cut to a bounded length (dal.metrics_http.label). docs/metrics.md lists them.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from dal.errors import DalError
from dal.metrics_http import MetricsServer, label, number, serve_metrics

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from dal.trainer.service import TrainerService

logger = logging.getLogger(__name__)

JOB_OUTCOMES = ("promoted", "rejected", "failed", "skipped", "error")
# TransferAssembler.stats keys besides "stored" -> the `outcome` label of dal_trainer_transfers
TRANSFER_OUTCOMES = ("duplicates", "rejected", "expired", "dropped_chunks", "headerless_dropped")


def families() -> dict[str, Metric]:
    """Every family this module exposes, without samples (describe(), the dashboard test)."""
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        InfoMetricFamily,
    )

    a = ["agent_id"]
    specs: list[tuple[Callable[..., Metric], str, str, list[str]]] = [
        (CounterMetricFamily, "samples_ingested", "Samples received and stored.", []),
        (
            CounterMetricFamily,
            "transfers",
            "Sample transfers not stored, by outcome.",
            ["outcome"],
        ),
        (GaugeMetricFamily, "transfers_partial", "Transfers being assembled.", []),
        (GaugeMetricFamily, "samples", "Samples in the store.", []),
        (GaugeMetricFamily, "samples_labelled", "Stored samples with a label.", []),
        (GaugeMetricFamily, "samples_unlabelled", "Stored samples waiting for a label.", []),
        (GaugeMetricFamily, "store_bytes", "Image bytes in the store.", []),
        (GaugeMetricFamily, "jobs_queued", "1 while a fine-tune job waits to start.", []),
        (GaugeMetricFamily, "jobs_running", "1 while a fine-tune job runs.", []),
        (CounterMetricFamily, "jobs", "Fine-tune jobs finished, by outcome.", ["outcome"]),
        (CounterMetricFamily, "models_published", "Models offered to the agents.", []),
        (GaugeMetricFamily, "models", "Registered models, by state.", ["state"]),
        (InfoMetricFamily, "model", "The current model.", []),
        (GaugeMetricFamily, "broker_connected", "1 while the MQTT link is up.", []),
        (GaugeMetricFamily, "agents", "Agents seen.", []),
        (GaugeMetricFamily, "agent_online", "1 if the agent's last status said online.", a),
        (InfoMetricFamily, "agent_model", "The model each agent last reported.", a),
        (CounterMetricFamily, "agent_samples", "Samples received from each agent.", a),
    ]
    return {
        name: kind(f"dal_trainer_{name}", documentation, labels=labels)
        for kind, name, documentation, labels in specs
    }


class TrainerCollector:
    """Families read from a running TrainerService at scrape time."""

    def __init__(self, service: TrainerService) -> None:
        self.s = service

    def describe(self) -> Iterator[Metric]:
        return iter(families().values())

    def collect(self) -> Iterator[Metric]:
        found = families()
        for fill in (self._ingest, self._store, self._jobs, self._models, self._agents):
            try:
                fill(found)
            except (DalError, sqlite3.Error) as err:  # busy or closing: those families wait
                logger.debug("metrics: %s skipped: %s", fill.__name__, err)
        return iter(found.values())

    def _ingest(self, f: dict[str, Metric]) -> None:
        link = self.s.link
        f["broker_connected"].add_metric([], int(bool(link and link.connected)))
        assembler = self.s.assembler
        if assembler is None:
            return
        stats = dict(assembler.stats)
        f["samples_ingested"].add_metric([], stats.get("stored", 0))
        for outcome in TRANSFER_OUTCOMES:
            f["transfers"].add_metric([outcome], stats.get(outcome, 0))
        f["transfers_partial"].add_metric([], assembler.partial_count)

    def _store(self, f: dict[str, Metric]) -> None:
        if self.s.store is None:
            return
        counts = self.s.store.counts()
        f["samples"].add_metric([], counts.samples)
        f["samples_labelled"].add_metric([], counts.labelled)
        f["samples_unlabelled"].add_metric([], counts.unlabelled)
        f["store_bytes"].add_metric([], counts.bytes)
        f["agents"].add_metric([], counts.agents)

    def _jobs(self, f: dict[str, Metric]) -> None:
        s = self.s
        f["jobs_queued"].add_metric([], int(s.job_queued))
        f["jobs_running"].add_metric([], int(s.job_running))
        for outcome in JOB_OUTCOMES:
            f["jobs"].add_metric([outcome], s.job_outcomes.get(outcome, 0))
        f["models_published"].add_metric([], s.models_published)

    def _models(self, f: dict[str, Metric]) -> None:
        if self.s.registry is None:
            return
        from dal.trainer.registry import STATES

        by_state = dict.fromkeys(STATES, 0)
        for record in self.s.registry.list():
            by_state[record.state] = by_state.get(record.state, 0) + 1
        for state, count in by_state.items():
            f["models"].add_metric([state], count)
        current = self.s.registry.current()
        if current is not None:
            f["model"].add_metric([], {"version": label(current.version)})

    def _agents(self, f: dict[str, Metric]) -> None:
        if self.s.store is None:
            return
        for row in self.s.store.agents():
            agent = label(row.get("agent"))
            status = row.get("status") if isinstance(row.get("status"), dict) else {}
            f["agent_samples"].add_metric([agent], number(row.get("samples")))
            if status:
                f["agent_online"].add_metric([agent], int(status.get("state") == "online"))
                version = {"version": label(status.get("model_version"))}
                f["agent_model"].add_metric([agent], version)


def start_trainer_metrics(service: TrainerService) -> MetricsServer | None:
    """Serve the trainer's metrics when `[metrics] enabled` (ConfigError if the port is taken)."""
    return serve_metrics(service.config.metrics, [TrainerCollector(service)])
