"""Sample transfers agent -> trainer through a real mosquitto: intact, acked, exactly once."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from broker import Broker, SampleStore, start_broker_for, wait_until
from hypothesis import given, settings
from hypothesis import strategies as st

from dal.errors import LinkError
from dal.link import (
    Ack,
    Detection,
    Link,
    SampleHeader,
    SampleReceiver,
    TransferAssembler,
    TransferSender,
    new_sample_id,
)
from dal.link.chunks import KIND_SAMPLE, decode_chunk, encode_chunk

AGENT = "cam1"


def header_for(data: bytes, chunk_size: int, agent: str = AGENT) -> SampleHeader:
    return SampleHeader.for_payload(
        data,
        sample_id=new_sample_id(agent),
        agent=agent,
        chunk_size=chunk_size,
        captured_at=time.time(),
        model_version="m0",
        score=0.7,
        feature=tuple(float(i) for i in range(256)),
        detections=(Detection(box=(10.0, 20.0, 110.0, 220.0), label=2, score=0.55),),
    )


def trainer_side(
    make_link: Callable[..., Link], tmp_path: Path, name: str = "trainer"
) -> tuple[Link, TransferAssembler, SampleStore]:
    store = SampleStore(tmp_path / "store")
    link = make_link(name)
    assembler = TransferAssembler(tmp_path / "spool", store.store, store.has)
    SampleReceiver(link, assembler)
    return link, assembler, store


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_multi_chunk_transfer_arrives_intact_and_is_acked(
    make_link: Callable[..., Link], tmp_path: Path, protocol: str
) -> None:
    store = SampleStore(tmp_path / "store")
    assembler = TransferAssembler(tmp_path / "spool", store.store, store.has)
    SampleReceiver(make_link("trainer", protocol=protocol), assembler)
    sender = TransferSender(make_link(AGENT, protocol=protocol), AGENT, window=4)
    data = os.urandom(1_000_000 + 17)
    header = header_for(data, chunk_size=64 * 1024)
    assert header.chunk_count == 16

    ack = sender.ship(header, data, ack_timeout_s=10, attempts=1)
    assert (ack.sample_id, ack.status, ack.ok) == (header.sample_id, "stored", True)
    assert store.data(header.sample_id) == data
    assert list(assembler.spool_dir.iterdir()) == []

    # The same sample again (its ack was lost, say): acked again, stored once.
    again = sender.ship(header, data, ack_timeout_s=10, attempts=1)
    assert again.status == "stored"  # the earlier ack is still known to the waiter
    sender.send(header, data)
    wait_until(lambda: assembler.stats["duplicates"] >= 1, 10, "the duplicate ack")
    assert store.stores[header.sample_id] == 1

    # A file on disk goes chunk by chunk, never read whole.
    path = tmp_path / "frame.jpg"
    path.write_bytes(os.urandom(300_000))
    file_header = header_for(path.read_bytes(), chunk_size=32 * 1024)
    assert sender.ship(file_header, path, ack_timeout_s=10, attempts=1).status == "stored"
    assert store.data(file_header.sample_id) == path.read_bytes()


def test_broker_killed_mid_transfer_every_sample_arrives_exactly_once(
    broker: Broker, make_link: Callable[..., Link], tmp_path: Path
) -> None:
    _, assembler, store = trainer_side(make_link, tmp_path)
    sender = TransferSender(make_link(AGENT), AGENT, window=4)
    samples = [os.urandom(400_000) for _ in range(5)]
    headers = [header_for(d, chunk_size=16 * 1024) for d in samples]  # 25 chunks each
    chunks_seen = threading.Event()
    seen = [0]
    real_on_chunk = assembler.on_chunk

    def counting_on_chunk(agent: str, chunk: object) -> Ack | None:
        seen[0] += 1
        if seen[0] == 25 * 2 + 10:  # in the middle of the third sample
            chunks_seen.set()
        return real_on_chunk(agent, chunk)  # type: ignore[arg-type]

    assembler.on_chunk = counting_on_chunk  # type: ignore[method-assign]
    acks: list[Ack] = []
    errors: list[Exception] = []

    def ship_all() -> None:
        try:
            for header, data in zip(headers, samples, strict=True):
                acks.append(sender.ship(header, data, ack_timeout_s=2, attempts=10))
        except LinkError as err:
            errors.append(err)

    shipper = threading.Thread(target=ship_all)
    shipper.start()
    assert chunks_seen.wait(20), "the transfer never got going"
    broker.kill()
    wait_until(lambda: not sender.link.connected, 10, "the sender to notice the broker is gone")
    broker.start()
    shipper.join(60)
    assert not shipper.is_alive() and not errors, errors
    assert [a.sample_id for a in acks] == [h.sample_id for h in headers]
    assert all(a.ok for a in acks)
    for header, data in zip(headers, samples, strict=True):
        assert store.stores[header.sample_id] == 1
        assert store.data(header.sample_id) == data


def test_receiver_restarted_mid_transfer_gets_a_resend_and_stores_once(
    make_link: Callable[..., Link], tmp_path: Path
) -> None:
    store = SampleStore(tmp_path / "store")
    first_link = make_link("trainer-1")
    first = TransferAssembler(tmp_path / "spool", store.store, store.has)
    dead = threading.Event()
    real_on_chunk = first.on_chunk

    def dies_after_three(agent: str, chunk: object) -> Ack | None:
        if dead.is_set():
            return None  # the process is gone: nothing more is handled
        if first.partial_count and len(next(iter(first._partials.values())).have) >= 3:
            dead.set()
            return None
        return real_on_chunk(agent, chunk)  # type: ignore[arg-type]

    first.on_chunk = dies_after_three  # type: ignore[method-assign]
    SampleReceiver(first_link, first)

    sender = TransferSender(make_link(AGENT), AGENT)
    data = os.urandom(200_000)
    header = header_for(data, chunk_size=8 * 1024)
    result: list[Ack] = []
    shipper = threading.Thread(
        target=lambda: result.append(sender.ship(header, data, ack_timeout_s=1.5, attempts=6))
    )
    shipper.start()
    assert dead.wait(10), "the receiver never saw the first chunks"
    first_link.stop()
    assert list((tmp_path / "spool").glob("*.part")), "a partial transfer should be spooled on disk"

    # The trainer comes back: a new process, the same spool folder and store.
    second = TransferAssembler(tmp_path / "spool", store.store, store.has)
    SampleReceiver(make_link("trainer-2"), second)
    shipper.join(30)
    assert result and result[0].status == "stored"
    assert store.stores[header.sample_id] == 1
    assert store.data(header.sample_id) == data


def test_failed_store_sends_no_ack_and_the_resend_is_stored(
    make_link: Callable[..., Link], tmp_path: Path
) -> None:
    store = SampleStore(tmp_path / "store")
    failures = [OSError("disk full")]

    def flaky_store(header: SampleHeader, path: Path) -> None:
        if failures:
            raise failures.pop()
        store.store(header, path)

    trainer = make_link("trainer")
    SampleReceiver(trainer, TransferAssembler(tmp_path / "spool", flaky_store, store.has))
    sender = TransferSender(make_link(AGENT), AGENT)
    data = os.urandom(50_000)
    header = header_for(data, chunk_size=4096)
    ack = sender.ship(header, data, ack_timeout_s=1.0, attempts=4)
    assert ack.status == "stored" and store.stores[header.sample_id] == 1
    assert sum(trainer.errors().values()) == 1  # the failed store was logged and counted


def test_chunk_bigger_than_the_broker_allows_is_refused_before_sending(
    tmp_path: Path, make_link: Callable[..., Link]
) -> None:
    small = start_broker_for(tmp_path / "small", ["max_packet_size 65536"])
    try:
        link = make_link(AGENT, port=small.port)
        assert link.max_packet_size == 65536
        sender = TransferSender(link, AGENT)
        data = os.urandom(200_000)
        with pytest.raises(LinkError, match="max packet size"):
            sender.send(header_for(data, chunk_size=128 * 1024), data)
        sender.send(header_for(data, chunk_size=32 * 1024), data)  # fits
    finally:
        small.stop()


# -- the assembler alone (no broker) -------------------------------------------------------------


def chunk_messages(header: SampleHeader, data: bytes) -> list[bytes]:
    size = header.chunk_size
    return [
        encode_chunk(
            KIND_SAMPLE,
            header.transfer_id,
            i,
            header.chunk_count,
            i * size,
            data[i * size : (i + 1) * size],
        )
        for i in range(header.chunk_count)
    ]


def test_assembler_takes_any_order_duplicates_and_header_last(tmp_path: Path) -> None:
    store = SampleStore(tmp_path / "store")
    assembler = TransferAssembler(tmp_path / "spool", store.store, store.has)
    data = os.urandom(10_000)
    header = header_for(data, chunk_size=1024)
    messages = chunk_messages(header, data)
    for raw in [*reversed(messages), messages[3], messages[0]]:
        assert assembler.on_chunk(AGENT, decode_chunk(raw)) is None
    ack = assembler.on_header(AGENT, header)
    assert ack is not None and ack.status == "stored"
    assert store.data(header.sample_id) == data
    # Late duplicates of a stored transfer are ignored, a repeated header is acked 'duplicate'.
    assert assembler.on_chunk(AGENT, decode_chunk(messages[1])) is None
    assert assembler.partial_count == 0
    again = assembler.on_header(AGENT, header)
    assert again is not None and again.status == "duplicate"
    assert store.stores[header.sample_id] == 1


def test_assembler_rejects_a_wrong_hash_and_spoofed_agents(tmp_path: Path) -> None:
    store = SampleStore(tmp_path / "store")
    assembler = TransferAssembler(tmp_path / "spool", store.store, store.has)
    data = os.urandom(5000)
    header = header_for(data, chunk_size=1024)
    assembler.on_header(AGENT, header)
    other = os.urandom(5000)  # same size, other bytes: the sha256 cannot match
    acks = [assembler.on_chunk(AGENT, decode_chunk(m)) for m in chunk_messages(header, other)]
    assert acks[-1] is not None and acks[-1].status == "rejected" and "sha256" in acks[-1].reason
    assert not store.has(header.sample_id)
    with pytest.raises(LinkError):
        assembler.on_header("cam2", header)  # cam2 cannot send cam1's samples


def test_assembler_expires_stale_partials_and_bounds_them(tmp_path: Path) -> None:
    clock = [1000.0]
    store = SampleStore(tmp_path / "store")
    assembler = TransferAssembler(
        tmp_path / "spool",
        store.store,
        store.has,
        stale_after_s=60,
        max_partials=2,
        clock=lambda: clock[0],
    )
    headers = [header_for(os.urandom(3000), chunk_size=1024) for _ in range(3)]
    assembler.on_header(AGENT, headers[0])
    assembler.on_header(AGENT, headers[1])
    with pytest.raises(LinkError, match="in progress"):
        assembler.on_header(AGENT, headers[2])
    clock[0] += 61
    assert assembler.expire() == 2 and assembler.partial_count == 0
    assert assembler.on_header(AGENT, headers[2]) is None
    with pytest.raises(LinkError):
        too_far = encode_chunk(KIND_SAMPLE, headers[2].transfer_id, 0, 3, 1 << 40, b"x")
        assembler.on_chunk(AGENT, decode_chunk(too_far))


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_assembler_any_arrival_order_stores_once(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    folder = tmp_path_factory.mktemp("any-order")
    store = SampleStore(folder / "store")
    assembler = TransferAssembler(folder / "spool", store.store, store.has)
    payload = os.urandom(data.draw(st.integers(1, 5000)))
    header = header_for(payload, chunk_size=1024)
    messages = chunk_messages(header, payload)
    arrivals = data.draw(
        st.permutations([*messages, *data.draw(st.lists(st.sampled_from(messages), max_size=5))])
    )
    header_at = data.draw(st.integers(0, len(arrivals)))
    acks = []
    for i, raw in enumerate(arrivals):
        if i == header_at:
            acks.append(assembler.on_header(AGENT, header))
        acks.append(assembler.on_chunk(AGENT, decode_chunk(raw)))
    if header_at == len(arrivals):
        acks.append(assembler.on_header(AGENT, header))
    assert [a.status for a in acks if a is not None] == ["stored"]
    assert store.data(header.sample_id) == payload and store.stores[header.sample_id] == 1
