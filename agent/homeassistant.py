"""Home Assistant MQTT discovery: the agent's retained status as a device with a few sensors.

With `[homeassistant] discovery = true` the agent publishes, after every connect, one retained
config per entity on `<prefix>/<component>/<node_id>/<object_id>/config` (HA's discovery topic
layout). Each config points HA at the status the agent already keeps retained
(dal/v1/agents/<id>/status) with a value_template that picks one field, and at the same topic
for availability, since the agent's Last Will turns that status to state "offline". So the
status message gains nothing and nothing new is published per frame. When Home Assistant starts
it publishes "online" on `<prefix>/status`; the agent answers with the configs again, for a
broker that lost its retained messages.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from dal.config import doc
from dal.errors import ConfigError, LinkError
from dal.link import Link
from dal.link.topics import check_root

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HomeAssistantSection:
    discovery: bool = field(
        default=False,
        metadata=doc("Publish retained Home Assistant MQTT discovery configs after connecting."),
    )
    prefix: str = field(
        default="homeassistant",
        metadata=doc("Home Assistant's discovery prefix (its MQTT integration setting)."),
    )

    def __post_init__(self) -> None:
        try:
            check_root(self.prefix)
        except LinkError:
            raise ConfigError(
                f"[homeassistant] prefix {self.prefix!r} is not a plain topic prefix",
                hint="use levels of letters, digits, '_', '.', '-' such as 'homeassistant'",
            ) from None


@dataclass(frozen=True)
class Entity:
    """One Home Assistant entity fed by one field of the agent's status message."""

    component: str  # sensor | binary_sensor
    object_id: str
    name: str
    value_template: str
    fields: tuple[str, ...]  # the status fields the template reads
    extra: dict[str, str] = field(default_factory=dict)


ENTITIES = (
    Entity(
        "sensor",
        "fps",
        "Inference rate",
        "{{ value_json.fps }}",
        ("fps",),
        {"unit_of_measurement": "fps", "state_class": "measurement", "icon": "mdi:speedometer"},
    ),
    Entity(
        "sensor",
        "pool_size",
        "Pool size",
        "{{ value_json.pool_size }}",
        ("pool_size",),
        {"unit_of_measurement": "images", "state_class": "measurement", "icon": "mdi:image"},
    ),
    Entity(
        "sensor",
        "outbox_backlog",
        "Outbox backlog",
        "{{ value_json.outbox_backlog }}",
        ("outbox_backlog",),
        {"unit_of_measurement": "samples", "state_class": "measurement", "icon": "mdi:tray-full"},
    ),
    Entity(
        "sensor",
        "model_version",
        "Model version",
        "{{ value_json.model_version }}",
        ("model_version",),
        {"icon": "mdi:brain"},
    ),
    Entity(
        "binary_sensor",
        "capture_paused",
        "Capture paused",
        "{{ 'ON' if value_json.storage_error else 'OFF' }}",
        ("storage_error",),
        {"device_class": "problem"},
    ),
)


def node_id(agent: str) -> str:
    """The agent id as a discovery topic level: HA allows only [a-zA-Z0-9_-], so a '.' becomes
    '_'. Otherwise it is the id itself, which mosquitto's ACL can match as %u."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", agent)


def software_version() -> str:
    try:
        return metadata.version("dal")
    except metadata.PackageNotFoundError:
        return "unknown"


def discovery_configs(agent: str, status_topic: str, prefix: str) -> dict[str, dict[str, Any]]:
    """Discovery topic -> config payload for every entity of `agent`."""
    node = node_id(agent)
    version = software_version()
    device = {
        "identifiers": [f"dal_{node}"],
        "name": f"dal agent {agent}",
        "manufacturer": "dal",
        "model": "dal edge agent",
        "sw_version": version,
    }
    availability = [
        {
            "topic": status_topic,
            "value_template": "{{ value_json.state }}",
            "payload_available": "online",
            "payload_not_available": "offline",
        }
    ]
    configs = {}
    for e in ENTITIES:
        configs[f"{prefix}/{e.component}/{node}/{e.object_id}/config"] = {
            "unique_id": f"dal_{node}_{e.object_id}",
            "name": e.name,
            "state_topic": status_topic,
            "value_template": e.value_template,
            **e.extra,
            "availability": availability,
            "device": device,
            "origin": {"name": "dal", "sw_version": version},
        }
    return configs


class Discovery:
    """Publishes the configs after each connect and when Home Assistant comes online."""

    def __init__(self, link: Link, agent: str, prefix: str) -> None:
        self.link = link
        self.prefix = prefix
        self.configs = discovery_configs(agent, link.topic("agent_status", agent), prefix)
        link.subscribe(f"{prefix}/status", self._on_ha_status)
        link.on_connected(self.publish)

    def publish(self) -> None:
        for topic, config in self.configs.items():
            try:
                self.link.publish_nowait(topic, json.dumps(config).encode(), retain=True)
            except LinkError as err:  # sent again after the next connect
                logger.info("home assistant discovery not sent: %s", err)
                return
        logger.info(
            "home assistant discovery: %d entities under %s", len(self.configs), self.prefix
        )

    def _on_ha_status(self, topic: str, payload: bytes) -> None:
        if payload.strip() == b"online":  # HA's birth message: it may have lost its entities
            self.publish()
