"""What a new model must pass before the agent swaps it in, beyond its signature: the smoke test
stops as soon as its verdict is certain and gives way to a newer download, and a model whose
class names differ from the running one's is refused unless its manifest says so. Real signed
manifests and real onnxruntime sessions on contract models."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from agent_helpers import CLASSES, contract_model, model_metadata
from broker import wait_until
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dal import contract
from dal.agent.config import DetectorConfig
from dal.agent.model_update import (
    HARD_LATENCY_FACTOR,
    ModelManager,
    ModelStore,
    UpdateWorker,
    latency_verdict,
)
from dal.agent.pool import Pool
from dal.link import ModelManifest, build_manifest, signing
from dal.link.messages import META_CLASSES_CHANGED

pytestmark = pytest.mark.timeout(180)
CHUNK = 16 * 1024
GREY = np.full((96, 160, 3), 90, np.uint8)
OTHER_CLASSES = [contract.BACKGROUND, "bolt", "nut"]  # as many as CLASSES, other names


@pytest.fixture
def key(tmp_path: Path) -> Ed25519PrivateKey:
    signing.generate_keypair(tmp_path / "trainer.key", tmp_path / "trainer.pub")
    return signing.load_private_key(tmp_path / "trainer.key")


def manager(tmp_path: Path, key: Ed25519PrivateKey, events: list, **kw: float) -> ModelManager:
    models = ModelManager(
        ModelStore(tmp_path / "models"),
        DetectorConfig(providers=("CPUExecutionProvider",), threads=1, warmup=False),
        public_key=key.public_key(),
        probation_frames=0,
        report=lambda kind, message, data: events.append((kind, message, data)),
        **kw,
    )
    models.load_initial(contract_model(tmp_path / "start" / "m1.onnx", "m1"))
    return models


def downloaded(
    models: ModelManager,
    tmp_path: Path,
    key: Ed25519PrivateKey,
    version: str,
    manifest_meta: dict | None = None,
    **kw,
) -> tuple[ModelManifest, Path]:
    """A signed model as the downloader leaves it in incoming/ (`kw` goes to contract_model)."""
    source = contract_model(tmp_path / "registry" / f"{version}.onnx", version, **kw)
    manifest = build_manifest(source, version, key, chunk_size=CHUNK, meta=manifest_meta)
    incoming = models.store.incoming / f"{version}.onnx"
    shutil.copyfile(source, incoming)
    return manifest, incoming


# ---- the smoke test's verdict ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("latencies", "total", "certain"),
    [
        ([0.1, 0.2], 8, False),
        ([0.6], 8, False),  # over the bound once: the median may still pass
        ([HARD_LATENCY_FACTOR * 0.5 + 0.01], 8, True),  # one image far over: no need for more
        ([0.6, 0.6, 0.6, 0.6], 8, False),  # 4 of 8 over: the median is 0.5 * (x4 + x5)
        ([0.6, 0.6, 0.1, 0.6, 0.6, 0.6], 8, True),  # 5 of 8 over: the median is over
        ([0.6, 0.6, 0.6, 0.6], 7, True),
        ([0.6], 1, True),
    ],
)
def test_the_latency_verdict_is_given_once_it_is_certain(
    latencies: list[float], total: int, certain: bool
) -> None:
    verdict = latency_verdict(latencies, total, 0.5)
    assert (verdict is not None) == certain, verdict


def test_a_slow_model_is_refused_after_its_first_image(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    events: list = []
    models = manager(tmp_path, key, events, max_latency_s=0.01)
    manifest, path = downloaded(models, tmp_path, key, "m2", slow_matmuls=60)
    outcome = models.apply_update(manifest, path, [GREY] * 8)
    assert not outcome.ok and "image 1 of 8" in outcome.message, outcome.message
    assert models.version == "m1"
    assert models.store.is_refused("m2", manifest.sha256)
    models.close()


def test_a_newer_download_pre_empts_a_running_smoke_test(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    events: list = []
    models = manager(tmp_path, key, events, max_latency_s=30.0)
    pool = Pool(tmp_path / "pool", min_free_bytes=0)
    rng = np.random.default_rng(0)
    for i in range(8):
        pool.add(
            capture_time=float(i),
            source="test",
            model_version="m1",
            score=float(i),
            feature=rng.standard_normal(256),
            detections=[],
            image=np.full((96, 160, 3), 20 * i, np.uint8),
        )
    stop = threading.Event()
    worker = UpdateWorker(models, pool, smoke_images=8, stop=stop, changed=lambda: None)
    slow = downloaded(models, tmp_path, key, "m2", slow_matmuls=20)
    newer = downloaded(models, tmp_path, key, "m3")
    worker.downloaded(*slow)
    worker.downloaded(*newer)  # arrives while m2 would be checked
    thread = threading.Thread(target=worker.loop, args=(lambda: None,), daemon=True)
    started = time.monotonic()
    thread.start()
    try:
        wait_until(lambda: models.version == "m3", 60.0, "m3 swapped in")
    finally:
        stop.set()
        thread.join(10)
        pool.close()
        models.close()
    kinds = [(kind, data.get("version")) for kind, _, data in events]
    assert ("model_superseded", "m2") in kinds and ("model_swapped", "m3") in kinds, kinds
    assert ("model_swapped", "m2") not in kinds, kinds
    assert not models.store.is_refused("m2", slow[0].sha256)  # never judged: may come again
    assert not slow[1].exists()
    assert time.monotonic() - started < 60.0


# ---- class names -------------------------------------------------------------------------------


def test_a_model_with_other_class_names_is_refused_unless_its_manifest_says_so(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    events: list = []
    models = manager(tmp_path, key, events)
    other = model_metadata("m2", **{contract.META_CLASSES: json.dumps(OTHER_CLASSES)})
    manifest, path = downloaded(models, tmp_path, key, "m2", meta=other)
    outcome = models.apply_update(manifest, path, [GREY])
    assert not outcome.ok, outcome.message
    assert "bolt" in outcome.message and "washer" in outcome.message
    assert models.version == "m1" and models.active.class_names == tuple(CLASSES)
    other3 = model_metadata("m3", **{contract.META_CLASSES: json.dumps(OTHER_CLASSES)})
    manifest, path = downloaded(
        models, tmp_path, key, "m3", manifest_meta={META_CLASSES_CHANGED: True}, meta=other3
    )
    outcome = models.apply_update(manifest, path, [GREY])
    assert outcome.ok, outcome.message
    assert models.version == "m3" and models.active.class_names == tuple(OTHER_CLASSES)
    models.close()
