"""`dal monitor`: the agents' view is built from the MQTT topics alone."""

from __future__ import annotations

import time
from pathlib import Path

from broker import wait_until

from dal.cli import main
from dal.link import AgentStatus, Event, Metrics, ModelManifest, TrainerStatus
from dal.trainer.monitor import MonitorState, render

ROOT = "dal/v1"


def _retained_world(link) -> float:
    now = time.time()
    statuses = [
        AgentStatus(
            agent="cam1",
            state="online",
            time=now,
            model_version="m1",
            pool_size=42,
            fps=2.5,
            last_cycle=now - 125,
            outbox_backlog=3,
        ),
        AgentStatus(agent="cam2", state="offline", time=now, model_version="m0", pool_size=7),
    ]
    for status in statuses:
        link.publish(link.topic("agent_status", status.agent), status, retain=True)
    trainer = TrainerStatus(
        state="online", time=now, model_version="m1", samples_stored=12, labelling_queue=5
    )
    link.publish(link.topic("trainer_status"), trainer, retain=True)
    manifest = ModelManifest(
        version="m1",
        filename="m1.onnx",
        size=2_000_000,
        sha256="ab" * 32,
        chunk_size=262144,
        chunk_count=8,
        created=now - 30,
        meta={"AP": 0.5123},
    )
    link.publish(link.topic("model_manifest"), manifest, retain=True)
    return now


def test_monitor_once_prints_every_agent_from_retained_topics(make_link, broker, capsys) -> None:
    _retained_world(make_link("test-operator"))
    code = main(["monitor", "--once", "--port", str(broker.port), "--wait", "1.0"])
    assert code == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("cam")}
    assert lines.keys() == {"cam1", "cam2"}
    cam1 = lines["cam1"].split()
    assert cam1[:5] == ["cam1", "online", "m1", "42", "2.5"]
    assert "2m ago" in lines["cam1"] and " 3 " in lines["cam1"]
    assert "offline" in lines["cam2"] and "m0 (not current)" in lines["cam2"]
    assert "trainer: online, model m1, 12 samples stored, 5 to label" in out
    assert "published model: m1 (2.0 MB, AP 0.512" in out
    assert "agents: 2 known, 1 online" in out


def test_live_metrics_and_events_update_the_view(make_link) -> None:
    state = MonitorState(ROOT)
    viewer = make_link("test-viewer", wait_s=None)
    state.attach(viewer)
    assert viewer.wait_connected(10)
    agent = make_link("cam3")
    status = AgentStatus(agent="cam3", state="online", time=time.time(), fps=1.0, pool_size=1)
    agent.publish(agent.topic("agent_status", "cam3"), status, retain=True)
    wait_until(lambda: state.snapshot()[0], 5, "the status")
    metrics = Metrics(agent="cam3", time=time.time(), values={"fps": 4.25, "infer_ms": 80.0})
    agent.publish(agent.topic("agent_metrics", "cam3"), metrics, qos=1)
    event = Event(agent="cam3", time=time.time(), kind="cycle_done", message="k=25")
    agent.publish(agent.topic("agent_events", "cam3"), event)
    wait_until(lambda: state.snapshot()[0][0].event is not None, 5, "the event")
    wait_until(lambda: state.snapshot()[0][0].metrics is not None, 5, "the metrics")
    text = render(*state.snapshot())
    (row,) = [line for line in text.splitlines() if line.startswith("cam3")]
    assert "4.2" in row and "cycle_done 0s ago" in row


def test_an_empty_broker_renders_a_clear_screen() -> None:
    text = render([], None, None, now=1000.0)
    assert "trainer: no status seen" in text and "published model: none" in text
    assert "agents: 0 known, 0 online" in text
    assert text.splitlines()[-1].split()[0] == "AGENT"


def test_monitor_reads_the_mqtt_table_of_a_config_file(broker, tmp_path: Path, capsys) -> None:
    config = tmp_path / "trainer.toml"
    config.write_text(f'[mqtt]\nport = {broker.port}\nroot = "site7/v1"\n')
    assert main(["monitor", "--once", "--config", str(config), "--wait", "0.2"]) == 0
    assert "agents: 0 known" in capsys.readouterr().out
    config.write_text("[mqtt]\nprot = 1\n")
    assert main(["monitor", "--once", "--config", str(config)]) == 1
    assert "[mqtt]: unknown key 'prot'" in capsys.readouterr().err


def test_seen_is_the_time_the_agent_sent_not_when_the_monitor_got_it(
    make_link, broker, capsys
) -> None:
    """A retained status from an hour ago was not seen just now, whenever the monitor starts."""
    operator = make_link("test-operator")
    old = AgentStatus(agent="cam5", state="offline", time=time.time() - 3600, pool_size=3)
    operator.publish(operator.topic("agent_status", "cam5"), old, retain=True)
    assert main(["monitor", "--once", "--port", str(broker.port), "--wait", "1.0"]) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("cam5")]
    assert row.split()[-3:] == ["1h", "ago", "-"], row  # SEEN, then no LAST EVENT
