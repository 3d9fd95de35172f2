"""The trainer's config: strict, documented, and the reference file is generated from it."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from dal import config as cfg
from dal.cli import main
from dal.errors import ConfigError
from dal.trainer.config import TrainerConfig, load_trainer_config, resolve_path

ROOT = Path(__file__).resolve().parents[1]
DOCS_FILE = ROOT / "docs" / "config" / "trainer.toml"
EXAMPLE = ROOT / "systemd" / "trainer.example.toml"


def test_docs_reference_is_generated_from_the_code() -> None:
    expected = cfg.render_toml(TrainerConfig, title=TrainerConfig.TITLE)
    assert DOCS_FILE.read_text() == expected, (
        "docs/config/trainer.toml is out of date: run "
        "`python -m dal.config dal.trainer.config:TrainerConfig > docs/config/trainer.toml`"
    )
    assert cfg.load(TrainerConfig, DOCS_FILE, env={}) == TrainerConfig()


def test_every_trainer_setting_is_documented() -> None:
    def walk(cls: type, where: str) -> None:
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{where}.{f.name} has no help"
            if dataclasses.is_dataclass(f.default_factory):  # type: ignore[arg-type]
                walk(f.default_factory, f"{where}.{f.name}")  # type: ignore[arg-type]

    walk(TrainerConfig, "trainer")


def test_the_example_config_loads(tmp_path: Path) -> None:
    config = load_trainer_config(EXAMPLE, env={})
    assert config.finetune.val is not None and config.labels.oracle is None
    tomllib.loads(EXAMPLE.read_text())


def test_unknown_keys_and_env_overrides(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text("[finetune]\ntolerence = 0.01\n")
    with pytest.raises(ConfigError, match="did you mean 'tolerance'"):
        load_trainer_config(path, env={})
    config = load_trainer_config(env={"DAL_TRAINER__FINETUNE__TOLERANCE": "0.02"})
    assert config.finetune.tolerance == 0.02
    assert resolve_path(config, Path("models")) == Path("/var/lib/dal-trainer/models")


def test_dal_trainer_config_prints_the_reference(capsys) -> None:
    assert main(["trainer", "config"]) == 0
    assert capsys.readouterr().out == DOCS_FILE.read_text()


def test_the_systemd_unit_is_a_hardened_notify_service_running_a_real_command() -> None:
    import configparser
    import shlex

    from dal.cli import build_parser

    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # keys are case-sensitive
    unit.read(ROOT / "systemd" / "dal-trainer.service")
    service = unit["Service"]
    assert service["Type"] == "notify" and int(service["WatchdogSec"]) > 0
    assert service["RestartPreventExitStatus"] == "78"
    for key, value in (
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
    ):
        assert service[key] == value, key
    argv = shlex.split(service["ExecStart"])[1:]
    args = build_parser(argv).parse_args(argv)
    assert (args.command, args.action, args.config) == (
        "trainer",
        "serve",
        Path("/etc/dal/trainer.toml"),
    )


def test_dal_keys_generate_writes_the_configured_pair_once(tmp_path: Path, capsys) -> None:
    import stat

    from dal.link.signing import key_id, load_private_key, load_public_key

    config = tmp_path / "trainer.toml"
    config.write_text(f'[trainer]\ndata_dir = "{tmp_path}"\n')
    assert main(["keys", "generate", "--config", str(config)]) == 0
    private, public = tmp_path / "keys/model-signing.key", tmp_path / "keys/model-signing.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    kid = key_id(load_public_key(public))
    assert key_id(load_private_key(private).public_key()) == kid
    assert f"key id {kid}" in capsys.readouterr().out
    assert main(["keys", "generate", "--config", str(config)]) == 1
    assert "refusing to replace a signing key" in capsys.readouterr().err
    assert key_id(load_public_key(public)) == kid


def test_serve_exits_78_on_a_config_mistake(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "trainer.toml"
    bad.write_text(f'[trainer]\ndata_dir = "{tmp_path}"\n[finetune]\ntolerence = 1\n')
    assert main(["trainer", "serve", "--config", str(bad)]) == 78
    assert "did you mean 'tolerance'" in capsys.readouterr().err
