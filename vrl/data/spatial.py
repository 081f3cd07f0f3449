"""Spatial augmentation of decoded clips, identical for every frame of a view.

Every op reads `video`: uint8 [V, T, H, W, 3] (V views of T frames) and writes it back as
uint8, doing any arithmetic in float32 and rounding once at the end. Random parameters (crop
box, flip, jitter factors, blur sigma, ...) are drawn once per view and applied to all of its
frames, so motion inside a clip is never confused with augmentation noise (the CVRL rule).
Probabilities may be given per view, e.g. `gaussian_blur(p=(1.0, 0.1))`.

Resizing goes through FFmpeg's swscale (PyAV) per frame: the same antialiased bilinear filter
as PIL's BILINEAR (outputs agree to within one level away from the borders) at a third of its
cost, which matters because every clip pays it for every frame. Blurring uses PIL per frame;
colour ops are vectorised numpy over the whole view.
"""

import functools
import math
from typing import Literal

import av
import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter
from PIL import Image, ImageFilter

from vrl import registry
from vrl.data.temporal import Op, per_view

# ITU-R BT.601 luma weights, as PIL, torchvision and tf.image use for grayscale.
LUMA = np.array([0.299, 0.587, 0.114], np.float32)
# RGB -> YIQ; a hue shift is a rotation of the (I, Q) chroma plane that keeps luma fixed.
_RGB_TO_YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float64
)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)
# Bilinear (a triangle filter widened when shrinking, as PIL's); RGB read at full horizontal
# resolution and scaled as planar RGB, so no colour conversion or chroma subsampling happens.
_RESIZE_FLAGS = Interpolation.BILINEAR | Interpolation.FULL_CHR_H_INP


# ----------------------------------------------------------------------------- geometry


@registry.register("transform", "random_resized_crop")
def random_resized_crop(
    size: int = 224,
    area: tuple[float, float] = (0.3, 1.0),
    aspect: tuple[float, float] = (0.5, 2.0),
) -> Op:
    """Inception-style crop (area fraction, log-uniform aspect) resized to size x size."""
    _check_positive("random_resized_crop.size", size)
    if not 0 < area[0] <= area[1] <= 1:
        raise ValueError(f"random_resized_crop.area: need 0 < min <= max <= 1, got {area}")
    if not 0 < aspect[0] <= aspect[1]:
        raise ValueError(f"random_resized_crop.aspect: need 0 < min <= max, got {aspect}")

    def op(example: dict, rng: np.random.Generator) -> dict:
        video = _video(example, "random_resized_crop")
        views, frames, height, width, _ = video.shape
        out = np.empty((views, frames, size, size, 3), np.uint8)
        for v in range(views):
            left, top, right, bottom = sample_crop_box(rng, height, width, area, aspect)
            resize_frames(video[v, :, top:bottom, left:right], size, size, out=out[v])
        return {**example, "video": out}

    return op


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


@registry.register("transform", "flip")
def flip(p: float | tuple[float, ...] = 0.5) -> Op:
    """Horizontal flip of whole views with probability p."""

    def op(example: dict, rng: np.random.Generator) -> dict:
        video = _video(example, "flip")
        apply = _coin(rng, p, video.shape[0], "flip.p")
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
        video = _video(example, "resize_short")
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
        video = _video(example, "center_crop")
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
        video = _video(example, "three_crop")
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


# ------------------------------------------------------------------------------- colour


@registry.register("transform", "color_jitter")
def color_jitter(
    p: float | tuple[float, ...] = 0.8,
    brightness: float = 0.8,
    contrast: float = 0.8,
    saturation: float = 0.8,
    hue: float = 0.2,
    random_order: bool = True,
) -> Op:
    """SimCLR/CVRL colour jitter with probability p per view.

    Strength semantics as in SimCLR v2 and torchvision: brightness, contrast and saturation
    factors are uniform in [max(0, 1 - s), 1 + s], the hue shift uniform in [-hue, hue] of a
    full turn; the four adjustments run in a random order per view and the result is clipped
    after each. Contrast blends towards the mean luma of the whole view (not of each frame),
    so every frame gets the same affine colour map. Hue rotates the YIQ chroma plane, a linear
    stand-in for the HSV hue shift that keeps luma and costs one 3x3 matrix product.
    """
    strengths = {"brightness": brightness, "contrast": contrast, "saturation": saturation}
    for name, value in strengths.items():
        if value < 0:
            raise ValueError(f"color_jitter.{name}: must be >= 0, got {value}")
    if not 0 <= hue <= 0.5:
        raise ValueError(f"color_jitter.hue: must be in [0, 0.5], got {hue}")

    def op(example: dict, rng: np.random.Generator) -> dict:
        video = _video(example, "color_jitter")
        views = video.shape[0]
        apply = _coin(rng, p, views, "color_jitter.p")
        factors = {
            name: rng.uniform(max(0.0, 1 - s), 1 + s, views) for name, s in strengths.items()
        }
        factors["hue"] = rng.uniform(-hue, hue, views)
        orders = [rng.permutation(4) if random_order else np.arange(4) for _ in range(views)]
        if not apply.any():
            return example
        out = video.copy()
        for v in np.flatnonzero(apply):
            x = video[v].astype(np.float32)
            for step in orders[v]:
                name = _JITTER_ORDER[step]
                x = _JITTERS[name](x, float(factors[name][v]))
                np.clip(x, 0.0, 255.0, out=x)
            out[v] = _to_uint8(x)
        return {**example, "video": out}

    return op


def adjust_brightness(x: np.ndarray, factor: float) -> np.ndarray:
    return np.multiply(x, factor, out=x)


def adjust_contrast(x: np.ndarray, factor: float) -> np.ndarray:
    mean = float(np.mean(x @ LUMA))
    x *= factor
    x += (1.0 - factor) * mean
    return x


def adjust_saturation(x: np.ndarray, factor: float) -> np.ndarray:
    gray = (x @ LUMA)[..., None]
    x *= factor
    x += (1.0 - factor) * gray
    return x


def adjust_hue(x: np.ndarray, shift: float) -> np.ndarray:
    """Rotates chroma by `shift` turns around the luma axis."""
    if shift == 0.0:
        return x
    c, s = math.cos(2 * math.pi * shift), math.sin(2 * math.pi * shift)
    rotation = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    matrix = (_YIQ_TO_RGB @ rotation @ _RGB_TO_YIQ).astype(np.float32)
    return x @ matrix.T


_JITTERS = {
    "brightness": adjust_brightness,
    "contrast": adjust_contrast,
    "saturation": adjust_saturation,
    "hue": adjust_hue,
}
_JITTER_ORDER = tuple(_JITTERS)


@registry.register("transform", "grayscale")
def grayscale(p: float | tuple[float, ...] = 0.2) -> Op:
    """Replaces a view by its luma in all three channels with probability p."""

    def op(example: dict, rng: np.random.Generator) -> dict:
        video = _video(example, "grayscale")
        apply = _coin(rng, p, video.shape[0], "grayscale.p")
        if not apply.any():
            return example
        out = video.copy()
        gray = _to_uint8(video[apply].astype(np.float32) @ LUMA)
        out[apply] = gray[..., None]
        return {**example, "video": out}

    return op


@registry.register("transform", "solarize")
def solarize(p: float | tuple[float, ...] = 0.0, threshold: int = 128) -> Op:
    """Inverts pixel values >= threshold with probability p per view (CVRL: view 2 only)."""
    if not 0 <= threshold <= 256:
        raise ValueError(f"solarize.threshold: must be in [0, 256], got {threshold}")

    def op(example: dict, rng: np.random.Generator) -> dict:
        video = _video(example, "solarize")
        apply = _coin(rng, p, video.shape[0], "solarize.p")
        if not apply.any():
            return example
        out = video.copy()
        views = video[apply]
        out[apply] = np.where(views >= threshold, 255 - views, views)
        return {**example, "video": out}

    return op


# -------------------------------------------------------------------------------- filters


@registry.register("transform", "gaussian_blur")
def gaussian_blur(
    p: float | tuple[float, ...] = 1.0, sigma: tuple[float, float] = (0.1, 2.0)
) -> Op:
    """Gaussian blur with sigma ~ U(sigma) per view, probability p per view.

    PIL's blur (three box passes) reaches about 3 sigma, at most 6 pixels for sigma 2: the
    support of the size/10 kernel the SimCLR/CVRL recipe uses on 112-224 pixel crops.
    """
    if not 0 < sigma[0] <= sigma[1]:
        raise ValueError(f"gaussian_blur.sigma: need 0 < min <= max, got {sigma}")

    def op(example: dict, rng: np.random.Generator) -> dict:
        video = _video(example, "gaussian_blur")
        views = video.shape[0]
        apply = _coin(rng, p, views, "gaussian_blur.p")
        sigmas = rng.uniform(sigma[0], sigma[1], views)
        if not apply.any():
            return example
        out = video.copy()
        for v in np.flatnonzero(apply):
            blur = ImageFilter.GaussianBlur(radius=float(sigmas[v]))
            for t in range(video.shape[1]):
                out[v, t] = np.asarray(Image.fromarray(video[v, t]).filter(blur))
        return {**example, "video": out}

    return op


@registry.register("transform", "freq_aug")
def freq_aug(
    p: float | tuple[float, ...] = 0.5,
    mode: Literal["spatial", "temporal", "both"] = "both",
    spatial_cutoff: float = 0.01,
    temporal_cutoff: float = 0.1,
) -> Op:
    """FreqAug: drops low-frequency Fourier components of a view with probability p.

    Removes every component whose spatial radius sqrt(fy**2 + fx**2) (cycles per pixel) is
    below `spatial_cutoff` and/or whose temporal frequency |ft| (cycles per frame) is below
    `temporal_cutoff`; with mode "both" a component goes if either test calls it low.
    Removing temporal lows leaves mostly what moves, removing spatial lows leaves edges and
    texture. The view's per-channel mean is added back so the result stays a viewable uint8
    clip (a constant offset carries no static structure).

    The result is exactly the FFT-mask filter, computed as projections onto the few low
    modes (small DFT matrices), which is far cheaper than full 3-D FFTs of the clip.
    """
    for name, value in (("spatial_cutoff", spatial_cutoff), ("temporal_cutoff", temporal_cutoff)):
        if not 0 <= value <= 0.75:
            raise ValueError(
                f"freq_aug.{name}: must be in [0, 0.75] cycles per sample, got {value}"
            )
    if mode not in ("spatial", "temporal", "both"):
        raise ValueError(
            f"freq_aug.mode: {mode!r} is not allowed; allowed: spatial, temporal, both"
        )
    spatial = spatial_cutoff if mode in ("spatial", "both") else 0.0
    temporal = temporal_cutoff if mode in ("temporal", "both") else 0.0

    def op(example: dict, rng: np.random.Generator) -> dict:
        video = _video(example, "freq_aug")
        apply = _coin(rng, p, video.shape[0], "freq_aug.p")
        if not apply.any():
            return example
        out = video.copy()
        for v in np.flatnonzero(apply):
            x = video[v].astype(np.float32)
            mean = channel_mean(x)
            x = high_pass(x, spatial, temporal)
            x += mean
            out[v] = _to_uint8(np.clip(x, 0.0, 255.0, out=x))
        return {**example, "video": out}

    return op


def channel_mean(x: np.ndarray) -> np.ndarray:
    """float32 [C]: mean over all other axes, as one BLAS product (numpy's strided mean is slow)."""
    pixels = x.reshape(-1, x.shape[-1])
    return np.full(len(pixels), 1.0 / len(pixels), np.float32) @ pixels


def high_pass(x: np.ndarray, spatial_cutoff: float, temporal_cutoff: float) -> np.ndarray:
    """float32 [T, H, W, C] minus its Fourier components below either cutoff.

    The two low sets are masks on different axes, so removing their union is removing one
    then the other: (1 - Ps)(1 - Pt) x with Ps, Pt the (commuting) low-pass projections.
    """
    frames, height, width, channels = x.shape
    if spatial_cutoff > 0:
        x = x - _spatial_low_pass(x, spatial_cutoff)
    if temporal_cutoff > 0:
        low = _temporal_low_pass_matrix(frames, temporal_cutoff) @ x.reshape(frames, -1)
        x = x - low.reshape(x.shape)
    return x.astype(np.float32, copy=False)


@functools.lru_cache(maxsize=32)
def _temporal_low_pass_matrix(frames: int, cutoff: float) -> np.ndarray:
    """float32 [T, T] real matrix keeping the temporal frequencies |f| < cutoff."""
    keep = (np.abs(np.fft.rfftfreq(frames)) < cutoff)[:, None]
    return np.fft.irfft(keep * np.fft.rfft(np.eye(frames), axis=0), n=frames, axis=0).astype(
        np.float32
    )


@functools.lru_cache(maxsize=32)
def _spatial_modes(height: int, width: int, cutoff: float):
    """Partial DFTs over the low rows (as cos / sin) and low columns, and the radial mask."""
    fy, fx = np.fft.fftfreq(height), np.fft.fftfreq(width)
    rows, cols = np.flatnonzero(np.abs(fy) < cutoff), np.flatnonzero(np.abs(fx) < cutoff)
    angle_h = 2 * np.pi * np.outer(rows, np.arange(height)) / height
    dft_w = np.exp(-2j * np.pi * np.outer(cols, np.arange(width)) / width).astype(np.complex64)
    radial = np.hypot(fy[rows][:, None], fx[cols][None, :]) < cutoff
    scale = radial.astype(np.float32) / (height * width)
    return np.cos(angle_h).astype(np.float32), np.sin(angle_h).astype(np.float32), dft_w, scale


def _spatial_low_pass(x: np.ndarray, cutoff: float) -> np.ndarray:
    """float32 [T, H, W, C]: x projected onto its spatial modes of radius < cutoff.

    The full-size products (along H, in and out) are real float32 matrix products; only the
    few low rows are complex.
    """
    frames, height, width, channels = x.shape
    cos_h, sin_h, dft_w, scale = _spatial_modes(height, width, cutoff)
    flat = x.transpose(1, 0, 2, 3).reshape(height, -1)  # [H, T * W * C]
    coeffs = (cos_h @ flat - 1j * (sin_h @ flat)).reshape(len(cos_h), frames, width, channels)
    coeffs = np.tensordot(coeffs, dft_w, axes=([2], [1]))  # [ky, T, C, kx]
    coeffs *= scale[:, None, None, :]
    coeffs = np.tensordot(coeffs, dft_w.conj(), axes=([3], [0]))  # [ky, T, C, W]
    coeffs = coeffs.transpose(0, 1, 3, 2).reshape(len(cos_h), -1)
    low = cos_h.T @ coeffs.real.astype(np.float32) - sin_h.T @ coeffs.imag.astype(np.float32)
    return low.reshape(height, frames, width, channels).transpose(1, 0, 2, 3)


# ------------------------------------------------------------------------------- internals


def _video(example: dict, op: str) -> np.ndarray:
    video = example.get("video")
    if video is None:
        raise KeyError(f"{op}: example {example.get('id')!r} has no decoded 'video'")
    video = np.asarray(video)
    if video.ndim != 5 or video.shape[-1] != 3 or video.dtype != np.uint8:
        raise ValueError(
            f"{op}: expected 'video' uint8 [V, T, H, W, 3], got {video.dtype} {list(video.shape)}"
        )
    return video


def _coin(rng: np.random.Generator, p, views: int, what: str) -> np.ndarray:
    """bool [views]: which views an op with probability p (one or one per view) applies to."""
    return rng.random(views) < per_view(p, views, what)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """Rounds float values already inside [0, 255] to uint8."""
    return (x + 0.5).astype(np.uint8)


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
