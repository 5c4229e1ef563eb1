"""Turn parsed TOML into frozen dataclasses, once, with errors that name the key.

Small on purpose: the config is a handful of sections with plain types, and a hand-written walker over
dataclass type hints gives exact messages ("mqtt.url: not a valid broker URL") without a dependency.
Supported field types: str, int, float, bool, Path, Literal[...], X | None, list[X], tuple[X, ...],
dict[str, X] and nested frozen dataclasses. A field may validate itself with ``metadata={"check": fn}``
where ``fn(value) -> value`` raises ValueError; ``metadata={"secret": True}`` masks it in dumps.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
import types
import typing
from collections import abc
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from agent.i18n import N_

T = TypeVar("T")


class SchemaError(ValueError):
    """A value that does not fit its field; `key` is the dotted path from the document root."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(N_("{key}: {problem}", key=key, problem=problem) if key else problem)
        self.key = key
        self.problem = problem


_ODD_KEY = re.compile(r'[\s"\x00-\x1f\x7f]|^$')  # whitespace, quotes, control characters, empty


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file as plain data; every way it can't be read is a SchemaError with key "" and one line.

    The box's config, the county's config and the regions file all read through this."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise SchemaError("", N_("file does not exist")) from None
    except UnicodeDecodeError as exc:
        raise SchemaError("", N_("not UTF-8 text ({reason} at byte {start})",
                                 reason=exc.reason, start=exc.start)) from None
    except OSError as exc:
        raise SchemaError("", N_("cannot read: {strerror}", strerror=exc.strerror)) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SchemaError("", N_("not valid TOML: {exc}", exc=exc)) from None
    except RecursionError:  # tomllib recurses per nesting level: "a = [[[[..."
        raise SchemaError("", N_("not valid TOML: nested too deeply")) from None


def _join(path: str, name: str | int) -> str:
    if isinstance(name, int):
        return f"{path}[{name}]"
    if _ODD_KEY.search(name):  # TOML's quoted-key form: a key holding "\n" must not break the line
        name = json.dumps(name, ensure_ascii=False)
    return f"{path}.{name}" if path else name


def _typename(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_typename(a) for a in get_args(tp) if a is not type(None))
    if origin in (list, tuple):
        return "a list"
    if origin in (dict, abc.Mapping):
        return "a table"
    if dataclasses.is_dataclass(tp):
        return "a table"
    if tp is Path:
        return "a path string"
    return getattr(tp, "__name__", str(tp))


def convert(tp: Any, value: Any, path: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (types.UnionType, typing.Union):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return convert(option, value, path)
            except SchemaError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise SchemaError(path, N_("expected {tp}, got {name}", tp=_typename(tp), name=type(value).__name__))
    if origin is Literal:
        if value not in get_args(tp):
            raise SchemaError(path, N_("must be one of {tp}, got {value!r}", tp=_typename(tp), value=value))
        return value
    if origin is list or origin is tuple:
        if not isinstance(value, list):
            raise SchemaError(path, N_("expected a list, got {name}", name=type(value).__name__))
        (item_tp, *_rest) = get_args(tp) or (Any,)
        items = [convert(item_tp, v, _join(path, i)) for i, v in enumerate(value)]
        return tuple(items)
    if origin in (dict, abc.Mapping):
        if not isinstance(value, dict):
            raise SchemaError(path, N_("expected a table, got {name}", name=type(value).__name__))
        _k, v_tp = get_args(tp)
        return types.MappingProxyType({str(k): convert(v_tp, v, _join(path, k)) for k, v in value.items()})
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)  # type: ignore[arg-type]
    if tp is bool:
        if not isinstance(value, bool):
            raise SchemaError(path, N_("expected true or false, got {value!r}", value=value))
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(path, N_("expected an integer, got {value!r}", value=value))
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SchemaError(path, N_("expected a number, got {value!r}", value=value))
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise SchemaError(path, N_("expected a string, got {value!r}", value=value))
        return value
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise SchemaError(path, N_("expected a path string, got {value!r}", value=value))
        return Path(value)
    raise SchemaError(path, N_("unsupported field type {tp!r}", tp=tp))  # a bug in a schema, not in a file


def build(cls: type[T], raw: Any, path: str = "") -> T:
    """Build dataclass `cls` from a TOML table; unknown keys are errors."""
    if not isinstance(raw, dict):
        raise SchemaError(path, N_("expected a table, got {name}", name=type(raw).__name__))
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    aliases = {f.metadata.get("key", f.name): f.name for f in fields.values()}
    for key in raw:
        if key not in aliases:
            known = ", ".join(sorted(aliases))
            raise SchemaError(_join(path, key), N_("unknown key (known here: {known})", known=known))
    kwargs: dict[str, Any] = {}
    for key, name in aliases.items():
        field = fields[name]
        sub = _join(path, key)
        if key not in raw:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise SchemaError(sub, N_("missing (required)"))
            continue
        value = convert(hints[name], raw[key], sub)
        check = field.metadata.get("check")
        if check is not None:
            try:
                value = check(value)
            except (ValueError, TypeError) as exc:
                raise SchemaError(sub, str(exc)) from None
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:  # cross-field checks in __post_init__
        if isinstance(exc, SchemaError):
            raise SchemaError(_join(path, exc.key) if exc.key else path, exc.problem) from None
        raise SchemaError(path, str(exc)) from None


def dump(obj: Any, *, mask: bool = True) -> Any:
    """Plain data for printing (`village agent check`), with secret fields masked."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            key = f.metadata.get("key", f.name)
            if mask and f.metadata.get("secret") and value is not None:
                out[key] = "***"
            elif mask and f.metadata.get("redact") is not None and value is not None:
                out[key] = dump(f.metadata["redact"](value), mask=mask)
            else:
                out[key] = dump(value, mask=mask)
        return out
    if isinstance(obj, (list, tuple)):
        return [dump(v, mask=mask) for v in obj]
    if isinstance(obj, (dict, types.MappingProxyType)):
        return {k: dump(v, mask=mask) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def positive(value: float) -> float:
    if value <= 0:
        raise ValueError(N_("must be > 0, got {value}", value=value))
    return value


def non_negative(value: float) -> float:
    if value < 0:
        raise ValueError(N_("must be >= 0, got {value}", value=value))
    return value


def at_least_one(value: int) -> int:
    if value < 1:
        raise ValueError(N_("must be >= 1, got {value}", value=value))
    return value


def percent(value: int) -> int:
    if not 0 <= value <= 100:
        raise ValueError(N_("must be 0..100, got {value}", value=value))
    return value


def secret_field(**kw: Any) -> Any:
    return dataclasses.field(metadata={"secret": True}, **kw)
