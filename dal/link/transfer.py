"""Sample transfers, agent -> trainer: header + chunks up, ack down.

Sender (agent): `TransferSender.send()` publishes the header and the chunks with QoS 1, at most
`window` unacknowledged at a time, and returns once the broker took them all; `ship()` repeats
that until the trainer's Ack arrives. Only an Ack means the trainer stored the sample durably;
the caller's outbox marks a sample shipped on the Ack and nothing else.

Receiver (trainer): `TransferAssembler` spools chunks to a file per transfer (any order,
duplicates welcome), checks the sha256, hands the complete file to the caller's `store`, and
answers with an Ack. It asks the caller's `has(sample_id)` first, so a transfer sent twice is
acked twice and stored once. `SampleReceiver` wires it to a Link.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dal.errors import LinkError
from dal.fileio import sha256_file, sync_file, write_at
from dal.link.chunks import KIND_SAMPLE, Chunk, check_chunk_size, decode_chunk, encode_chunk
from dal.link.client import Link, Pending
from dal.link.messages import Ack, SampleHeader, now
from dal.link.topics import ANY_AGENT, agent_of, check_agent_id

logger = logging.getLogger(__name__)

Payload = bytes | os.PathLike[str] | str
StoreFn = Callable[[SampleHeader, Path], None]
HasFn = Callable[[str], bool]


def _iter_pieces(data: Payload, chunk_size: int) -> Iterator[bytes]:
    """The payload in chunk_size pieces; a file is read piece by piece, never whole."""
    if isinstance(data, bytes | bytearray | memoryview):
        view = memoryview(data)
        for start in range(0, len(view), chunk_size):
            yield bytes(view[start : start + chunk_size])
        return
    with open(data, "rb") as handle:
        while piece := handle.read(chunk_size):
            yield piece


def _payload_size(data: Payload) -> int:
    if isinstance(data, bytes | bytearray | memoryview):
        return len(data)
    return os.path.getsize(data)


class AckWaiter:
    """Collects the trainer's Acks for one agent; `wait(sample_id)` blocks until one arrives."""

    def __init__(
        self, link: Link, agent: str, on_ack: Callable[[Ack], None] | None = None, keep: int = 4096
    ) -> None:
        self.agent = check_agent_id(agent)
        self._on_ack = on_ack
        self._keep = keep
        self._acks: OrderedDict[str, Ack] = OrderedDict()
        self._cond = threading.Condition()
        link.subscribe_message(link.topic("sample_ack", agent), Ack, self._handle)

    def _handle(self, topic: str, ack: Ack) -> None:
        with self._cond:
            self._acks[ack.sample_id] = ack
            self._acks.move_to_end(ack.sample_id)
            while len(self._acks) > self._keep:
                self._acks.popitem(last=False)
            self._cond.notify_all()
        if self._on_ack is not None:
            self._on_ack(ack)

    def get(self, sample_id: str) -> Ack | None:
        with self._cond:
            return self._acks.get(sample_id)

    def wait(self, sample_id: str, timeout_s: float) -> Ack | None:
        """The Ack for `sample_id` (also one that came earlier), or None after `timeout_s`."""
        with self._cond:
            self._cond.wait_for(lambda: sample_id in self._acks, timeout_s)
            return self._acks.get(sample_id)


class TransferSender:
    """Publishes sample transfers for one agent; see the module docstring."""

    def __init__(
        self,
        link: Link,
        agent: str,
        acks: AckWaiter | None = None,
        window: int = 8,
        publish_timeout_s: float | None = None,
    ) -> None:
        if window < 1:
            raise LinkError("transfer window must be >= 1")
        self.link = link
        self.agent = check_agent_id(agent)
        self.acks = acks if acks is not None else AckWaiter(link, agent)
        self.window = window
        self.publish_timeout_s = publish_timeout_s
        self._header_topic = link.topic("sample_header", agent)
        self._chunk_topic = link.topic("sample_chunk", agent)

    def _check(self, header: SampleHeader, data: Payload) -> None:
        """Mistakes no retry can fix: raise them at once."""
        if header.agent != self.agent:
            raise LinkError(
                f"header of {header.sample_id} is for agent {header.agent}, not {self.agent}"
            )
        check_chunk_size(header.chunk_size)
        size = _payload_size(data)
        if size != header.size:
            raise LinkError(
                f"sample {header.sample_id}: payload is {size} bytes, header says {header.size}"
            )

    def send(self, header: SampleHeader, data: Payload) -> None:
        """Publish header + every chunk; return when the broker acknowledged all of them.
        LinkError when disconnected or a PUBACK times out (paho may still deliver some: the
        receiver tolerates duplicates)."""
        self._check(header, data)
        self.link.publish(self._header_topic, header, timeout_s=self.publish_timeout_s)
        in_flight: deque[Pending] = deque()
        tid = header.transfer_id
        for index, piece in enumerate(_iter_pieces(data, header.chunk_size)):
            if len(in_flight) >= self.window:
                in_flight.popleft().wait(self.publish_timeout_s)
            message = encode_chunk(
                KIND_SAMPLE, tid, index, header.chunk_count, index * header.chunk_size, piece
            )
            in_flight.append(self.link.publish_nowait(self._chunk_topic, message))
        while in_flight:
            in_flight.popleft().wait(self.publish_timeout_s)

    def ship(
        self,
        header: SampleHeader,
        data: Payload,
        ack_timeout_s: float = 30.0,
        attempts: int = 5,
        stop: threading.Event | None = None,
    ) -> Ack:
        """Send until the trainer's Ack arrives: whole transfer again after each `ack_timeout_s`
        without one (or after a link failure). LinkError after `attempts` tries or on `stop`."""
        self._check(header, data)
        pause = stop if stop is not None else threading.Event()
        for attempt in range(1, attempts + 1):
            ack = self.acks.get(header.sample_id)
            if ack is not None:
                return ack
            if not self.link.wait_connected(ack_timeout_s):
                logger.info(
                    "sample %s: broker unreachable (try %d/%d)", header.sample_id, attempt, attempts
                )
                continue
            try:
                self.send(header, data)
            except LinkError as err:
                logger.info(
                    "sample %s: send failed (try %d/%d): %s",
                    header.sample_id,
                    attempt,
                    attempts,
                    err,
                )
                if pause.wait(min(1.0, ack_timeout_s)):
                    break
                continue
            ack = self.acks.wait(header.sample_id, ack_timeout_s)
            if ack is not None:
                return ack
            logger.info(
                "sample %s: no ack within %g s (try %d/%d)",
                header.sample_id,
                ack_timeout_s,
                attempt,
                attempts,
            )
            if pause.is_set():
                break
        raise LinkError(
            f"sample {header.sample_id} was not acknowledged after {attempts} tries",
            hint="it stays in the outbox and goes again later; check the trainer is running",
        )


@dataclass
class _Partial:
    """One transfer being assembled: its spool file and which chunks are in it."""

    path: Path
    count: int
    header: SampleHeader | None = None
    have: dict[int, tuple[int, int]] = field(default_factory=dict)  # index -> (offset, length)
    touched: float = 0.0


class TransferAssembler:
    """Receiver side of sample transfers; not tied to MQTT (SampleReceiver feeds it).

    `store(header, path)` gets a complete, verified, fsynced file and must make the sample
    durable before it returns (os.replace into its store + a folder fsync is enough);
    `has(sample_id)` says whether it is already stored. Both run on the caller's thread. Methods
    return the Ack to send back, or None while the transfer is incomplete.

    Bounds, so that one agent cannot stop ingest for the others: each agent has at most
    `max_partials` unfinished transfers (more are refused until one completes or expires), of
    which at most `max_headerless` may still wait for their header; chunks of another
    headerless transfer push out that agent's oldest one, and a headerless transfer expires
    after `headerless_after_s` (a real header follows its chunks within moments).
    `max_total_partials` caps all agents together.
    """

    def __init__(
        self,
        spool_dir: str | os.PathLike[str],
        store: StoreFn,
        has: HasFn,
        stale_after_s: float = 600.0,
        max_transfer_bytes: int = 512 << 20,
        max_partials: int = 32,
        max_headerless: int = 4,
        headerless_after_s: float = 10.0,
        max_total_partials: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spool_dir = Path(spool_dir)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self._store = store
        self._has = has
        self.stale_after_s = stale_after_s
        self.max_transfer_bytes = max_transfer_bytes
        self.max_partials = max_partials
        self.max_headerless = max(1, min(max_headerless, max_partials))
        self.headerless_after_s = headerless_after_s
        self.max_total_partials = max_total_partials
        self._clock = clock
        self._partials: dict[tuple[str, bytes], _Partial] = {}
        self._done: OrderedDict[tuple[str, bytes], None] = OrderedDict()  # recently completed
        self._lock = threading.Lock()
        self.stats: dict[str, int] = {
            "stored": 0,
            "duplicates": 0,
            "rejected": 0,
            "expired": 0,
            "dropped_chunks": 0,
            "headerless_dropped": 0,
        }
        self._clear_spool()

    def _clear_spool(self) -> None:
        """Spooled parts of an earlier run are useless (which chunks they hold was in memory);
        the senders resend those transfers when their acks do not come."""
        old = list(self.spool_dir.glob("*.part"))
        for path in old:
            with contextlib.suppress(OSError):
                path.unlink()
        if old:
            logger.info("removed %d partial transfers left in %s", len(old), self.spool_dir)

    # -- input ---------------------------------------------------------------------------------

    def on_header(self, agent: str, header: SampleHeader) -> Ack | None:
        if header.agent != agent:
            raise LinkError(
                f"header of {header.sample_id} names agent {header.agent} but came from {agent}"
            )
        key = (agent, header.transfer_id)
        with self._lock:
            if header.size > self.max_transfer_bytes:
                self._drop(key, remember=True)
                self.stats["rejected"] += 1
                why = f"size {header.size} is over the limit {self.max_transfer_bytes}"
                return Ack(header.sample_id, "rejected", now(), why)
            if self._has(header.sample_id):
                self._drop(key, remember=True)
                self.stats["duplicates"] += 1
                return Ack(header.sample_id, "duplicate", now())
            partial = self._partial(key, header.chunk_count, with_header=True)
            if partial.count != header.chunk_count:
                logger.info("transfer %s changed chunking; starting it again", header.sample_id)
                self._drop(key, remember=False)
                partial = self._partial(key, header.chunk_count, with_header=True)
            partial.header = header
            self._prune_geometry(partial)
            return self._complete_if_ready(key, partial)

    def on_chunk(self, agent: str, chunk: Chunk) -> Ack | None:
        if chunk.kind != KIND_SAMPLE:
            raise LinkError(f"chunk kind {chunk.kind} on a sample topic")
        end = chunk.offset + len(chunk.payload)
        if end > self.max_transfer_bytes:
            raise LinkError(
                f"chunk ends at byte {end}, over the transfer limit {self.max_transfer_bytes}"
            )
        key = (agent, chunk.transfer_id)
        with self._lock:
            if key in self._done:
                return None  # late duplicate of a stored transfer
            partial = self._partial(key, chunk.count, with_header=False)
            if chunk.count != partial.count or not self._fits(partial.header, chunk):
                self.stats["dropped_chunks"] += 1
                raise LinkError(f"chunk {chunk.index}/{chunk.count} does not fit its transfer")
            if chunk.index not in partial.have:
                write_at(partial.path, chunk.offset, chunk.payload)
                partial.have[chunk.index] = (chunk.offset, len(chunk.payload))
            return self._complete_if_ready(key, partial)

    def expire(self) -> int:
        """Drop partial transfers idle for longer than stale_after_s (headerless ones: longer
        than headerless_after_s); return how many."""
        with self._lock:
            stale = [key for key, p in self._partials.items() if self._is_stale(p)]
            for key in stale:
                self._drop(key, remember=False)
        self.stats["expired"] += len(stale)
        if stale:
            logger.info("expired %d stale partial transfers", len(stale))
        return len(stale)

    @property
    def partial_count(self) -> int:
        return len(self._partials)

    # -- internals (called with the lock held) -------------------------------------------------

    def _is_stale(self, partial: _Partial) -> bool:
        idle = self._clock() - partial.touched
        return idle > (self.stale_after_s if partial.header else self.headerless_after_s)

    def _make_room(self, agent: str, with_header: bool) -> None:
        """Room for one more transfer of `agent`, or LinkError; see the class docstring."""
        now = self._clock()
        for key, partial in list(self._partials.items()):
            late = now - partial.touched > self.headerless_after_s
            if key[0] == agent and partial.header is None and late:
                self._drop(key, remember=False)
                self.stats["expired"] += 1
        mine = {k: p for k, p in self._partials.items() if k[0] == agent}
        waiting = sorted((p.touched, k) for k, p in mine.items() if p.header is None)
        if not with_header and len(waiting) >= self.max_headerless:
            oldest = waiting[0][1]  # the least likely to be a real transfer
            self._drop(oldest, remember=False)
            del mine[oldest]
            self.stats["headerless_dropped"] += 1
        if len(mine) >= self.max_partials:
            raise LinkError(
                f"agent {agent} has {len(mine)} transfers in progress; dropping a new one",
                hint="it sends more at once than max_partials allows; wait for acks",
            )
        if len(self._partials) >= self.max_total_partials:
            raise LinkError(
                f"{len(self._partials)} transfers in progress from all agents; dropping a new one",
                hint="raise max_total_partials or lower stale_after_s",
            )

    def _partial(self, key: tuple[str, bytes], count: int, with_header: bool) -> _Partial:
        partial = self._partials.get(key)
        if partial is None:
            self._make_room(key[0], with_header)
            self._done.pop(key, None)
            path = self.spool_dir / f"{key[0]}-{key[1].hex()}.part"
            partial = _Partial(path=path, count=count)
            self._partials[key] = partial
        partial.touched = self._clock()
        return partial

    @staticmethod
    def _fits(header: SampleHeader | None, chunk: Chunk) -> bool:
        if header is None:
            return True
        expected = min(header.chunk_size, header.size - chunk.index * header.chunk_size)
        return chunk.offset == chunk.index * header.chunk_size and len(chunk.payload) == expected

    def _prune_geometry(self, partial: _Partial) -> None:
        """Forget chunks that arrived before the header and do not fit it."""
        header = partial.header
        if header is None:
            return
        for index, (offset, length) in list(partial.have.items()):
            expected = min(header.chunk_size, header.size - index * header.chunk_size)
            if offset != index * header.chunk_size or length != expected:
                del partial.have[index]
                self.stats["dropped_chunks"] += 1

    def _complete_if_ready(self, key: tuple[str, bytes], partial: _Partial) -> Ack | None:
        header = partial.header
        if header is None or len(partial.have) < partial.count:
            return None
        sample_id = header.sample_id
        if self._has(sample_id):
            self._drop(key, remember=True)
            self.stats["duplicates"] += 1
            return Ack(sample_id, "duplicate", now())
        sync_file(partial.path, size=header.size)  # the store only has to rename it
        digest = sha256_file(partial.path)
        if digest != header.sha256:
            self._drop(key, remember=False)
            self.stats["rejected"] += 1
            logger.warning(
                "sample %s: sha256 %s does not match the header's %s",
                sample_id,
                digest,
                header.sha256,
            )
            return Ack(sample_id, "rejected", now(), "sha256 mismatch")
        try:
            self._store(header, partial.path)
        except Exception:
            # No ack: the sender resends, and the store gets another chance.
            self._drop(key, remember=False)
            raise
        self._drop(key, remember=True)
        self.stats["stored"] += 1
        return Ack(sample_id, "stored", now())

    def _drop(self, key: tuple[str, bytes], remember: bool) -> None:
        partial = self._partials.pop(key, None)
        if partial is not None:
            with contextlib.suppress(FileNotFoundError):
                partial.path.unlink()
        if remember:
            self._done[key] = None
            while len(self._done) > 4096:
                self._done.popitem(last=False)


class SampleReceiver:
    """Trainer side: feeds every agent's sample topics into a TransferAssembler, sends Acks."""

    def __init__(
        self, link: Link, assembler: TransferAssembler, expire_every_s: float = 30.0
    ) -> None:
        self.link = link
        self.assembler = assembler
        self.expire_every_s = expire_every_s
        self._last_expire = time.monotonic()
        link.subscribe_message(
            link.topic("sample_header", ANY_AGENT), SampleHeader, self._on_header
        )
        link.subscribe(link.topic("sample_chunk", ANY_AGENT), self._on_chunk)

    def _on_header(self, topic: str, header: SampleHeader) -> None:
        agent = agent_of(topic, self.link.config.root)
        self._reply(agent, self.assembler.on_header(agent, header))

    def _on_chunk(self, topic: str, payload: bytes) -> None:
        agent = agent_of(topic, self.link.config.root)
        self._reply(agent, self.assembler.on_chunk(agent, decode_chunk(payload)))

    def _reply(self, agent: str, ack: Ack | None) -> None:
        if ack is not None:
            try:
                # No wait: a lost ack only makes the agent resend, and the resend is acked again.
                self.link.publish_nowait(self.link.topic("sample_ack", agent), ack)
            except LinkError as err:
                logger.info("ack for %s not sent (%s); the agent will resend", ack.sample_id, err)
        if time.monotonic() - self._last_expire > self.expire_every_s:
            self._last_expire = time.monotonic()
            self.assembler.expire()
