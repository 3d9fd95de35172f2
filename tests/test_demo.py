"""`dal demo --fast` end to end: render, M0, broker, trainer, agent, two DBAL cycles over MQTT.

Real components throughout (Cycles renders, torch training, onnxruntime, mosquitto when
installed else the embedded amqtt broker); only the counts are tiny so it fits a CI slot.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_demo_runs_two_networked_cycles(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    command = [
        sys.executable,
        "-m",
        "dal.cli",
        "demo",
        "--fast",
        "--out",
        str(out),
        "--synthetic",
        "12",
        "--pool",
        "14",
        "--val",
        "6",
        "--epochs",
        "1",
        "--cycle-epochs",
        "1",
        "--k",
        "4",
        "--tolerance",
        "1",  # tiny runs are noisy: let every candidate through so the swap is exercised
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=580)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "NOT real camera frames" in proc.stdout
    doc = json.loads((out / "results.json").read_text())
    assert doc["mode"] == "networked"
    cycles = [row for row in doc["cycles"] if row["cycle"] >= 1]
    assert len(cycles) >= 2
    for row in doc["cycles"]:
        assert isinstance(row["AP"], float) and 0.0 <= row["AP"] <= 1.0
    assert [row["labelled"] for row in cycles] == [4, 8]
    assert all(row["outcome"] == "promoted" for row in cycles)
    # the agent ended on the last promoted model, newer than M0 (versions sort by time)
    assert doc["agent_model_version"] == cycles[-1]["model"]
    assert doc["agent_model_version"] > doc["m0_version"]
    # the random baseline: same M0, same pool, same number of labels per cycle
    assert [row["labelled"] for row in doc["random"]] == [0, 4, 8]
    assert doc["random"][0]["AP"] == doc["cycles"][0]["AP"]
    assert (out / "ap_vs_labels.png").stat().st_size > 0
    assert (out / "cycle1-picks.jpg").is_file() and (out / "cycle2-picks.jpg").is_file()
    _check_left_installation(out, doc)


def _dal(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dal.cli", *args], capture_output=True, text=True, timeout=120
    )


def _check_left_installation(out: Path, doc: dict) -> None:
    """The configs the demo leaves make the operator's tools work on its folder."""
    status = _dal("agent", "status", "--config", str(out / "agent.toml"), "--json")
    assert status.returncode == 3, status.stderr  # 3 = not running, like systemctl status
    daemon = json.loads(status.stdout)["daemon"]
    assert daemon["agent"] == "bench1"
    assert daemon["model"]["version"] == doc["agent_model_version"]
    models = _dal("models", "list", "--config", str(out / "trainer.toml"), "--json")
    assert models.returncode == 0, models.stderr
    rows = json.loads(models.stdout)
    current = [row for row in rows if row["state"] == "current"]
    assert [row["version"] for row in current] == [doc["agent_model_version"]]
    assert {row["version"] for row in rows} >= {doc["m0_version"]}
