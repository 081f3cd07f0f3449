"""Probe pipelines derived from a run's single-view test pipeline.

A probe config cannot know the clip shape of the checkpoint it will measure; these functions
rewrite the checkpoint's own `test_pp` (e.g. `center_clip(frames=16, stride=4)|resize_short(
size=224)|center_crop(size=224)`) into N evenly spaced clips x 1 or 3 crops for testing, or
into a randomly placed, randomly cropped clip of the same shape for fine-tuning.
"""

from vrl import config as config_lib
from vrl import registry
from vrl.data import pipeline


def format_op(name: str, kwargs: dict) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return f"{name}({args})"


def _split(pp: str, path: str) -> tuple[dict, list[tuple[str, dict]]]:
    """(temporal op's window kwargs {frames, stride, short}, the spatial ops after it)."""
    ops = pipeline.parse_pp(pp)
    temporal = [i for i, (name, _) in enumerate(ops) if _stage(name) == "temporal"]
    if len(temporal) != 1:
        raise config_lib.ConfigError(
            f"{path}: cannot derive probe pipelines from {pp!r}: need exactly one temporal op"
        )
    name, kwargs = ops[temporal[0]]
    defaults = config_lib.parameters(registry.get("transform", name))
    window = {}
    for key in ("frames", "stride", "short"):
        if key in kwargs:
            window[key] = kwargs[key]
        elif key in defaults:
            window[key] = defaults[key][1]
    if "frames" not in window or "stride" not in window:
        raise config_lib.ConfigError(f"{path}: temporal op {name!r} has no frames/stride")
    return window, [op for op in ops[temporal[0] + 1 :] if _stage(op[0]) == "spatial"]


def _stage(name: str) -> str:
    return getattr(registry.get("transform", name), "stage", "spatial")


def multiview(pp: str, clips: int, crops: int, path: str = "config.test_views") -> str:
    """`clips` evenly spaced windows x `crops` (1: the pp's centre crop, 3: three_crop) views."""
    if clips < 1 or crops not in (1, 3):
        raise config_lib.ConfigError(
            f"{path}: need clips >= 1 and crops 1 or 3, got ({clips}, {crops})"
        )
    window, spatial = _split(pp, path)
    ops = [format_op("multiview_clips", {"num_clips": clips, **window})]
    if crops == 3:
        if not spatial or spatial[-1][0] != "center_crop":
            raise config_lib.ConfigError(
                f"{path}: three crops need the test pipeline {pp!r} to end with center_crop"
            )
        spatial = spatial[:-1] + [("three_crop", {"size": spatial[-1][1].get("size", 224)})]
    ops += [format_op(name, kwargs) for name, kwargs in spatial]
    return "|".join(ops)


def clip_size(pp: str, path: str = "config.data.test_pp") -> int:
    """Side of the square clips a single-view test pipeline makes (its last sized spatial op)."""
    _, spatial = _split(pp, path)
    sizes = [kwargs["size"] for name, kwargs in spatial if name in ("center_crop", "three_crop")]
    if not sizes:
        raise config_lib.ConfigError(
            f"{path}: cannot tell the clip size of {pp!r}; set the probe's train_pp explicitly"
        )
    return int(sizes[-1])


def finetune_train(pp: str, *, area: tuple[float, float], flip: bool) -> str:
    """A random window of the test clip's length and a random resized crop of its size."""
    window, _ = _split(pp, "config.data.test_pp")
    size = clip_size(pp)
    ops = [
        format_op("uniform_clip", window),
        format_op("random_resized_crop", {"size": size, "area": tuple(area)}),
    ]
    if flip:
        ops.append("flip")
    return "|".join(ops)
