"""The edge daemon end to end: recordings replayed through real ONNX models into a real SQLite
pool, cycles shipped over a real mosquitto to a receiver that stores and acks, crashes of the
broker and of the agent itself, garbage on the wire, camera loss, systemd notifications."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from agent_helpers import (
    AGENT,
    Receiver,
    Watcher,
    contract_model,
    load,
    recording,
    write_config,
)
from broker import Broker, wait_until
from model_fixtures import TinyModel

from dal.agent.config import CycleConfig
from dal.agent.cycle import COMMAND, DRIFT, POOL_GROWTH, TIMER, CycleTrigger, decide
from dal.agent.daemon import AgentDaemon
from dal.agent.outbox import ACKED, REJECTED, Outbox
from dal.agent.pool import Pool
from dal.agent.pool_schema import POOLED, QUEUED, SHIPPED
from dal.agent.supervisor import Worker
from dal.errors import StorageError
from dal.link import TOPICS, Ack, Command, Link, topic
from dal.link.topics import AGENT as AGENT_PUBLISHER
from dal.notify import Notifier
from dal.strategies import select

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return contract_model(tmp_path / "models" / "m1.onnx", "m1")


@pytest.fixture
def rec(tmp_path: Path) -> Path:
    return recording(tmp_path / "rec.mkv", 24)


def start_daemon(config_path: Path, env: dict[str, str] | None = None) -> AgentDaemon:
    return AgentDaemon(load(config_path), env=env or {}).start()


def wait_pooled(daemon: AgentDaemon, n: int, timeout_s: float = 30.0) -> None:
    wait_until(lambda: len(daemon.pool) >= n, timeout_s, f"{n} pooled samples")


def wait_worker_passes(
    daemon: AgentDaemon, name: str, passes: int, timeout_s: float = 10.0
) -> None:
    """Wait until worker `name`'s heartbeat has moved on `passes` times. A worker that beats
    once per loop has then finished the pass it was in and `passes - 1` whole passes after it."""
    worker = daemon.workers[name]
    for n in range(passes):
        beat = worker.beat
        wait_until(lambda b=beat: worker.beat > b, timeout_s, f"beat {n + 1} of worker {name}")


def command(link: Link, action: str, **params: object) -> Command:
    cmd = Command.new(action, **params)
    link.publish(topic("agent_cmd", link.config.root, AGENT), cmd)
    return cmd


# ---- outbox ----------------------------------------------------------------------------------


def _pool_with(tmp_path: Path, n: int) -> tuple[Pool, list[str]]:
    pool = Pool(tmp_path / "pool", min_free_bytes=0)
    rng = np.random.default_rng(0)
    ids = []
    for i in range(n):
        image = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
        ids.append(
            pool.add(
                capture_time=1000.0 + i,
                source="test",
                model_version="m1",
                score=float(i) / n,
                feature=rng.standard_normal(256),
                detections=[],
                image=image,
                sample_id=f"s{i:02d}",
            )
        )
    return pool, [i for i in ids if i]


def enqueue(outbox: Outbox, ids: list[str]) -> list[str]:
    _, queued = outbox.enqueue_cycle(
        ids,
        reason="test",
        strategy="margin",
        k=len(ids),
        beta=2.0,
        seed=0,
        model_version="m1",
        pool_size=10,
    )
    return queued


def test_a_cycle_is_queued_in_one_transaction_or_not_at_all(tmp_path: Path) -> None:
    pool, ids = _pool_with(tmp_path, 6)
    outbox = Outbox(pool.db_path, AGENT)
    assert enqueue(outbox, [ids[0], ids[1], "gone"]) == [ids[0], ids[1]]
    assert pool.get(ids[0]).state == QUEUED and outbox.counts()["queued"] == 2
    assert outbox.last_cycle().selected == 2
    # A failure in the middle (a trigger that aborts on the third sample) rolls back all of it.
    with sqlite3.connect(pool.db_path) as conn:
        conn.execute(
            "CREATE TRIGGER boom BEFORE INSERT ON outbox WHEN NEW.sample_id = 's04' "
            "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
        )
    with pytest.raises(StorageError, match="disk on fire"):
        enqueue(outbox, [ids[2], ids[3], ids[4]])
    assert [pool.get(i).state for i in ids[2:5]] == [POOLED] * 3
    assert outbox.counts()["queued"] == 2 and outbox.last_cycle().cycle == 1
    outbox.close()
    pool.close()


def test_acks_settle_once_and_the_outbox_survives_a_reopen(tmp_path: Path) -> None:
    pool, ids = _pool_with(tmp_path, 5)
    outbox = Outbox(pool.db_path, AGENT)
    enqueue(outbox, ids[:4])
    wire = [outbox.wire_id(i) for i in ids[:4]]
    assert wire[0] == f"{AGENT}:{ids[0]}"
    assert outbox.settle(Ack(wire[0], "stored", time.time())) == ACKED
    assert outbox.settle(Ack(wire[0], "duplicate", time.time())) == ACKED  # repeat: no change
    assert outbox.settle(Ack(wire[1], "duplicate", time.time())) == ACKED
    assert outbox.settle(Ack(wire[2], "rejected", time.time(), "sha256")) == REJECTED
    assert outbox.settle(Ack("cam9:nope", "stored", time.time())) is None
    assert pool.get(ids[0]).state == SHIPPED and pool.get(ids[2]).state == QUEUED
    outbox.note_attempt(ids[3])
    outbox.close()
    pool.close()
    pool = Pool(tmp_path / "pool", min_free_bytes=0)
    outbox = Outbox(pool.db_path, AGENT)
    assert [item.sample_id for item in outbox.pending()] == [ids[3]]
    assert outbox.pending()[0].attempts == 1
    assert outbox.counts() == {"queued": 1, "acked": 2, "rejected": 1, "lost": 0}
    assert outbox.integrity_check() == []
    outbox.close()
    pool.close()


# ---- cycle trigger ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "state", "expected"),
    [
        (CycleConfig(pool_growth=10, min_pool=5), {"grown": 10}, POOL_GROWTH),
        (CycleConfig(pool_growth=10, min_pool=5), {"grown": 9}, None),
        (CycleConfig(pool_growth=10, min_pool=50), {"grown": 10}, None),  # pool too small
        (CycleConfig(pool_growth=0, interval_s=60, min_pool=5), {"since_last_s": 61}, TIMER),
        (CycleConfig(pool_growth=0, on_drift=True, min_pool=5), {"drift": True}, DRIFT),
        (CycleConfig(pool_growth=0, on_drift=False, min_pool=5), {"drift": True}, None),
        (CycleConfig(min_pool=50), {"requested": True}, COMMAND),  # commands skip min_pool
        (CycleConfig(min_pool=1), {"requested": True, "pooled": 0}, None),
    ],
)
def test_cycle_trigger_rule(config: CycleConfig, state: dict, expected: str | None) -> None:
    args = {"pooled": 20, "grown": 0, "since_last_s": 0.0, "drift": False, "requested": False}
    assert decide(config, **{**args, **state}) == expected


def test_cycle_trigger_counts_and_resets() -> None:
    now = [0.0]
    trigger = CycleTrigger(CycleConfig(pool_growth=3, interval_s=100, min_pool=1), lambda: now[0])
    trigger.added(2)
    assert trigger.check(10, drift=False) is None
    trigger.added()
    assert trigger.check(10, drift=False) == (POOL_GROWTH, {})
    trigger.done(POOL_GROWTH)
    trigger.request(id="c1", k=3)
    assert trigger.check(10, drift=False) == (COMMAND, {"id": "c1", "k": 3})
    trigger.done(COMMAND)
    now[0] = 150.0
    assert trigger.check(10, drift=False) == (TIMER, {})


# ---- systemd notify --------------------------------------------------------------------------


@pytest.fixture
def notify_socket(tmp_path: Path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(10.0)
    yield sock, str(path)
    sock.close()


def read_notifications(sock: socket.socket, until: Callable[[list[str]], bool]) -> list[str]:
    got: list[str] = []
    while not until(got):
        got.append(sock.recv(4096).decode())
    return got


def test_notifier_speaks_the_systemd_protocol(notify_socket) -> None:
    sock, path = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000"})
    assert notifier.enabled and notifier.watchdog_s == 3.0
    assert notifier.ready("pool 0")
    assert sock.recv(100) == b"READY=1\nSTATUS=pool 0"
    assert notifier.watchdog() and sock.recv(100) == b"WATCHDOG=1"
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"dal-test-{os.getpid()}"
    abstract.bind("\0" + name)
    assert Notifier({"NOTIFY_SOCKET": "@" + name}).status("line\nbreak")
    assert abstract.recv(100) == b"STATUS=line break"
    abstract.close()
    off = Notifier({})
    assert not off.enabled and not off.ready() and off.watchdog_s is None
    other = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})
    assert other.watchdog_s is None  # the watchdog is meant for another process


def test_daemon_notifies_ready_watchdog_and_stopping(
    tmp_path: Path, model: Path, rec: Path, notify_socket
) -> None:
    sock, path = notify_socket
    config = write_config(tmp_path, model=model, source=rec, port=None)
    daemon = start_daemon(config, {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "600000"})
    try:
        got = read_notifications(sock, lambda g: any("WATCHDOG=1" in m for m in g))
        assert got[0].startswith("READY=1\nSTATUS=model m1")
    finally:
        daemon.stop()
    rest = read_notifications(sock, lambda g: any("STOPPING=1" in m for m in g))
    assert rest[-1] == "STOPPING=1"


# ---- supervision and sources -----------------------------------------------------------------


def test_a_crashing_worker_is_restarted_then_stops_the_agent(
    tmp_path: Path, model: Path, rec: Path
) -> None:
    config = write_config(
        tmp_path,
        model=model,
        source=rec,
        port=None,
        overrides={"supervisor": {"max_restarts": 2, "restart_window_s": 60}},
    )
    daemon = start_daemon(config)
    runs: list[float] = []

    def crash() -> None:
        runs.append(time.monotonic())
        raise RuntimeError("bug in a worker")

    daemon.workers["boom"] = Worker("boom", crash)
    daemon.workers["boom"].start()
    assert daemon.wait(20.0), "the agent should stop after the restart limit"
    assert len(runs) == 3  # first run + 2 restarts
    assert "crashed 3 times" in str(daemon.fatal)
    status = json.loads((tmp_path / "agent" / "status.json").read_text())
    assert status["state"] == "stopped"
    assert [e["kind"] for e in status["recent_events"]].count("worker_restarted") == 2


def test_camera_loss_reconnects_with_backoff_and_is_reported(tmp_path: Path, model: Path) -> None:
    missing = tmp_path / "later.mkv"
    config = write_config(tmp_path, model=model, source=missing, port=None)
    daemon = start_daemon(config)
    status_file = tmp_path / "agent" / "status.json"
    try:

        def reconnecting() -> bool:
            source = json.loads(status_file.read_text())["source"] if status_file.exists() else {}
            return source.get("status") == "reconnecting" and source.get("attempts", 0) >= 2

        wait_until(reconnecting, 20.0, "the source to be retried")
        assert "not found" in json.loads(status_file.read_text())["source"]["last_error"]
        recording(tmp_path / "tmp.mkv", 8).rename(missing)  # the camera comes back
        wait_pooled(daemon, 8)

        def reported() -> bool:  # the supervisor's next tick turns the state into events
            kinds = {e["kind"] for e in daemon.recent_events}
            return {"source_lost", "source_connected"} <= kinds

        wait_until(reported, 10.0, "source_lost and source_connected events")
        assert daemon.source.state.reconnects == 1
    finally:
        daemon.stop()


# ---- through the broker ----------------------------------------------------------------------


@pytest.mark.slow
def test_recording_through_exported_model_ships_dbal_picks(
    tmp_path: Path, tiny_model: TinyModel, broker: Broker, make_link: Callable[..., Link]
) -> None:
    rec = recording(tmp_path / "rec.mkv", 30)
    trainer = make_link("trainer")
    receiver = Receiver(trainer, tmp_path / "trainer")
    watcher = Watcher(trainer)
    config = write_config(
        tmp_path,
        model=tiny_model.onnx,
        source=rec,
        port=broker.port,
        overrides={"cycle": {"pool_growth": 30, "min_pool": 5}, "query": {"k": 5}},
    )
    daemon = start_daemon(config)
    try:
        done = watcher.wait_event("cycle_done", 120.0)
        receiver.wait_for(5, 30.0)
        wait_until(lambda: daemon.outbox.counts()["acked"] == 5, 10.0, "5 acked samples")
        status = watcher.wait_status(lambda s: s.outbox_backlog == 0, 10.0)
        version = daemon.models.version
        everything = daemon.pool.candidates((POOLED, QUEUED, SHIPPED))
    finally:
        daemon.stop()
    # the pool: every frame scored by the exported model, with its 256-d P2 feature
    assert len(everything) == 30
    assert everything.features.shape == (30, 256) and np.isfinite(everything.features).all()
    assert (everything.scores >= 0).all() and len(set(everything.scores.round(6))) > 1
    assert status.state == "online" and status.model_version == version
    # the cycle: DBAL's picks on the whole pool, seeded with the cycle number
    assert done.data["reason"] == "pool_growth" and done.data["strategy"] == "dbal"
    expected = select("dbal", everything, 5, beta=2.0, seed=1)
    assert sorted(done.data["samples"]) == sorted(f"{AGENT}:{i}" for i in expected)
    # the receiver: each pick stored once, bytes and header as in the pool
    assert sorted(receiver.stores) == sorted(done.data["samples"])
    assert set(receiver.stores.values()) == {1}
    header = receiver.headers[done.data["samples"][0]]
    assert len(header.feature) == 256 and header.model_version == version
    assert header.meta["width"] == 160 and header.meta["height"] == 96
    watcher.wait_status(lambda s: s.state == "offline", 10.0)  # a clean stop says offline


def test_broker_killed_mid_transfer_every_sample_arrives_once(
    tmp_path: Path, model: Path, rec: Path, broker: Broker, make_link: Callable[..., Link]
) -> None:
    trainer = make_link("trainer")
    receiver = Receiver(trainer, tmp_path / "trainer", delay_s=0.3)
    config = write_config(
        tmp_path, model=model, source=rec, port=broker.port, overrides={"query": {"k": 8}}
    )
    daemon = start_daemon(config)
    try:
        wait_pooled(daemon, 24)
        daemon.request_cycle()
        receiver.wait_for(2, 30.0)
        broker.kill()
        wait_until(lambda: not daemon.link.connected, 10, "the agent to notice the broker is gone")
        broker.start()
        receiver.wait_for(8, 60.0)
        wait_until(lambda: daemon.outbox.counts()["acked"] == 8, 30.0, "8 acked samples")
        picked = {r["wire_id"] for r in daemon.outbox.rows()}
    finally:
        daemon.stop()
    assert set(receiver.stores) == picked
    assert set(receiver.stores.values()) == {1}, "a sample was stored twice"
    assert daemon.shipper.stats["shipped"] >= 8


def test_commands_steer_the_query(
    tmp_path: Path, model: Path, rec: Path, broker: Broker, make_link: Callable[..., Link]
) -> None:
    operator = make_link("operator")
    receiver = Receiver(operator, tmp_path / "trainer")
    watcher = Watcher(operator)
    config = write_config(tmp_path, model=model, source=rec, port=broker.port)
    daemon = start_daemon(config)
    try:
        wait_pooled(daemon, 24)
        watcher.wait_status(lambda s: s.pool_size == 24, 10.0)
        bad = command(operator, "set_query", strategy="oracle")
        result = watcher.wait_event("command_result", 10.0, lambda e: e.data["id"] == bad.id)
        assert result.data["ok"] is False and "oracle" in result.message
        ok = command(operator, "set_query", strategy="margin", k=3)
        result = watcher.wait_event("command_result", 10.0, lambda e: e.data["id"] == ok.id)
        assert result.data["ok"] is True
        top3 = [s.sample_id for s in daemon.pool.top(3)]
        go = command(operator, "trigger_cycle")
        result = watcher.wait_event("command_result", 10.0, lambda e: e.data["id"] == go.id)
        assert result.data["ok"] is True
        done = watcher.wait_event("cycle_done", 10.0)
        assert done.data["strategy"] == "margin" and done.data["k"] == 3
        assert sorted(done.data["samples"]) == sorted(f"{AGENT}:{i}" for i in top3)
        receiver.wait_for(3, 20.0)
        again = command(operator, "rescore")
        result = watcher.wait_event("command_result", 10.0, lambda e: e.data["id"] == again.id)
        assert result.data["ok"] and "21" in result.message  # 24 pooled - 3 shipped
        watcher.wait_event("pool_rescored", 10.0)
    finally:
        daemon.stop()
    # the operator's setting outlives a restart (the config's [query] did not change)
    again = start_daemon(config)
    again.stop()
    assert again.query.strategy == "margin" and again.query.k == 3


GARBAGE = [
    b"",
    b"\x00\xff" * 50,
    os.urandom(300),
    b"{}",
    b"[1, 2, 3]",
    b"null",
    b'{"id": 5, "action": "trigger_cycle", "time": "soon"}',
    b'{"sample_id": "cam1:x", "status": "maybe", "time": 1}',
    b'{"version": "m9", "filename": "../../etc/passwd", "size": -1}',
    b"DALC" + os.urandom(60),
    b'{"a": ' * 5000,
    os.urandom(1_500_000),  # huge
]


def test_garbage_on_every_subscribed_topic_does_not_crash_it(
    tmp_path: Path, model: Path, rec: Path, broker: Broker, make_link: Callable[..., Link]
) -> None:
    from dal.link.signing import generate_keypair

    generate_keypair(tmp_path / "key.pem", tmp_path / "key.pub")
    config = write_config(
        tmp_path,
        model=model,
        source=rec,
        port=broker.port,
        overrides={"update": {"public_key": str(tmp_path / "key.pub")}},
    )
    rogue = make_link("rogue")
    watcher = Watcher(rogue)
    daemon = start_daemon(config)
    try:
        watcher.wait_status(lambda s: s.state == "online", 10.0)
        inbound = [spec for spec in TOPICS if spec.publisher != AGENT_PUBLISHER]
        for spec in inbound:
            name = topic(spec.name, rogue.config.root, AGENT if spec.per_agent else None)
            for payload in GARBAGE:
                rogue.publish(name, payload)
        wait_pooled(daemon, 24)
        probe = command(rogue, "set_query", k=2)
        result = watcher.wait_event("command_result", 20.0, lambda e: e.data["id"] == probe.id)
        assert result.data["ok"] is True
        errors = daemon.link.errors()
        assert sum(errors.values()) >= 3 * len(GARBAGE)
        assert all(w.alive for w in daemon.workers.values() if not w.finished)
        assert daemon.fatal is None and daemon.models.version == "m1"
    finally:
        daemon.stop()


# ---- the agent killed -9 mid-cycle -----------------------------------------------------------


def _agent_process(config: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(config.parent / "agent.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "dal.cli", "agent", "run", "--config", str(config)],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


def _outbox_rows(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5.0) as conn:
        try:
            return conn.execute("SELECT wire_id, status FROM outbox").fetchall()
        except sqlite3.OperationalError:
            return []  # not created yet


@pytest.mark.slow
def test_agent_killed_mid_cycle_resumes_without_loss_or_duplicates(
    tmp_path: Path,
    model: Path,
    rec: Path,
    broker: Broker,
    make_link: Callable[..., Link],
    notify_socket,
) -> None:
    sock, path = notify_socket
    trainer = make_link("trainer")
    receiver = Receiver(trainer, tmp_path / "trainer", delay_s=0.4)
    watcher = Watcher(trainer)
    config = write_config(
        tmp_path,
        model=model,
        source=rec,
        port=broker.port,
        overrides={"cycle": {"pool_growth": 24, "min_pool": 4}, "query": {"k": 6}},
    )
    db = tmp_path / "agent" / "pool" / "pool.sqlite"
    agent = _agent_process(config, {"NOTIFY_SOCKET": path})
    try:
        read_notifications(sock, lambda g: any(m.startswith("READY=1") for m in g))
        receiver.wait_for(2, 60.0)
        agent.send_signal(signal.SIGKILL)  # mid-cycle: picks queued, some shipped, some not
        agent.wait(10)
        assert len(receiver.stores) < 6
        watcher.wait_status(lambda s: s.state == "offline", 10.0)  # the Last Will
        agent = _agent_process(config, {"NOTIFY_SOCKET": path})

        def all_acked() -> bool:  # the first cycle finished, and the replay's second one
            rows = _outbox_rows(db)
            return len(rows) == 12 and all(status == "acked" for _, status in rows)

        wait_until(all_acked, 90.0, "every queued sample acked after the restart")
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(10)
    rows = _outbox_rows(db)
    assert set(receiver.stores) == {wire for wire, _ in rows}, "a sample was lost"
    assert set(receiver.stores.values()) == {1}, "a sample was stored twice"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        states = dict(conn.execute("SELECT state, COUNT(*) FROM samples GROUP BY state"))
    assert states.get("queued", 0) == 0 and states["shipped"] == len(rows)


def test_drift_starts_a_cycle_once_per_shift(tmp_path: Path, model: Path) -> None:
    from recordings import make_frames, write_kinect_mkv

    calm = make_frames(16, 160, 96, seed=0)
    shifted = [255 - f for f in make_frames(24, 160, 96, seed=5)]  # the scene changed
    rec = write_kinect_mkv(tmp_path / "drift.mkv", calm + shifted)
    config = write_config(
        tmp_path,
        model=model,
        source=rec,
        port=None,
        overrides={
            "drift": {
                "enabled": True,
                "window": 8,
                "min_samples": 8,
                # the calm frames alone reach a distance of 0.26 (their parts move): at 0.2 a
                # drift could fire inside them, and whether a second one followed depended on
                # when the cycle worker looked; the shift reaches 0.46 on its first frame
                "feature_distance": 0.35,
                "score_z": 50.0,
            },
            "cycle": {"pool_growth": 0, "on_drift": True, "min_pool": 4},
        },
    )
    daemon = start_daemon(config)
    try:
        wait_pooled(daemon, 40)
        wait_until(lambda: daemon.outbox.last_cycle() is not None, 10.0, "a drift cycle")
        # Every frame is in (drift is measured before a frame is pooled). Two beats of the cycle
        # worker: the pass that ran the cycle (and moved the reference) is over, and a whole
        # pass after it has looked again; a second cycle for the same shift would be there.
        wait_worker_passes(daemon, "cycle", 2)
        cycles = daemon.outbox.cycles()
    finally:
        daemon.stop()
    assert [c.reason for c in cycles] == ["drift"]
    assert daemon.drift.reference is not None


def test_agent_over_tls_with_password_under_the_example_acl(
    tmp_path: Path, model: Path, rec: Path
) -> None:
    """The agent's every topic (status, events, samples, acks, commands, model manifest) works
    under systemd/mosquitto-dal.conf: TLS, a password, and the per-agent ACL."""
    from broker import free_port, start_broker_for, write_password_file
    from tls_files import make_tls_files

    from dal.link import LinkConfig

    repo = Path(__file__).resolve().parents[1]
    certs = make_tls_files(tmp_path / "certs")
    users = {"trainer": "t-secret", AGENT: "c1-secret"}
    write_password_file(tmp_path / "dal.passwd", users)
    (tmp_path / "cam1.password").write_text("c1-secret\n")
    local_port = free_port()
    conf = (repo / "systemd" / "mosquitto-dal.conf").read_text()
    for old, new in {
        "/etc/mosquitto/certs/": f"{tmp_path}/certs/",
        "/etc/mosquitto/dal.passwd": str(tmp_path / "dal.passwd"),
        "/etc/mosquitto/dal.acl": str(repo / "systemd" / "mosquitto-dal.acl"),
        "/var/lib/mosquitto/": f"{tmp_path}/data/",
        "listener 8883": "listener {port} 127.0.0.1",
        "listener 1883 127.0.0.1": f"listener {local_port} 127.0.0.1",
    }.items():
        conf = conf.replace(old, new)
    (tmp_path / "data").mkdir()
    tls_broker = start_broker_for(tmp_path / "broker", config=conf)
    trainer = Link(
        LinkConfig("trainer", port=local_port, username="trainer", password="t-secret")
    ).start(10.0)
    config = write_config(
        tmp_path,
        model=model,
        source=rec,
        port=tls_broker.port,
        overrides={
            "mqtt": {
                "username": AGENT,
                "password_file": str(tmp_path / "cam1.password"),
                "ca_file": str(certs["ca.crt"]),
            }
        },
    )
    daemon = None
    try:
        receiver = Receiver(trainer, tmp_path / "trainer")
        watcher = Watcher(trainer)
        daemon = start_daemon(config)
        wait_pooled(daemon, 24)
        go = command(trainer, "trigger_cycle", k=3)
        watcher.wait_event("command_result", 20.0, lambda e: e.data["id"] == go.id)
        receiver.wait_for(3, 20.0)
        wait_until(lambda: daemon.outbox.counts()["acked"] == 3, 10.0, "3 acks over TLS")
        assert watcher.wait_status(lambda s: s.outbox_backlog == 0, 10.0).state == "online"
        assert daemon.link.errors() == {}
    finally:
        if daemon is not None:
            daemon.stop()
        trainer.stop()
        tls_broker.stop()
