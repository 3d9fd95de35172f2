"""One onnxruntime build per environment (dal/runtimes.py): the agent and trainer refuse two."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dal.errors import ConfigError
from dal.runtimes import check_single_runtime, installed_builds


def test_builds_are_found_under_any_spelling_and_others_ignored() -> None:
    names = ["numpy", "onnxruntime_gpu", "onnxruntime-extensions", "ONNXRuntime", "onnx"]
    assert installed_builds(names) == ["onnxruntime", "onnxruntime-gpu"]


def test_one_build_passes_two_are_refused_naming_both() -> None:
    check_single_runtime(["onnxruntime", "pillow"])
    check_single_runtime([])  # none: the import error says what to install, later
    with pytest.raises(ConfigError) as caught:
        check_single_runtime(["onnxruntime-openvino", "onnxruntime", "numpy"])
    text = str(caught.value)
    assert "pip uninstall -y onnxruntime onnxruntime-openvino" in text
    assert "dal[intel]" in text and "dal[cpu]" in text


def test_this_environment_has_exactly_one_build() -> None:
    assert len(installed_builds()) == 1
    check_single_runtime()


def _fake_distribution(site: Path, name: str) -> None:
    """A real (empty) installed distribution that importlib.metadata finds on the path."""
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")


@pytest.mark.parametrize("command", [["agent", "run"], ["trainer", "serve"]])
def test_agent_and_trainer_exit_78_with_a_second_build(tmp_path: Path, command: list) -> None:
    site = tmp_path / "site"
    _fake_distribution(site, "onnxruntime-gpu")
    config = tmp_path / "none.toml"  # never read: the check comes first
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run(
        [sys.executable, "-m", "dal.cli", *command, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
    )
    assert result.returncode == 78, result.stderr
    assert "Traceback" not in result.stderr
    assert "onnxruntime-gpu" in result.stderr and "pip uninstall" in result.stderr
