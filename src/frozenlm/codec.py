"""One codec between frozen config dataclasses and JSON, for every config that is stored.

`to_json(config)` gives a plain dict (enums as their values, tuples as lists, nested configs as
dicts); `from_json(Config, data)` builds the config back, fills missing fields with their
defaults (older files), and refuses unknown keys or values of the wrong type in one sentence
naming the field. Validation stays in each config's `__post_init__`.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from frozenlm.errors import ConfigError

C = TypeVar("C")


def to_json(config: Any) -> dict[str, Any]:
    """A config dataclass as a JSON-ready dict, fields in declaration order."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"not a config dataclass instance: {config!r}")
    return {f.name: _plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_json(value)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def from_json(cls: type[C], data: Mapping[str, Any], what: str | None = None) -> C:
    """`cls` from `data`; unknown keys and wrongly typed values are a `ConfigError`."""
    name = what or cls.__name__
    if not isinstance(data, Mapping):
        raise ConfigError(f"{name} must be a JSON object, got {type(data).__name__}")
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{name} has unknown key(s) {', '.join(repr(k) for k in unknown)}; "
            f"expected some of {', '.join(fields)}"
        )
    hints = typing.get_type_hints(cls)
    values = {key: _decode(hints[key], value, f"{name}.{key}") for key, value in data.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"bad {name}: {err}") from err


def _decode(hint: Any, value: Any, where: str) -> Any:
    """`value` as the annotated type `hint` (enums, tuples, nested configs, optionals)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _decode(option, value, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where} must be one of {', '.join(map(repr, args))}, not {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, not {value!r}")
        item = args[0] if args else Any
        return tuple(_decode(item, v, where) for v in value)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            allowed = ", ".join(repr(m.value) for m in hint)
            raise ConfigError(f"{where} must be one of {allowed}, not {value!r}") from None
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return from_json(hint, value, where)
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and type(value) is not hint:
        raise ConfigError(f"{where} must be {hint.__name__}, not {value!r}")
    return value
