"""The trainer service against a real broker, with dal.link's sender and downloader standing in
for an agent: ingest with acks, restarts mid-ingest, the oracle, a short fine-tune, the gate,
signing, publishing, and a verified download on the agent side."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from broker import wait_until
from trainer_samples import sample_header

from dal import config as cfg
from dal.coco import load_coco
from dal.errors import ConfigError
from dal.fileio import sha256_file
from dal.link import Ack, AckWaiter, ModelDownloader, TrainerStatus, TransferSender
from dal.link.chunks import KIND_SAMPLE, encode_chunk
from dal.link.signing import generate_keypair, load_public_key
from dal.procedural import make_tiny
from dal.trainer.cli import offline_status
from dal.trainer.config import TrainerConfig
from dal.trainer.service import TrainerService
from dal.trainer.store import SampleStore


def trainer_config(data: Path, port: int, **sections: dict[str, Any]) -> TrainerConfig:
    base: dict[str, Any] = {
        "trainer": {"data_dir": str(data), "status_interval_s": 1.0},
        "mqtt": {"port": port, "chunk_kib": 64},
        "finetune": {"auto": False},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return cfg.from_dict(TrainerConfig, base, source="<test>")


def test_restarted_mid_ingest_nothing_lost_nothing_twice(broker, make_link, tmp_path: Path) -> None:
    images = load_coco(make_tiny(tmp_path / "images", 10, classes=2, seed=5))
    items = []
    for rec in images.images:
        data = images.image_path(rec).read_bytes()
        items.append((sample_header(data, chunk_size=1024), data))
    config = trainer_config(tmp_path / "data", broker.port)
    first = TrainerService(config).start(wait_connected_s=10)
    link = make_link("cam1")
    not_durable: list[str] = []
    checked: set[str] = set()

    def check_durable(ack: Ack) -> None:
        """Runs when an Ack arrives: the sample must already be committed, file and row."""
        checked.add(ack.sample_id)
        with SampleStore(tmp_path / "data" / "samples") as store:
            sample = store.get(ack.sample_id)
            if sample is None or sha256_file(sample.path) != by_id[ack.sample_id]:
                not_durable.append(ack.sample_id)

    by_id = {h.sample_id: h.sha256 for h, _ in items}
    sender = TransferSender(link, "cam1", AckWaiter(link, "cam1", on_ack=check_durable), window=2)
    for header, data in items[:3]:
        assert sender.ship(header, data, ack_timeout_s=10).status == "stored"
    # half of the fourth transfer is in the trainer's spool when it stops
    header, data = items[3]
    link.publish(link.topic("sample_header", "cam1"), header)
    for index in (0, 1):
        piece = data[index * 1024 : (index + 1) * 1024]
        chunk = encode_chunk(
            KIND_SAMPLE, header.transfer_id, index, header.chunk_count, index * 1024, piece
        )
        link.publish(link.topic("sample_chunk", "cam1"), chunk)
    wait_until(lambda: first.assembler.partial_count == 1, 10, "a partial transfer")
    assert first.store.counts().samples == 3
    first.stop()

    acks: dict[str, Ack] = {}

    def ship_rest() -> None:  # the agent keeps trying while no trainer listens
        for header, data in items[3:]:
            acks[header.sample_id] = sender.ship(header, data, ack_timeout_s=1.5, attempts=60)

    headers_sent: list[bytes] = []  # the sender's own headers, seen on the broker
    link.subscribe(link.topic("sample_header", "cam1"), lambda t, p: headers_sent.append(p))
    wait_until(link.subscriptions_settled, 5, "the SUBACK")
    shipper = threading.Thread(target=ship_rest, daemon=True)
    shipper.start()
    wait_until(lambda: len(headers_sent) >= 2, 20, "a header sent again to no trainer")
    second = TrainerService(config).start(wait_connected_s=10)
    try:
        shipper.join(120)
        assert not shipper.is_alive(), "the sender never got all its acks"
        assert len(acks) == 7 and all(a.status == "stored" for a in acks.values())
        assert checked == set(by_id) and not_durable == [], "an Ack before the sample was durable"
        store = second.store
        assert store.counts().samples == 10
        for header, _ in items:
            sample = store.get(header.sample_id)
            assert sample is not None and sha256_file(sample.path) == header.sha256
        files = [p for p in (store.folder / "cam1").iterdir()]
        assert len(files) == 10, "no stray or duplicate files"
        (agent,) = store.agents()
        assert agent["samples"] == 10 and agent["bytes"] == sum(len(d) for _, d in items)
        # a sample sent again is acked 'duplicate' and not stored again
        header, data = items[0]
        resend = TransferSender(link, "cam1")  # fresh ack memory, like a restarted agent
        assert resend.ship(header, data, ack_timeout_s=5).status == "duplicate"
        assert store.counts().samples == 10
    finally:
        second.stop()


def test_second_service_on_one_data_folder_is_refused(broker, tmp_path: Path) -> None:
    """Two services on one folder would share a store and a broker client id: the second is a
    start-up error naming the first's pid; once the first stops, the folder is free again."""
    config = trainer_config(tmp_path / "data", broker.port)
    first = TrainerService(config).start(wait_connected_s=10)
    try:
        with pytest.raises(ConfigError, match=f"pid {os.getpid()}"):
            TrainerService(config).start(wait_connected_s=10)
        assert first.healthy() and first.store.counts().samples == 0  # the first one runs on
    finally:
        first.stop()
    TrainerService(config).start(wait_connected_s=10).stop()


@pytest.mark.timeout(600)
def test_end_to_end_samples_to_a_verified_model_on_the_agent(
    broker, make_link, tiny_model, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    generate_keypair(data_dir / "keys/model-signing.key", data_dir / "keys/model-signing.pub")
    config = trainer_config(
        data_dir,
        broker.port,
        labels={"oracle": str(tiny_model.train_json)},
        finetune={
            "auto": True,
            "min_new_labels": 6,
            "settle_s": 0.5,
            "val": str(tiny_model.val_json),
            "tolerance": 0.05,
            "epochs": 1,
            "batch_size": 2,
            "max_steps_per_epoch": 2,
            "lr": 0.005,
            "augment": False,
            "verify_images": 2,
        },
        models={"initial_checkpoint": str(tiny_model.checkpoint)},
    )
    service = TrainerService(config).start(wait_connected_s=10)
    try:
        initial = service.registry.current()
        assert initial is not None and initial.manifest is not None

        # the agent stand-in: downloads every signed model the trainer publishes
        link = make_link("cam1")
        got: list[tuple[Any, Path]] = []
        refused: list[str] = []
        downloader = ModelDownloader(
            link,
            "cam1",
            tmp_path / "agent-models",
            load_public_key(data_dir / "keys/model-signing.pub"),
            on_complete=lambda m, p: got.append((m, p)),
            on_failed=lambda m, why: refused.append(why),
        ).start()
        wait_until(lambda: got, 30, "the initial model on the agent")
        assert got[0][0].version == initial.version and not refused

        train = load_coco(tiny_model.train_json)
        sender = TransferSender(link, "cam1")
        metas = [{"file_name": r.file_name} for r in train.images[:4]]
        metas += [{"ground_truth": {"image_id": train.images[4].id}}, {}]  # by id, by sha256
        shipped = []
        for rec, meta in zip(train.images[:6], metas, strict=True):
            data = train.image_path(rec).read_bytes()
            header = sample_header(data, meta=meta, chunk_size=2048)
            assert sender.ship(header, data, ack_timeout_s=10).status == "stored"
            shipped.append((header, data))
        resend = TransferSender(link, "cam1")  # fresh ack memory, like a restarted agent
        assert resend.ship(*shipped[0], ack_timeout_s=10).status == "duplicate"

        wait_until(lambda: service.store.counts().labelled == 6, 30, "the oracle's labels")
        label = service.store.label(shipped[4][0].sample_id)
        assert label.boxes.tolist() == train.images[4].boxes.tolist()

        wait_until(lambda: service.last_job is not None, 400, "the automatic fine-tune job")
        job = service.last_job
        assert job.outcome == "promoted", job
        new = service.registry.current()
        assert new.version == job.version != initial.version
        assert new.parent == initial.version and new.training["real_images"] == 6
        assert service.registry.previous().version == initial.version

        wait_until(lambda: len(got) >= 2, 60, "the new model on the agent")
        manifest, path = got[-1]
        assert manifest.version == new.version and not refused
        assert sha256_file(path) == new.manifest.sha256 == sha256_file(new.onnx)
        from dal.agent.detector import Detector

        detector = Detector(path, providers=("CPUExecutionProvider",))
        assert detector.info.version == new.version
        detector.close()

        statuses: list[TrainerStatus] = []
        link.subscribe_message(
            link.topic("trainer_status"), TrainerStatus, lambda t, s: statuses.append(s)
        )
        wait_until(lambda: statuses, 10, "the retained trainer status")
        assert statuses[-1].model_version == new.version and statuses[-1].samples_stored == 6
        downloader.stop()
        running = service.status()
        assert running["connected"] and running["store"]["samples"] == 6
        assert [a["agent"] for a in running["agents"]] == ["cam1"]
        assert running["oracle"] == {"matched": 6, "unmatched": 0}
    finally:
        service.stop()
    offline = offline_status(config)  # `dal trainer status`, from the databases
    assert offline["current_model"] == new.version and offline["previous_model"] == initial.version
    assert offline["last_job"]["outcome"] == "promoted" and offline["store"]["labelled"] == 6
    assert offline["agents"][0]["samples"] == 6


def test_serve_talks_to_systemd_and_says_offline_on_sigterm(
    broker, make_link, tmp_path: Path
) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(60)
    config = tmp_path / "trainer.toml"
    config.write_text(
        f'[trainer]\ndata_dir = "{tmp_path / "data"}"\n[mqtt]\nport = {broker.port}\n'
    )
    statuses: list[TrainerStatus] = []
    observer = make_link("observer")
    observer.subscribe_message(
        observer.topic("trainer_status"), TrainerStatus, lambda t, s: statuses.append(s)
    )
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "1000000"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dal.cli", "trainer", "serve", "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        seen: list[str] = []
        while "WATCHDOG=1" not in seen:
            seen.append(notify.recv(4096).decode())
        assert "READY=1" in seen and seen.index("READY=1") < seen.index("WATCHDOG=1")
        wait_until(lambda: statuses and statuses[-1].state == "online", 10, "online status")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.stderr.read().decode()
        notify.settimeout(0.5)
        rest = []
        with contextlib.suppress(TimeoutError):
            while True:
                rest.append(notify.recv(4096).decode())
        assert "STOPPING=1" in rest, rest
        wait_until(lambda: statuses[-1].state == "offline", 10, "the offline status")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        proc.stderr.close()
        notify.close()
