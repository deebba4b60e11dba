"""Config dataclasses built from untrusted JSON: every value checked against its field's type
before anything uses it, so a bad `config.json` or manifest is refused naming the file and the
key instead of failing later inside torch or NumPy."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

MAX_INT = 2**31 - 1  # sizes, counts and token ids: never negative, never beyond int32


def from_dict(cls, data: Any, source: str):
    """`cls` from a JSON object, ignoring keys it has no field for (diffusers' `_class_name`, ...)."""
    if not isinstance(data, dict):
        raise ValueError(f"{source} is not a JSON object")
    hints = typing.get_type_hints(cls)
    values = {
        f.name: _checked(data[f.name], hints[f.name], f"{source}: {f.name}")
        for f in dataclasses.fields(cls)
        if f.name in data
    }
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: {e}") from None


def _checked(value, kind, what: str):
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _checked(value, next(a for a in args if a is not type(None)), what)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{what} must be a list, got {value!r}")
        fixed = args and args[-1] is not Ellipsis
        if fixed and len(value) != len(args):
            raise ValueError(f"{what} must hold {len(args)} values, got {len(value)}")
        return tuple(_checked(v, args[i] if fixed else args[0], f"{what}[{i}]") for i, v in enumerate(value))
    if kind is Any:
        return value
    expected = origin or kind
    if expected is bool:
        ok = isinstance(value, bool)
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_INT
    elif expected is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, expected)
    if not ok:
        name = {int: f"an integer 0-{MAX_INT}", float: "a finite number"}.get(expected, expected.__name__)
        raise ValueError(f"{what} must be {name}, got {value!r}")
    return value
