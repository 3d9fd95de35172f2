"""The dal/v1 wire contract without a broker: topics, JSON messages, chunks, signatures, docs."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import stat
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dal.errors import ConfigError, LinkError
from dal.link import chunks, messages, signing, topics
from dal.link.messages import (
    Ack,
    AgentStatus,
    Command,
    Detection,
    Event,
    Metrics,
    ModelManifest,
    ModelRequest,
    SampleHeader,
    TrainerStatus,
)

REPO = Path(__file__).resolve().parents[1]
JSON_TYPES = [
    AgentStatus,
    TrainerStatus,
    Metrics,
    Event,
    Command,
    SampleHeader,
    Ack,
    ModelManifest,
    ModelRequest,
]


def make_header(data: bytes = b"x" * 1000, agent: str = "cam1", **over: object) -> SampleHeader:
    fields = dict(
        sample_id=messages.new_sample_id(agent),
        agent=agent,
        chunk_size=256,
        captured_at=time.time(),
        model_version="m0",
        score=1.25,
        feature=(0.5,) * 8,
        detections=(Detection(box=(1.0, 2.0, 30.0, 40.0), label=1, score=0.8),),
    )
    fields.update(over)
    return SampleHeader.for_payload(data, **fields)


# -- topics --------------------------------------------------------------------------------------


def test_topic_builder_covers_every_row_and_rejects_bad_ids() -> None:
    built = {
        row.name: topics.topic(row.name, "plant/a", "cam1" if row.per_agent else None)
        for row in topics.TOPICS
    }
    assert built["agent_status"] == "plant/a/agents/cam1/status"
    assert built["model_manifest"] == "plant/a/models/manifest"
    assert built["model_manifest_agent"] == "plant/a/agents/cam1/model/manifest"
    for row in topics.GROUP_TOPICS:
        assert row.per_group and not row.per_agent
        built[row.name] = topics.topic(row.name, "plant/a", group="line3")
    assert built["model_manifest_group"] == "plant/a/groups/line3/model/manifest"
    assert topics.group_of("dal/v1/groups/line-3/model/manifest") == "line-3"
    assert topics.topic("model_manifest_group", group="+") == "dal/v1/groups/+/model/manifest"
    for bad_group in ("", "a/b", "#", "x y", "a" * 65, ".x"):
        with pytest.raises(LinkError):
            topics.topic("model_manifest_group", group=bad_group)
        with pytest.raises(LinkError):
            topics.check_group_id(bad_group)
    with pytest.raises(LinkError):
        topics.topic("model_manifest_group")  # per group: needs group=
    with pytest.raises(LinkError):
        topics.topic("model_manifest", group="line3")  # not per group
    assert topics.topic("sample_chunk", agent=topics.ANY_AGENT) == "dal/v1/agents/+/samples/chunk"
    assert topics.agent_of("dal/v1/agents/cam-7/samples/chunk") == "cam-7"
    for bad_agent in ("", "a/b", "#", "x y", "a" * 65):
        with pytest.raises(LinkError):
            topics.topic("agent_status", agent=bad_agent)
    for bad_root in ("", "/dal", "dal/", "dal/#", "dal/+/v1"):
        with pytest.raises(LinkError):
            topics.topic("model_manifest", root=bad_root)
    with pytest.raises(LinkError):
        topics.topic("agent_status")  # per agent: needs agent=
    with pytest.raises(LinkError):
        topics.agent_of("dal/v1/models/manifest")


def test_every_payload_named_in_the_table_exists() -> None:
    for row in topics.TOPICS:
        assert row.payload == "chunk" or issubclass(
            getattr(messages, row.payload), messages.Message
        )
        assert row.publisher in (topics.AGENT, topics.TRAINER, topics.OPERATOR)


def test_docs_list_exactly_the_topic_table() -> None:
    doc = (REPO / "docs" / "mqtt.md").read_text()
    assert topics.markdown_table() in doc, "docs/mqtt.md is stale: paste `python -m dal.link doc`"
    for row in topics.TOPICS:
        if row.payload == "chunk":
            continue
        assert f"### {row.payload}" in doc, f"docs/mqtt.md does not describe {row.payload}"
        section = doc.split(f"### {row.payload}", 1)[1].split("\n#", 1)[0]
        for f in dataclasses.fields(getattr(messages, row.payload)):
            assert f.name in section, f"docs/mqtt.md: {row.payload} lacks the key {f.name}"


def test_example_acl_matches_the_topic_table() -> None:
    acl = (REPO / "systemd" / "mosquitto-dal.acl").read_text()
    assert acl == topics.mosquitto_acl(), (
        "regenerate: python -m dal.link acl > systemd/mosquitto-dal.acl"
    )


# -- JSON messages -------------------------------------------------------------------------------


def test_messages_round_trip_exactly() -> None:
    header = make_header(meta={"width": 640})
    samples = [
        header,
        AgentStatus(
            agent="cam1", state="online", time=1.0, model_version="m3", pool_size=5, fps=2.5
        ),
        TrainerStatus(state="offline", time=2.0),
        Metrics(agent="cam1", time=3.0, values={"fps": 2.0, "pool": 7}),
        Event(agent="cam1", time=4.0, kind="command_result", data={"id": "c1", "ok": True}),
        Command.new("set_query", k=25, beta=2.0, strategy="dbal"),
        Ack(sample_id=header.sample_id, status="stored", time=5.0),
        ModelRequest(version="m3", chunks=(0, 5, 9)),
    ]
    for message in samples:
        again = type(message).from_json(message.to_json())
        assert again == message
        assert again.to_json() == message.to_json()


@pytest.mark.parametrize(
    ("cls", "payload"),
    [
        (AgentStatus, b'{"agent": "cam1", "state": "sleeping", "time": 1}'),
        (AgentStatus, b'{"agent": "cam1", "state": "online"}'),
        (AgentStatus, b'{"agent": "cam1", "state": "online", "time": "noon"}'),
        (AgentStatus, b'{"agent": "cam1", "state": "online", "time": NaN}'),
        (AgentStatus, b'{"agent": "cam1", "state": "online", "time": 1e999}'),
        (AgentStatus, b'{"agent": "cam1", "state": "online", "time": 1, "pool_size": true}'),
        (AgentStatus, b'{"agent": "a/b", "state": "online", "time": 1}'),
        (AgentStatus, b"[1, 2]"),
        (AgentStatus, b"\xff\xfe garbage"),
        (Metrics, b'{"agent": "cam1", "time": 1, "values": {"fps": "fast"}}'),
        (Command, b'{"id": "c1", "action": "format_disk", "time": 1}'),
        (Command, b'{"id": "c1", "action": "set_query", "time": 1, "params": {"k": -3}}'),
        (Command, b'{"id": "c1", "action": "set_query", "time": 1, "params": {"k": 2.5}}'),
        (Command, b'{"id": "c1", "action": "rescore", "time": 1, "params": {"rm": "-rf"}}'),
        (Ack, b'{"sample_id": "cam1:x", "status": "maybe", "time": 1}'),
        (ModelRequest, b'{"version": "m1", "chunks": []}'),
        (ModelRequest, b'{"version": "m1", "chunks": [-1]}'),
        (ModelRequest, json.dumps({"version": "m1", "chunks": list(range(65))}).encode()),
        (ModelManifest, b'{"version": "../../etc", "filename": "m.onnx"}'),
        (SampleHeader, b"{" * 100000 + b"}" * 100000),
        (SampleHeader, b" " * (messages.MAX_JSON_BYTES + 1)),
    ],
)
def test_malformed_messages_raise_link_error(cls: type[messages.Message], payload: bytes) -> None:
    with pytest.raises(LinkError):
        cls.from_json(payload)


def test_sample_header_rules() -> None:
    header = make_header(b"y" * 1000)
    assert header.chunk_count == 4 and header.size == 1000
    body = header.to_dict()
    for change in ({"chunk_count": 5}, {"sample_id": "cam2:abc"}, {"sha256": "ABC"}, {"size": 0}):
        with pytest.raises(LinkError):
            SampleHeader.from_dict({**body, **change})
    with pytest.raises(LinkError):
        SampleHeader.from_dict(
            {**body, "detections": [{"box": [1, 2, 3], "label": 1, "score": 0.5}]}
        )
    # Unknown keys are ignored: a newer agent may add fields.
    assert SampleHeader.from_dict({**body, "future_field": 1}) == header


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=200).map(str.encode))
def test_any_bytes_either_decode_or_raise_link_error(payload: bytes) -> None:
    for cls in JSON_TYPES:
        with contextlib.suppress(LinkError):
            cls.from_json(payload)
    with contextlib.suppress(LinkError):
        chunks.decode_chunk(payload)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "agent",
                "state",
                "time",
                "sample_id",
                "size",
                "chunks",
                "values",
                "params",
                "action",
                "id",
                "box",
                "detections",
                "feature",
                "version",
            ]
        ),
        json_values,
    )
)
def test_any_json_object_either_decodes_or_raises_link_error(obj: dict) -> None:
    payload = json.dumps(obj).encode()
    for cls in JSON_TYPES:
        with contextlib.suppress(LinkError):
            cls.from_json(payload)


# -- chunks --------------------------------------------------------------------------------------


def test_chunk_round_trip_and_damage_detection() -> None:
    tid = messages.transfer_id_for("cam1:abc")
    data = chunks.encode_chunk(chunks.KIND_SAMPLE, tid, 2, 3, 512, b"payload")
    assert len(data) == chunks.HEADER_SIZE + 7
    chunk = chunks.decode_chunk(data)
    assert (chunk.transfer_id, chunk.index, chunk.count, chunk.offset, chunk.payload) == (
        tid,
        2,
        3,
        512,
        b"payload",
    )
    damaged = bytearray(data)
    damaged[-1] ^= 0x01
    bad_magic = b"XXXX" + data[4:]
    bad_version = data[:4] + b"\x09" + data[5:]
    bad_index = chunks.encode_chunk(chunks.KIND_SAMPLE, tid, 3, 3, 0, b"p")
    for broken in (bytes(damaged), bad_magic, bad_version, bad_index, data[:10]):
        with pytest.raises(LinkError):
            chunks.decode_chunk(broken)


def test_chunk_size_limits() -> None:
    assert chunks.check_chunk_size(chunks.DEFAULT_CHUNK_SIZE) == 262144
    for bad in (0, 100, 2 * 1024 * 1024):
        with pytest.raises(LinkError):
            chunks.check_chunk_size(bad)


# -- signing -------------------------------------------------------------------------------------


def test_keypair_files_sign_and_verify(tmp_path: Path) -> None:
    kid = signing.generate_keypair(tmp_path / "trainer.key", tmp_path / "trainer.pub")
    assert stat.S_IMODE(os.stat(tmp_path / "trainer.key").st_mode) == 0o600
    with pytest.raises(ConfigError):
        signing.generate_keypair(tmp_path / "trainer.key", tmp_path / "trainer.pub")
    private = signing.load_private_key(tmp_path / "trainer.key")
    public = signing.load_public_key(tmp_path / "trainer.pub")
    assert signing.key_id(public) == kid

    manifest = ModelManifest(
        version="m1",
        filename="m1.onnx",
        size=10,
        sha256="a" * 64,
        chunk_size=4,
        chunk_count=3,
        created=1.0,
    )
    signed = signing.sign_manifest(manifest, private)
    signing.verify_manifest(signed, public)
    signing.verify_manifest(ModelManifest.from_json(signed.to_json()), public)

    tampered = dataclasses.replace(signed, sha256="b" * 64)
    with pytest.raises(LinkError):
        signing.verify_manifest(tampered, public)
    with pytest.raises(LinkError):
        signing.verify_manifest(dataclasses.replace(signed, signature="not base64!"), public)
    signing.generate_keypair(tmp_path / "other.key", tmp_path / "other.pub")
    with pytest.raises(LinkError):
        signing.verify_manifest(signed, signing.load_public_key(tmp_path / "other.pub"))
    with pytest.raises(ConfigError):
        signing.load_public_key(tmp_path / "missing.pub")
    with pytest.raises(ConfigError):
        signing.load_private_key(tmp_path / "trainer.pub")
