"""JSON into frozen dataclasses, strictly: how one side reads what the other wrote.

hub.json (:mod:`hubdeploy.contract.hubjson`) and the backends' configs
(:func:`hubdeploy.backends.base.parse_config`) are read with :func:`read`. A key no field
declares is refused (a misspelt key is an error, never a silent default), a key whose
field has no default must be there, and every value must have its field's type. Each
error names the key's path, so a hub stops at start with a message that says what to fix.
:func:`plain` is the inverse: a dataclass as JSON data, what the CLI side writes.

Field types read: ``str``, ``int``, ``float`` (a whole number is accepted), ``bool``,
``Literal[...]``, ``X | None``, ``tuple[X, ...]`` (a JSON list, or a tuple from Python), ``dict[str, X]`` (a JSON
object), ``Any`` (any JSON value, kept as is) and nested dataclasses. A field's JSON key is
its name, or ``metadata["json"]`` where the name cannot be (``class``).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

T = TypeVar("T")

# A field's metadata key for a JSON key that is not a Python name.
JSON_KEY = "json"
_SCALARS: dict[Any, str] = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


class ShapeError(ValueError):
    """A JSON value without its dataclass's shape; the message names the key."""


def json_name(name: str) -> dict[str, str]:
    """A field's metadata for the JSON key ``name``: ``field(metadata=json_name("class"))``."""
    return {JSON_KEY: name}


def read(cls: type[T], data: Any, where: str) -> T:
    """``data`` (parsed JSON) as a ``cls``; ShapeError naming ``where`` and the key's path."""
    return _dataclass(cls, data, where, "")


def plain(value: Any) -> Any:
    """A dataclass (and what it holds) as JSON data: the shape :func:`read` reads back."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {_key(f): plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    return value


def _key(f: dataclasses.Field) -> str:
    return f.metadata.get(JSON_KEY, f.name)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _dataclass(cls: type[T], data: Any, where: str, path: str) -> T:
    if not isinstance(data, Mapping):
        raise ShapeError(f"{where}{': ' + path if path else ''} must be an object, not {_show(data)}")
    by_key = {_key(f): f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(str(k) for k in data if k not in by_key)
    if unknown:
        raise ShapeError(_unknown(where, path, unknown, sorted(by_key)))
    missing = [k for k, f in by_key.items() if k not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ShapeError(f"{where} lacks {', '.join(_join(path, k) for k in missing)}")
    hints = _hints(cls)
    return cls(**{f.name: _value(hints[f.name], data[k], where, _join(path, k))
                  for k, f in by_key.items() if k in data})


def _unknown(where: str, path: str, unknown: list[str], known: list[str]) -> str:
    named = ", ".join(_join(path, k) for k in unknown)
    close = difflib.get_close_matches(unknown[0], known, n=1) if len(unknown) == 1 else []
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {named}{hint}; known: {', '.join(known)}"


def _value(hint: Any, value: Any, where: str, path: str) -> Any:
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        return _dataclass(hint, value, where, path)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or isinstance(hint, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        if dataclasses.is_dataclass(inner):
            return _dataclass(inner, value, where, path)  # its own errors name the inner key
        if _fits(inner, value):
            return _value(inner, value, where, path)
    elif origin is tuple and isinstance(value, (list, tuple)):
        return tuple(_value(args[0], v, where, f"{path}[{i}]") for i, v in enumerate(value))
    elif origin is dict and isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {k: _value(args[1], v, where, f"{path}.{k}") for k, v in value.items()}
    elif _fits(hint, value):
        return float(value) if hint is float else value
    raise ShapeError(f"{where}: {path} must be {describe(hint)}, not {_show(value)}")


def _fits(hint: Any, value: Any) -> bool:
    """Whether ``value`` has type ``hint`` (a container: the JSON kind, its items unchecked)."""
    if typing.get_origin(hint) is Literal:
        return any(type(value) is type(a) and value == a for a in typing.get_args(hint))
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in _SCALARS:
        return isinstance(value, hint)
    # A container inside X | None: its items are _value's to check.
    return isinstance(value, {tuple: (list, tuple), dict: Mapping}.get(typing.get_origin(hint), ()))


def describe(hint: Any) -> str:
    """What a value of type ``hint`` looks like in JSON, for messages."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        return f"a list of {getattr(args[0], '__name__', args[0])}"
    if origin is dict or dataclasses.is_dataclass(hint):
        return "an object"
    if origin is typing.Union or isinstance(hint, types.UnionType):
        return " or ".join("null" if a is type(None) else describe(a) for a in args)
    return _SCALARS.get(hint, str(hint))


def _show(value: Any) -> str:
    # hub.json and backend configs hold paths, never secrets; a long value is cut short.
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
