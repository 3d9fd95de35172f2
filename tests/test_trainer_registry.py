"""The model registry: lineage, one current and one previous, promote and rollback, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dal.cli import main
from dal.errors import ModelError
from dal.link import build_manifest
from dal.link.signing import generate_keypair, load_private_key
from dal.trainer.registry import ModelRecord, Registry


def released(registry: Registry, folder: Path, version: str, parent: str | None) -> ModelRecord:
    """A registered model with a (stand-in) ONNX file and a manifest signed by folder/key."""
    onnx = folder / f"{version}.onnx"
    onnx.write_bytes(f"onnx bytes of {version}".encode())
    record = registry.add(
        ModelRecord(
            version=version,
            checkpoint=folder / f"{version}.pt",
            class_names=("washer", "l_bracket"),
            parent=parent,
            metrics={"AP": 0.5},
            training={"real_images": 3},
        )
    )
    key = load_private_key(folder / "key")
    manifest = build_manifest(onnx, version, key, chunk_size=4096, parent_version=parent)
    return registry.update(record.version, onnx=onnx, manifest=manifest)


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    generate_keypair(tmp_path / "key", tmp_path / "key.pub")
    with Registry(tmp_path / "models") as r:
        yield r


def states(registry: Registry) -> dict[str, str]:
    return {r.version: r.state for r in registry.list()}


def test_promote_moves_current_to_previous_and_previous_to_archived(
    registry: Registry, tmp_path: Path
) -> None:
    for version, parent in (("a", None), ("b", "a"), ("c", "b")):
        released(registry, tmp_path, version, parent)
        registry.promote(version, "test")
    assert states(registry) == {"a": "archived", "b": "previous", "c": "current"}
    assert registry.get("c").parent == "b"
    assert [h["action"] for h in registry.history("c")] == ["added", "promoted"]


def test_rollback_goes_back_one_model_at_a_time(registry: Registry, tmp_path: Path) -> None:
    for version in "abc":
        released(registry, tmp_path, version, None)
        registry.promote(version)
    assert registry.rollback("bad in the field").version == "b"
    assert states(registry) == {"a": "previous", "b": "current", "c": "archived"}
    assert registry.get("c").reason == "bad in the field"
    assert registry.rollback().version == "a"
    # c was rolled back: it never becomes the rollback target again
    assert states(registry) == {"a": "current", "b": "archived", "c": "archived"}
    with pytest.raises(ModelError, match="no previous model"):
        registry.rollback()


def test_only_released_models_can_be_promoted(registry: Registry, tmp_path: Path) -> None:
    registry.add(ModelRecord("raw", tmp_path / "raw.pt", ("washer",)))
    with pytest.raises(ModelError, match="no released ONNX"):
        registry.promote("raw")
    with pytest.raises(ModelError, match="already in the registry"):
        registry.add(ModelRecord("raw", tmp_path / "raw.pt", ("washer",)))
    with pytest.raises(ModelError, match="not in the registry"):
        registry.require("nope")
    rejected = registry.mark("raw", "rejected", "AP too low")
    assert (rejected.state, rejected.reason) == ("rejected", "AP too low")


def test_the_models_cli_lists_shows_promotes_and_rolls_back(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    config = tmp_path / "trainer.toml"
    config.write_text(f'[trainer]\ndata_dir = "{data}"\n[models]\nprivate_key = "{tmp_path}/key"\n')
    generate_keypair(tmp_path / "key", tmp_path / "key.pub")
    with Registry(data / "models") as registry:
        released(registry, tmp_path, "m1", None)
        registry.promote("m1")
        released(registry, tmp_path, "m2", "m1")
        registry.mark("m2", "rejected", "AP 0.1 < 0.5")

    assert main(["models", "list", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "m1" in out and "current" in out and "rejected" in out and "0.5000" in out

    assert main(["models", "show", "m2", "--config", str(config)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["parent"] == "m1" and shown["state"] == "rejected"
    assert [h["action"] for h in shown["history"]] == ["added", "rejected"]

    assert main(["models", "promote", "m2", "--config", str(config)]) == 0
    assert "current model: m2" in capsys.readouterr().out
    assert main(["models", "rollback", "--config", str(config)]) == 0
    assert "current model: m1" in capsys.readouterr().out
    assert main(["models", "show", "nope", "--config", str(config)]) == 1
    assert "not in the registry" in capsys.readouterr().err
