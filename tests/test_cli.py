"""The `dal` command: every subcommand is documented and user mistakes are one clean line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dal.cli import SUBCOMMANDS, main


def _dal(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dal.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_top_level_help_lists_every_subcommand() -> None:
    result = _dal("--help")
    assert result.returncode == 0
    for name, (_, help_text) in SUBCOMMANDS.items():
        assert name in result.stdout and help_text[:30] in result.stdout


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_each_subcommand_has_a_described_help(name: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"dal {name}" in out and len(out.splitlines()) > 3


def test_a_user_mistake_is_one_line_without_traceback(tmp_path: Path) -> None:
    result = _dal("train", str(tmp_path / "missing.json"), "--out", str(tmp_path / "run"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "missing.json" in result.stderr
