"""Model updates on the agent: a signed model pushed over a real mosquitto is verified, smoke
tested, swapped in and the pool re-scored; anything wrong with it is refused while the old model
keeps serving; a model that fails right after the swap is rolled back."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from agent_helpers import AGENT, Watcher, contract_model, load, recording, write_config
from broker import Broker, wait_until
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dal.agent.config import DetectorConfig
from dal.agent.daemon import AgentDaemon
from dal.agent.detector import Detections
from dal.agent.model_update import ModelManager, ModelStore, output_problem
from dal.errors import ModelError
from dal.link import Link, ModelManifest, ModelPublisher, ModelRequest, build_manifest, signing
from dal.link.chunks import KIND_MODEL, encode_chunk

pytestmark = pytest.mark.timeout(180)
CHUNK = 16 * 1024


@pytest.fixture
def key(tmp_path: Path) -> Ed25519PrivateKey:
    signing.generate_keypair(tmp_path / "trainer.key", tmp_path / "trainer.pub")
    return signing.load_private_key(tmp_path / "trainer.key")


@pytest.fixture
def agent_config(tmp_path: Path, broker: Broker) -> Path:
    """m1 configured, a looping real-time replay (so frames keep coming), updates on."""
    model = contract_model(tmp_path / "start" / "m1.onnx", "m1")
    rec = recording(tmp_path / "rec.mkv", 24)
    return write_config(
        tmp_path,
        model=model,
        source=rec,
        port=broker.port,
        overrides={
            "source": {"loop": True, "realtime": True},
            "policy": {"min_interval_s": 0.25},
            "update": {"public_key": str(tmp_path / "trainer.pub"), "smoke_images": 4},
        },
    )


def serving(daemon: AgentDaemon, version: str) -> None:
    """The agent still infers frames with `version`."""
    before = daemon.counters.inferred
    wait_until(lambda: daemon.counters.inferred > before + 3, 10.0, "frames inferred")
    assert daemon.models.version == version
    assert daemon.models.store.current() == daemon.models.store.path_for(version).resolve()


def test_pushed_model_is_verified_swapped_and_the_pool_rescored(
    tmp_path: Path,
    key: Ed25519PrivateKey,
    agent_config: Path,
    make_link: Callable[..., Link],
) -> None:
    trainer = make_link("trainer")
    watcher = Watcher(trainer)
    daemon = AgentDaemon(load(agent_config), env={}).start()
    try:
        wait_until(lambda: len(daemon.pool) >= 6, 20.0, "a few pooled frames")
        before = {s.sample_id: s.score for s in daemon.pool.top(1000)}
        m2 = contract_model(tmp_path / "registry" / "m2.onnx", "m2", bias=2.0)
        ModelPublisher(trainer).publish(m2, build_manifest(m2, "m2", key, chunk_size=CHUNK))
        swapped = watcher.wait_event("model_swapped", 30.0)
        assert swapped.data["version"] == "m2" and swapped.data["previous"] == "m1"
        assert swapped.data["smoke_images"] == 4
        watcher.wait_status(lambda s: s.model_version == "m2", 10.0)

        def rescored() -> bool:
            versions = {s.model_version for s in daemon.pool.top(100_000)}
            return versions == {"m2"}

        wait_until(rescored, 30.0, "every pooled sample scored by m2")
        after = {s.sample_id: s.score for s in daemon.pool.top(100_000)}
        assert all(after[i] != pytest.approx(before[i]) for i in before)
        store = daemon.models.store
        assert store.current() == store.path_for("m2").resolve()
        assert store.previous() == store.path_for("m1").resolve()
        assert (
            hashlib.sha256(store.path_for("m2").read_bytes()).hexdigest()
            == hashlib.sha256(m2.read_bytes()).hexdigest()
        )
        serving(daemon, "m2")
    finally:
        daemon.stop()
    # a restart runs the pushed model, not the configured m1 (which did not change)
    again = AgentDaemon(load(agent_config), env={}).start()
    try:
        assert again.models.version == "m2"
    finally:
        again.stop()


def _manifest_signed_by_another_key(tmp_path: Path, key: Ed25519PrivateKey) -> tuple:
    m2 = contract_model(tmp_path / "registry" / "m2.onnx", "m2")
    signing.generate_keypair(tmp_path / "evil.key", tmp_path / "evil.pub")
    evil = signing.load_private_key(tmp_path / "evil.key")
    return m2, build_manifest(m2, "m2", evil, chunk_size=CHUNK)


def _manifest_with_a_wrong_hash(tmp_path: Path, key: Ed25519PrivateKey) -> tuple:
    m2 = contract_model(tmp_path / "registry" / "m2.onnx", "m2")
    good = build_manifest(m2, "m2", key, chunk_size=CHUNK)
    wrong = dataclasses.replace(good, sha256=hashlib.sha256(b"other").hexdigest())
    return m2, signing.sign_manifest(wrong, key)


def _garbage_file(tmp_path: Path, key: Ed25519PrivateKey) -> tuple:
    path = tmp_path / "registry" / "m2.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(40_000))
    return path, build_manifest(path, "m2", key, chunk_size=CHUNK)


def _model(**kw: object) -> Callable[[Path, Ed25519PrivateKey], tuple]:
    def make(tmp_path: Path, key: Ed25519PrivateKey) -> tuple:
        path = contract_model(tmp_path / "registry" / "m2.onnx", str(kw.pop("meta", "m2")), **kw)
        return path, build_manifest(path, "m2", key, chunk_size=CHUNK)

    return make


@pytest.mark.parametrize(
    ("make", "reason", "config"),
    [
        (_manifest_signed_by_another_key, "signed by key", {}),
        (_manifest_with_a_wrong_hash, "sha256", {}),
        (_garbage_file, "cannot load", {}),
        (_model(nan=True), "NaN", {}),
        (_model(slow_matmuls=40), "latency", {"max_latency_s": 0.01}),
        (_model(meta="m1"), "metadata says version", {}),
    ],
    ids=["bad-signature", "wrong-hash", "not-onnx", "nan-outputs", "too-slow", "wrong-version"],
)
def test_a_bad_model_is_refused_and_the_old_one_keeps_serving(
    tmp_path: Path,
    key: Ed25519PrivateKey,
    agent_config: Path,
    make_link: Callable[..., Link],
    make: Callable[[Path, Ed25519PrivateKey], tuple],
    reason: str,
    config: dict,
) -> None:
    if config:
        text = agent_config.read_text()
        extra = "".join(f"{k} = {v}\n" for k, v in config.items())
        agent_config.write_text(text.replace("[update]\n", "[update]\n" + extra))
    trainer = make_link("trainer")
    watcher = Watcher(trainer)
    daemon = AgentDaemon(load(agent_config), env={}).start()
    try:
        wait_until(lambda: len(daemon.pool) >= 4, 20.0, "a few pooled frames")
        path, manifest = make(tmp_path, key)
        ModelPublisher(trainer).publish(path, manifest)
        refused = watcher.wait_event("model_refused", 30.0)
        assert reason in refused.message and refused.data["running"] == "m1"
        serving(daemon, "m1")
        assert not watcher.of("model_swapped")
        assert daemon.models.last_outcome["ok"] is False
        refused_file = json.loads((daemon.models.store.root / "refused.json").read_text())
        assert f"m2:{manifest.sha256}" in refused_file
        assert not list(daemon.models.store.incoming.glob("*.onnx"))  # nothing left behind
    finally:
        daemon.stop()


class DamagingPublisher:
    """A trainer whose first answer for some chunks arrives damaged (bad CRC)."""

    def __init__(self, link: Link, path: Path, manifest: ModelManifest, damage: set[int]) -> None:
        self.link, self.path, self.manifest = link, path, manifest
        self.damage = damage
        self.damaged: set[int] = set()
        self.lock = threading.Lock()
        link.subscribe_message(link.topic("model_request", AGENT), ModelRequest, self._on_request)
        link.publish(link.topic("model_manifest"), manifest, retain=True)

    def _on_request(self, topic: str, request: ModelRequest) -> None:
        m = self.manifest
        data = self.path.read_bytes()
        for index in request.chunks:
            piece = data[index * m.chunk_size : (index + 1) * m.chunk_size]
            offset = index * m.chunk_size
            message = bytearray(
                encode_chunk(KIND_MODEL, m.transfer_id, index, m.chunk_count, offset, piece)
            )
            with self.lock:
                if index in self.damage and index not in self.damaged:
                    self.damaged.add(index)
                    message[-1] ^= 0xFF  # one flipped bit in transit: the CRC no longer fits
            self.link.publish(self.link.topic("model_chunk", AGENT), bytes(message))


@pytest.mark.slow
def test_damaged_chunks_are_refused_and_fetched_again(
    tmp_path: Path, key: Ed25519PrivateKey, agent_config: Path, make_link: Callable[..., Link]
) -> None:
    trainer = make_link("trainer")
    watcher = Watcher(trainer)
    daemon = AgentDaemon(load(agent_config), env={}).start()
    try:
        wait_until(lambda: len(daemon.pool) >= 4, 20.0, "a few pooled frames")
        m2 = contract_model(tmp_path / "registry" / "m2.onnx", "m2", slow_matmuls=1)
        manifest = build_manifest(m2, "m2", key, chunk_size=CHUNK)
        damage = {0, 5, manifest.chunk_count - 1}
        publisher = DamagingPublisher(trainer, m2, manifest, damage)
        wait_until(lambda: publisher.damaged == damage, 20.0, "damaged chunks sent")
        serving(daemon, "m1")  # the incomplete download changes nothing
        chunk_topic = trainer.topic("model_chunk", AGENT)
        assert daemon.link.errors().get(chunk_topic, 0) == len(damage)
        watcher.wait_event("model_swapped", 30.0)  # the chunks asked for again arrive intact
        assert daemon.models.version == "m2"
    finally:
        daemon.stop()


# ---- rollback and the store, without the broker ----------------------------------------------


def _manager(tmp_path: Path, key: Ed25519PrivateKey, events: list) -> ModelManager:
    store = ModelStore(tmp_path / "models", keep_previous=1)
    manager = ModelManager(
        store,
        DetectorConfig(providers=("CPUExecutionProvider",), threads=1),
        public_key=key.public_key(),
        probation_frames=3,
        report=lambda kind, message, data: events.append((kind, data)),
    )
    manager.load_initial(contract_model(tmp_path / "start" / "m1.onnx", "m1"))
    return manager


def _push(manager: ModelManager, tmp_path: Path, key: Ed25519PrivateKey, version: str, **kw):
    source = contract_model(tmp_path / "registry" / f"{version}.onnx", version, **kw)
    manifest = build_manifest(source, version, key, chunk_size=CHUNK)
    incoming = manager.store.incoming / f"{version}.onnx"
    shutil.copyfile(source, incoming)
    return manager.apply_update(manifest, incoming, [DARK]), manifest


DARK = np.full((96, 160, 3), 40, np.uint8)
BRIGHT = np.full((96, 160, 3), 200, np.uint8)


def test_a_model_failing_in_probation_is_rolled_back(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    events: list = []
    manager = _manager(tmp_path, key, events)
    outcome, manifest = _push(manager, tmp_path, key, "m2", fail_above=128)
    assert outcome.ok  # the dark smoke image passes
    assert manager.version == "m2"
    manager.infer(DARK)
    with pytest.raises(ModelError, match="break the contract"):
        manager.infer(BRIGHT)
    assert manager.version == "m1"
    assert manager.store.current() == manager.store.path_for("m1").resolve()
    assert manager.store.is_refused("m2", manifest.sha256)  # not downloaded again
    assert not manager.wants(manifest)
    kinds = [k for k, _ in events]
    assert kinds == ["model_swapped", "model_rolled_back"]
    assert events[1][1]["restored"] == "m1"
    detections, active = manager.infer(BRIGHT)  # m1 serves again
    assert active.version == "m1" and len(detections) == 3
    # once probation is over a failure is only an error: no rollback
    assert _push(manager, tmp_path, key, "m3", fail_above=128)[0].ok
    for _ in range(3):
        manager.infer(DARK)
    with pytest.raises(ModelError):
        manager.infer(BRIGHT)
    assert manager.version == "m3"
    manager.close()


def test_store_keeps_current_previous_and_n_more(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models", keep_previous=1)
    for i in range(1, 5):
        src = tmp_path / f"m{i}.bin"
        src.write_bytes(b"x" * i)
        store.install(src, f"m{i}")
        os.utime(store.path_for(f"m{i}"), ns=(i * 10**9, i * 10**9))
        store.activate(f"m{i}")
    assert store.current() == store.path_for("m4").resolve()
    assert store.previous() == store.path_for("m3").resolve()
    assert sorted(p.name for p in store.versions.iterdir()) == ["m2.onnx", "m3.onnx", "m4.onnx"]
    assert store.rollback() == store.path_for("m3").resolve()
    assert store.current() == store.path_for("m3").resolve() and store.previous() is None
    assert store.rollback() is None
    store.refuse("m9", "ab" * 32, "bad")
    assert ModelStore(tmp_path / "models").is_refused("m9", "ab" * 32)


def _detections(**changes: np.ndarray) -> Detections:
    base = {
        "boxes": np.array([[1, 2, 30, 40]], np.float32),
        "labels": np.array([1]),
        "scores": np.array([0.7], np.float32),
        "probs": np.array([[0.2, 0.7, 0.1]], np.float32),
        "feature": np.ones(256, np.float32),
    }
    return Detections(**{**base, **changes})


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({}, None),
        ({"feature": np.full(256, np.inf, np.float32)}, "feature"),
        ({"probs": np.array([[0.2, 0.2, 0.1]], np.float32)}, "sum to"),
        ({"probs": np.array([[-0.5, 1.4, 0.1]], np.float32)}, "outside [0, 1]"),
        ({"labels": np.array([3])}, "labels"),
        ({"scores": np.array([7.0], np.float32)}, "scores"),
    ],
)
def test_output_sanity_rules(changes: dict, problem: str | None) -> None:
    found = output_problem(_detections(**changes), num_classes=2)
    assert (found is None) if problem is None else (problem in found)


def test_pool_images_feed_the_smoke_test(key: Ed25519PrivateKey, agent_config: Path) -> None:
    daemon = AgentDaemon(load(agent_config), env={}).start()
    try:
        wait_until(lambda: len(daemon.pool) >= 4, 20.0, "a few pooled frames")
        images = daemon.smoke_images()
    finally:
        daemon.stop()
    assert len(images) == 4 and images[0].shape == (96, 160, 3)
