"""Trainer side of model distribution: retained manifests, chunks on request.

One global manifest (models/manifest) as before, plus any number of targeted ones: a group's
(groups/{group}/model/manifest) or one agent's (agents/{agent}/model/manifest). Every offered
model is served: an agent asks for chunks of the version its own manifest names, whichever
topic that came from. Each manifest is the model's one signed manifest; the topic it sits on
is guarded by the broker's ACL (only the trainer may publish there).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from pathlib import Path

from dal.errors import LinkError
from dal.link.chunks import KIND_MODEL, encode_chunk
from dal.link.client import Link, Pending
from dal.link.messages import ModelManifest, ModelRequest
from dal.link.topics import ANY_AGENT, agent_of

logger = logging.getLogger(__name__)

Offer = tuple[ModelManifest, Path]


def _read_chunk(path: Path, manifest: ModelManifest, index: int) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(index * manifest.chunk_size)
        return handle.read(manifest.chunk_size)


class ModelPublisher:
    """Keeps the offered manifests retained and serves chunk requests from disk."""

    def __init__(self, link: Link, window: int = 16) -> None:
        self.link = link
        self.window = window
        self._lock = threading.Lock()
        self._current: Offer | None = None
        self._targets: dict[str, Offer] = {}  # topic -> offer (group and agent manifests)
        self.stats: dict[str, int] = {"requests": 0, "chunks_sent": 0, "stale_requests": 0}
        link.subscribe_message(
            link.topic("model_request", ANY_AGENT), ModelRequest, self._on_request
        )
        link.on_connected(self._republish)

    @property
    def manifest(self) -> ModelManifest | None:
        """The global manifest offered now."""
        with self._lock:
            return self._current[0] if self._current else None

    def targets(self) -> dict[str, ModelManifest]:
        """Topic -> manifest of every targeted (group or agent) manifest offered now."""
        with self._lock:
            return {t: offer[0] for t, offer in self._targets.items()}

    @staticmethod
    def _check(path: Path, manifest: ModelManifest) -> None:
        size = path.stat().st_size
        if size != manifest.size:
            raise LinkError(f"{path} is {size} bytes, manifest says {manifest.size}")

    def publish(self, model_path: str | os.PathLike[str], manifest: ModelManifest) -> None:
        """Make this the model agents should run: retained manifest now (and after every
        reconnect), chunks on request. LinkError if the broker did not take the manifest."""
        path = Path(model_path)
        self._check(path, manifest)
        with self._lock:
            self._current = (manifest, path)
        self.link.publish(self.link.topic("model_manifest"), manifest, retain=True)

    def withdraw(self) -> None:
        """Stop offering a model: clear the retained manifest."""
        with self._lock:
            self._current = None
        self.link.publish(self.link.topic("model_manifest"), b"", retain=True)

    def publish_target(
        self, topic: str, model_path: str | os.PathLike[str], manifest: ModelManifest
    ) -> None:
        """Offer `manifest` retained on a group or agent manifest topic (built with
        link.topic('model_manifest_group', group=...) or ('model_manifest_agent', agent))."""
        path = Path(model_path)
        self._check(path, manifest)
        with self._lock:
            self._targets[topic] = (manifest, path)
        self.link.publish(topic, manifest, retain=True)

    def withdraw_target(self, topic: str) -> None:
        """Clear a targeted manifest: its agents fall back to the next less specific one."""
        with self._lock:
            self._targets.pop(topic, None)
        self.link.publish(topic, b"", retain=True)

    def _republish(self) -> None:
        # After a broker restart without persistence the retained manifests are gone.
        with self._lock:
            current, targets = self._current, dict(self._targets)
        if current is not None:
            self.link.publish(self.link.topic("model_manifest"), current[0], retain=True)
        for topic, (manifest, _) in targets.items():
            self.link.publish(topic, manifest, retain=True)

    def _offer(self, version: str) -> Offer | None:
        with self._lock:
            offers = [self._current, *self._targets.values()]
        return next((o for o in offers if o is not None and o[0].version == version), None)

    def _on_request(self, topic: str, request: ModelRequest) -> None:
        agent = agent_of(topic, self.link.config.root)
        offer = self._offer(request.version)
        if offer is None:
            self.stats["stale_requests"] += 1
            logger.debug(
                "agent %s asked for model %s, which is not offered", agent, request.version
            )
            return
        manifest, path = offer
        bad = [i for i in request.chunks if i >= manifest.chunk_count]
        if bad:
            raise LinkError(
                f"agent {agent} asked for chunks {bad[:5]} of a {manifest.chunk_count}-chunk model"
            )
        self.stats["requests"] += 1
        out = self.link.topic("model_chunk", agent)
        in_flight: deque[Pending] = deque()
        for index in sorted(set(request.chunks)):
            if len(in_flight) >= self.window:
                in_flight.popleft().wait()
            message = self._chunk_message(manifest, path, index)
            in_flight.append(self.link.publish_nowait(out, message))
            self.stats["chunks_sent"] += 1
        while in_flight:
            in_flight.popleft().wait()

    def _chunk_message(self, manifest: ModelManifest, path: Path, index: int) -> bytes:
        piece = _read_chunk(path, manifest, index)
        offset = index * manifest.chunk_size
        return encode_chunk(
            KIND_MODEL, manifest.transfer_id, index, manifest.chunk_count, offset, piece
        )
