"""Files the project writes get the permissions the umask asks for (or the mode the caller
names), so another service user can read an exported model or a pooled JPEG; only secrets are
0600."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from model_fixtures import TinyModel

from dal.agent.pool import Pool
from dal.fileio import atomic_write_bytes, write_at
from dal.link import signing


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask() -> Iterator[Callable]:
    """umask(mask) sets the process umask for this test; the old one comes back after it."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_atomic_writes_follow_the_umask(tmp_path: Path, umask, mask: int) -> None:
    umask(mask)
    written = atomic_write_bytes(tmp_path / "a.bin", b"x")
    assert mode_of(written) == 0o666 & ~mask
    write_at(tmp_path / "b.part", 10, b"y")
    assert mode_of(tmp_path / "b.part") == 0o666 & ~mask


def test_an_explicit_mode_wins_over_the_umask(tmp_path: Path, umask) -> None:
    umask(0)
    assert mode_of(atomic_write_bytes(tmp_path / "secret", b"k", mode=0o600)) == 0o600
    signing.generate_keypair(tmp_path / "key.pem", tmp_path / "key.pub")
    assert mode_of(tmp_path / "key.pem") == 0o600
    assert mode_of(tmp_path / "key.pub") == 0o644


def test_pooled_jpegs_are_readable_by_the_group_and_others(tmp_path: Path, umask) -> None:
    umask(0o022)
    with Pool(tmp_path / "pool", min_free_bytes=0) as pool:
        rng = np.random.default_rng(0)
        sample_id = pool.add(
            capture_time=1.0,
            source="test",
            model_version="m1",
            score=0.5,
            feature=rng.standard_normal(16),
            detections=[],
            image=rng.integers(0, 255, (24, 32, 3), dtype=np.uint8),
        )
        assert mode_of(pool.get(sample_id).jpeg_path) == 0o644


def test_the_exported_onnx_model_follows_the_umask(tiny_model: TinyModel) -> None:
    mask = os.umask(0o022)
    os.umask(mask)
    assert mode_of(tiny_model.onnx) == 0o666 & ~mask
