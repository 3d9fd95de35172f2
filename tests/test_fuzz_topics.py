"""Property test over every topic the agent and the trainer subscribe to: messages of the right
shape with values out of range (huge and negative numbers, NaN and Infinity, wrong types, long
strings, odd nesting) go through a real mosquitto to a running agent daemon and a running
trainer service. Both must stay up, refuse such messages cleanly (counted, never a handler
crash), answer every command whose id can be read, and keep working for real traffic."""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import AGENT, Watcher, contract_model, load, recording, write_config
from broker import Broker, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_trainer_service import trainer_config
from trainer_samples import sample_header

from dal.agent.daemon import AgentDaemon
from dal.link import AgentStatus, Command, Link, TransferSender, topic
from dal.link.chunks import FORMAT_VERSION, KIND_MODEL, KIND_SAMPLE, encode_chunk
from dal.link.signing import generate_keypair
from dal.trainer.service import TrainerService

pytestmark = pytest.mark.timeout(300)

EXAMPLES = 25  # x up to 12 messages: a few hundred in all

NASTY: st.SearchStrategy[Any] = st.one_of(
    st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**30, -1, 0, -(10**20)]),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 5e-324, -0.0]),
    st.text(max_size=20),
    st.sampled_from(["x" * 5000, "../../etc/passwd", "", "\x00", "cam1:" + "a" * 300]),
    st.booleans(),
    st.none(),
    st.lists(st.integers(-(2**64), 2**64), max_size=4),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.recursive(st.integers(), lambda inner: st.lists(inner, max_size=2), max_leaves=40),
)

_ids = itertools.count(1)


def _base(kind: str) -> dict[str, Any]:
    """A valid message of each JSON kind; the strategy below breaks some of its fields."""
    now = time.time()
    if kind == "agent_cmd":
        return {"id": "x", "action": "set_query", "time": now, "params": {"k": 3, "beta": 2.0}}
    if kind == "sample_ack":
        return {"sample_id": f"{AGENT}:nothing", "status": "stored", "time": now, "reason": ""}
    if kind == "model_manifest":
        return {
            "version": "m9",
            "filename": "m9.onnx",
            "size": 5000,
            "sha256": "ab" * 32,
            "chunk_size": 4096,
            "chunk_count": 2,
            "created": now,
            "key_id": "0" * 16,
            "signature": "AAAA",
            "meta": {},
        }
    if kind == "sample_header":
        return json.loads(sample_header(os.urandom(3000)).to_json())
    if kind == "agent_status":
        return {"agent": AGENT, "state": "online", "time": now, "pool_size": 1, "fps": 1.0}
    if kind == "agent_metrics":
        return {"agent": AGENT, "time": now, "values": {"fps": 1.0}}
    if kind == "agent_events":
        return {"agent": AGENT, "time": now, "kind": "cycle_done", "message": "", "data": {}}
    if kind == "model_request":
        return {"version": "m9", "chunks": [0, 1]}
    raise AssertionError(kind)


JSON_TOPICS = [
    "agent_cmd",
    "sample_ack",
    "model_manifest",
    "sample_header",
    "agent_status",
    "agent_metrics",
    "agent_events",
    "model_request",
]


@st.composite
def json_message(draw: st.DrawFn) -> tuple[str, bytes, str | None]:
    """(topic name, payload, the command id an answer is owed to)."""
    name = draw(st.sampled_from(JSON_TOPICS))
    body = _base(name)
    command_id = None
    if name == "agent_cmd":
        command_id = f"f{next(_ids)}"
        body["id"] = command_id
        body["action"] = draw(st.sampled_from(["set_query", "trigger_cycle", "rescore", "boom"]))
        keys = draw(st.lists(st.sampled_from(["k", "beta", "strategy", "seed"]), max_size=3))
        body["params"] = {key: draw(NASTY) for key in keys}
    fields = [k for k in body if k != "id"] + ["extra"]
    for key in draw(st.lists(st.sampled_from(fields), min_size=1, max_size=3, unique=True)):
        body[key] = draw(NASTY)
    if draw(st.booleans()) and isinstance(body.get("params"), dict):
        body["params"]["k"] = draw(NASTY)
    # Python writes NaN/Infinity literals as JSON allows them nowhere: a receiver must say no.
    return name, json.dumps(body, allow_nan=True).encode(), command_id


@st.composite
def chunk_message(draw: st.DrawFn) -> tuple[str, bytes, None]:
    """A well-framed binary chunk with out-of-range geometry, on a sample or model topic."""
    name = draw(st.sampled_from(["sample_chunk", "model_chunk"]))
    kind = KIND_SAMPLE if name == "sample_chunk" else KIND_MODEL
    kind = draw(st.sampled_from([kind, kind, 0, 255]))
    count = draw(st.sampled_from([1, 2, 2**32 - 1, 0]))
    index = draw(st.integers(0, 2**32 - 1))
    offset = draw(st.sampled_from([0, 1024, 2**63, 2**64 - 1]))
    payload = os.urandom(draw(st.integers(0, 3000)))
    message = bytearray(encode_chunk(kind, os.urandom(16), index, count, offset, payload))
    if draw(st.booleans()):
        message[4] = draw(st.sampled_from([FORMAT_VERSION, 0, 99]))
    return name, bytes(message), None


MESSAGES = st.lists(st.one_of(json_message(), chunk_message()), min_size=3, max_size=12)


class World:
    """A running agent and trainer on one broker, a rogue publisher and an operator."""

    def __init__(self, agent: AgentDaemon, trainer: TrainerService, rogue: Link, watcher: Watcher):
        self.agent, self.trainer, self.rogue, self.watcher = agent, trainer, rogue, watcher
        self.owed: set[str] = set()
        self.probes = itertools.count(1)

    def publish(self, name: str, payload: bytes) -> None:
        per_agent = name not in ("model_manifest",)
        self.rogue.publish(
            topic(name, self.rogue.config.root, AGENT if per_agent else None), payload
        )

    def probe(self) -> None:
        """Both sides still answer real messages after what came before."""
        n = next(self.probes)
        command = Command.new("set_query", k=4)
        self.publish("agent_cmd", command.to_json())
        self.watcher.wait_event("command_result", 20.0, lambda e: e.data["id"] == command.id)
        status = AgentStatus(agent=f"probe{n}", state="online", time=time.time())
        self.rogue.publish(topic("agent_status", self.rogue.config.root, status.agent), status)
        wait_until(
            lambda: any(a["agent"] == status.agent for a in self.trainer.store.agents()),
            20.0,
            "the trainer to record the probe status",
        )


@pytest.fixture
def world(tmp_path: Path, broker: Broker, make_link: Callable[..., Link]) -> Iterator[World]:
    generate_keypair(tmp_path / "key.pem", tmp_path / "key.pub")
    config = write_config(
        tmp_path,
        model=contract_model(tmp_path / "models" / "m1.onnx", "m1"),
        source=recording(tmp_path / "rec.mkv", 12),
        port=broker.port,
        overrides={"update": {"public_key": str(tmp_path / "key.pub")}},
    )
    trainer = TrainerService(trainer_config(tmp_path / "trainer", broker.port)).start(10.0)
    rogue = make_link("rogue")
    watcher = Watcher(rogue)
    agent = AgentDaemon(load(config), env={}).start()
    try:
        wait_until(lambda: len(agent.pool) >= 12, 30.0, "12 pooled frames")
        yield World(agent, trainer, rogue, watcher)
    finally:
        agent.stop()
        trainer.stop()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(messages=MESSAGES)
def test_out_of_range_messages_on_every_topic_are_refused_cleanly(
    world: World, messages: list[tuple[str, bytes, str | None]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    for name, payload, command_id in messages:
        world.publish(name, payload)
        if command_id is not None:
            world.owed.add(command_id)
    world.probe()
    crashed = [r.getMessage() for r in caplog.records if "crashed" in r.getMessage()]
    assert not crashed, crashed  # a refusal is a LinkError: counted, no traceback
    agent, trainer = world.agent, world.trainer
    assert agent.fatal is None and trainer.healthy()
    assert all(w.alive for w in agent.workers.values() if not w.finished)
    answered = {e.data.get("id") for e in world.watcher.of("command_result")}
    cycling = {e.data.get("id") for e in world.watcher.of("cycle_failed")}
    late = world.owed - answered
    if late:  # a trigger_cycle is answered when its cycle ends: give it that long
        wait_until(
            lambda: (
                not (world.owed - {e.data.get("id") for e in world.watcher.of("command_result")})
            ),
            20.0,
            f"results for {sorted(late)} ({len(cycling)} cycles failed)",
        )
    # real traffic still flows both ways: a sample shipped to the trainer is stored and acked
    data = os.urandom(10_000)
    header = sample_header(data, agent="fuzzed")
    sender = TransferSender(world.rogue, "fuzzed")
    assert sender.ship(header, data, ack_timeout_s=5.0, attempts=2).status == "stored"
    assert math.isfinite(agent.query.beta) and 1 <= agent.query.k <= 100_000
