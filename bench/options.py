"""Typed options: a frozen dataclass per set of options, built from a user's mapping (a TOML table) and validated
field by field before any compute.

:func:`parse_options` checks every key against the dataclass's fields (an unknown key is an error naming the
nearest valid names), every value against the field's type (``int``, ``float`` (ints accepted), ``bool``, ``str``,
``Literal[...]``, ``X | None``, ``list[X]`` / ``tuple[X, ...]``, ``dict[str, X]``, nested option dataclasses,
unions tried in order) and against the range in the field's metadata (``min``, ``max``, ``min_exclusive``).
Every problem is one :class:`OptionError` line: ``<where>.<key>: <problem>``.

Declare options like this::

    @dataclass(frozen=True)
    class MyOptions(Options):
        points: int = field(default=128, metadata=opt("test points measured", min=1))
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, Union

T = TypeVar("T", bound="Options")


class OptionError(ValueError):
    """An option that cannot be used; the message is one line naming where, the key and the problem."""


def opt(help: str, *, min: float | None = None, max: float | None = None,
        min_exclusive: bool = False) -> dict[str, Any]:
    """Field metadata: a one-line description and an optional range."""
    return {"help": help, "min": min, "max": max, "min_exclusive": min_exclusive}


def near(name: str, known: Iterable[str]) -> str:
    """``"; did you mean a, b?"`` for close matches of ``name`` among ``known``, else ``""``."""
    matches = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(matches)}?" if matches else ""


def type_name(value: Any) -> str:
    """The TOML name of a value's type, for messages."""
    return {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", tuple: "array",
            dict: "table"}.get(type(value), type(value).__name__)


@dataclass(frozen=True)
class Options:
    """Base of every options dataclass (task options, loader options, ...)."""

    @classmethod
    def parse(cls: type[T], data: Mapping[str, Any] | None, where: str) -> T:
        return parse_options(cls, data or {}, where)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly values (nested options as tables, tuples as lists)."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def describe(cls) -> list[tuple[str, str, str, str]]:
        """``(name, type, default, help)`` per field, for documentation."""
        hints = typing.get_type_hints(cls)
        out = []
        for f in dataclasses.fields(cls):
            default: Any
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = "(required)"
            if isinstance(default, Options):
                default = default.to_dict()
            out.append((f.name, describe_type(hints[f.name]), _show(default), str(f.metadata.get("help", ""))))
        return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_show(v)}" for k, v in value.items()) + "}" if value else "{}"
    return str(value)


def describe_type(tp: Any) -> str:
    """A short readable name of a field type: ``integer``, ``"a" | "b"``, ``array of string``, ..."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return "any"
    if origin is typing.Literal:
        return " | ".join(f'"{a}"' if isinstance(a, str) else str(a) for a in args)
    if origin in (Union, types.UnionType):
        parts = [describe_type(a) for a in args if a is not type(None)]
        return " | ".join(parts) + (" | none" if type(None) in args else "")
    if origin in (list, tuple):
        return f"array of {describe_type(args[0])}" if args else "array"
    if origin is dict:
        return f"table of {describe_type(args[1])}" if args else "table"
    if isinstance(tp, type) and issubclass(tp, Options):
        return "table"
    return {bool: "boolean", int: "integer", float: "number", str: "string"}.get(tp, getattr(tp, "__name__", str(tp)))


def parse_options(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    """An instance of the options dataclass ``cls`` from ``data``; raises :class:`OptionError` (one line)."""
    if not isinstance(data, Mapping):
        raise OptionError(f"{where}: expected a table of options, got {type_name(data)} {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            known = ", ".join(fields) or "none"
            raise OptionError(f"{where}: unknown option {key!r}{near(str(key), fields)} (options: {known})")
        path = f"{where}.{key}"
        values[key] = _check_range(path, coerce(hints[key], value, path), fields[key].metadata)
    try:
        return cls(**values)
    except OptionError:
        raise
    except (TypeError, ValueError) as exc:
        raise OptionError(f"{where}: {exc}") from exc


def _check_range(path: str, value: Any, meta: Mapping[str, Any]) -> Any:
    lo, hi = meta.get("min"), meta.get("max")
    items = value if isinstance(value, (list, tuple)) else [value]
    for v in items:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if lo is not None and (v < lo or (meta.get("min_exclusive") and v == lo)):
            raise OptionError(f"{path}: must be {'>' if meta.get('min_exclusive') else '>='} {lo}, got {v!r}")
        if hi is not None and v > hi:
            raise OptionError(f"{path}: must be <= {hi}, got {v!r}")
    return value


def checkable(tp: Any) -> bool:
    """Whether :func:`coerce` knows every part of the type ``tp`` (so a value it refuses is wrong, not unknown)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is type(None) or origin is typing.Literal or tp in (bool, int, float, str):
        return True
    if origin in (Union, types.UnionType, list, tuple, dict):
        return all(checkable(a) for a in args if a is not Ellipsis)
    return isinstance(tp, type) and issubclass(tp, Options)


def coerce(tp: Any, value: Any, path: str) -> Any:
    """``value`` checked against the type ``tp`` (and converted where lossless: int -> float, list -> tuple)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in (a for a in args if a is not type(None)):
            try:
                return coerce(a, value, path)
            except OptionError as exc:
                errors.append(str(exc))
        if len(errors) == 1:
            raise OptionError(errors[0])
        raise OptionError(f"{path}: expected {describe_type(tp)}, got {type_name(value)} {value!r}")
    if origin is typing.Literal:
        if value not in args:
            shown = ", ".join(map(str, args))
            raise OptionError(f"{path}: expected one of {shown}, got {value!r}{near(str(value), map(str, args))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise OptionError(f"{path}: expected {describe_type(tp)}, got {type_name(value)} {value!r}")
        item = args[0] if args else Any
        items = [coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise OptionError(f"{path}: expected a table, got {type_name(value)} {value!r}")
        item = args[1] if args else Any
        return {str(k): coerce(item, v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, Options):
        if isinstance(value, tp):
            return value
        return parse_options(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise OptionError(f"{path}: expected a boolean, got {type_name(value)} {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise OptionError(f"{path}: expected an integer, got {type_name(value)} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise OptionError(f"{path}: expected a number, got {type_name(value)} {value!r}")
        if not math.isfinite(value):
            raise OptionError(f"{path}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise OptionError(f"{path}: expected a string, got {type_name(value)} {value!r}")
        return value
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise OptionError(f"{path}: expected {describe_type(tp)}, got {type_name(value)} {value!r}")
