"""Helpers for the trainer tests: sample headers and stored samples made from image bytes."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

from dal.link import Detection, SampleHeader
from dal.trainer.store import SampleStore

_counter = itertools.count(1)


def sample_header(
    data: bytes,
    agent: str = "cam1",
    name: str | None = None,
    meta: dict[str, Any] | None = None,
    detections: tuple[Detection, ...] = (),
    score: float = 0.5,
    chunk_size: int = 4096,
) -> SampleHeader:
    """A valid header for `data` (sha256, size and chunking computed)."""
    return SampleHeader.for_payload(
        data,
        sample_id=f"{agent}:{name or f's{next(_counter):05d}'}",
        agent=agent,
        chunk_size=chunk_size,
        captured_at=time.time(),
        model_version="m0",
        score=score,
        feature=(0.25,) * 8,
        detections=detections,
        meta=dict(meta or {}),
    )


def put_sample(store: SampleStore, data: bytes, spool: Path, **header: Any) -> SampleHeader:
    """Store `data` the way the receiver does: a spooled file handed to store()."""
    h = sample_header(data, **header)
    spool.mkdir(parents=True, exist_ok=True)
    path = spool / f"{h.transfer_id.hex()}.part"
    path.write_bytes(data)
    store.store(h, path)
    return h
