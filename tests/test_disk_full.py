"""A full disk pauses capture: said once, shown in the status, resumed when space returns.

The first test fills a real filesystem: the whole data_dir lives on a 1 MiB tmpfs, the kernel
answers ENOSPC to the pool's JPEG and SQLite writes, and a remount to a larger size gives the
space back. Mounting needs CAP_SYS_ADMIN; without it that test is skipped and says so. The
second runs anywhere: the pool's own free-space floor ([pool] min_free_bytes, checked against
the real disk with statvfs) refuses every frame until the floor is lowered.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from agent_helpers import Watcher, contract_model, load, recording, write_config
from broker import Broker, wait_until

from dal.agent.daemon import AgentDaemon
from dal.link import Link

pytestmark = pytest.mark.timeout(180)

KEEP_EVERY_FRAME = {
    "source": {"loop": True},
    "policy": {"min_interval_s": 0.0, "dedup_window": 0},
    "pool": {"min_free_bytes": 0, "full_retry_s": 0.3},
}


def mount_tmpfs(where: Path, size: str, remount: bool = False) -> subprocess.CompletedProcess:
    options = f"remount,size={size}" if remount else f"size={size}"
    command = ["mount", "-o", options, str(where)] if remount else ["mount", "-t", "tmpfs"]
    if not remount:
        command += ["-o", options, "tmpfs", str(where)]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs; the test may grow it with mount_tmpfs(..., remount=True)."""
    where = tmp_path / "small"
    where.mkdir()
    try:
        result = mount_tmpfs(where, "1m")
    except FileNotFoundError:
        pytest.skip("no mount command: the real-filesystem disk-full test needs one")
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs CAP_SYS_ADMIN): {result.stderr}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_full_filesystem_pauses_capture_once_and_resumes_when_space_returns(
    tmp_path: Path,
    small_disk: Path,
    broker: Broker,
    make_link: Callable[..., Link],
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = contract_model(tmp_path / "m1.onnx", "m1")
    config = write_config(
        tmp_path,
        model=model,
        source=recording(tmp_path / "rec.mkv", 24),
        port=broker.port,
        overrides={**KEEP_EVERY_FRAME, "agent": {"data_dir": str(small_disk / "agent")}},
    )
    watcher = Watcher(make_link("operator"))
    caplog.set_level(logging.WARNING)
    daemon = AgentDaemon(load(config), env={}).start()
    try:
        paused = watcher.wait_event("capture_paused", 60.0)
        assert "full" in paused.message, paused.message
        status = watcher.wait_status(lambda s: s.storage_error is not None, 10.0)
        assert status.state == "online"
        full_at = len(daemon.pool)
        frames = daemon.counters.frames
        wait_until(lambda: daemon.counters.storage_errors >= 4, 20.0, "a few failed probes")
        assert daemon.counters.frames - frames < 40, "capture kept reading at full speed"
        said = [m for m in problems(caplog) if "cannot store" in m or "not pooled" in m]
        assert len(said) == 1, said
        assert len(problems(caplog)) <= 4, problems(caplog)
        assert daemon.status()["storage"]["paused"] is True
        assert all(w.alive for w in daemon.workers.values() if not w.finished)

        grown = mount_tmpfs(small_disk, "16m", remount=True)
        assert grown.returncode == 0, grown.stderr
        watcher.wait_event("capture_resumed", 30.0)
        wait_until(lambda: len(daemon.pool) > full_at + 10, 30.0, "frames pooled again")
        watcher.wait_status(lambda s: s.storage_error is None, 10.0)
        assert daemon.status()["storage"]["paused"] is False
        assert daemon.pool.integrity_check() == []
    finally:
        daemon.stop()
    assert daemon.fatal is None


def test_the_free_space_floor_pauses_capture_the_same_way(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = contract_model(tmp_path / "m1.onnx", "m1")
    overrides = {
        **KEEP_EVERY_FRAME,
        "pool": {**KEEP_EVERY_FRAME["pool"], "min_free_bytes": 1 << 60},
    }
    config = write_config(
        tmp_path,
        model=model,
        source=recording(tmp_path / "rec.mkv", 24),
        port=None,
        overrides=overrides,
    )
    caplog.set_level(logging.WARNING)
    daemon = AgentDaemon(load(config), env={}).start()
    try:
        wait_until(lambda: daemon.counters.storage_errors >= 5, 30.0, "refused frames")
        said = [m for m in problems(caplog) if "cannot store" in m or "not pooled" in m]
        assert len(said) == 1 and "disk almost full" in said[0], said
        assert daemon.pipeline.storage.paused and len(daemon.pool) == 0
        assert any(e["kind"] == "capture_paused" for e in daemon.recent_events)
        daemon.pool.min_free_bytes = 0  # the disk now has the free space the floor asks for
        wait_until(lambda: len(daemon.pool) >= 10, 30.0, "frames pooled again")
        assert not daemon.pipeline.storage.paused
        assert any(e["kind"] == "capture_resumed" for e in daemon.recent_events)
    finally:
        daemon.stop()
