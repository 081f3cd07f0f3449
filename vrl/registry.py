"""Name -> component lookup for everything a config can choose.

Components register themselves with a decorator in their own module; `get` imports the
modules of a kind on first use, so a script that only needs models never imports the data
stack (the GPU benchmark machine has no grain or PyAV).
"""

import importlib
from collections.abc import Callable
from typing import Any

KINDS = ("model", "objective", "source", "transform", "probe")

# Modules that hold the registrations of each kind, imported lazily by `get` and `names`.
_MODULES = {
    "model": ("vrl.models.r3d", "vrl.models.video_resnet", "vrl.models.vit"),
    "objective": (
        "vrl.objectives.cvrl",
        "vrl.objectives.mae",
        "vrl.objectives.jepa",
        "vrl.objectives.supervised",
        "vrl.objectives.encoder_only",
    ),
    "source": ("vrl.data.synthetic", "vrl.data.sources"),
    "transform": ("vrl.data.temporal", "vrl.data.spatial", "vrl.data.masks"),
    "probe": ("vrl.probe.linear", "vrl.probe.attentive", "vrl.probe.knn", "vrl.probe.finetune"),
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
    for module in _MODULES[kind]:
        importlib.import_module(module)
    _loaded.add(kind)
