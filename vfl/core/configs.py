"""Frozen config dataclasses to and from JSON maps: one codec for every config.

A config's JSON map feeds its digest (stored in checkpoints and run manifests), so the map
must be stable: fields appear in declaration order, tuples become lists, nested configs
become nested maps (through their own ``to_json`` / ``from_json`` where they define one),
and scalars pass through unchanged (never coerced: ``1`` stays ``1``, so a config decoded
from JSON has the same digest as the one that was encoded).

A field can change its encoding through its metadata (:func:`codec`): a custom
``encode`` / ``decode`` pair, ``flatten`` (the field writes several keys of the parent map,
e.g. a task as ``"task"`` and ``"n_classes"``), or ``omit_default`` (the key is written
only when the value differs from the default; a setting added later leaves the JSON, and so
the digest, of every config that does not use it unchanged).
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable, Collection

from vfl.core.errors import ConfigError

_KEY = "vfl.json"
_MISSING = dataclasses.MISSING


@dataclasses.dataclass(frozen=True)
class _Codec:
    encode: Callable | None = None
    decode: Callable | None = None
    flatten: bool = False
    omit_default: bool = False


def codec(
    *,
    encode: Callable | None = None,
    decode: Callable | None = None,
    flatten: bool = False,
    omit_default: bool = False,
) -> dict:
    """Field metadata that changes how :func:`to_json` / :func:`from_json` treat a field.

    ``encode(value)`` returns the JSON value (with ``flatten``: a map merged into the
    parent map at the field's position); ``decode(json_value)`` returns the field value
    (with ``flatten``: ``decode(parent_map)``). ``omit_default``: write the key only when
    the value differs from the field's default (read back as the default when absent).
    """
    return {_KEY: _Codec(encode, decode, flatten, omit_default)}


def _codec(f: dataclasses.Field) -> _Codec:
    return f.metadata.get(_KEY) or _Codec()


def _default(f: dataclasses.Field):
    if f.default is not _MISSING:
        return f.default
    if f.default_factory is not _MISSING:
        return f.default_factory()
    return _MISSING


def encode_value(value):
    """A value as JSON: nested configs as maps, tuples and lists as lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        own = getattr(value, "to_json", None)
        return own() if own is not None else to_json(value)
    if isinstance(value, tuple | list):
        return [encode_value(v) for v in value]
    if isinstance(value, dict):
        return {k: encode_value(v) for k, v in value.items()}
    return value


def to_json(config) -> dict:
    """The JSON map of a config dataclass (see the module docstring for the rules)."""
    out: dict = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        c = _codec(f)
        if c.omit_default and value == _default(f):
            continue
        encoded = c.encode(value) if c.encode is not None else encode_value(value)
        if c.flatten:
            out.update(encoded)
        else:
            out[f.name] = encoded
    return out


@functools.lru_cache(maxsize=64)
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def decode_value(hint, value):
    """A JSON value as the type ``hint`` names: nested configs, tuples, optionals; other
    values unchanged."""
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            if arg is type(None):
                continue
            if dataclasses.is_dataclass(arg) or typing.get_origin(arg) is tuple:
                return decode_value(arg, value)
        return value
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(decode_value(args[0], v) for v in value)
        if args:
            return tuple(decode_value(a, v) for a, v in zip(args, value, strict=True))
        return tuple(value)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        own = getattr(hint, "from_json", None)
        return own(value) if own is not None else from_json(hint, value)
    return value


def from_json(cls, obj: dict, *, required: Collection[str] | None = None):
    """The config ``cls`` from its JSON map.

    ``required``: the keys that must be present (a missing one raises :class:`KeyError`);
    ``None`` means every field. Other absent keys take the field's default; keys that name
    no field are ignored (a caller that must refuse them checks first).
    """
    hints = _hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        c = _codec(f)
        if c.flatten:
            kwargs[f.name] = c.decode(obj)
            continue
        if f.name not in obj:
            if required is None or f.name in required:
                raise KeyError(f.name)
            continue
        value = obj[f.name]
        kwargs[f.name] = c.decode(value) if c.decode is not None else decode_value(
            hints[f.name], value
        )
    return cls(**kwargs)


#: How a user-supplied Python object (a Flax module factory, an Optax transformation) is
#: written into a config's JSON: a description, which JSON cannot turn back into the object.
CUSTOM_PREFIX = "custom:"


def describe(obj) -> str:
    """A descriptive, deterministic string for a user object in a config's JSON (and so
    in its digest): ``custom:`` and the object's module and qualified name. It names the
    object; it cannot rebuild it, and two objects with the same name share it."""
    target = obj
    if not callable(obj) and callable(getattr(obj, "update", None)):
        target = obj.update  # an optax.GradientTransformation: its update function names it
    module = getattr(target, "__module__", None) or type(target).__module__
    name = getattr(target, "__qualname__", None) or type(target).__qualname__
    return f"{CUSTOM_PREFIX}{module}.{name}"


def is_custom(value) -> bool:
    """Whether a JSON value is (or holds) a :func:`describe` string."""
    if isinstance(value, str):
        return value.startswith(CUSTOM_PREFIX)
    if isinstance(value, dict):
        return any(is_custom(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(is_custom(v) for v in value)
    return False


def refuse_custom(setting: str, value, *, register: str) -> None:
    """Raise :class:`~vfl.core.errors.ConfigError` if ``value`` (read from JSON) describes
    a user object: JSON cannot carry Python code. ``register`` names the function that
    registers such an object under a name that JSON can carry."""
    if is_custom(value):
        raise ConfigError(
            f"the config's {setting!r} is a Python object ({value!r}), which JSON cannot "
            f"carry: a config read from JSON (a setup message, a run manifest) cannot "
            f"rebuild it. Register it under a name with {register}(...) in every process "
            "that reads the config and use that name, or use the library directly (pass "
            "the config object itself, in one process)"
        )
