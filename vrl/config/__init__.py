"""Config checking: every section of a run config becomes a typed object before anything runs.

The schema is the code: a section's allowed keys and types are the fields of the dataclass (or
the keyword arguments of the function) it configures, so adding a field to a model or an
objective is all it takes to make it configurable. Errors are one line naming the key and what
is allowed, raised before any array exists. Config files are built with configs/common.py;
`python -m vrl.config --config=FILE` prints one with every default filled in.
"""

import dataclasses
import importlib.util
import inspect
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, get_args, get_origin

from vrl import registry

# Fields of every flax.linen.Module that a config must never set.
_MODULE_INTERNALS = frozenset({"parent", "name"})


class ConfigError(ValueError):
    """A bad config value: the message is one line naming the key and what is allowed."""


def to_dict(config: Any) -> dict:
    """A plain nested dict from a ConfigDict (FieldReferences resolved) or a mapping."""
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    if isinstance(config, Mapping):
        return {k: to_dict(v) for k, v in config.items()}
    return config


def parameters(target: Callable) -> dict[str, tuple[Any, Any]]:
    """name -> (type, default) for the keyword arguments `target` accepts from a config."""
    hints = typing.get_type_hints(target)
    if dataclasses.is_dataclass(target):
        fields = dataclasses.fields(target)
        # Linen modules carry `parent` and `name` fields of their own; configs never set them.
        internal = _MODULE_INTERNALS if any(f.name == "parent" for f in fields) else frozenset()
        out = {}
        for f in fields:
            if not f.init or f.name in internal:
                continue
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = inspect.Parameter.empty
            out[f.name] = (hints.get(f.name, Any), default)
        return out
    sig = inspect.signature(target)
    return {
        name: (hints.get(name, Any), p.default)
        for name, p in sig.parameters.items()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and name not in ("example", "rng")
    }


def instantiate(target: Callable, cfg: Mapping | None, path: str, **fixed: Any) -> Any:
    """Calls `target(**cfg, **fixed)` after checking every key of `cfg` and its type."""
    cfg = dict(cfg or {})
    params = parameters(target)
    for key, value in cfg.items():
        if key not in params or key in fixed:
            allowed = ", ".join(sorted(k for k in params if k not in fixed)) or "(none)"
            raise ConfigError(f"{path}.{key}: unknown key; allowed: {allowed}")
        cfg[key] = check_type(value, params[key][0], f"{path}.{key}")
    missing = [
        k
        for k, (_, d) in params.items()
        if d is inspect.Parameter.empty and k not in cfg and k not in fixed
    ]
    if missing:
        raise ConfigError(f"{path}.{missing[0]}: required key is missing")
    return target(**cfg, **fixed)


def component(kind: str, cfg: Mapping | None, path: str, **fixed: Any) -> Any:
    """Instantiates the registered `kind` named by `cfg['name']` with the rest of `cfg`."""
    cfg = dict(cfg or {})
    if "name" not in cfg:
        raise ConfigError(f"{path}.name: required; allowed: {', '.join(registry.names(kind))}")
    name = cfg.pop("name")
    try:
        target = registry.get(kind, name)
    except registry.UnknownNameError:
        raise ConfigError(
            f"{path}.name: unknown {kind} {name!r}; allowed: {', '.join(registry.names(kind))}"
        ) from None
    return instantiate(target, cfg, path, **fixed)


def check_ranges(path: str, cfg: Any, **rules: tuple[str, Callable[[Any], bool]]) -> None:
    """Bounds types cannot express, for a config dataclass's `__post_init__`:
    `key=(allowed, ok)` raises a one-line ConfigError where `ok(cfg.key)` is false."""
    for key, (allowed, ok) in rules.items():
        value = getattr(cfg, key)
        if not ok(value):
            raise ConfigError(f"{path}.{key}: {value!r} is not allowed; allowed: {allowed}")


def check_type(value: Any, annotation: Any, path: str) -> Any:
    """Returns `value` (lists turned into tuples) if it fits `annotation`, else raises."""
    if annotation is Any or annotation is inspect.Parameter.empty:
        return value
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return check_type(value, option, path)
            except ConfigError:
                continue
        raise ConfigError(f"{path}: expected {_describe(annotation)}, got {_show(value)}")
    if origin is Literal:
        if value in args:
            return value
        allowed = ", ".join(repr(a) for a in args)
        raise ConfigError(f"{path}: {value!r} is not allowed; allowed: {allowed}")
    if origin in (tuple, Sequence, list) or annotation in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected {_describe(annotation)}, got {_show(value)}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{path}: expected {len(args)} values, got {len(value)}")
            return tuple(
                check_type(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args))
            )
        item = args[0] if args else Any
        return tuple(check_type(v, item, f"{path}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping) or annotation in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {_show(value)}")
        return dict(value)
    if annotation is type(None):
        if value is None:
            return None
        raise ConfigError(f"{path}: expected None, got {_show(value)}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(annotation, type):
        if isinstance(value, annotation):
            return value
    else:
        return value  # Callables, dtypes and other annotations are not checked.
    raise ConfigError(f"{path}: expected {_describe(annotation)}, got {_show(value)}")


def _describe(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        return "a tuple"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def _show(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) < 60 else text[:57] + '...'}"


# Spellings of a boolean config arg; anything else is an error (":runlocal=on" must not mean false).
_BOOLEANS = {
    **dict.fromkeys(("true", "1", "yes", "on"), True),
    **dict.fromkeys(("false", "0", "no", "off"), False),
}


def parse_arg(arg: str | None, **defaults: Any) -> types.SimpleNamespace:
    """big_vision-style config args: "runlocal,size=S" -> namespace(runlocal=True, size="S").

    Keys must be among `defaults`; values take the type of their default.
    """
    values = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, _, raw = item.partition("=")
        if key not in defaults:
            raise ConfigError(f"config arg {key!r}: unknown; allowed: {', '.join(defaults)}")
        default = defaults[key]
        if not raw:
            value = True
        elif isinstance(default, bool):
            if raw.lower() not in _BOOLEANS:
                raise ConfigError(
                    f"config arg {key}={raw!r}: not a boolean; allowed: {', '.join(_BOOLEANS)}"
                )
            value = _BOOLEANS[raw.lower()]
        elif default is None:
            value = raw
        else:
            try:
                value = type(default)(raw)
            except ValueError:
                raise ConfigError(
                    f"config arg {key}={raw!r}: expected {type(default).__name__}"
                ) from None
        values[key] = value
    return types.SimpleNamespace(**values)


def check_arg(key: str, value: Any, allowed: Sequence) -> Any:
    """`value` of config arg `key` if it is among `allowed` (e.g. `:size=` of a recipe)."""
    if value not in allowed:
        raise ConfigError(
            f"config arg {key}={value!r}: not allowed; allowed: {', '.join(map(str, allowed))}"
        )
    return value


def drop_unset(cfg: Any) -> Any:
    """Removes None values (unset placeholders) from nested dicts."""
    if isinstance(cfg, Mapping):
        return {k: drop_unset(v) for k, v in cfg.items() if v is not None}
    return cfg


def load_file(path: str, arg: str | None = None):
    """`get_config(arg)` of a config file, e.g. a recipe that builds on another one."""
    spec = importlib.util.spec_from_file_location(f"vrl_config_{abs(hash(path))}", path)
    if spec is None or not os.path.exists(path):
        raise ConfigError(f"config file {path!r} does not exist")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg is not None else module.get_config()
