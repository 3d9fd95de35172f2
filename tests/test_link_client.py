"""The Link against a real mosquitto: garbage, Last Will, retained status, reconnects, TLS, ACL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from broker import Broker, SampleStore, free_port, start_broker_for, wait_until, write_password_file
from tls_files import make_tls_files

from dal.errors import LinkError
from dal.link import (
    ANY_AGENT,
    TOPICS,
    AckWaiter,
    AgentStatus,
    Command,
    Event,
    Link,
    LinkConfig,
    Metrics,
    ModelDownloader,
    ModelPublisher,
    SampleHeader,
    SampleReceiver,
    TrainerStatus,
    TransferAssembler,
    TransferSender,
    agent_will,
    new_sample_id,
    signing,
    topic,
    trainer_will,
)

REPO = Path(__file__).resolve().parents[1]
AGENT = "cam1"


def sample(data: bytes, agent: str = AGENT) -> SampleHeader:
    return SampleHeader.for_payload(
        data,
        sample_id=new_sample_id(agent),
        agent=agent,
        chunk_size=4096,
        captured_at=time.time(),
        model_version="m0",
        score=0.1,
        feature=(0.0,) * 4,
        detections=(),
    )


def test_garbage_on_every_subscribed_topic_is_counted_and_nothing_breaks(
    make_link: Callable[..., Link], tmp_path: Path
) -> None:
    # The trainer side and the agent side with every handler the link module offers.
    trainer = make_link("trainer")
    store = SampleStore(tmp_path / "store")
    SampleReceiver(trainer, TransferAssembler(tmp_path / "spool", store.store, store.has))
    ModelPublisher(trainer)
    seen: dict[str, list[object]] = {
        "status": [],
        "metrics": [],
        "events": [],
        "trainer": [],
        "cmd": [],
    }
    for name, cls, key in (
        ("agent_status", AgentStatus, "status"),
        ("agent_metrics", Metrics, "metrics"),
        ("agent_events", Event, "events"),
    ):
        trainer.subscribe_message(
            trainer.topic(name, ANY_AGENT), cls, lambda t, m, k=key: seen[k].append(m)
        )
    agent = make_link(AGENT)
    acks = AckWaiter(agent, AGENT)
    signing.generate_keypair(tmp_path / "k.key", tmp_path / "k.pub")
    ModelDownloader(
        agent,
        AGENT,
        tmp_path / "models",
        signing.load_public_key(tmp_path / "k.pub"),
        on_complete=lambda m, p: None,
    ).start()
    agent.subscribe_message(
        agent.topic("agent_cmd", AGENT), Command, lambda t, m: seen["cmd"].append(m)
    )
    agent.subscribe_message(
        agent.topic("trainer_status"), TrainerStatus, lambda t, m: seen["trainer"].append(m)
    )
    # what `dal monitor` reads besides the agents' topics
    agent.subscribe_message(
        agent.topic("trainer_metrics"), Metrics, lambda t, m: seen["trainer"].append(m)
    )

    garbage = [
        os.urandom(200),
        b"{not json",
        b'{"agent": 5, "state": [], "time": "x"}',
        json.dumps([1, 2, 3]).encode(),
        b'{"state": "online"}',
        b"\x00" * 3,
        os.urandom(1_500_000),
    ]
    attacker = make_link("attacker")
    for row in TOPICS:
        for payload in garbage:
            attacker.publish(topic(row.name, agent=AGENT if row.per_agent else None), payload)

    # Every topic has exactly one subscriber here, so each bad message counts once.
    expected = len(TOPICS) * len(garbage)
    wait_until(
        lambda: sum(trainer.errors().values()) + sum(agent.errors().values()) == expected,
        30,
        f"{expected} counted bad messages (trainer {trainer.errors()}, agent {agent.errors()})",
    )
    assert all(v == len(garbage) for v in {**trainer.errors(), **agent.errors()}.values())
    assert not any(seen.values()), "a malformed message reached a handler"

    # Still alive: a command gets through, and a real transfer is stored and acked.
    attacker.publish(attacker.topic("agent_cmd", AGENT), Command.new("rescore"))
    data = os.urandom(20_000)
    header = sample(data)
    ack = TransferSender(agent, AGENT, acks=acks).ship(header, data, ack_timeout_s=5, attempts=2)
    assert ack.status == "stored" and store.data(header.sample_id) == data
    wait_until(lambda: len(seen["cmd"]) == 1, 5, "the valid command")


LAST_WILL_AGENT = """
import sys, time
from dal.link import AgentStatus, Link, LinkConfig, Will, topic
port, agent = int(sys.argv[1]), sys.argv[2]
status = topic("agent_status", agent=agent)
offline = AgentStatus(agent=agent, state="offline", time=0.0).to_json()
link = Link(LinkConfig(agent, port=port, keepalive_s=5), Will(status, offline)).start(10)
link.publish(status, AgentStatus(agent=agent, state="online", time=time.time()), retain=True)
print("ready", flush=True)
time.sleep(60)
"""


def test_last_will_marks_a_killed_agent_offline_and_status_is_retained(
    broker: Broker, make_link: Callable[..., Link]
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", LAST_WILL_AGENT, str(broker.port), "cam9"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        # A dashboard that connects later still sees the retained status.
        states: list[str] = []
        dashboard = make_link("dashboard")
        dashboard.subscribe_message(
            dashboard.topic("agent_status", "cam9"),
            AgentStatus,
            lambda t, m: states.append(m.state),
        )
        wait_until(lambda: states == ["online"], 5, "the retained online status")
        proc.send_signal(signal.SIGKILL)  # no DISCONNECT: the broker must publish the Will
        wait_until(lambda: states[-1:] == ["offline"], 10, "the Last Will")
    finally:
        proc.kill()
        proc.wait(5)
        if proc.stdout:
            proc.stdout.close()

    # A clean stop says offline too, and the retained status keeps saying it.
    status = topic("agent_status", agent="cam8")
    agent = make_link("cam8", will=agent_will("cam8"))
    agent.publish(status, AgentStatus(agent="cam8", state="online", time=1.0), retain=True)
    agent.stop()
    late: list[str] = []
    make_link("late").subscribe_message(status, AgentStatus, lambda t, m: late.append(m.state))
    wait_until(lambda: late == ["offline"], 5, "the retained offline status")


def test_a_clean_stop_says_offline_with_the_time_of_the_stop(
    make_link: Callable[..., Link],
) -> None:
    """The Will is built at connect; the offline status of a clean stop is made at the stop."""
    statuses: dict[str, AgentStatus | TrainerStatus] = {}
    agent = make_link("cam7", will=agent_will("cam7"))
    trainer = make_link("trainer", will=trainer_will())
    time.sleep(1.5)
    stopped = time.time()
    agent.stop()
    trainer.stop()
    late = make_link("late")
    late.subscribe_message(
        topic("agent_status", agent="cam7"), AgentStatus, lambda t, m: statuses.update(agent=m)
    )
    late.subscribe_message(
        topic("trainer_status"), TrainerStatus, lambda t, m: statuses.update(trainer=m)
    )
    wait_until(lambda: len(statuses) == 2, 5, "both retained offline statuses")
    for who, status in statuses.items():
        assert status.state == "offline"
        assert status.time >= stopped - 0.01, f"{who}: offline since {stopped - status.time:.1f}s"


def test_reconnect_resubscribes_and_restores_retained_state(
    broker: Broker, make_link: Callable[..., Link]
) -> None:
    agent = make_link(AGENT)
    status = agent.topic("agent_status", AGENT)
    # The agent republishes its status after every (re)connect: a broker without persistence
    # forgets retained messages when it restarts.
    agent.on_connected(
        lambda: agent.publish(
            status, AgentStatus(agent=AGENT, state="online", time=time.time()), retain=True
        )
    )
    got: list[AgentStatus] = []
    dashboard = make_link("dashboard")
    dashboard.subscribe_message(
        dashboard.topic("agent_status", ANY_AGENT), AgentStatus, lambda t, m: got.append(m)
    )
    wait_until(lambda: len(got) >= 1, 5, "the first status")
    first_generation = dashboard.generation

    broker.kill()
    with pytest.raises(LinkError, match="not connected"):
        wait_until(lambda: not agent.connected, 5, "the agent to notice")
        agent.publish(status, b"{}")
    broker.start()
    wait_until(
        lambda: dashboard.generation > first_generation and len(got) >= 2,
        10,
        "status after the restart",
    )
    assert got[-1].state == "online"


def test_start_fails_fast_and_clearly_without_a_broker() -> None:
    link = Link(LinkConfig("lonely", port=free_port(), reconnect_min_s=0.1, reconnect_max_s=0.2))
    with pytest.raises(LinkError, match="no MQTT connection"):
        link.start(wait_s=1.0)
    assert not link.connected


# -- the example broker config: TLS, passwords, per-agent ACL ------------------------------------


def test_example_broker_config_tls_passwords_and_acl(tmp_path: Path) -> None:
    certs = make_tls_files(tmp_path / "certs")
    users = {"trainer": "t-secret", "cam1": "c1-secret", "cam2": "c2-secret"}
    write_password_file(tmp_path / "dal.passwd", users)
    local_port = free_port()
    conf = (REPO / "systemd" / "mosquitto-dal.conf").read_text()
    for old, new in {
        "/etc/mosquitto/certs/": f"{tmp_path}/certs/",
        "/etc/mosquitto/dal.passwd": str(tmp_path / "dal.passwd"),
        "/etc/mosquitto/dal.acl": str(REPO / "systemd" / "mosquitto-dal.acl"),
        "/var/lib/mosquitto/": f"{tmp_path}/data/",
        "listener 8883": "listener {port} 127.0.0.1",
        "listener 1883 127.0.0.1": f"listener {local_port} 127.0.0.1",
    }.items():
        assert old in conf, f"the example config no longer has {old!r}"
        conf = conf.replace(old, new)
    (tmp_path / "data").mkdir()
    tls_broker = start_broker_for(tmp_path / "broker", config=conf)
    links: list[Link] = []

    def connect(
        user: str,
        password: str | None = None,
        tls: bool = True,
        port: int | None = None,
        wait_s: float = 5,
    ) -> Link:
        cfg = LinkConfig(
            user,
            port=port or tls_broker.port,
            username=user,
            password=users.get(user) if password is None else password,
            ca_file=str(certs["ca.crt"]) if tls else None,
            reconnect_min_s=0.1,
            reconnect_max_s=0.5,
            publish_timeout_s=5,
        )
        link = Link(cfg)
        links.append(link)
        return link.start(wait_s)

    try:
        with pytest.raises(LinkError, match=r"no MQTT connection.*(Not authorized|Bad user name)"):
            connect("cam1", password="wrong", wait_s=1)
        with pytest.raises(LinkError, match="no MQTT connection"):
            connect("cam1", tls=False, wait_s=1)  # plain MQTT on the TLS port

        store = SampleStore(tmp_path / "store")
        trainer = connect("trainer")
        SampleReceiver(trainer, TransferAssembler(tmp_path / "spool", store.store, store.has))
        statuses: list[str] = []
        trainer.subscribe_message(
            trainer.topic("agent_status", ANY_AGENT),
            AgentStatus,
            lambda t, m: statuses.append(m.agent),
        )
        cam1, cam2 = connect("cam1"), connect("cam2")

        # Allowed: a whole transfer over TLS (cam1 writes its sample topics, reads its acks).
        data = os.urandom(30_000)
        header = sample(data)
        assert (
            TransferSender(cam1, "cam1").ship(header, data, ack_timeout_s=5, attempts=2).status
            == "stored"
        )
        cam1.publish(
            cam1.topic("agent_status", "cam1"), AgentStatus(agent="cam1", state="online", time=1.0)
        )
        wait_until(lambda: statuses == ["cam1"], 5, "cam1's own status")

        # Refused: cam2 writing as cam1, and cam2 reading cam1's commands.
        with pytest.raises(LinkError, match="refused"):
            cam2.publish(
                cam2.topic("agent_status", "cam1"),
                AgentStatus(agent="cam1", state="offline", time=2.0),
            )
        # mosquitto 2.0 grants the subscription but never delivers what the ACL forbids.
        spied: list[Command] = []
        got: list[Command] = []
        cam1_cmd = topic("agent_cmd", agent="cam1")
        own: list[Command] = []
        cam2.subscribe_message(cam1_cmd, Command, lambda t, m: spied.append(m))
        cam2.subscribe_message(
            topic("agent_cmd", agent="cam2"), Command, lambda t, m: own.append(m)
        )
        cam1.subscribe_message(cam1_cmd, Command, lambda t, m: got.append(m))
        wait_until(lambda: all(c.subscriptions_settled() for c in (cam1, cam2)), 5, "SUBACKs")
        trainer.publish(cam1_cmd, Command.new("trigger_cycle", k=5))
        wait_until(lambda: len(got) == 1, 5, "cam1's command")
        # The broker serves the trainer's messages in order: once cam2 has its own command,
        # cam1's would have reached it before, had the ACL let it through.
        trainer.publish(topic("agent_cmd", agent="cam2"), Command.new("rescore"))
        wait_until(lambda: len(own) == 1, 5, "cam2's own command")
        assert spied == []
        assert statuses == ["cam1"]

        # The local plain listener (for a trainer on the broker's host) still wants a password.
        assert connect("trainer", tls=False, port=local_port).connected
        with pytest.raises(LinkError):
            connect("trainer", password="wrong", tls=False, port=local_port, wait_s=1)
    finally:
        for link in links:
            link.stop()
        tls_broker.stop()


def test_link_threads_end_on_stop(make_link: Callable[..., Link]) -> None:
    before = threading.active_count()
    link = make_link("short-lived")
    link.stop()
    wait_until(lambda: threading.active_count() <= before, 5, "the link's threads to end")
