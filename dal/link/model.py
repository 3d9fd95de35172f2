"""Model distribution, trainer -> agents: a signed retained manifest, chunks on request.

Why request/answer and not one retained message per chunk: a 160 MB model as 640 retained
messages would sit in the broker's memory and persistence forever, and every (re)subscribing
agent would get all of them at once. Here each agent asks for at most `window` chunks at a time
on agents/{agent}/model/request and the trainer answers on agents/{agent}/model/chunk, so the
agent sets the pace, asks again for what did not come, and resumes after a restart from a
partial file plus a small state file that records which chunks it holds.

The agent accepts a model only when the manifest's Ed25519 signature checks with its trusted
public key and the assembled file's sha256 equals the manifest's. Which manifest it follows
(its own, its group's, the global one) is dal/link/follow.py; the trainer side is
dal/link/model_publisher.py.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from dal.errors import LinkError, StorageError
from dal.fileio import atomic_write_json, fsync_dir, sha256_file, sync_file, write_at
from dal.link.chunks import DEFAULT_CHUNK_SIZE, KIND_MODEL, check_chunk_size, decode_chunk
from dal.link.client import Link
from dal.link.follow import ManifestChoice
from dal.link.messages import MAX_REQUEST_CHUNKS, ModelManifest, ModelRequest, chunk_count, now
from dal.link.model_publisher import ModelPublisher  # noqa: F401  (its old home; re-exported)
from dal.link.signing import sign_manifest, verify_manifest, verify_model_file
from dal.link.topics import check_agent_id

logger = logging.getLogger(__name__)

CompleteFn = Callable[[ModelManifest, Path], None]
FailedFn = Callable[[ModelManifest, str], None]


def build_manifest(
    model_path: str | os.PathLike[str],
    version: str,
    private_key: Ed25519PrivateKey,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    filename: str | None = None,
    parent_version: str | None = None,
    meta: dict[str, Any] | None = None,
) -> ModelManifest:
    """A signed manifest for the file at `model_path`."""
    path = Path(model_path)
    size = path.stat().st_size
    manifest = ModelManifest(
        version=version,
        filename=filename or path.name,
        size=size,
        sha256=sha256_file(path),
        chunk_size=check_chunk_size(chunk_size),
        chunk_count=chunk_count(size, chunk_size),
        created=now(),
        parent_version=parent_version,
        meta=dict(meta or {}),
    )
    return sign_manifest(manifest, private_key)


@dataclass
class _Download:
    manifest: ModelManifest
    part: Path
    state: Path
    have: set[int]
    todo: deque[int]
    requested: dict[int, float] = field(default_factory=dict)
    dirty: bool = False
    saved_at: float = 0.0


def _bitmap(indices: set[int], count: int) -> str:
    bits = bytearray((count + 7) // 8)
    for i in indices:
        bits[i // 8] |= 1 << (i % 8)
    return base64.b64encode(bytes(bits)).decode("ascii")


def _from_bitmap(text: str, count: int) -> set[int]:
    bits = base64.b64decode(text)
    return {i for i in range(min(count, len(bits) * 8)) if bits[i // 8] >> (i % 8) & 1}


class ModelDownloader:
    """Agent side: follows the retained manifest and downloads each new signed model.

    The manifest followed is the most specific one retained (dal.link.follow): the agent's
    own, else its `group`'s (when it has one), else the global one.

    `on_complete(manifest, path)` gets the verified file (the caller moves it into its model
    store); `on_failed(manifest, reason)` hears about a bad signature, a wrong sha256 or a
    storage failure. Both run on a link thread: keep them short. `accept(manifest)` (optional)
    says whether a verified manifest is wanted, e.g. not the version already running.
    """

    def __init__(
        self,
        link: Link,
        agent: str,
        dest_dir: str | os.PathLike[str],
        public_key: Ed25519PublicKey,
        on_complete: CompleteFn,
        on_failed: FailedFn | None = None,
        accept: Callable[[ModelManifest], bool] | None = None,
        window: int = 16,
        request_timeout_s: float = 5.0,
        max_model_bytes: int = 4 << 30,
        save_every_s: float = 1.0,
        group: str | None = None,
    ) -> None:
        if not 1 <= window <= MAX_REQUEST_CHUNKS:
            raise LinkError(f"download window must be 1..{MAX_REQUEST_CHUNKS}")
        self.link = link
        self.agent = check_agent_id(agent)
        self.dest_dir = Path(dest_dir)
        self.public_key = public_key
        self.on_complete = on_complete
        self.on_failed = on_failed
        self.accept = accept
        self.window = window
        self.request_timeout_s = request_timeout_s
        self.max_model_bytes = max_model_bytes
        self.save_every_s = save_every_s
        self.choice = ManifestChoice(link.config.root, self.agent, group)
        self.stats: dict[str, int] = {
            "chunks": 0,
            "stale_chunks": 0,
            "requests": 0,
            "resumed_chunks": 0,
        }
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._active: _Download | None = None
        self._settled: set[tuple[str, str]] = set()  # (version, sha256) done or refused
        self._last_manifest: ModelManifest | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"model-download-{agent}", daemon=True
        )

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> ModelDownloader:
        self.dest_dir.mkdir(parents=True, exist_ok=True)
        self.link.subscribe(self.link.topic("model_chunk", self.agent), self._on_chunk)
        self.link.on_connected(self.choice.reset)
        for scope, topic in self.choice.topics():  # most specific first: see dal.link.follow
            self.link.subscribe(topic, lambda t, p, scope=scope: self._on_scoped(scope, t, p))
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop requesting; the partial file and its state stay for a resume."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        with self._lock:
            if self._active is not None:
                self._save(self._active)

    def retry(self) -> None:
        """Try the last manifest again, also one that failed before."""
        with self._lock:
            self._settled.clear()
            manifest = self._last_manifest
        if manifest is not None:
            self._on_manifest(self.link.topic("model_manifest"), manifest)

    def progress(self) -> tuple[str, int, int] | None:
        """(version, chunks held, chunk count) of the download in progress."""
        with self._lock:
            d = self._active
            return (d.manifest.version, len(d.have), d.manifest.chunk_count) if d else None

    # -- link handlers (dispatcher thread) -----------------------------------------------------

    def following(self) -> tuple[str, str] | None:
        """(scope, version) of the manifest followed now: agent, group or global."""
        chosen = self.choice.chosen()
        return (chosen[0], chosen[1].version) if chosen else None

    def _on_scoped(self, scope: str, topic: str, payload: bytes) -> None:
        chosen, act = self.choice.update(scope, payload)
        if chosen is not None and act:
            logger.debug("following the %s manifest: model %s", chosen[0], chosen[1].version)
            self._on_manifest(topic, chosen[1])

    def _on_manifest(self, topic: str, manifest: ModelManifest) -> None:
        key = (manifest.version, manifest.sha256)
        with self._lock:
            self._last_manifest = manifest
            active = self._active
            if key in self._settled or (
                active and (active.manifest.version, active.manifest.sha256) == key
            ):
                return
        try:
            verify_manifest(manifest, self.public_key)
        except LinkError as err:
            self._refuse(manifest, str(err))
            return
        if manifest.size > self.max_model_bytes:
            self._refuse(
                manifest, f"model of {manifest.size} bytes is over the limit {self.max_model_bytes}"
            )
            return
        if self.accept is not None and not self.accept(manifest):
            logger.debug("model %s not wanted", manifest.version)
            return
        with self._lock:
            if self._active is not None:
                self._save(self._active)
            self._active = self._open(manifest)
        self._wake.set()

    def _on_chunk(self, topic: str, payload: bytes) -> None:
        chunk = decode_chunk(payload)
        with self._lock:
            d = self._active
            if d is None or chunk.kind != KIND_MODEL or chunk.transfer_id != d.manifest.transfer_id:
                self.stats["stale_chunks"] += 1
                return
            m = d.manifest
            expected = min(m.chunk_size, m.size - chunk.index * m.chunk_size)
            fits = chunk.count == m.chunk_count and chunk.offset == chunk.index * m.chunk_size
            if not fits or len(chunk.payload) != expected:
                raise LinkError(
                    f"model chunk {chunk.index}/{chunk.count} does not fit manifest {m.version}"
                )
            if chunk.index not in d.have:
                write_at(d.part, chunk.offset, chunk.payload)
                d.have.add(chunk.index)
                d.dirty = True
                self.stats["chunks"] += 1
            d.requested.pop(chunk.index, None)
        self._wake.set()

    # -- worker thread -------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._step()
            except LinkError as err:
                logger.info("model download waits: %s", err)
            except (OSError, StorageError) as err:
                with self._lock:
                    d, self._active = self._active, None
                if d is not None:
                    self._fail(d, f"cannot write the download: {err}")

    def _step(self) -> None:
        wanted: list[int] = []
        with self._lock:
            d = self._active
            if d is None:
                return
            complete = len(d.have) == d.manifest.chunk_count
            if complete:
                self._active = None
            else:
                if time.monotonic() - d.saved_at > self.save_every_s:
                    self._save(d)
                wanted = self._take_missing(d)
        if complete:
            self._finish(d)
        elif wanted:
            self._request(d, wanted)

    def _take_missing(self, d: _Download) -> list[int]:
        """Indices to ask for now: what is missing and not already asked for recently."""
        now_s = time.monotonic()
        for index, asked in list(d.requested.items()):
            if now_s - asked > self.request_timeout_s:
                del d.requested[index]
                d.todo.append(index)
        free = self.window - len(d.requested)
        if free < max(1, self.window // 4) and d.requested:
            return []  # batch requests instead of one message per arriving chunk
        wanted: list[int] = []
        while d.todo and len(wanted) < free:
            index = d.todo.popleft()
            if index not in d.have and index not in d.requested:
                wanted.append(index)
                d.requested[index] = now_s
        return wanted

    def _request(self, d: _Download, wanted: list[int]) -> None:
        request = ModelRequest(version=d.manifest.version, chunks=tuple(wanted))
        try:
            self.link.publish_nowait(self.link.topic("model_request", self.agent), request)
            self.stats["requests"] += 1
        except LinkError:
            with self._lock:
                for index in wanted:
                    d.requested.pop(index, None)
                d.todo.extendleft(reversed(wanted))
            raise

    def _finish(self, d: _Download) -> None:
        """All chunks are in: verify, rename into place, report."""
        m = d.manifest
        try:
            sync_file(d.part, size=m.size)
            verify_model_file(m, d.part, self.public_key)
            final = self.dest_dir / m.filename
            os.replace(d.part, final)
            fsync_dir(self.dest_dir)
        except (LinkError, OSError) as err:
            self._fail(d, str(err))
            return
        with contextlib.suppress(FileNotFoundError):
            d.state.unlink()
        self._remove_other_partials()
        with self._lock:
            self._settled.add((m.version, m.sha256))
        logger.info("model %s downloaded and verified: %s", m.version, final)
        _notify(self.on_complete, m, final)

    # -- files ---------------------------------------------------------------------------------

    def _open(self, manifest: ModelManifest) -> _Download:
        """Start or resume the download of `manifest` (called with the lock held)."""
        part = self.dest_dir / f".{manifest.version}.part"
        state = self.dest_dir / f".{manifest.version}.part.json"
        have = self._load_state(state, part, manifest)
        if not have:
            for path in (part, state):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            part.touch()
        else:
            self.stats["resumed_chunks"] += len(have)
            logger.info(
                "resuming model %s: %d of %d chunks already here",
                manifest.version,
                len(have),
                manifest.chunk_count,
            )
        todo = deque(i for i in range(manifest.chunk_count) if i not in have)
        return _Download(manifest, part, state, have, todo, saved_at=time.monotonic())

    @staticmethod
    def _load_state(state: Path, part: Path, manifest: ModelManifest) -> set[int]:
        try:
            saved = json.loads(state.read_text())
            same = all(
                saved.get(k) == getattr(manifest, k)
                for k in ("version", "sha256", "size", "chunk_size")
            )
            return (
                _from_bitmap(saved["have"], manifest.chunk_count)
                if same and part.exists()
                else set()
            )
        except (OSError, ValueError, KeyError, TypeError):
            return set()

    def _save(self, d: _Download) -> None:
        """Record which chunks are on disk: data fsynced first, then the state file."""
        if not d.dirty:
            return
        sync_file(d.part)
        m = d.manifest
        atomic_write_json(
            d.state,
            {
                "version": m.version,
                "sha256": m.sha256,
                "size": m.size,
                "chunk_size": m.chunk_size,
                "have": _bitmap(d.have, m.chunk_count),
            },
            indent=None,
        )
        d.dirty = False
        d.saved_at = time.monotonic()

    def _remove_other_partials(self) -> None:
        """Once a model is complete, half-downloaded older versions are of no use."""
        with self._lock:
            keep = {self._active.part, self._active.state} if self._active else set()
        for path in self.dest_dir.glob(".*.part*"):
            if path not in keep:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def _fail(self, d: _Download, reason: str) -> None:
        for path in (d.part, d.state):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._refuse(d.manifest, reason)

    def _refuse(self, manifest: ModelManifest, reason: str) -> None:
        with self._lock:
            self._settled.add((manifest.version, manifest.sha256))
        logger.warning("model %s refused: %s", manifest.version, reason)
        if self.on_failed is not None:
            _notify(self.on_failed, manifest, reason)


def _notify(callback: Callable[..., None], *args: Any) -> None:
    """Run a caller's callback; its failure must not kill the download thread."""
    try:
        callback(*args)
    except Exception:
        logger.exception("model download callback %r failed", callback)
