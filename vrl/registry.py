"""Name -> component lookup for everything a config can choose.

Components register themselves with a decorator in their own module; `get` imports the modules
of a kind on first use (those of its package that register one), so a script that only needs
models never imports the data stack (the GPU benchmark machine has no grain or PyAV).
"""

import importlib
import pathlib
from collections.abc import Callable
from typing import Any

KINDS = ("model", "objective", "source", "transform", "probe")

# The package whose modules hold the registrations of each kind. A module registers a component
# with the decorator alone: `_load` imports every module of the package whose source calls
# `register("<kind>", ...)`, so adding a component is one edit.
_PACKAGES = {
    "model": "vrl.models",
    "objective": "vrl.objectives",
    "source": "vrl.data",
    "transform": "vrl.data",
    "probe": "vrl.probe",
}

_REGISTRY: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}
_loaded: set[str] = set()


class UnknownNameError(KeyError):
    """A registry name that no module registered; the message lists the allowed names."""

    def __str__(self) -> str:
        return str(self.args[0])


def register(kind: str, name: str) -> Callable[[Any], Any]:
    """Decorator: `@register("model", "cvrl_r3d")` on a class or factory function."""
    _check_kind(kind)

    def decorate(obj):
        existing = _REGISTRY[kind].get(name)
        if existing is not None and existing is not obj:
            qualname = f"{existing.__module__}.{existing.__qualname__}"
            raise ValueError(f"{kind} {name!r} is registered twice (first by {qualname})")
        _REGISTRY[kind][name] = obj
        return obj

    return decorate


def get(kind: str, name: str) -> Any:
    """The component registered as `name`; raises UnknownNameError listing the allowed names."""
    _load(kind)
    try:
        return _REGISTRY[kind][name]
    except KeyError:
        allowed = ", ".join(names(kind))
        raise UnknownNameError(f"unknown {kind} {name!r}; allowed: {allowed}") from None


def names(kind: str) -> list[str]:
    _load(kind)
    return sorted(_REGISTRY[kind])


def _check_kind(kind: str) -> None:
    if kind not in _REGISTRY:
        raise ValueError(f"unknown registry kind {kind!r}; allowed: {', '.join(KINDS)}")


def _load(kind: str) -> None:
    _check_kind(kind)
    if kind in _loaded:
        return
    package = importlib.import_module(_PACKAGES[kind])
    marker = f'register("{kind}"'
    for path in sorted(pathlib.Path(package.__file__).parent.glob("*.py")):
        if marker in path.read_text():
            importlib.import_module(f"{package.__name__}.{path.stem}")
    _loaded.add(kind)
