"""The generic config machinery: YAML files plus ``key=value`` dotted overrides parsed into plain dataclasses.

Nothing here knows a particular format (the fields live in `cinema.config.schema`). `build_dataclass` checks keys
and types against the dataclass annotations: unknown keys (with a did-you-mean hint), missing required keys
(`required()` fields) and wrong types raise one `ValueError` naming the dotted key.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any

import yaml

from cinema.io.errors import InputError

_MISSING = object()


def required() -> Any:
    """Field default meaning "the user must give this key"."""
    return field(default=_MISSING)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert it (YAML reads ``1e-3`` as a string)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise InputError(f"config key '{key}': expected a mapping, got {value!r}")
        return _build(tp, value, key)
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise InputError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
        (inner,) = typing.get_args(tp)
        return [_convert(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            return value.lower() in ("true", "yes")
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # ids such as 1 or 2024 written without quotes
    raise InputError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            full = f"{prefix}.{key}" if prefix else str(key)
            hint = difflib.get_close_matches(str(key), names, n=1)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else f" (valid keys: {', '.join(names)})"
            raise InputError(f"unknown config key '{full}'{suggestion}")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        full = f"{prefix}.{f.name}" if prefix else f.name
        if f.name in values:
            kwargs[f.name] = _convert(values[f.name], hints[f.name], full)
        elif f.default is _MISSING:
            raise InputError(f"missing required config key '{full}'")
    return cls(**kwargs)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["train.lr=1e-4", "model.views=[sax]"]`` -> nested dict; values are read as YAML scalars or lists."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise InputError(f"override {item!r} must look like key=value (e.g. train.lr=1e-4)")
        key, text = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise InputError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as err:
            raise InputError(f"override {item!r}: value is not valid YAML ({err})") from err
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise InputError(f"override {item!r} conflicts with an earlier override of '{part}'")
            node = child
        node[parts[-1]] = value
    return nested


def merge_dicts(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_dicts(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def apply_overrides(values: dict[str, Any], overrides: list[str] | None = None) -> dict[str, Any]:
    """The config mapping with dotted ``key=value`` overrides merged in (the input is never modified)."""
    if not isinstance(values, dict):
        raise InputError(f"a config must be a mapping at the top level, got {type(values).__name__}")
    if overrides:
        values = merge_dicts(values, parse_overrides(overrides))
    return values


def build_dataclass(cls: type, values: dict[str, Any], overrides: list[str] | None = None) -> Any:
    """Any config dataclass from a dict plus dotted overrides; unknown, missing and mistyped keys raise ValueError.

    The shared machinery of every config format (fine-tuning and pre-training, `cinema.config`).
    """
    return _build(cls, apply_overrides(values, overrides))


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """The YAML mapping of a config file (errors name the file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML ({err})") from err
    return values or {}


def save_config(config: Any, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically (`cinema.io.atomic.write_text_atomic`)."""
    from cinema.io.atomic import write_text_atomic  # here: cinema.io is heavy, and cinema.models imports this package

    write_text_atomic(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


def resolve_path(text: str) -> Path:
    """User paths in configs: ``~`` and ``$VARS`` expanded, relative to the working directory."""
    return Path(os.path.expandvars(os.path.expanduser(text)))
