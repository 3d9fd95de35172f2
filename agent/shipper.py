"""Shipping: queued samples go to the trainer until its Ack says it stored them.

`Shipper.ship_round` sends a batch, one sample at a time (TransferSender.ship: header, chunks,
wait for the Ack, resend on silence); `Shipper.loop` is the agent's ship worker around it. The
outbox (agent/outbox.py) remembers what is left, so a restart simply carries on.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from dal.agent.outbox import REJECTED, Outbox, OutboxItem
from dal.agent.pool import Pool, PoolSample
from dal.agent.supervisor import Beat
from dal.errors import LinkError
from dal.link.messages import Ack, Detection, SampleHeader
from dal.link.transfer import TransferSender

logger = logging.getLogger(__name__)


def sample_header(
    sample: PoolSample, data: bytes, *, wire_id: str, agent: str, chunk_size: int, cycle: int
) -> SampleHeader:
    """The wire header of a pooled sample: what the trainer stores next to the image."""
    records = sample.detections if isinstance(sample.detections, list) else []
    meta: dict[str, Any] = {
        "width": sample.width,
        "height": sample.height,
        "source": sample.source,
        "cycle": cycle,
        "pool_id": sample.sample_id,
        "detection_classes": [r.get("class") for r in records],
    }
    if sample.ground_truth is not None:
        meta["ground_truth"] = sample.ground_truth
    return SampleHeader.for_payload(
        data,
        sample_id=wire_id,
        agent=agent,
        chunk_size=chunk_size,
        captured_at=float(sample.capture_time),
        model_version=sample.model_version or "unknown",
        score=float(sample.score),
        feature=tuple(float(v) for v in sample.feature),
        detections=tuple(
            Detection(tuple(float(v) for v in r["box"]), int(r["label"]), float(r["score"]))
            for r in records
        ),
        meta=meta,
    )


class Shipper:
    """Sends queued samples until the trainer acks them; the outbox remembers what is left.

    `ship_round` sends a batch, one sample at a time (TransferSender.ship: header, chunks, wait
    for the Ack, resend on silence) and returns how long to pause: nothing when it emptied a
    batch, a growing back-off while samples fail (broker down, trainer silent).
    """

    def __init__(
        self,
        outbox: Outbox,
        pool: Pool,
        sender: TransferSender,
        *,
        chunk_size: int,
        ack_timeout_s: float,
        attempts: int,
        retry_max_s: float,
        on_settled: Callable[[str, str, Ack], None] | None = None,
        batch: int = 16,
    ) -> None:
        self.outbox = outbox
        self.pool = pool
        self.sender = sender
        self.chunk_size = chunk_size
        self.ack_timeout_s = ack_timeout_s
        self.attempts = attempts
        self.retry_max_s = retry_max_s
        self.batch = batch
        self._on_settled = on_settled
        self._failures = 0
        self.wake = threading.Event()  # a cycle queued samples, or the link came back
        self.stats = {"sent": 0, "shipped": 0, "rejected": 0, "lost": 0, "failed_rounds": 0}

    def settle(self, ack: Ack) -> None:
        """Record an Ack (from `ship` or a late one from an earlier run); rejected samples are
        deleted from the pool, since the trainer will never take them as they are."""
        state = self.outbox.settle(ack)
        if state is None:
            logger.debug("ack for %s, which is not in the outbox", ack.sample_id)
            return
        pool_id = ack.sample_id.partition(":")[2]
        if state == REJECTED and self.pool.delete([pool_id]):
            self.stats["rejected"] += 1
            logger.warning("trainer rejected %s: %s", ack.sample_id, ack.reason)
        if self._on_settled is not None:
            self._on_settled(pool_id, state, ack)

    def _lost(self, item: OutboxItem, reason: str) -> None:
        logger.warning("sample %s cannot be shipped: %s", item.wire_id, reason)
        self.outbox.mark_lost(item.sample_id, reason)
        self.stats["lost"] += 1

    def _payload(self, item: OutboxItem) -> tuple[SampleHeader, bytes] | None:
        sample = self.pool.get(item.sample_id)
        if sample is None:
            self._lost(item, "no longer in the pool")
            return None
        try:
            data = sample.jpeg_path.read_bytes()
        except OSError as err:
            self._lost(item, f"image unreadable: {err}")
            return None
        if hashlib.sha256(data).hexdigest() != sample.sha256:
            self._lost(item, "image changed on disk")
            self.pool.delete([item.sample_id])
            return None
        header = sample_header(
            sample,
            data,
            wire_id=item.wire_id,
            agent=self.sender.agent,
            chunk_size=self.chunk_size,
            cycle=item.cycle,
        )
        return header, data

    def ship_one(
        self,
        item: OutboxItem,
        stop: threading.Event | None = None,
        beat: Callable[[], None] | None = None,
    ) -> bool:
        """True when the sample is settled (acked, rejected or lost); False to retry later.
        One send per attempt, so `beat` (the supervisor's heartbeat) runs between them."""
        payload = self._payload(item)
        if payload is None:
            return True
        header, data = payload
        self.outbox.note_attempt(item.sample_id)
        for attempt in range(1, self.attempts + 1):
            if beat is not None:
                beat()
            if stop is not None and stop.is_set():
                return False
            self.stats["sent"] += 1
            try:
                ack = self.sender.ship(
                    header, data, ack_timeout_s=self.ack_timeout_s, attempts=1, stop=stop
                )
            except LinkError as err:
                logger.info("sample %s, send %d/%d: %s", item.wire_id, attempt, self.attempts, err)
                continue
            self.settle(ack)
            if ack.ok:
                self.stats["shipped"] += 1
            return True
        return False

    def ship_round(self, stop: threading.Event, beat: Callable[[], None] | None = None) -> float:
        """Ship up to `batch` queued samples; seconds to pause before the next round."""
        if not self.sender.link.connected:
            return 1.0
        items = self.outbox.pending(self.batch)
        if not items:
            return 1.0
        for item in items:
            if stop.is_set():
                return 0.0
            ok = self.ship_one(item, stop, beat)
            if not ok:
                self._failures += 1
                self.stats["failed_rounds"] += 1
                return min(self.retry_max_s, 0.5 * 2 ** min(self._failures, 16))
        self._failures = 0
        return 0.0

    def loop(self, stop: threading.Event, beat: Beat) -> None:
        """The ship worker: rounds until `stop`, pausing as `ship_round` says or until woken."""
        while not stop.is_set():
            beat()
            pause = self.ship_round(stop, beat)
            if pause:
                self.wake.wait(pause)
                self.wake.clear()
