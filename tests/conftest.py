"""Shared pytest fixtures. MQTT: a real mosquitto per test (see tests/broker.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from broker import Broker, start_broker_for
from model_fixtures import tiny_model  # noqa: F401  (session fixture: a trained tiny detector)

from dal.link import Link, LinkConfig, Will

# The session's tiny detector is trained inside whichever test asks for it first: ~1 min on an
# idle 2-core CPU, several under load. That test gets this much; the rest keep pyproject's limit.
TRAINS_TIMEOUT_S = 900


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tiny_model" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.timeout(TRAINS_TIMEOUT_S))


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A fresh anonymous mosquitto on a free loopback port, stopped after the test."""
    instance = start_broker_for(tmp_path / "broker")
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def make_link(broker: Broker) -> Iterator[Callable[..., Link]]:
    """make_link(client_id, will=None, wait_s=10, **LinkConfig fields) -> a started Link to
    `broker` with test-sized timeouts; every link is stopped after the test."""
    links: list[Link] = []

    def make(
        client_id: str, will: Will | None = None, wait_s: float | None = 10.0, **cfg: Any
    ) -> Link:
        options: dict[str, Any] = {
            "port": broker.port,
            "reconnect_min_s": 0.1,
            "reconnect_max_s": 0.5,
            "publish_timeout_s": 5.0,
            **cfg,
        }
        link = Link(LinkConfig(client_id, **options), will)
        links.append(link)
        return link.start(wait_s)

    yield make
    for link in reversed(links):
        link.stop()
