"""dal.metrics_http on real sockets: what cannot be bound is a ConfigError naming the address;
stop() frees the port; a private registry shows only its own collectors."""

from __future__ import annotations

import pytest
from metrics_scrape import free_port, refused, scrape
from prometheus_client import Counter

from dal.errors import ConfigError
from dal.metrics_http import MetricsSection, MetricsServer, new_registry, serve_metrics


def test_an_address_of_no_interface_here_is_a_config_error() -> None:
    port = free_port()
    with pytest.raises(ConfigError, match=rf"\[metrics\] cannot listen on 192\.0\.2\.1:{port}"):
        MetricsServer(new_registry([]), "192.0.2.1", port).start()  # TEST-NET-1: bind only


def test_stop_frees_the_port_and_only_the_registry_is_served() -> None:
    registry = new_registry([])
    Counter("dal_test_things", "Things.", registry=registry).inc(3)
    port = free_port()
    server = MetricsServer(registry, "127.0.0.1", port).start()
    try:
        page = scrape(port)
        assert page.value("dal_test_things_total") == 3
        assert not [n for n, _, _ in page.samples if n.startswith(("process_", "python_"))]
    finally:
        server.stop()
    server.stop()  # twice is fine
    assert refused(port)
    assert serve_metrics(MetricsSection(port=port), []) is None and refused(port)
