"""Typed configuration: YAML files into (nested) dataclasses, with errors that name file and key.

Every concern (training recipe, data, class table, ...) has one dataclass holding its defaults;
YAML files only override. ``from_dict`` checks the shape: unknown keys, wrong types and missing
required fields are reported as ``<source>: <dotted.key>: <problem>``. Every number must be finite:
NaN and infinity (YAML ``.nan``, ``.inf``) are refused wherever they appear, in float fields,
lists and tuples (``mean``, ``crop_size``), mappings and ``Any`` values alike (``check_finite``
does the same for a dataclass built in Python). A YAML syntax error is one line,
``<file>:<line>:<column>: invalid YAML: <problem>``.
"""
from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, Union

import yaml

from sfnet_core.errors import ConfigError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance  # the stubs' name for "any dataclass"

T = TypeVar("T", bound="DataclassInstance")


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping with ``yaml.safe_load``; a ConfigError names the file on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{_yaml_location(str(path), exc)}: invalid YAML: {_yaml_problem(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _yaml_location(source: str, exc: yaml.YAMLError) -> str:
    """``file:line:column`` (1-based) of a YAML error, or just ``file`` when PyYAML gives no mark."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's several-line message as one line: the problem, and what was being parsed where."""
    problem = getattr(exc, "problem", None)
    if not problem:
        return " ".join(str(exc).split())
    context, mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and mark is not None:
        problem += f" ({context} started at line {mark.line + 1}, column {mark.column + 1})"
    elif context:
        problem += f" ({context})"
    return problem


def check_finite(value: Any, source: str, key: str = "") -> None:
    """ConfigError ``<source>: <key>: must be a finite number, got nan`` for the first NaN or
    infinity anywhere in ``value`` (a dataclass, mapping, list, tuple or number)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{source}: {key or '<value>'}: must be a finite number, got {value}")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            check_finite(getattr(value, f.name), source, f"{key}.{f.name}" if key else f.name)
    elif isinstance(value, dict):
        for k, v in value.items():
            check_finite(v, source, f"{key}.{k}" if key else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_finite(v, source, f"{key}[{i}]")


def from_dict(cls: type[T], data: Any, source: str = "<dict>", _prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data`` (a mapping), validating keys and types recursively."""
    section = _prefix.rstrip(".")
    where = f"{source}: {section}: " if section else f"{source}: "
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}unknown key(s) {', '.join(map(repr, unknown))}; valid keys: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, source, f"{_prefix}{name}")
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{where}missing required key(s) {', '.join(map(repr, missing))}")
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        # __post_init__ validation: prefix the source so the message names the file
        message = str(exc)
        if message.startswith(source):
            raise ConfigError(message) from None
        # messages that already name their own section ("model.std: ...") only need the file
        prefix = f"{source}: " if section and message.startswith(_prefix) else where
        raise ConfigError(f"{prefix}{message}") from None


def to_dict(obj: Any) -> Any:
    """Dataclass (nested) -> plain dict/list/scalars, suitable for YAML, JSON and checkpoints."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def apply_overrides(data: dict[str, Any], overrides: list[str], source: str = "command line") -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a nested dict, returning a copy."""
    import copy

    result = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{source}: override {item!r} is not of the form key=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: override {item!r}: invalid value: {_yaml_problem(exc)}") from None
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{source}: override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return result


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp: Any, value: Any, source: str, key: str) -> Any:
    """Check ``value`` against annotation ``tp``; convert lists to tuples and ints to floats."""
    where = f"{source}: {key}"
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if isinstance(value, float) and not math.isfinite(value):
        # whatever the field's type: a NaN lr or an infinite crop size is never meant
        raise ConfigError(f"{where}: must be a finite number, got {value}")
    if tp is Any:
        check_finite(value, source, key)  # e.g. model.options: passed on untyped, still no NaN
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        check_finite(value, source, key)  # "must be finite" says more than "expected X | None"
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, source, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return from_dict(tp, value, source, f"{key}.")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(a, v, source, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item_type = args[0] if args else Any
        items = [_coerce(item_type, v, source, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        key_type, value_type = args if args else (Any, Any)
        return {
            _coerce(key_type, k, source, f"{key}.{k}"): _coerce(value_type, v, source, f"{key}.{k}")
            for k, v in value.items()
        }
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, str) and _is_non_finite_word(value):
                raise ConfigError(f"{where}: must be a finite number, got {value!r}")
            hint = ""
            if isinstance(value, str) and _is_number_word(value):
                # YAML 1.1 (PyYAML) reads 1e-4 and 1.0e6 as text; 1.0e-4 and 1.0e+6 are numbers
                hint = " (YAML reads this as text: an exponent needs a dot and a sign, e.g. 1.0e-4, 1.0e+6)"
            raise ConfigError(f"{where}: expected a number, got {value!r}{hint}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{where}: expected a path, got {value!r}")
        return Path(value)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return value


def _is_non_finite_word(text: str) -> bool:
    """``nan``, ``inf``, ``-Infinity``...: words YAML reads as strings but Python as non-finite floats."""
    try:
        return not math.isfinite(float(text))
    except ValueError:
        return False


def _is_number_word(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
