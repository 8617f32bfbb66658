"""Typed, strict configuration: dataclasses filled from TOML / dicts / `key=value` overrides.

Unknown keys and wrong types raise `ConfigError` naming the valid keys or the expected type
(silent acceptance of a typo is a bug). Nested dataclasses map to TOML tables.

Two declared exceptions to "a key is a field":
- A tagged union (`tagged(tag, options)` as a field's metadata): the field holds the config of
  the option another field (`tag`) names, read from and written to a table named like that
  option (`paradigm = "masked"` + `[masked]`). Tables of the other options are checked (their
  typos still raise) and dropped, so one file may carry a table for every option.
- Moved keys (a class's `MOVED = {"old": "table.new"}`): an old key is read as its new place,
  with a `ConfigWarning` saying where it lives now.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
import warnings
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

T = TypeVar("T")


class ConfigError(ValueError):
    pass


class ConfigWarning(UserWarning):
    """A config was read with a key that has moved (see the message for its new place)."""


def tagged(tag: str, options: dict[str, type]) -> dict:
    """Field metadata of a tagged union: the field holds an `options[<value of field tag>]`,
    read from and written to the table named by that value (see the module notes)."""
    return {"tagged_by": tag, "options": options}


def _tagged_fields(cls) -> list:
    return [f for f in dataclasses.fields(cls) if "tagged_by" in f.metadata]


def _move_keys(cls, data: dict, where: str) -> dict:
    """Old keys of `cls.MOVED` read as their new place (one table deep), with a warning."""
    moved = getattr(cls, "MOVED", {})
    old = [k for k in data if k in moved]
    if not old:
        return data
    data = dict(data)
    prefix = f"{where}." if where else ""
    for k in old:
        table, _, leaf = moved[k].partition(".")
        inner = dict(data.get(table) or {})
        if leaf in inner:
            raise ConfigError(f"{prefix}{k} and {prefix}{moved[k]} are both given; {k} has "
                              f"moved to {moved[k]}: give only that")
        inner[leaf] = data.pop(k)
        data[table] = inner
        warnings.warn(f"config key {prefix}{k} has moved to {prefix}{moved[k]}; read as "
                      f"{prefix}{moved[k]} (write it there)", ConfigWarning, stacklevel=4)
    return data


def _type_name(tp) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp, where: str):
    origin = get_origin(tp)
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not {_type_name(tp)}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} matches none of "
                          f"{', '.join(_type_name(a) for a in args)}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            items = [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
        elif origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            items = [_coerce(v, a, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value))]
        else:
            a = args[0] if args else Any
            items = [_coerce(v, a, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def check_limits(obj, limits: dict[str, tuple[float, float]]) -> None:
    """ValueError naming the field, its value and the accepted range for any field of `obj`
    outside its limits (None fields are not checked: they are resolved later). Configs call
    it first in __post_init__, so sizes are checked before anything is allocated."""
    for name, (lo, hi) in limits.items():
        x = getattr(obj, name)
        if x is not None and not lo <= x <= hi:
            raise ValueError(f"{name} = {x!r} is out of range; accepted: {lo} to {hi}")


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Build dataclass `cls` from `data`, strictly."""
    hints = typing.get_type_hints(cls)
    data = _move_keys(cls, data, where)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    union = _tagged_fields(cls)
    keys = set(fields) - {f.name for f in union}
    keys |= {name for f in union for name in f.metadata["options"]}
    unknown = sorted(set(data) - keys)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown config key{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(prefix + k for k in unknown)}; valid keys"
                          f"{' of ' + where if where else ''}: {', '.join(sorted(keys))}")
    data = dict(data)
    kwargs = {}
    for f in union:
        tag, options = f.metadata["tagged_by"], f.metadata["options"]
        chosen = _coerce(data.get(tag, fields[tag].default), hints[tag],
                         f"{where}.{tag}" if where else tag)
        for name, option in options.items():           # every table is checked
            if name in data:
                value = _coerce(data.pop(name), option, f"{where}.{name}" if where else name)
                if name == chosen:
                    kwargs[f.name] = value
    kwargs.update({k: _coerce(v, hints[k], f"{where}.{k}" if where else k)
                   for k, v in data.items()})
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where or cls.__name__}: {e}") from None


def to_dict(obj) -> dict:
    """Plain dict (TOML/JSON-ready) of a dataclass instance (a tagged union's field under the
    name of its option: what `from_dict` reads back)."""
    def conv(v):
        if dataclasses.is_dataclass(v):
            return {(getattr(v, f.metadata["tagged_by"]) if "tagged_by" in f.metadata
                     else f.name): conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        return v
    return conv(obj)


def _parse_value(text: str):
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text                        # bare strings: --set paradigm=masked
    except RecursionError:
        raise ConfigError(f"override value {text[:40]!r}...: nested too deeply") from None


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Apply `a.b=value` overrides (values in TOML syntax; bare words are strings)."""
    data = _deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. train.lr=3e-4)")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p} is not a table")
        node[parts[-1]] = _parse_value(text.strip())
    return data


def _deepcopy(d):
    return {k: _deepcopy(v) if isinstance(v, dict) else v for k, v in d.items()}


def load_config(cls: type[T], path: str | Path | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Load `cls` from a TOML file (optional) plus overrides."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{p}: not valid TOML ({e})") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{p}: not UTF-8 text (byte {e.start})") from None
        except RecursionError:
            raise ConfigError(f"{p}: nested too deeply to read") from None
    return from_dict(cls, apply_overrides(data, overrides))
