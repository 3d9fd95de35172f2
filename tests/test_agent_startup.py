"""Start-up failures that no restart can fix end `dal agent run` with one clear line and exit 78
(EX_CONFIG: the unit's RestartPreventExitStatus stops systemd's restart loop): a missing or
corrupt start model, and a second agent on a data folder another one already runs on."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from agent_helpers import contract_model, load, recording, write_config
from broker import Broker, wait_until

from dal.agent.daemon import AgentDaemon
from dal.errors import ConfigError
from dal.link import Link

pytestmark = pytest.mark.timeout(120)


def agent_run(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dal.cli", "agent", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=90,
    )


def assert_refused(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 78, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("dal agent: error:"), result.stderr
    for needle in needles:
        assert needle in last, last


def _missing(tmp_path: Path) -> Path:
    return tmp_path / "missing.onnx"


def _corrupt(tmp_path: Path) -> Path:
    path = tmp_path / "corrupt.onnx"
    path.write_bytes(b"\x08\x07this is not a protobuf" * 50)
    return path


@pytest.mark.parametrize(
    ("make", "needles"),
    [(_missing, ["missing.onnx", "does not exist"]), (_corrupt, ["corrupt.onnx", "cannot"])],
    ids=["missing", "corrupt"],
)
def test_a_bad_start_model_exits_78_with_one_line(
    tmp_path: Path, make: Callable[[Path], Path], needles: list[str]
) -> None:
    config = write_config(tmp_path, model=make(tmp_path), source="unused", port=None)
    assert_refused(agent_run(config), "[detector] model", *needles)


def test_a_current_model_that_no_longer_loads_exits_78(tmp_path: Path) -> None:
    """No configured model, the store's current one is damaged and there is no previous."""
    config = write_config(tmp_path, model=None, source="unused", port=None)
    models = tmp_path / "agent" / "models"
    (models / "versions").mkdir(parents=True)
    (models / "versions" / "m1.onnx").write_bytes(b"damaged")
    os.symlink("versions/m1.onnx", models / "current")
    assert_refused(agent_run(config), "m1.onnx", "[detector] model")


def test_a_second_agent_on_the_same_data_dir_exits_78_naming_the_first(
    tmp_path: Path, broker: Broker, make_link: Callable[..., Link]
) -> None:
    model = contract_model(tmp_path / "m1.onnx", "m1")
    rec = recording(tmp_path / "rec.mkv", 12)
    config = write_config(
        tmp_path,
        model=model,
        source=rec,
        port=broker.port,
        overrides={"source": {"loop": True, "realtime": True}},
    )
    first = AgentDaemon(load(config), env={}).start()
    try:
        wait_until(lambda: first.link.connected, 10.0, "the first agent's link")
        generation = first.link.generation
        assert_refused(agent_run(config), f"pid {os.getpid()}", str(tmp_path / "agent"))
        with pytest.raises(ConfigError, match=f"pid {os.getpid()}"):
            AgentDaemon(load(config), env={}).start()  # in-process too: its own lock handle
        assert first.link.connected and first.link.generation == generation  # never kicked off
        assert first.fatal is None
    finally:
        first.stop()
    again = AgentDaemon(load(config), env={}).start()  # the lock went with the first agent
    again.stop()
    assert again.fatal is None
