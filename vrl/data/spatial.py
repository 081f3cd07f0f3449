"""Geometric augmentation of decoded clips (crops, resizing, flips), identical for every frame
of a view; colour and frequency ops are in `vrl.data.color`.

Every op reads `video`: uint8 [V, T, H, W, 3] (V views of T frames) and writes it back as
uint8. Random parameters (crop box, flip) are drawn once per view and applied to all of its
frames, so motion inside a clip is never confused with augmentation noise (the CVRL rule).
Probabilities may be given per view, e.g. `flip(p=(1.0, 0.0))`.

Resizing goes through FFmpeg's swscale (PyAV) per frame: the same antialiased bilinear filter
as PIL's BILINEAR (outputs agree to within one level away from the borders) at a third of its
cost, which matters because every clip pays it for every frame.
"""

import math
from typing import Literal

import av
import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter

from vrl import registry
from vrl.data.temporal import per_view
from vrl.data.types import Op

# Bilinear (a triangle filter widened when shrinking, as PIL's); RGB read at full horizontal
# resolution and scaled as planar RGB, so no colour conversion or chroma subsampling happens.
_RESIZE_FLAGS = Interpolation.BILINEAR | Interpolation.FULL_CHR_H_INP


@registry.register("transform", "random_resized_crop")
def random_resized_crop(
    size: int = 224,
    area: tuple[float, float] = (0.3, 1.0),
    aspect: tuple[float, float] = (0.5, 2.0),
    sampler: Literal["torchvision", "tf"] = "torchvision",
) -> Op:
    """Inception-style crop (area fraction, aspect = width / height) resized to size x size.

    `sampler` is the library whose box distribution the recipe was trained with:
    "torchvision" (RandomResizedCrop: area uniform, aspect log-uniform, 10 tries, else a
    centred crop) or "tf" (tf.image.sample_distorted_bounding_box: aspect uniform, height
    uniform between the area bounds, 100 tries, else the whole frame).
    """
    _check_positive("random_resized_crop.size", size)
    if not 0 < area[0] <= area[1] <= 1:
        raise ValueError(f"random_resized_crop.area: need 0 < min <= max <= 1, got {area}")
    if not 0 < aspect[0] <= aspect[1]:
        raise ValueError(f"random_resized_crop.aspect: need 0 < min <= max, got {aspect}")
    samplers = {"torchvision": sample_crop_box, "tf": sample_crop_box_tf}
    if sampler not in samplers:
        raise ValueError(
            f"random_resized_crop.sampler: {sampler!r}; allowed: {', '.join(samplers)}"
        )
    sample = samplers[sampler]

    def op(example: dict, rng: np.random.Generator) -> dict:
        video = checked_video(example, "random_resized_crop")
        box = lambda height, width: sample(rng, height, width, area, aspect)
        return {**example, "video": _crop_views(video, box, size)}

    return op


def _crop_views(video: np.ndarray, box, size: int) -> np.ndarray:
    """Each view cropped to its own `box(height, width)`, the same for all its frames, and
    resized to size x size."""
    views, frames, height, width, _ = video.shape
    out = np.empty((views, frames, size, size, 3), np.uint8)
    for v in range(views):
        left, top, right, bottom = box(height, width)
        resize_frames(video[v, :, top:bottom, left:right], size, size, out=out[v])
    return out


def resize_frames(
    frames: np.ndarray, width: int, height: int, out: np.ndarray | None = None
) -> np.ndarray:
    """uint8 RGB [T, h, w, 3] -> [T, height, width, 3], antialiased bilinear (see _RESIZE_FLAGS).

    `frames` may be a crop (a strided slice) of larger frames: swscale reads it in place.
    """
    if out is None:
        out = np.empty((len(frames), height, width, 3), np.uint8)
    reformatter = VideoReformatter()  # one swscale context for every frame
    for t, frame in enumerate(frames):
        if frame.strides[1:] != (3, 1):  # e.g. a flipped view: pixels must be packed in rows
            frame = np.ascontiguousarray(frame)
        picture = av.VideoFrame.from_numpy_buffer(frame, "rgb24")
        planar = reformatter.reformat(
            picture, width=width, height=height, format="gbrp", interpolation=_RESIZE_FLAGS
        )
        out[t] = planar.to_ndarray(channel_last=True)
    return out


def sample_crop_box(
    rng: np.random.Generator,
    height: int,
    width: int,
    area: tuple[float, float],
    aspect: tuple[float, float],
    attempts: int = 10,
) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a random crop; the centre crop if no attempt fits."""
    target = height * width * rng.uniform(area[0], area[1], attempts)
    ratio = np.exp(rng.uniform(math.log(aspect[0]), math.log(aspect[1]), attempts))
    crop_w = np.round(np.sqrt(target * ratio)).astype(np.int64)
    crop_h = np.round(np.sqrt(target / ratio)).astype(np.int64)
    fits = np.flatnonzero((crop_w >= 1) & (crop_w <= width) & (crop_h >= 1) & (crop_h <= height))
    # Positions are drawn for every attempt so the rng advances the same way whichever fits.
    u = rng.random((2, attempts))
    if len(fits):
        i = fits[0]
        w, h = int(crop_w[i]), int(crop_h[i])
        left = int(u[0, i] * (width - w + 1))
        top = int(u[1, i] * (height - h + 1))
        return left, top, left + w, top + h
    # Fallback: the largest centred crop whose aspect lies inside the allowed range.
    ratio = min(max(width / height, aspect[0]), aspect[1])
    w, h = (
        (width, round(width / ratio)) if width / height < ratio else (round(height * ratio), height)
    )
    w, h = min(w, width), min(h, height)
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def sample_crop_box_tf(
    rng: np.random.Generator,
    height: int,
    width: int,
    area: tuple[float, float],
    aspect: tuple[float, float],
    attempts: int = 100,
) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) as tf.image.sample_distorted_bounding_box draws it for one
    whole-frame box (TF's `GenerateRandomCrop`): the aspect uniform, then the height uniform
    over the integers whose area lies in range, offsets uniform in [0, H - h) and
    [0, W - w); the whole frame when no attempt succeeds."""
    min_area, max_area = area[0] * height * width, area[1] * height * width
    for ratio in rng.uniform(aspect[0], aspect[1], attempts):
        h = int(np.rint(math.sqrt(min_area / ratio)))
        max_h = int(np.rint(math.sqrt(max_area / ratio)))
        if np.rint(max_h * ratio) > width:
            max_h = int((width + 0.5 - 1e-7) / ratio)
            if np.rint(max_h * ratio) > width:
                max_h -= 1
        max_h = min(max_h, height)
        h = min(h, max_h)
        if h < max_h:
            h += int(rng.integers(max_h - h + 1))
        w = int(np.rint(h * ratio))
        # TF's repair of rounding: one row more if the area is short, one less if over.
        if w * h < min_area:
            h += 1
            w = int(np.rint(h * ratio))
        if w * h > max_area:
            h -= 1
            w = int(np.rint(h * ratio))
        if not (min_area <= w * h <= max_area and 0 < w <= width and 0 < h <= height):
            continue
        top = int(rng.integers(height - h)) if h < height else 0
        left = int(rng.integers(width - w)) if w < width else 0
        return left, top, left + w, top + h
    return 0, 0, width, height


@registry.register("transform", "scale_jitter_crop")
def scale_jitter_crop(
    size: int = 224, scale: tuple[float, float] = (0.8, 1.2), p: float = 0.8
) -> Op:
    """DMVR's `scale_jitter_augm` then its random crop (scenic's ViViT train crop): with
    probability p a view is resized by factors drawn independently for height and width from
    U(scale) (sizes truncated, as tf.cast), then cut to size x size at a uniform position. The
    crop is read from the source frames (the box mapped back, within a pixel) and resized
    once."""
    _check_positive("scale_jitter_crop.size", size)
    if not 0 < scale[0] <= scale[1]:
        raise ValueError(f"scale_jitter_crop.scale: need 0 < min <= max, got {scale}")
    if not 0 <= p <= 1:
        raise ValueError(f"scale_jitter_crop.p: must be in [0, 1], got {p}")

    def op(example: dict, rng: np.random.Generator) -> dict:
        video = checked_video(example, "scale_jitter_crop")

        def box(height: int, width: int) -> tuple[int, int, int, int]:
            h_scale, w_scale = rng.uniform(scale[0], scale[1], 2)
            jitter = rng.random() < p
            h, w = (int(h_scale * height), int(w_scale * width)) if jitter else (height, width)
            _check_fits("scale_jitter_crop", size, h, w)
            top, left = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
            fy, fx = height / h, width / w
            return (
                round(left * fx),
                round(top * fy),
                min(width, round((left + size) * fx)),
                min(height, round((top + size) * fy)),
            )

        return {**example, "video": _crop_views(video, box, size)}

    return op


@registry.register("transform", "multi_scale_crop")
def multi_scale_crop(
    size: int = 224,
    scales: tuple[float, ...] = (1.0, 0.875, 0.75, 0.66),
    max_distort: int = 1,
    fix_crop: bool = True,
    more_fix_crop: bool = True,
) -> Op:
    """VideoMAE's pretraining crop (TSN's `GroupMultiScaleCrop`), resized to size x size.

    Few discrete boxes instead of a continuous family: see `multi_scale_crop_box`.
    """
    _check_positive("multi_scale_crop.size", size)
    if not scales or not all(0 < s <= 1 for s in scales):
        raise ValueError(f"multi_scale_crop.scales: need values in (0, 1], got {scales}")
    if max_distort < 0:
        raise ValueError(f"multi_scale_crop.max_distort: must be >= 0, got {max_distort}")

    def op(example: dict, rng: np.random.Generator) -> dict:
        video = checked_video(example, "multi_scale_crop")
        box = lambda height, width: multi_scale_crop_box(
            rng, height, width, size, scales, max_distort, fix_crop, more_fix_crop
        )
        return {**example, "video": _crop_views(video, box, size)}

    return op


def multi_scale_crop_box(
    rng: np.random.Generator,
    height: int,
    width: int,
    size: int,
    scales: tuple[float, ...] = (1.0, 0.875, 0.75, 0.66),
    max_distort: int = 1,
    fix_crop: bool = True,
    more_fix_crop: bool = True,
) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) as VideoMAE's `GroupMultiScaleCrop._sample_crop_size` picks it.

    Side lengths are int(short side * scale), snapped to `size` when within 3 pixels; width and
    height come from scales at most `max_distort` places apart in the list. With `fix_crop` the
    corner is one of 5 (13 with `more_fix_crop`) points of a grid of quarter steps, not a free
    position: the reference's list, duplicates included, so each entry is equally likely. A
    side snapped beyond the frame (a short side just below `size`) is clamped to the frame,
    where the reference's PIL crop would pad with black.
    """
    sides = [int(min(height, width) * s) for s in scales]
    sides = [size if abs(side - size) < 3 else side for side in sides]
    pairs = [
        (min(w, width), min(h, height))
        for i, h in enumerate(sides)
        for j, w in enumerate(sides)
        if abs(i - j) <= max_distort
    ]
    w, h = pairs[rng.integers(len(pairs))]
    if not fix_crop:
        left, top = int(rng.integers(width - w + 1)), int(rng.integers(height - h + 1))
        return left, top, left + w, top + h
    w_step, h_step = (width - w) // 4, (height - h) // 4
    corners = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2)]  # in steps; then the 8 below
    if more_fix_crop:
        corners += [(0, 2), (4, 2), (2, 4), (2, 0), (1, 1), (3, 1), (1, 3), (3, 3)]
    i, j = corners[rng.integers(len(corners))]
    left, top = i * w_step, j * h_step
    return left, top, left + w, top + h


@registry.register("transform", "flip")
def flip(p: float | tuple[float, ...] = 0.5) -> Op:
    """Horizontal flip of whole views with probability p."""

    def op(example: dict, rng: np.random.Generator) -> dict:
        video = checked_video(example, "flip")
        apply = coin(rng, p, video.shape[0], "flip.p")
        if not apply.any():
            return example
        out = np.stack([view[:, :, ::-1] if a else view for view, a in zip(video, apply)])
        return {**example, "video": out}

    return op


@registry.register("transform", "resize_short")
def resize_short(size: int = 256) -> Op:
    """Resizes every frame so its short side is `size` (bilinear, antialiased by PIL)."""
    _check_positive("resize_short.size", size)

    def op(example: dict, rng: np.random.Generator) -> dict:
        video = checked_video(example, "resize_short")
        views, frames, height, width, _ = video.shape
        if min(height, width) == size:
            return example
        if height <= width:
            new_h, new_w = size, max(1, round(width * size / height))
        else:
            new_h, new_w = max(1, round(height * size / width)), size
        out = np.empty((views, frames, new_h, new_w, 3), np.uint8)
        for v in range(views):
            resize_frames(video[v], new_w, new_h, out=out[v])
        return {**example, "video": out}

    return op


@registry.register("transform", "center_crop")
def center_crop(size: int = 224) -> Op:
    """The central size x size square of every frame."""
    _check_positive("center_crop.size", size)

    def op(example: dict, rng: np.random.Generator) -> dict:
        video = checked_video(example, "center_crop")
        height, width = video.shape[2:4]
        _check_fits("center_crop", size, height, width)
        top, left = (height - size) // 2, (width - size) // 2
        return {**example, "video": video[:, :, top : top + size, left : left + size]}

    return op


@registry.register("transform", "three_crop")
def three_crop(size: int = 224) -> Op:
    """Three size x size crops along the long side (left/centre/right or top/middle/bottom).

    Multiplies the views by three, view-major (view v, crop c -> v * 3 + c); per-view arrays
    (`frame_indices`, `temporal/*`, `spatial/*`) are repeated to match and `spatial/crop`
    records the crop position (0, 1, 2).
    """
    _check_positive("three_crop.size", size)

    def op(example: dict, rng: np.random.Generator) -> dict:
        video = checked_video(example, "three_crop")
        views, _, height, width, _ = video.shape
        _check_fits("three_crop", size, height, width)
        long_side = max(height, width)
        offsets = (0, (long_side - size) // 2, long_side - size)
        centre = (min(height, width) - size) // 2
        crops = []
        for offset in offsets:
            top, left = (offset, centre) if height > width else (centre, offset)
            crops.append(video[:, :, top : top + size, left : left + size])
        out = np.stack(crops, axis=1).reshape(views * 3, *crops[0].shape[1:])
        example = {
            key: np.repeat(value, 3, axis=0) if _is_per_view(key, value, views) else value
            for key, value in example.items()
        }
        example["video"] = out
        example["spatial/crop"] = np.tile(np.arange(3, dtype=np.int32), views)
        return example

    return op


# --------------------------------------------- helpers (the first two serve vrl.data.color too)


def checked_video(example: dict, op: str) -> np.ndarray:
    """The decoded `video` of an example, which must be uint8 [V, T, H, W, 3]."""
    video = example.get("video")
    if video is None:
        raise KeyError(f"{op}: example {example.get('id')!r} has no decoded 'video'")
    video = np.asarray(video)
    if video.ndim != 5 or video.shape[-1] != 3 or video.dtype != np.uint8:
        raise ValueError(
            f"{op}: expected 'video' uint8 [V, T, H, W, 3], got {video.dtype} {list(video.shape)}"
        )
    return video


def coin(rng: np.random.Generator, p, views: int, what: str) -> np.ndarray:
    """bool [views]: which views an op with probability p (one or one per view) applies to."""
    return rng.random(views) < per_view(p, views, what)


def _check_positive(what: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{what}: must be >= 1, got {value}")


def _check_fits(op: str, size: int, height: int, width: int) -> None:
    if size > min(height, width):
        raise ValueError(
            f"{op}: crop {size} is larger than the {height}x{width} frames; "
            f"put resize_short(size>={size}) before it"
        )


def _is_per_view(key: str, value, views: int) -> bool:
    per_view_key = key == "frame_indices" or key.startswith(("temporal/", "spatial/"))
    return per_view_key and np.ndim(value) >= 1 and np.shape(value)[0] == views
