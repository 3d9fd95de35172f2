"""The Prometheus endpoint shared by the agent and the trainer: config section, start, stop.

Both daemons serve GET /metrics from a private CollectorRegistry (never prometheus_client's
global one: two daemons in one process, as in the demo and the tests, must not see each other's
metrics). Off by default and bound to 127.0.0.1: the page names agents, models and counts, and
has no authentication; reach it from elsewhere through a reverse proxy with TLS (docs/metrics.md).

A port that cannot be bound is a ConfigError, so `dal agent run` / `dal trainer serve` exit 78
and systemd does not restart into the same clash every few seconds.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dal.config import doc
from dal.errors import ConfigError, DependencyError

if TYPE_CHECKING:
    from prometheus_client.registry import Collector, CollectorRegistry

logger = logging.getLogger(__name__)

AGENT_PORT = 9464
TRAINER_PORT = 9465
LABEL_MAX = 64  # label values that come from the network are cut to this many characters


@dataclass(frozen=True)
class MetricsSection:
    enabled: bool = field(
        default=False, metadata=doc("Serve Prometheus metrics on http://host:port/metrics.")
    )
    host: str = field(
        default="127.0.0.1",
        metadata=doc(
            "Address to listen on; keep 127.0.0.1 unless a firewall or a TLS reverse proxy "
            "guards the port (the page has no authentication)."
        ),
    )
    port: int = field(
        default=AGENT_PORT, metadata=doc("TCP port of the metrics page.", min=1, max=65535)
    )


@dataclass(frozen=True)
class TrainerMetricsSection(MetricsSection):
    """The trainer's: another default port, so both run on one machine without a clash."""

    port: int = field(
        default=TRAINER_PORT, metadata=doc("TCP port of the metrics page.", min=1, max=65535)
    )


def label(value: Any) -> str:
    """A label value that came from a message or a file: text, at most LABEL_MAX characters."""
    return ("" if value is None else str(value))[:LABEL_MAX]


def number(value: Any, default: float = 0.0) -> float:
    """A sample value that came from a message: a finite number, else `default`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return float(value) if math.isfinite(value) else default


def new_registry(collectors: Iterable[Collector]) -> CollectorRegistry:
    """A private registry holding `collectors` (checked for clashing names by describe())."""
    prometheus = _import_prometheus()
    registry = prometheus.CollectorRegistry(auto_describe=True)
    for collector in collectors:
        registry.register(collector)
    return registry


def _import_prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise DependencyError(
            "[metrics] enabled needs prometheus-client, which is not installed",
            hint="pip install 'dal[agent]' or 'dal[trainer]', or set [metrics] enabled = false",
        ) from None
    return prometheus_client


class MetricsServer:
    """GET /metrics of one registry on a daemon thread; `stop()` closes the socket."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> MetricsServer:
        prometheus = _import_prometheus()
        try:
            self._server, self._thread = prometheus.start_http_server(
                self.port, addr=self.host, registry=self.registry
            )
        except OSError as err:
            raise ConfigError(
                f"[metrics] cannot listen on {self.host}:{self.port}: {err.strerror or err}",
                hint="another program uses that port (a second agent or trainer?): choose "
                "another [metrics] port, or set [metrics] enabled = false",
            ) from None
        self.port = self._server.server_port  # the real one, should port 0 ever be asked for
        logger.info("metrics on http://%s:%d/metrics", self.host, self.port)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5.0)


def serve_metrics(section: MetricsSection, collectors: Iterable[Collector]) -> MetricsServer | None:
    """Start the endpoint when `[metrics] enabled`; None when it is off."""
    if not section.enabled:
        return None
    return MetricsServer(new_registry(collectors), section.host, section.port).start()
