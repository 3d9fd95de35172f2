"""Typed configuration read once from TOML, checked against frozen dataclasses.

Each program (agent, trainer) describes its config as a root dataclass whose fields are either
settings or sections (nested dataclasses = TOML tables). Every field has a default and a one-line
`help` in its metadata (`field(default=..., metadata=doc(...))`), so `render_toml` can write
the documented default file: the reference in docs/ is generated from code, not kept by hand.

Reading is strict, because a typo in a config file should fail at start-up, not silently fall
back to a default: unknown keys are rejected with the closest valid name, values of the wrong
type name the key and the expected type. Environment variables override the file:
`<PREFIX>__<SECTION>__<KEY>=value` (e.g. `DAL_AGENT__POOL__MAX_IMAGES=500`); the value is parsed
to the field's type. Config objects are frozen: runtime state lives elsewhere.

Supported field types: bool, int, float, str, Path, Literal[...] of strings, tuple[T, ...] of
those scalars, `T | None` (None = key left out; TOML has no null) and nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import json
import math
import os
import sys
import textwrap
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from dal.errors import ConfigError

T = TypeVar("T")

ENV_SEPARATOR = "__"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_WRAP = 96


def doc(help: str, *, min: float | None = None, max: float | None = None) -> dict[str, Any]:
    """Field metadata: what a setting does and optional numeric bounds (inclusive).

    Use as `x: int = field(default=5, metadata=doc("what x does", min=0))`; a section is
    `pool: PoolConfig = field(default_factory=PoolConfig, metadata=doc("what it holds"))`.
    """
    meta: dict[str, Any] = {"help": help}
    if min is not None:
        meta["min"] = min
    if max is not None:
        meta["max"] = max
    return meta


# ---------------------------------------------------------------------------------------------
# types


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    """`X | None` -> (X, True); anything else -> (tp, False)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
        raise TypeError(f"unsupported union type {tp!r}: only `X | None` is allowed")
    return tp, False


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def type_name(tp: Any) -> str:
    """How a field's type reads in messages and in the generated reference."""
    inner, optional = _strip_optional(tp)
    suffix = " (optional)" if optional else ""
    origin = typing.get_origin(inner)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(inner)) + suffix
    if origin is tuple:
        return f"array of {type_name(typing.get_args(inner)[0])}s" + suffix
    names = {bool: "boolean", int: "integer", float: "number", str: "string", Path: "path"}
    return names.get(inner, getattr(inner, "__name__", str(inner))) + suffix


# ---------------------------------------------------------------------------------------------
# coercion of TOML values (and parsed environment values) to field types


def _coerce(value: Any, tp: Any, where: str) -> Any:
    inner, _optional = _strip_optional(tp)
    origin = typing.get_origin(inner)
    if origin is typing.Literal:
        choices = typing.get_args(inner)
        if value not in choices:
            raise _bad(where, value, inner, choices)
        return value
    if origin is tuple:
        item_tp = typing.get_args(inner)[0]
        if not isinstance(value, list | tuple):
            raise _bad(where, value, inner)
        return tuple(_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
    if inner is bool:
        if not isinstance(value, bool):
            raise _bad(where, value, inner)
        return value
    if inner is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(where, value, inner)
        return value
    if inner is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _bad(where, value, inner)
        return float(value)
    if inner is str:
        if not isinstance(value, str):
            raise _bad(where, value, inner)
        return value
    if inner is Path:
        if not isinstance(value, str | Path):
            raise _bad(where, value, inner)
        return Path(value)
    raise TypeError(f"{where}: config field type {inner!r} is not supported")


def _bad(where: str, value: Any, tp: Any, choices: tuple[Any, ...] = ()) -> ConfigError:
    shown = json.dumps(value) if isinstance(value, str | int | float | bool) else repr(value)
    hint = None
    if choices and isinstance(value, str):
        close = difflib.get_close_matches(value, [str(c) for c in choices], n=1)
        hint = f"did you mean {close[0]!r}?" if close else None
    return ConfigError(
        f"{where} must be {type_name(tp)}, got {type(value).__name__} {shown}", hint=hint
    )


def _check_bounds(value: Any, meta: Mapping[str, Any], where: str) -> None:
    if value is None or not isinstance(value, int | float):
        return
    low, high = meta.get("min"), meta.get("max")
    if (low is not None or high is not None) and not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value}")  # NaN passes < and >
    if low is not None and value < low:
        raise ConfigError(f"{where} must be ≥ {low}, got {value}")
    if high is not None and value > high:
        raise ConfigError(f"{where} must be ≤ {high}, got {value}")


def parse_env_value(text: str, tp: Any, where: str) -> Any:
    """An environment string -> a value of the field's type (then checked like TOML values)."""
    inner, optional = _strip_optional(tp)
    if optional and text == "":
        return None
    origin = typing.get_origin(inner)
    if origin is tuple:
        if text.strip().startswith("["):
            try:
                return tomllib.loads(f"v = {text}")["v"]
            except tomllib.TOMLDecodeError as err:
                raise ConfigError(f"{where}: {text!r} is not a TOML array ({err})") from None
        item_tp = typing.get_args(inner)[0]
        items = [t.strip() for t in text.split(",") if t.strip()]
        return [parse_env_value(t, item_tp, where) for t in items]
    if inner is bool:
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ConfigError(f"{where} must be a boolean (true/false/1/0/yes/no/on/off), got {text!r}")
    if inner is int:
        try:
            return int(text.strip())
        except ValueError:
            raise ConfigError(f"{where} must be an integer, got {text!r}") from None
    if inner is float:
        try:
            return float(text.strip())
        except ValueError:
            raise ConfigError(f"{where} must be a number, got {text!r}") from None
    return text  # str, Path, Literal: checked by _coerce


# ---------------------------------------------------------------------------------------------
# building


def _section_label(path: tuple[str, ...]) -> str:
    return f"[{'.'.join(path)}]" if path else "the top level"


def _unknown_key(source: str, path: tuple[str, ...], key: str, valid: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    guess = f"did you mean {close[0]!r}? " if close else ""
    return ConfigError(
        f"{source}: unknown key {key!r} in {_section_label(path)}",
        hint=f"{guess}valid keys: {', '.join(valid)}",
    )


def _build(cls: type[T], data: Any, source: str, path: tuple[str, ...]) -> T:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: {_section_label(path)} must be a table, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in fields:
            raise _unknown_key(source, path, key, list(fields))
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for name, fld in fields.items():
        if name not in data:
            continue
        tp = hints[name]
        where = f"{source}: {'.'.join((*path, name))}"
        if _is_section(tp):
            kwargs[name] = _build(tp, data[name], source, (*path, name))
            continue
        value = _coerce(data[name], tp, where)
        _check_bounds(value, fld.metadata, where)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except ConfigError as err:  # a section's own check, with its hint
        raise ConfigError(
            f"{source}: {_section_label(path)}: {err.args[0]}", hint=err.hint
        ) from None
    except (ValueError, TypeError) as err:  # cross-field checks in __post_init__
        raise ConfigError(f"{source}: {_section_label(path)}: {err}") from None


def from_dict(cls: type[T], data: Mapping[str, Any], source: str = "<config>") -> T:
    """Build and check a config from an already-parsed mapping (e.g. tomllib's output)."""
    return _build(cls, data, source, ())


def _env_overrides(cls: type, env: Mapping[str, str], prefix: str) -> dict[str, Any]:
    """Collect `<PREFIX>__A__B=value` variables into a nested dict of typed values."""
    lead = prefix.upper() + ENV_SEPARATOR
    tree: dict[str, Any] = {}
    for var in sorted(env):
        if not var.upper().startswith(lead):
            continue
        parts = [p.lower() for p in var[len(lead) :].split(ENV_SEPARATOR)]
        owner, node, walked = cls, tree, ()
        for i, part in enumerate(parts):
            names = [f.name for f in dataclasses.fields(owner)]
            if part not in names:
                raise _unknown_key(f"environment variable {var}", walked, part, names)
            tp = _hints(owner)[part]
            walked = (*walked, part)
            last = i == len(parts) - 1
            if _is_section(tp) and not last:
                owner, node = tp, node.setdefault(part, {})
                continue
            if _is_section(tp) or not last:
                raise ConfigError(
                    f"environment variable {var}: {'.'.join(walked)} is "
                    f"{'a section' if _is_section(tp) else 'a setting'}",
                    hint="name one setting: <PREFIX>__<SECTION>__<KEY>",
                )
            where = f"environment variable {var}"
            value = _coerce(parse_env_value(env[var], tp, where), tp, where)
            field_meta = next(f for f in dataclasses.fields(owner) if f.name == part).metadata
            _check_bounds(value, field_meta, where)
            node[part] = value
    return tree


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a TOML file; a missing or malformed file is a ConfigError naming it."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"config file {p} not found",
            hint="create it from the documented defaults (see docs/config/) or fix the path",
        ) from None
    except OSError as err:
        raise ConfigError(f"cannot read config file {p}: {err.strerror}") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{p}: not UTF-8 text ({err})") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{p}: not valid TOML: {err}") from None


def load(
    cls: type[T],
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    env_prefix: str | None = None,
) -> T:
    """Defaults <- TOML file (if given) <- environment overrides; checked, frozen.

    `env_prefix` defaults to the class attribute `ENV_PREFIX` (if any); `env` to os.environ.
    """
    data: dict[str, Any] = read_toml(path) if path is not None else {}
    source = str(path) if path is not None else "<defaults>"
    config = _build(cls, data, source, ())
    prefix = env_prefix if env_prefix is not None else getattr(cls, "ENV_PREFIX", None)
    if prefix:
        overrides = _env_overrides(cls, os.environ if env is None else env, prefix)
        if overrides:
            config = _build(cls, _merge(data, overrides), f"{source} + environment", ())
    return config


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-friendly dict (Paths as strings, tuples as lists), e.g. for status messages."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        return v

    return plain(config)


# ---------------------------------------------------------------------------------------------
# rendering the documented TOML


def toml_value(value: Any) -> str:
    """One value in TOML syntax."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def _comment(text: str) -> list[str]:
    return textwrap.wrap(text, _WRAP - 2, initial_indent="# ", subsequent_indent="# ")


def _describe(fld: dataclasses.Field, tp: Any, env_var: str | None) -> list[str]:
    parts = [type_name(tp)]
    if "min" in fld.metadata:
        parts.append(f"≥ {fld.metadata['min']}")
    if "max" in fld.metadata:
        parts.append(f"≤ {fld.metadata['max']}")
    if env_var:
        parts.append(f"env {env_var}")
    return _comment("; ".join(parts))


def _render_table(obj: Any, path: tuple[str, ...], prefix: str | None, out: list[str]) -> None:
    cls = type(obj)
    hints = _hints(cls)
    sub: list[tuple[dataclasses.Field, Any]] = []
    for fld in dataclasses.fields(cls):
        tp = hints[fld.name]
        if _is_section(tp):
            sub.append((fld, getattr(obj, fld.name)))
            continue
        env_var = None
        if prefix:
            env_var = ENV_SEPARATOR.join([prefix, *path, fld.name]).upper()
        out.extend(_comment(fld.metadata.get("help", "")))
        out.extend(_describe(fld, tp, env_var))
        value = getattr(obj, fld.name)
        if value is None:
            out.append(f"# {fld.name} = (unset)")
        else:
            out.append(f"{fld.name} = {toml_value(value)}")
        out.append("")
    for fld, value in sub:
        out.extend(_comment(fld.metadata.get("help", "")))
        out.append(f"[{'.'.join((*path, fld.name))}]")
        out.append("")
        _render_table(value, (*path, fld.name), prefix, out)


def render_toml(config: Any, *, title: str | None = None, env_prefix: str | None = None) -> str:
    """The documented TOML for a config class (its defaults) or instance (its values).

    Loading the output gives back an equal config, so it can serve as a starting file.
    """
    obj = config() if isinstance(config, type) else config
    cls = type(obj)
    prefix = env_prefix if env_prefix is not None else getattr(cls, "ENV_PREFIX", None)
    out: list[str] = []
    if title:
        out.extend(_comment(title))
    out.extend(
        _comment(
            f"Generated from {cls.__module__}.{cls.__qualname__}; every key is optional and "
            + ("shows its default." if isinstance(config, type) else "shows this config's value.")
        )
    )
    if prefix:
        out.extend(
            _comment(
                f"Environment variables override the file: "
                f"{prefix}{ENV_SEPARATOR}<SECTION>{ENV_SEPARATOR}<KEY>=value."
            )
        )
    out.append("")
    _render_table(obj, (), prefix, out)
    while out and out[-1] == "":
        out.pop()
    return "\n".join(out) + "\n"


def _main(argv: list[str]) -> int:
    """`python -m dal.config package.module:ConfigClass` prints its documented default TOML."""
    if len(argv) != 1 or ":" not in argv[0]:
        print("usage: python -m dal.config package.module:ConfigClass", file=sys.stderr)
        return 2
    module_name, _, class_name = argv[0].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    sys.stdout.write(render_toml(cls, title=getattr(cls, "TITLE", None)))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
