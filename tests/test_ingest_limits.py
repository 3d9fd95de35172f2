"""One agent cannot stop the trainer's ingest for the others: unfinished transfers are bounded
per agent, and chunks whose header never comes hold only a few short-lived slots."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from broker import SampleStore
from test_link_transfer import header_for, trainer_side

from dal.errors import LinkError
from dal.link import Link, SampleHeader, TransferAssembler, TransferSender
from dal.link.chunks import KIND_SAMPLE, decode_chunk, encode_chunk

pytestmark = pytest.mark.timeout(120)


def junk_chunk() -> bytes:
    """A well-formed chunk of a transfer whose header never comes."""
    return encode_chunk(KIND_SAMPLE, os.urandom(16), 0, 2, 0, os.urandom(1024))


def ship(link: Link, agent: str, data: bytes) -> tuple[SampleHeader, str]:
    header = header_for(data, chunk_size=4096, agent=agent)
    ack = TransferSender(link, agent).ship(header, data, ack_timeout_s=3.0, attempts=2)
    return header, ack.status


def test_headerless_chunks_from_one_agent_block_nobody(
    make_link: Callable[..., Link], tmp_path: Path
) -> None:
    _trainer, assembler, store = trainer_side(make_link, tmp_path)
    rogue = make_link("cam9")
    chunk_topic = rogue.topic("sample_chunk", "cam9")
    for _ in range(300):  # more than the old trainer-wide limit of 256
        rogue.publish(chunk_topic, junk_chunk())
    honest = make_link("cam1")
    data = os.urandom(20_000)
    header, status = ship(honest, "cam1", data)
    assert status == "stored" and store.data(header.sample_id) == data
    # the rogue's own real transfers still go through, and its junk holds a handful of slots
    header, status = ship(rogue, "cam9", data)
    assert status == "stored" and store.data(header.sample_id) == data
    assert assembler.partial_count <= assembler.max_headerless
    assert assembler.stats["headerless_dropped"] >= 300 - assembler.max_headerless


def test_limits_are_per_agent_and_headerless_slots_expire_fast(tmp_path: Path) -> None:
    clock = [1000.0]
    store = SampleStore(tmp_path / "store")
    assembler = TransferAssembler(
        tmp_path / "spool",
        store.store,
        store.has,
        stale_after_s=600,
        max_partials=2,
        max_headerless=1,
        headerless_after_s=10,
        clock=lambda: clock[0],
    )
    headers = [header_for(os.urandom(3000), chunk_size=1024) for _ in range(3)]
    assembler.on_header("cam1", headers[0])
    assembler.on_header("cam1", headers[1])
    with pytest.raises(LinkError, match="in progress"):
        assembler.on_header("cam1", headers[2])  # cam1's own limit
    other = header_for(os.urandom(3000), chunk_size=1024, agent="cam2")
    assert assembler.on_header("cam2", other) is None  # cam2 is not affected
    assembler.on_chunk("cam2", decode_chunk(junk_chunk()))
    assert assembler.partial_count == 4
    clock[0] += 11
    assert assembler.expire() == 1  # the headerless one; the real transfers have 600 s
    assert assembler.partial_count == 3
