"""scripts/setup.sh: every checkout gets its own .venv over one shared third-party environment.

The bug this guards against: one cached venv re-pointed at whichever checkout ran setup last, so
that one clone imported another clone's agent/pool.py. Here two fresh clones are set up at the
same time; each must import its own code, and this checkout its own.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

import dal.agent.pool

REPO = Path(__file__).resolve().parents[1]
SECOND_SETUP_S = 30.0  # "seconds": measured ~1 s on an idle machine, generous for a loaded one


def _setup(checkout: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["bash", "scripts/setup.sh"],
        cwd=checkout,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _imported_files(checkout: Path, cwd: Path) -> list[Path]:
    code = "import dal, dal.agent.pool; print(dal.__file__); print(dal.agent.pool.__file__)"
    out = subprocess.run(
        [str(checkout / ".venv" / "bin" / "python"), "-c", code],
        cwd=cwd,  # not the checkout: its folder on sys.path would hide a wrong install
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [Path(line) for line in out.split()]


def test_this_checkout_imports_its_own_code() -> None:
    assert Path(dal.agent.pool.__file__).resolve().is_relative_to(REPO)
    assert Path(sys.prefix).resolve() == (REPO / ".venv").resolve()


@pytest.mark.slow
def test_two_clones_set_up_at_once_each_import_their_own_code(tmp_path: Path) -> None:
    clones = [tmp_path / "a", tmp_path / "b"]
    for clone in clones:
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    shared = subprocess.run(
        ["bash", "scripts/setup.sh", "--cache"],
        cwd=clones[0],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not (Path(shared) / ".complete").is_file():
        pytest.skip(f"the committed lock's environment {shared} is not built: run make setup")
    runs = [_setup(clone) for clone in clones]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0, output
    for clone in clones:
        assert not (clone / ".venv").is_symlink()
        for path in _imported_files(clone, tmp_path):
            assert path.resolve().is_relative_to(clone.resolve()), path
    started = time.monotonic()
    again = _setup(clones[0])
    output = again.communicate(timeout=300)[0]
    assert again.returncode == 0, output
    assert time.monotonic() - started < SECOND_SETUP_S, output
    assert "up to date" in output
    assert Path(dal.agent.pool.__file__).resolve().is_relative_to(REPO)
