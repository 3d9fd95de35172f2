"""Model download trainer -> agent over a real mosquitto: verified, resumable, refused if bad."""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable
from pathlib import Path

from broker import wait_until
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from dal.link import Link, ModelDownloader, ModelManifest, ModelPublisher, build_manifest, signing
from dal.link.chunks import HEADER_SIZE, KIND_MODEL, encode_chunk

AGENT = "cam1"
CHUNK = 64 * 1024


class Outcome:
    """Collects the downloader's callbacks."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.completed: list[tuple[ModelManifest, Path]] = []
        self.failed: list[tuple[ModelManifest, str]] = []

    def on_complete(self, manifest: ModelManifest, path: Path) -> None:
        self.completed.append((manifest, path))
        self.done.set()

    def on_failed(self, manifest: ModelManifest, reason: str) -> None:
        self.failed.append((manifest, reason))
        self.done.set()


def keys(tmp_path: Path, name: str = "trainer") -> tuple[Ed25519PrivateKey, Ed25519PublicKey]:
    signing.generate_keypair(tmp_path / f"{name}.key", tmp_path / f"{name}.pub")
    return signing.load_private_key(tmp_path / f"{name}.key"), signing.load_public_key(
        tmp_path / f"{name}.pub"
    )


def model_file(tmp_path: Path, size: int = 3_000_000, name: str = "m1.onnx") -> Path:
    path = tmp_path / "registry" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


def downloader(
    link: Link, dest: Path, public: Ed25519PublicKey, outcome: Outcome, **kw: object
) -> ModelDownloader:
    options: dict[str, object] = {"window": 8, "request_timeout_s": 0.5, **kw}
    return ModelDownloader(
        link,
        AGENT,
        dest,
        public,
        outcome.on_complete,
        outcome.on_failed,
        **options,  # type: ignore[arg-type]
    ).start()


def test_model_arrives_verified_in_chunks(make_link: Callable[..., Link], tmp_path: Path) -> None:
    private, public = keys(tmp_path)
    path = model_file(tmp_path)
    manifest = build_manifest(path, "m1", private, chunk_size=CHUNK, parent_version="m0")
    assert manifest.chunk_count == 46
    publisher = ModelPublisher(make_link("trainer"))
    publisher.publish(path, manifest)

    outcome = Outcome()
    dl = downloader(make_link(AGENT), tmp_path / "models", public, outcome)
    assert outcome.done.wait(20), "the download did not finish"
    assert outcome.failed == []
    got_manifest, got_path = outcome.completed[0]
    assert got_manifest == manifest and got_path == tmp_path / "models" / "m1.onnx"
    assert got_path.read_bytes() == path.read_bytes()
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["m1.onnx"]  # no partials
    assert publisher.stats["chunks_sent"] == manifest.chunk_count
    dl.stop()


def test_download_resumes_after_the_agent_restarts(
    make_link: Callable[..., Link], tmp_path: Path
) -> None:
    private, public = keys(tmp_path)
    path = model_file(tmp_path, size=4_000_000)
    manifest = build_manifest(path, "m2", private, chunk_size=CHUNK)  # 62 chunks
    publisher = ModelPublisher(make_link("trainer"))
    publisher.publish(path, manifest)
    dest = tmp_path / "models"

    first_link = make_link(AGENT)
    first_outcome = Outcome()
    first = downloader(first_link, dest, public, first_outcome, window=4)
    wait_until(lambda: (first.progress() or ("", 0, 0))[1] >= 20, 20, "20 chunks of the first run")
    first.stop()  # the agent goes down mid-download
    first_link.stop()
    assert not first_outcome.done.is_set()
    assert (dest / ".m2.part").exists() and (dest / ".m2.part.json").exists()
    sent_before = publisher.stats["chunks_sent"]

    outcome = Outcome()
    second = downloader(make_link(f"{AGENT}-again"), dest, public, outcome)
    assert outcome.done.wait(20) and outcome.failed == []
    assert outcome.completed[0][1].read_bytes() == path.read_bytes()
    resumed = second.stats["resumed_chunks"]
    assert resumed >= 20
    assert publisher.stats["chunks_sent"] - sent_before <= manifest.chunk_count - resumed + 8
    second.stop()


class CorruptingPublisher(ModelPublisher):
    """Serves chunk `bad` with other bytes (and a valid CRC): only the sha256 can tell."""

    bad = 5

    def _chunk_message(self, manifest: ModelManifest, path: Path, index: int) -> bytes:
        message = bytearray(super()._chunk_message(manifest, path, index))
        if index != self.bad:
            return bytes(message)
        payload = bytes(b ^ 0xFF for b in message[HEADER_SIZE:])
        return encode_chunk(
            KIND_MODEL,
            manifest.transfer_id,
            index,
            manifest.chunk_count,
            index * manifest.chunk_size,
            payload,
        )


class DamagingPublisher(ModelPublisher):
    """Damages chunk 3 in transit the first time (CRC mismatch): it must be asked for again."""

    damaged = False

    def _chunk_message(self, manifest: ModelManifest, path: Path, index: int) -> bytes:
        message = bytearray(super()._chunk_message(manifest, path, index))
        if index == 3 and not self.damaged:
            self.damaged = True
            message[-1] ^= 0x01
        return bytes(message)


def test_chunk_damaged_in_transit_is_dropped_and_fetched_again(
    make_link: Callable[..., Link], tmp_path: Path
) -> None:
    private, public = keys(tmp_path)
    path = model_file(tmp_path, size=1_000_000)
    publisher = DamagingPublisher(make_link("trainer"))
    publisher.publish(path, build_manifest(path, "m3", private, chunk_size=CHUNK))
    agent = make_link(AGENT)
    outcome = Outcome()
    downloader(agent, tmp_path / "models", public, outcome)
    assert outcome.done.wait(20) and outcome.failed == []
    assert outcome.completed[0][1].read_bytes() == path.read_bytes()
    assert publisher.damaged and sum(agent.errors().values()) == 1


def test_wrong_content_is_refused_and_the_partial_removed(
    make_link: Callable[..., Link], tmp_path: Path
) -> None:
    private, public = keys(tmp_path)
    path = model_file(tmp_path, size=1_000_000)
    publisher = CorruptingPublisher(make_link("trainer"))
    publisher.publish(path, build_manifest(path, "m4", private, chunk_size=CHUNK))
    outcome = Outcome()
    dl = downloader(make_link(AGENT), tmp_path / "models", public, outcome)
    assert outcome.done.wait(20)
    assert outcome.completed == [] and "sha256" in outcome.failed[0][1]
    assert list((tmp_path / "models").iterdir()) == []
    dl.stop()


def test_manifest_with_a_wrong_hash_is_refused(
    make_link: Callable[..., Link], tmp_path: Path
) -> None:
    private, public = keys(tmp_path)
    path = model_file(tmp_path, size=500_000)
    honest = build_manifest(path, "m5", private, chunk_size=CHUNK)
    lying = signing.sign_manifest(dataclasses.replace(honest, sha256="0" * 64), private)
    publisher = ModelPublisher(make_link("trainer"))
    publisher.publish(path, lying)
    outcome = Outcome()
    downloader(make_link(AGENT), tmp_path / "models", public, outcome)
    assert outcome.done.wait(20)
    assert outcome.completed == [] and "sha256" in outcome.failed[0][1]
    assert list((tmp_path / "models").iterdir()) == []


def test_bad_signature_is_refused_before_any_download(
    make_link: Callable[..., Link], tmp_path: Path
) -> None:
    _, trusted = keys(tmp_path, "trainer")
    impostor, _ = keys(tmp_path, "impostor")
    path = model_file(tmp_path, size=200_000)
    publisher = ModelPublisher(make_link("trainer"))
    publisher.publish(path, build_manifest(path, "m6", impostor, chunk_size=CHUNK))
    outcome = Outcome()
    dl = downloader(make_link(AGENT), tmp_path / "models", trusted, outcome)
    assert outcome.done.wait(10)
    assert outcome.completed == [] and "signed by key" in outcome.failed[0][1]
    assert publisher.stats["requests"] == 0 and dl.stats["requests"] == 0
    assert list((tmp_path / "models").iterdir()) == []

    # A forged signature with the trusted key id is refused by the signature check itself.
    forged = dataclasses.replace(
        build_manifest(path, "m7", impostor, chunk_size=CHUNK), key_id=signing.key_id(trusted)
    )
    publisher.publish(path, forged)
    wait_until(lambda: len(outcome.failed) == 2, 10, "the forged manifest's refusal")
    assert "signature check failed" in outcome.failed[1][1]
