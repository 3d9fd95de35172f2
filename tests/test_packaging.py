"""The installed package must contain every source folder (the folder mapping is by hand)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_python_package_folder_is_listed() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = config["package-dir"]
    listed = set(config["packages"])
    found = set()
    for package, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((package, *parts)))
    assert found == listed


def test_the_agent_package_does_not_import_torch() -> None:
    """The agent install has no torch: nothing under dal/ or agent/ may import it."""
    offenders = [
        str(path.relative_to(ROOT))
        for folder in ("dal", "agent")
        for path in (ROOT / folder).rglob("*.py")
        if any(
            line.lstrip().startswith(("import torch", "from torch"))
            for line in path.read_text().splitlines()
        )
    ]
    assert offenders == []


# A folder may import only the folders below it: dal/ is the base; the trainer may use the
# exporter, never the other way round (the exporter takes a built model, not a checkpoint file);
# the demo runs them all and is the top, so nothing imports it.
LOWER_ONLY = {
    "dal": {"dal.agent", "dal.trainer", "dal.exporter", "dal.blender", "dal.demo"},
    "exporter": {"dal.trainer", "dal.agent", "dal.demo"},
    "agent": {"dal.trainer", "dal.exporter", "dal.blender", "dal.demo"},
    "trainer": {"dal.demo"},
    "blender": {"dal.demo"},
}


def test_no_folder_imports_one_above_it() -> None:
    offenders = []
    for folder, above in LOWER_ONLY.items():
        for path in (ROOT / folder).rglob("*.py"):
            for line in path.read_text().splitlines():
                words = line.split()
                if len(words) >= 2 and words[0] in ("import", "from"):
                    module = words[1]
                    if any(module == a or module.startswith(a + ".") for a in above):
                        offenders.append(f"{path.relative_to(ROOT)}: {line.strip()}")
    assert offenders == []
