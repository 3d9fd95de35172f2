"""Typed TOML config: strict reading, env overrides, the generated reference file."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import pytest

from dal import config as cfg
from dal.agent.config import AgentConfig, load_agent_config, resolve_path
from dal.config import doc
from dal.errors import ConfigError

DOCS_FILE = Path(__file__).resolve().parents[1] / "docs" / "config" / "agent.toml"


@dataclass(frozen=True)
class Inner:
    ratio: float = field(default=0.5, metadata=doc("a ratio", min=0.0, max=1.0))
    names: tuple[str, ...] = field(default=("a", "b"), metadata=doc("some names"))
    mode: Literal["fast", "exact"] = field(default="fast", metadata=doc("how"))
    path: Path | None = field(default=None, metadata=doc("optional path"))


@dataclass(frozen=True)
class Outer:
    ENV_PREFIX: ClassVar[str] = "T_APP"

    name: str = field(default="x", metadata=doc("top-level name"))
    count: int = field(default=3, metadata=doc("how many", min=1))
    on: bool = field(default=True, metadata=doc("switch"))
    inner: Inner = field(default_factory=Inner, metadata=doc("inner section"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "app.toml"
    path.write_text(text)
    return path


def test_defaults_without_file_or_env() -> None:
    assert cfg.load(Outer, env={}) == Outer()
    assert load_agent_config(env={}) == AgentConfig()


def test_values_are_read_and_coerced(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
name = "cam"
count = 7
[inner]
ratio = 1          # an integer is a fine number
names = ["p", "q", "r"]
mode = "exact"
path = "/tmp/x.json"
""",
    )
    c = cfg.load(Outer, path, env={})
    assert (c.name, c.count, c.on) == ("cam", 7, True)
    assert c.inner == Inner(
        ratio=1.0, names=("p", "q", "r"), mode="exact", path=Path("/tmp/x.json")
    )
    assert isinstance(c.inner.ratio, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.count = 9  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("[inner]\nratoi = 0.2\n", ["app.toml", "[inner]", "'ratoi'", "did you mean 'ratio'"]),
        ("cuont = 2\n", ["app.toml", "top level", "'cuont'", "did you mean 'count'"]),
        ("[innr]\nratio = 0.2\n", ["'innr'", "did you mean 'inner'"]),
        ("[inner]\nzzz = 1\n", ["'zzz'", "valid keys: ratio, names, mode, path"]),
    ],
)
def test_unknown_keys_are_rejected_with_a_suggestion(
    tmp_path: Path, text: str, needles: list[str]
) -> None:
    with pytest.raises(ConfigError) as err:
        cfg.load(Outer, write(tmp_path, text), env={})
    message = str(err.value)
    for needle in needles:
        assert needle in message


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ('count = "5"\n', ["count", "must be integer", "str"]),
        ("count = 2.5\n", ["count", "must be integer", "float"]),
        ("on = 1\n", ["on", "must be boolean"]),
        ("[inner]\nnames = [1, 2]\n", ["inner.names[0]", "must be string"]),
        ('[inner]\nnames = "a"\n', ["inner.names", "array of strings"]),
        ('[inner]\nmode = "fsat"\n', ["inner.mode", "'fast', 'exact'", "did you mean 'fast'"]),
        ("[inner]\nratio = 1.5\n", ["inner.ratio", "≤ 1.0"]),
        ("[inner]\nratio = nan\n", ["inner.ratio", "finite"]),
        ("[inner]\nratio = -inf\n", ["inner.ratio", "finite"]),
        ("count = 0\n", ["count", "≥ 1"]),
        ("inner = 3\n", ["[inner] must be a table"]),
    ],
)
def test_wrong_values_name_the_key_and_the_type(
    tmp_path: Path, text: str, needles: list[str]
) -> None:
    with pytest.raises(ConfigError) as err:
        cfg.load(Outer, write(tmp_path, text), env={})
    for needle in needles:
        assert needle in str(err.value)
    assert "app.toml" in str(err.value)


def test_bad_or_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        cfg.load(Outer, write(tmp_path, "count = = 3\n"), env={})
    with pytest.raises(ConfigError, match="not found"):
        cfg.load(Outer, tmp_path / "nope.toml", env={})


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "count = 4\n[inner]\nratio = 0.1\n")
    env = {
        "T_APP__COUNT": "9",
        "T_APP__ON": "off",
        "T_APP__INNER__NAMES": "x, y",
        "T_APP__INNER__PATH": "/data/gt.json",
        "OTHER__COUNT": "1",  # other prefixes are ignored
    }
    c = cfg.load(Outer, path, env=env)
    assert (c.count, c.on, c.inner.ratio) == (9, False, 0.1)
    assert c.inner.names == ("x", "y")
    assert c.inner.path == Path("/data/gt.json")
    c2 = cfg.load(Outer, env={"T_APP__INNER__NAMES": '["a,b", "c"]'})
    assert c2.inner.names == ("a,b", "c")


def test_agent_env_override_example() -> None:
    c = load_agent_config(
        env={
            "DAL_AGENT__POOL__MAX_IMAGES": "500",
            "DAL_AGENT__DETECTOR__PROVIDERS": "CPUExecutionProvider",
        }
    )
    assert c.pool.max_images == 500
    assert c.detector.providers == ("CPUExecutionProvider",)


@pytest.mark.parametrize(
    ("env", "needles"),
    [
        ({"T_APP__CONUT": "1"}, ["T_APP__CONUT", "did you mean 'count'"]),
        ({"T_APP__INNER__RATIO": "lots"}, ["T_APP__INNER__RATIO", "number", "'lots'"]),
        ({"T_APP__COUNT": "0"}, ["T_APP__COUNT", "≥ 1"]),
        ({"T_APP__ON": "maybe"}, ["T_APP__ON", "boolean"]),
        ({"T_APP__INNER": "1"}, ["T_APP__INNER", "section"]),
        ({"T_APP__INNER__MODE": "slow"}, ["T_APP__INNER__MODE", "'fast', 'exact'"]),
    ],
)
def test_bad_environment_variables_are_named(env: dict[str, str], needles: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        cfg.load(Outer, env=env)
    for needle in needles:
        assert needle in str(err.value)


def test_cross_field_checks_become_config_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "[source.reconnect]\ninitial_s = 10.0\nmax_s = 1.0\n")
    with pytest.raises(ConfigError, match=r"\[source.reconnect\].*max_s"):
        load_agent_config(path, env={})
    path = write(tmp_path, '[scoring]\nmethod = "marginal"\n')
    with pytest.raises(ConfigError, match="margin"):
        load_agent_config(path, env={})


def test_rendered_toml_loads_back_to_the_same_config(tmp_path: Path) -> None:
    text = cfg.render_toml(AgentConfig)
    tomllib.loads(text)  # valid TOML
    assert cfg.load(AgentConfig, write(tmp_path, text), env={}) == AgentConfig()
    custom = cfg.from_dict(Outer, {"count": 5, "inner": {"names": ["q"], "path": "/p"}})
    text = cfg.render_toml(custom)
    assert "T_APP__INNER__RATIO" in text  # the env name is documented next to each key
    assert cfg.load(Outer, write(tmp_path, text), env={}) == custom


def test_every_agent_setting_is_documented() -> None:
    def walk(cls: type, where: str) -> None:
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{where}.{f.name} has no help"
            if dataclasses.is_dataclass(f.default_factory):  # type: ignore[arg-type]
                walk(f.default_factory, f"{where}.{f.name}")  # type: ignore[arg-type]

    walk(AgentConfig, "agent")


def test_docs_reference_is_generated_from_the_code() -> None:
    expected = cfg.render_toml(AgentConfig, title=AgentConfig.TITLE)
    assert DOCS_FILE.is_file(), f"missing {DOCS_FILE}"
    assert DOCS_FILE.read_text() == expected, (
        "docs/config/agent.toml is out of date: run "
        "`python -m dal.config dal.agent.config:AgentConfig > docs/config/agent.toml`"
    )


def test_relative_paths_resolve_under_data_dir() -> None:
    c = cfg.from_dict(AgentConfig, {"agent": {"data_dir": "/srv/dal"}})
    assert resolve_path(c, c.pool.dir) == Path("/srv/dal/pool")
    assert resolve_path(c, Path("/abs/pool")) == Path("/abs/pool")
