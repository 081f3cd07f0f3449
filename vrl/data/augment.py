"""Fine-tuning augmentation of decoded clips: timm's RandAugment and random erasing, as
VideoMAE's fine-tuning applies them to a clip (MCG-NJU/VideoMAE `kinetics.py` `_aug_frame`).

As the ops of `vrl.data.spatial` and `vrl.data.color`, both read and write `video` uint8
[V, T, H, W, 3] and draw their random parameters once per view:

- `rand_augment`: the ops, their on/off coins, magnitudes and signs are drawn once per view
  and applied to every frame of it, as VideoMAE's `rand_augment.py` (`AugmentOp.__call__` on
  the frame list) does. Ops that read image statistics (auto-contrast, equalize, contrast)
  read each frame's own, as the reference's per-frame PIL calls do.
- `random_erasing`: one box per view, the same on every frame (`cube=True`, VideoMAE's
  `random_erasing.py`), with fresh noise on every frame. The reference erases normalised
  floats (mode "pixel": N(0, 1) values); here the box is filled, before normalisation, with
  the uint8 pixels those values stand for under the model's pixel statistics (ImageNet mean
  and std by default), rounded and clipped to [0, 255].
"""

import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

from vrl import registry
from vrl.data.spatial import checked_video
from vrl.data.types import Op

_MAX_LEVEL = 10.0  # timm's _LEVEL_DENOM: magnitude 10 is the strongest
_INTERPOLATION = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

# timm / VideoMAE `_RAND_TRANSFORMS` and `_RAND_INCREASING_TRANSFORMS` (`inc1`), in order.
RAND_TRANSFORMS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd",
    "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel",
    "TranslateYRel",
)  # fmt: skip
RAND_INCREASING_TRANSFORMS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing",
    "SolarizeIncreasing", "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing",
    "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel",
    "TranslateYRel",
)  # fmt: skip


# ---------------------------------------------------------------------------- RandAugment


@registry.register("transform", "rand_augment")
def rand_augment(
    num_ops: int = 4,
    magnitude: float = 7.0,
    magnitude_std: float = 0.5,
    increasing: bool = True,
    prob: float = 0.5,
    translate_pct: float = 0.45,
    fill: tuple[int, int, int] = (128, 128, 128),
    interpolation: str = "bicubic",
) -> Op:
    """timm's RandAugment, `rand-m{magnitude}-n{num_ops}-mstd{magnitude_std}-inc1` by default.

    Per view: `num_ops` ops drawn uniformly with replacement from the 15 of timm's increasing
    (or, `increasing=False`, original) list; each applies with probability `prob`, at a
    magnitude ~ N(magnitude, magnitude_std) clipped to [0, 10] (uniform in [0, magnitude]
    when magnitude_std is inf), signed ops negated with probability 1/2. Geometric ops fill
    with `fill` and resample with `interpolation` (VideoMAE: bicubic, grey 128).
    """
    if num_ops < 0:
        raise ValueError(f"rand_augment.num_ops: must be >= 0, got {num_ops}")
    if not 0 <= magnitude <= _MAX_LEVEL:
        raise ValueError(f"rand_augment.magnitude: must be in [0, 10], got {magnitude}")
    if not magnitude_std >= 0:
        raise ValueError(f"rand_augment.magnitude_std: must be >= 0 (or inf), got {magnitude_std}")
    if not 0 <= prob <= 1:
        raise ValueError(f"rand_augment.prob: must be in [0, 1], got {prob}")
    if not 0 <= translate_pct <= 1:
        raise ValueError(f"rand_augment.translate_pct: must be in [0, 1], got {translate_pct}")
    if len(fill) != 3 or not all(0 <= int(c) <= 255 for c in fill):
        raise ValueError(f"rand_augment.fill: need three values in [0, 255], got {fill}")
    if interpolation not in _INTERPOLATION:
        raise ValueError(
            f"rand_augment.interpolation: {interpolation!r} is not allowed; "
            f"allowed: {', '.join(_INTERPOLATION)}"
        )
    names = RAND_INCREASING_TRANSFORMS if increasing else RAND_TRANSFORMS
    hparams = {
        "translate_pct": translate_pct,
        "fill": tuple(int(c) for c in fill),
        "resample": _INTERPOLATION[interpolation],
    }

    def op(example: dict, rng: np.random.Generator) -> dict:
        video = checked_video(example, "rand_augment")
        out = video.copy()
        for v in range(video.shape[0]):
            ops = sample_rand_augment(rng, names, num_ops, magnitude, magnitude_std, prob)
            out[v] = apply_rand_augment(video[v], ops, hparams)
        return {**example, "video": out}

    return op


def sample_rand_augment(
    rng: np.random.Generator,
    names: tuple[str, ...],
    num_ops: int,
    magnitude: float,
    magnitude_std: float,
    prob: float = 0.5,
) -> list[tuple[str, float, bool]]:
    """The (op name, magnitude, negate) of one view's applied ops, in order (skipped ones out).

    The rng advances the same way whatever is applied: op index, coin, magnitude, sign.
    """
    chosen = []
    for _ in range(num_ops):
        name = names[int(rng.integers(len(names)))]
        apply = rng.random() <= prob  # the reference skips when random() > prob
        if math.isinf(magnitude_std):
            level = rng.uniform(0.0, magnitude)
        elif magnitude_std > 0:
            level = rng.normal(magnitude, magnitude_std)
        else:
            level = magnitude
        negate = rng.random() > 0.5  # timm's _randomly_negate
        if apply:
            chosen.append((name, float(min(max(level, 0.0), _MAX_LEVEL)), bool(negate)))
    return chosen


def level_to_arg(name: str, level: float, negate: bool, translate_pct: float = 0.45):
    """timm's LEVEL_TO_ARG: the op argument at `level` in [0, 10] (None for argless ops)."""
    frac = level / _MAX_LEVEL
    sign = -1.0 if negate else 1.0
    base = name.removesuffix("Increasing")
    if base in ("AutoContrast", "Equalize", "Invert"):
        return None
    if base == "Rotate":
        return sign * frac * 30.0
    if base in ("ShearX", "ShearY"):
        return sign * frac * 0.3
    if base in ("TranslateXRel", "TranslateYRel"):
        return sign * frac * translate_pct
    if name == "Posterize":
        return int(frac * 4)
    if name == "PosterizeIncreasing":
        return 4 - int(frac * 4)
    if name == "Solarize":
        return min(256, int(frac * 256))
    if name == "SolarizeIncreasing":
        return 256 - min(256, int(frac * 256))
    if name == "SolarizeAdd":
        return min(128, int(frac * 110))
    if name.endswith("Increasing"):  # Color, Contrast, Brightness, Sharpness
        return max(0.1, 1.0 + sign * frac * 0.9)
    return frac * 1.8 + 0.1  # the original enhance range [0.1, 1.9]


def apply_rand_augment(
    frames: np.ndarray, ops: list[tuple[str, float, bool]], hparams: dict | None = None
) -> np.ndarray:
    """uint8 [T, H, W, 3] through `ops` (from `sample_rand_augment`), the same on every frame."""
    hparams = {"translate_pct": 0.45, "fill": (128, 128, 128), **(hparams or {})}
    hparams.setdefault("resample", Image.Resampling.BICUBIC)
    for name, level, negate in ops:
        arg = level_to_arg(name, level, negate, hparams["translate_pct"])
        frames = _OPS[name.removesuffix("Increasing")](frames, arg, hparams)
    return frames


# Pixel ops on uint8 [T, H, W, 3], each equal (within one level) to timm's PIL call per frame.


def _lut(frames: np.ndarray, lut: np.ndarray) -> np.ndarray:
    return np.clip(lut, 0, 255).astype(np.uint8)[frames]


def auto_contrast(frames, _arg=None, _hp=None):
    """ImageOps.autocontrast: each frame's channels stretched from [lo, hi] to [0, 255]."""
    lo = frames.min(axis=(1, 2), keepdims=True).astype(np.float64)
    hi = frames.max(axis=(1, 2), keepdims=True).astype(np.float64)
    flat = hi <= lo
    scale = np.where(flat, 1.0, 255.0 / np.where(flat, 1.0, hi - lo))
    offset = np.where(flat, 0.0, -lo * scale)
    out = np.clip((frames * scale + offset).astype(np.int64), 0, 255)  # int() truncates
    return out.astype(np.uint8)


def equalize(frames, _arg=None, _hp=None):
    """ImageOps.equalize: each frame's channels through their own cumulative histogram.

    As the installed Pillow (13): step = (pixels - count of the last used level) // 255;
    older Pillow releases divided by 256, which maps some levels one lower.
    """
    out = np.empty_like(frames)
    for t in range(len(frames)):
        for c in range(3):
            channel = frames[t, :, :, c]
            hist = np.bincount(channel.ravel(), minlength=256)
            nonzero = np.flatnonzero(hist)
            step = (hist.sum() - hist[nonzero[-1]]) // 255 if len(nonzero) > 1 else 0
            if not step:
                out[t, :, :, c] = channel
                continue
            before = np.concatenate([[0], np.cumsum(hist)[:-1]])
            out[t, :, :, c] = _lut(channel, (step // 2 + before) // step)
    return out


def invert(frames, _arg=None, _hp=None):
    return 255 - frames


def posterize(frames, bits: int, _hp=None):
    if bits >= 8:
        return frames
    return frames & np.uint8(~(2 ** (8 - bits) - 1) & 0xFF)


def solarize(frames, threshold: int, _hp=None):
    return np.where(frames < threshold, frames, 255 - frames).astype(np.uint8)


def solarize_add(frames, add: int, _hp=None, threshold: int = 128):
    lut = np.arange(256)
    lut = np.where(lut < threshold, np.minimum(lut + add, 255), lut)
    return _lut(frames, lut)


def _blend(degenerate: np.ndarray, frames: np.ndarray, factor: float) -> np.ndarray:
    """Image.blend(degenerate, frames, factor): float32 arithmetic, truncated, clipped."""
    d = degenerate.astype(np.float32)
    out = d + np.float32(factor) * (frames.astype(np.float32) - d)
    return np.clip(out, 0.0, 255.0).astype(np.uint8)


def _gray(frames: np.ndarray) -> np.ndarray:
    """PIL's convert("L"): ITU-R 601-2 luma in 16-bit fixed point, rounded."""
    f = frames.astype(np.int32)
    return ((f[..., 0] * 19595 + f[..., 1] * 38470 + f[..., 2] * 7471 + 0x8000) >> 16).astype(
        np.uint8
    )


def color(frames, factor: float, _hp=None):
    """ImageEnhance.Color: blend with the frame's grey version."""
    return _blend(np.repeat(_gray(frames)[..., None], 3, axis=-1), frames, factor)


def contrast(frames, factor: float, _hp=None):
    """ImageEnhance.Contrast: blend with each frame's mean grey level (rounded)."""
    mean = np.floor(_gray(frames).mean(axis=(1, 2), dtype=np.float64) + 0.5)
    degenerate = np.broadcast_to(mean[:, None, None, None], frames.shape)
    return _blend(degenerate, frames, factor)


def brightness(frames, factor: float, _hp=None):
    return _blend(np.zeros_like(frames), frames, factor)


def sharpness(frames, factor: float, _hp=None):
    """ImageEnhance.Sharpness: blend with PIL's SMOOTH filter of the frame."""
    smooth = np.stack([np.asarray(Image.fromarray(f).filter(ImageFilter.SMOOTH)) for f in frames])
    return _blend(smooth, frames, factor)


def _affine(frames, matrix, hp):
    return np.stack([
        np.asarray(
            Image.fromarray(f).transform(
                (f.shape[1], f.shape[0]), Image.Transform.AFFINE, matrix,
                resample=hp["resample"], fillcolor=hp["fill"],
            )
        )
        for f in frames
    ])  # fmt: skip


def rotate(frames, degrees: float, hp):
    kw = {"resample": hp["resample"], "fillcolor": hp["fill"]}
    return np.stack([np.asarray(Image.fromarray(f).rotate(degrees, **kw)) for f in frames])


def shear_x(frames, factor: float, hp):
    return _affine(frames, (1, factor, 0, 0, 1, 0), hp)


def shear_y(frames, factor: float, hp):
    return _affine(frames, (1, 0, 0, factor, 1, 0), hp)


def translate_x_rel(frames, pct: float, hp):
    return _affine(frames, (1, 0, pct * frames.shape[2], 0, 1, 0), hp)


def translate_y_rel(frames, pct: float, hp):
    return _affine(frames, (1, 0, 0, 0, 1, pct * frames.shape[1]), hp)


_OPS: dict[str, Callable] = {
    "AutoContrast": auto_contrast,
    "Equalize": equalize,
    "Invert": invert,
    "Rotate": rotate,
    "Posterize": posterize,
    "Solarize": solarize,
    "SolarizeAdd": solarize_add,
    "Color": color,
    "Contrast": contrast,
    "Brightness": brightness,
    "Sharpness": sharpness,
    "ShearX": shear_x,
    "ShearY": shear_y,
    "TranslateXRel": translate_x_rel,
    "TranslateYRel": translate_y_rel,
}


# -------------------------------------------------------------------------- random erasing


@registry.register("transform", "random_erasing")
def random_erasing(
    p: float = 0.25,
    mode: str = "pixel",
    area: tuple[float, float] = (0.02, 1 / 3),
    aspect: tuple[float, float] = (0.3, 1 / 0.3),
    count: int = 1,
    cube: bool = True,
    mean: tuple[float, float, float] = _IMAGENET_MEAN,
    std: tuple[float, float, float] = _IMAGENET_STD,
) -> Op:
    """timm / VideoMAE RandomErasing (`reprob`, `remode`, `recount`), on uint8 frames.

    With probability p per view, `count` boxes of area fraction ~ U(area) / count and aspect
    (h / w) log-uniform in `aspect` are erased; a box must be strictly smaller than the frame
    (up to 100 tries in cube mode, 10 per frame otherwise). `cube`: one box for every frame of
    the view (VideoMAE); else each frame draws its own coin and box. Fill, in the normalised
    space of `mean` / `std` (fractions of 255) as in the reference: "pixel" N(0, 1) per pixel
    and channel, fresh on every frame; "rand" one N(0, 1) colour per box; "const" 0 (the mean).
    """
    if not 0 <= p <= 1:
        raise ValueError(f"random_erasing.p: must be in [0, 1], got {p}")
    if mode not in ("pixel", "rand", "const"):
        raise ValueError(
            f"random_erasing.mode: {mode!r} is not allowed; allowed: pixel, rand, const"
        )
    if not 0 < area[0] <= area[1] <= 1:
        raise ValueError(f"random_erasing.area: need 0 < min <= max <= 1, got {area}")
    if not 0 < aspect[0] <= aspect[1]:
        raise ValueError(f"random_erasing.aspect: need 0 < min <= max, got {aspect}")
    if count < 1:
        raise ValueError(f"random_erasing.count: must be >= 1, got {count}")
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"random_erasing.mean/std: need 3 values each, std > 0; got {mean}, {std}")
    mean_px = 255.0 * np.asarray(mean, np.float32)
    std_px = 255.0 * np.asarray(std, np.float32)
    log_aspect = (math.log(aspect[0]), math.log(aspect[1]))

    def boxes(rng, height, width, tries):
        out = []
        for _ in range(count):
            for _ in range(tries):
                target = rng.uniform(area[0], area[1]) * height * width / count
                ratio = math.exp(rng.uniform(*log_aspect))
                h = int(round(math.sqrt(target * ratio)))
                w = int(round(math.sqrt(target / ratio)))
                if w < width and h < height:
                    top = int(rng.integers(0, height - h + 1))
                    left = int(rng.integers(0, width - w + 1))
                    out.append((top, left, h, w))
                    break
        return out

    def fill(rng, frame, box, colour):
        top, left, h, w = box
        if mode == "pixel":
            z = rng.standard_normal((h, w, 3), np.float32)
        else:
            z = colour
        values = np.clip(np.rint(mean_px + std_px * z), 0, 255)
        frame[top : top + h, left : left + w] = values.astype(np.uint8)

    def colour_of(rng):
        return rng.standard_normal(3).astype(np.float32) if mode == "rand" else np.zeros(3)

    def op(example: dict, rng: np.random.Generator) -> dict:
        video = checked_video(example, "random_erasing")
        views, frames, height, width, _ = video.shape
        out = None
        for v in range(views):
            if cube:
                if rng.random() > p:
                    continue
                plan = [(t, box, colour_of(rng)) for box in boxes(rng, height, width, 100)
                        for t in range(frames)]  # fmt: skip
            else:
                plan = []
                for t in range(frames):
                    if rng.random() > p:
                        continue
                    plan += [(t, box, colour_of(rng)) for box in boxes(rng, height, width, 10)]
            if plan and out is None:
                out = video.copy()
            for t, box, colour in plan:
                fill(rng, out[v, t], box, colour)
        return example if out is None else {**example, "video": out}

    return op
