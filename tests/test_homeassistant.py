"""Home Assistant MQTT discovery over a real mosquitto: the agent's retained configs are what HA
needs, and their templates, rendered with Jinja2 (HA's template engine) against the agent's
real retained status, give the values the status holds."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from pathlib import Path

import jinja2
import pytest
from agent_helpers import AGENT, contract_model, load, recording, write_config
from broker import Broker, start_broker_for, wait_until, write_password_file

from dal.agent.daemon import AgentDaemon
from dal.agent.homeassistant import ENTITIES, HomeAssistantSection
from dal.errors import ConfigError
from dal.link import Link, LinkConfig

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[1]
TOPIC = re.compile(
    r"^homeassistant/(sensor|binary_sensor)/([A-Za-z0-9_-]+)/([A-Za-z0-9_-]+)/config$"
)


class Retained:
    """Every message on a topic filter, newest per topic, and how many arrived."""

    def __init__(self, link: Link, pattern: str) -> None:
        self.messages: dict[str, bytes] = {}
        self.arrivals = 0
        self._lock = threading.Lock()
        link.subscribe(pattern, self._on)

    def _on(self, topic: str, payload: bytes) -> None:
        with self._lock:
            self.messages[topic] = payload
            self.arrivals += 1


def render(template: str, status: dict) -> str:
    return jinja2.Environment().from_string(template).render(value_json=status)


def test_discovery_configs_point_home_assistant_at_the_real_status(
    tmp_path: Path, broker: Broker, make_link: Callable[..., Link]
) -> None:
    model = contract_model(tmp_path / "m1.onnx", "m1")
    overrides = {"homeassistant": {"discovery": True}}
    config = write_config(
        tmp_path,
        model=model,
        source=recording(tmp_path / "r.mkv"),
        port=broker.port,
        overrides=overrides,
    )
    daemon = AgentDaemon(load(config), env={}).start()
    try:
        wait_until(lambda: len(daemon.pool) == 24, 30, "24 pooled frames")
        home_assistant = make_link("home-assistant")
        configs = Retained(home_assistant, "homeassistant/#")
        status_topic = home_assistant.topic("agent_status", AGENT)
        statuses = Retained(home_assistant, status_topic)
        wait_until(lambda: len(configs.messages) == len(ENTITIES), 10, "every discovery config")
        wait_until(
            lambda: json.loads(statuses.messages.get(status_topic, b"{}")).get("pool_size") == 24,
            10,
            "the status of a full pool",
        )
        status = json.loads(statuses.messages[status_topic])
        # HA's birth message: the agent sends every config again
        before = configs.arrivals
        home_assistant.publish("homeassistant/status", b"online")
        wait_until(lambda: configs.arrivals >= before + 1 + len(ENTITIES), 10, "configs sent again")
    finally:
        daemon.stop()

    unique_ids = set()
    for topic, payload in configs.messages.items():
        if topic == "homeassistant/status":
            continue
        match = TOPIC.match(topic)
        assert match, f"{topic} is not <prefix>/<component>/<node_id>/<object_id>/config"
        entry = json.loads(payload)
        for key in ("unique_id", "name", "state_topic", "value_template", "device"):
            assert entry.get(key), f"{topic} lacks {key}"
        unique_ids.add(entry["unique_id"])
        assert entry["state_topic"] == status_topic
        device = entry["device"]
        assert match.group(2) == AGENT and device["identifiers"] == [f"dal_{AGENT}"]
        assert AGENT in device["name"]
        assert device["model"] and device["sw_version"]
        (availability,) = entry["availability"]
        assert availability["topic"] == status_topic
        assert render(availability["value_template"], status) == "online"
        assert (
            render(availability["value_template"], {**status, "state": "offline"})
            == (availability["payload_not_available"])
        )
        fields = re.findall(r"value_json\.([a-z_]+)", entry["value_template"])
        assert fields and all(f in status for f in fields), f"{topic}: {fields} not in status"
    assert len(unique_ids) == len(ENTITIES)
    values = {
        entity.object_id: render(
            json.loads(
                configs.messages[
                    f"homeassistant/{entity.component}/{AGENT}/{entity.object_id}/config"
                ]
            )["value_template"],
            status,
        )
        for entity in ENTITIES
    }
    assert values["pool_size"] == "24" and values["model_version"] == "m1"
    assert values["outbox_backlog"] == "0" and values["capture_paused"] == "OFF"
    assert float(values["fps"]) >= 0


def documented_acl() -> str:
    """The ACL block docs/metrics.md tells operators to append."""
    text = (ROOT / "docs" / "metrics.md").read_text()
    (block,) = re.findall(r"```acl\n(.*?)```", text, flags=re.S)
    return block


def test_the_documented_acl_lets_agents_announce_themselves(tmp_path: Path) -> None:
    users = {"cam1": "c1-secret", "homeassistant": "ha-secret"}
    write_password_file(tmp_path / "passwd", users)
    acl = tmp_path / "dal.acl"
    acl.write_text((ROOT / "systemd" / "mosquitto-dal.acl").read_text() + documented_acl())
    conf = (
        "listener {port} 127.0.0.1\nallow_anonymous false\n"
        f"password_file {tmp_path / 'passwd'}\nacl_file {acl}\n"
    )
    broker = start_broker_for(tmp_path / "broker", config=conf)
    (tmp_path / "cam1.secret").write_text(users["cam1"])
    model = contract_model(tmp_path / "m1.onnx", "m1")
    overrides = {
        "homeassistant": {"discovery": True},
        "mqtt": {"username": AGENT, "password_file": str(tmp_path / "cam1.secret")},
    }
    config = write_config(
        tmp_path,
        model=model,
        source=recording(tmp_path / "r.mkv"),
        port=broker.port,
        overrides=overrides,
    )
    home_assistant = Link(
        LinkConfig(
            "home-assistant",
            port=broker.port,
            username="homeassistant",
            password=users["homeassistant"],
            reconnect_min_s=0.1,
            reconnect_max_s=0.5,
        )
    ).start(10)
    try:
        configs = Retained(home_assistant, "homeassistant/+/+/+/config")
        status_topic = home_assistant.topic("agent_status", AGENT)
        statuses = Retained(home_assistant, status_topic)
        daemon = AgentDaemon(load(config), env={}).start()
        try:
            wait_until(lambda: len(configs.messages) == len(ENTITIES), 15, "the configs")
            wait_until(lambda: status_topic in statuses.messages, 10, "the agent's status")
        finally:
            daemon.stop()
    finally:
        home_assistant.stop()
        broker.stop()


def test_discovery_is_off_by_default_and_the_prefix_is_checked() -> None:
    assert HomeAssistantSection().discovery is False
    with pytest.raises(ConfigError, match="prefix"):
        HomeAssistantSection(prefix="home/#")
