"""`dal agent`: run, status, pool, select; clean errors; the docs and unit files match the code."""

from __future__ import annotations

import configparser
import dataclasses
import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from agent_helpers import AGENT, Receiver, contract_model, load, recording, write_config
from broker import Broker, wait_until
from PIL import Image

from dal.agent.config import AgentConfig, load_agent_config
from dal.agent.cycle import plan
from dal.agent.daemon import AgentDaemon
from dal.agent.pool import Pool
from dal.cli import main
from dal.link import Link

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[1]
ACTIONS = ("run", "status", "pool", "select")


def dal(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dal.cli", *args], capture_output=True, text=True, timeout=90
    )


@pytest.fixture
def pooled(tmp_path: Path) -> Path:
    """A config whose pool holds 24 scored frames (the daemon ran and stopped)."""
    model = contract_model(tmp_path / "m1.onnx", "m1")
    config = write_config(tmp_path, model=model, source=recording(tmp_path / "r.mkv"), port=None)
    daemon = AgentDaemon(load(config), env={}).start()
    try:
        wait_until(lambda: len(daemon.pool) == 24, 30.0, "24 pooled frames")
    finally:
        daemon.stop()
    return config


def run_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    code = main(["agent", *args])
    return code, capsys.readouterr().out


def test_help_lists_every_action(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["agent", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(f"dal agent {action}" in out for action in ACTIONS)
    for action in ACTIONS:
        with pytest.raises(SystemExit):
            main(["agent", action, "--help"])
        assert "--config" in capsys.readouterr().out


def test_status_pool_and_dry_run_select_read_the_pool(
    tmp_path: Path, pooled: Path, capsys: pytest.CaptureFixture
) -> None:
    code, out = run_cli(capsys, "status", "--config", str(pooled), "--json", "--check")
    status = json.loads(out)
    assert code == 3 and status["running"] is False  # stopped: LSB "not running"
    assert status["daemon"]["state"] == "stopped" and status["daemon"]["model"]["version"] == "m1"
    assert status["pool"]["by_state"] == {"pooled": 24} and status["integrity"] == ["ok"]
    code, text = run_cli(capsys, "status", "--config", str(pooled))
    assert "not running" in text and "pool: 24 pooled" in text

    code, out = run_cli(capsys, "pool", "--config", str(pooled), "--top", "5", "--json")
    rows = json.loads(out)
    scores = [r["score"] for r in rows]
    assert code == 0 and len(rows) == 5 and scores == sorted(scores, reverse=True)
    config = load(pooled)
    with Pool(config.agent.data_dir / "pool", min_free_bytes=0) as pool:
        assert [r["sample_id"] for r in rows] == [s.sample_id for s in pool.top(5)]
        expected = plan(pool, config.query, 1).ids

    sheet = tmp_path / "out" / "picks.jpg"
    code, out = run_cli(
        capsys, "select", "--config", str(pooled), "--dry-run", "--sheet", str(sheet), "--json"
    )
    result = json.loads(out)
    assert code == 0 and result["dry_run"] and result["cycle"] is None
    assert [p["sample_id"] for p in result["picked"]] == expected and len(expected) == 4
    with Image.open(sheet) as image:
        assert image.format == "JPEG" and image.width > 320
    db = config.agent.data_dir / "pool" / "pool.sqlite"
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM samples WHERE state != 'pooled'").fetchone() == (
            0,
        )


def test_select_queues_picks_that_the_daemon_ships(
    tmp_path: Path,
    pooled: Path,
    broker: Broker,
    make_link: Callable[..., Link],
    capsys: pytest.CaptureFixture,
) -> None:
    args = ["--strategy", "margin", "-k", "3", "--sheet", "-", "--json"]
    code, out = run_cli(capsys, "select", "--config", str(pooled), *args)
    result = json.loads(out)
    picked = [p["sample_id"] for p in result["picked"]]
    assert code == 0 and result["cycle"] == 1 and len(picked) == 3
    receiver = Receiver(make_link("trainer"), tmp_path / "trainer")
    text = pooled.read_text().replace("port = 1883", f"port = {broker.port}")
    pooled.write_text(text.replace("[link]\nenabled = false", "[link]\nenabled = true"))
    daemon = AgentDaemon(load(pooled), env={}).start()
    try:
        receiver.wait_for(3, 30.0)
        code, out = run_cli(capsys, "status", "--config", str(pooled), "--json")
        assert code == 0 and json.loads(out)["running"] is True
    finally:
        daemon.stop()
    assert sorted(receiver.stores) == sorted(f"{AGENT}:{i}" for i in picked)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ({"source": {"kind": "kinect", "uri": ""}}, "pyk4a"),
        ({"pool": {"max_imagez": 5}}, "did you mean 'max_images'"),
        ({"query": {"strategy": "oracle"}}, "unknown query strategy"),
    ],
    ids=["kinect-without-sdk", "config-typo", "bad-strategy"],
)
def test_run_refuses_with_one_clear_line(tmp_path: Path, override: dict, needle: str) -> None:
    model = contract_model(tmp_path / "m1.onnx", "m1")
    config = write_config(tmp_path, model=model, source="unused", port=None, overrides=override)
    result = dal("agent", "run", "--config", str(config))
    assert result.returncode == 78, result.stderr  # EX_CONFIG: systemd must not restart it
    assert "Traceback" not in result.stderr and needle in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("dal agent: error:")


# ---- docs, unit file, example config ---------------------------------------------------------


def test_docs_describe_every_action_and_section() -> None:
    text = (ROOT / "docs" / "agent.md").read_text()
    for action in ACTIONS:
        assert f"dal agent {action}" in text, f"docs/agent.md does not describe {action}"
    for section in dataclasses.fields(AgentConfig):
        assert f"[{section.name}]" in text, f"docs/agent.md does not mention [{section.name}]"
    assert "systemd/dal-agent.service" in text and "docs/config/agent.toml" in text


def test_unit_file_is_a_hardened_notify_service() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(ROOT / "systemd" / "dal-agent.service")
    service = unit["Service"]
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert int(service["WatchdogSec"].rstrip("s")) > 0
    assert service["Restart"] == "on-failure" and "78" in service["RestartPreventExitStatus"]
    assert service["ProtectSystem"] == "strict" and service["NoNewPrivileges"] == "yes"
    assert "/var/lib/dal" in service["ReadWritePaths"]
    assert "--config /etc/dal/agent.toml" in service["ExecStart"]
    assert service["StateDirectory"] == "dal" and service["ConfigurationDirectory"] == "dal"


def test_example_config_loads() -> None:
    config = load_agent_config(ROOT / "systemd" / "agent.example.toml", env={})
    assert config.agent.data_dir == Path("/var/lib/dal")
    assert str(config.update.public_key).startswith("/etc/dal/")
    assert config.mqtt.ca_file is not None and config.mqtt.port == 8883
