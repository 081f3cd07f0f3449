"""Colour and frequency augmentation of decoded clips: colour jitter, grayscale, solarize,
Gaussian blur, FreqAug. As the geometric ops (`vrl.data.spatial`), every op reads and writes
`video` uint8 [V, T, H, W, 3], draws its random parameters once per view and applies them to
every frame of the view, with probabilities given once or per view, e.g.
`gaussian_blur(p=(1.0, 0.1))`. Arithmetic is float32, rounded once at the end. Colour ops are
vectorised numpy over the whole view; blurring uses PIL per frame.
"""

import functools
from typing import Literal

import numpy as np
from PIL import Image, ImageFilter

from vrl import registry
from vrl.data.spatial import checked_video, coin
from vrl.data.types import Op

# ITU-R BT.601 luma weights, as PIL, torchvision and tf.image use for grayscale.
LUMA = np.array([0.299, 0.587, 0.114], np.float32)
JitterStyle = Literal["torchvision", "tf"]


# ------------------------------------------------------------------------------- colour


@registry.register("transform", "color_jitter")
def color_jitter(
    p: float | tuple[float, ...] = 0.8,
    brightness: float = 0.8,
    contrast: float = 0.8,
    saturation: float = 0.8,
    hue: float = 0.2,
    random_order: bool = True,
    style: JitterStyle = "torchvision",
) -> Op:
    """SimCLR/CVRL colour jitter with probability p per view.

    Strengths as in SimCLR v2 and torchvision: brightness, contrast and saturation factors are
    uniform in [max(0, 1 - s), 1 + s], the hue shift uniform in [-hue, hue] of a full turn of
    the HSV hue; the four adjustments run in a random order per view, the result clipped after
    each. Every frame of a view gets the same adjustment. `style` picks the library whose
    contrast and saturation the recipe was trained with:
      "torchvision"  contrast blends towards the view's mean luma, saturation towards each
                     pixel's luma (torchvision.transforms.ColorJitter, PyTorch recipes);
      "tf"           contrast scales around each channel's mean over the view, saturation
                     scales the HSV saturation, clipped to [0, 1] (tf.image.random_contrast /
                     random_saturation, as SimCLR's and CVRL's TF code apply them to a clip
                     reshaped into one image).
    """
    strengths = {"brightness": brightness, "contrast": contrast, "saturation": saturation}
    for name, value in strengths.items():
        if value < 0:
            raise ValueError(f"color_jitter.{name}: must be >= 0, got {value}")
    if not 0 <= hue <= 0.5:
        raise ValueError(f"color_jitter.hue: must be in [0, 0.5], got {hue}")
    if style not in _JITTERS:
        raise ValueError(f"color_jitter.style: {style!r}; allowed: {', '.join(_JITTERS)}")
    jitters = _JITTERS[style]

    def op(example: dict, rng: np.random.Generator) -> dict:
        video = checked_video(example, "color_jitter")
        views = video.shape[0]
        apply = coin(rng, p, views, "color_jitter.p")
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
                x = jitters[name](x, float(factors[name][v]))
                np.clip(x, 0.0, 255.0, out=x)
            out[v] = _to_uint8(x)
        return {**example, "video": out}

    return op


def adjust_brightness(x: np.ndarray, factor: float) -> np.ndarray:
    return np.multiply(x, factor, out=x)


def adjust_contrast(x: np.ndarray, factor: float) -> np.ndarray:
    """Blend towards the mean luma of `x` (torchvision)."""
    mean = float(np.mean(x @ LUMA))
    x *= factor
    x += (1.0 - factor) * mean
    return x


def adjust_contrast_per_channel(x: np.ndarray, factor: float) -> np.ndarray:
    """(x - mean) * factor + mean with each channel's own mean over `x` (tf.image)."""
    mean = x.reshape(-1, x.shape[-1]).mean(axis=0)
    x -= mean
    x *= factor
    x += mean
    return x


def adjust_saturation(x: np.ndarray, factor: float) -> np.ndarray:
    """Blend towards each pixel's luma (torchvision)."""
    gray = (x @ LUMA)[..., None]
    x *= factor
    x += (1.0 - factor) * gray
    return x


def adjust_saturation_hsv(x: np.ndarray, factor: float) -> np.ndarray:
    """HSV saturation times `factor`, clipped to [0, 1] (tf.image)."""
    return _adjust_hsv(x, saturation=factor)


def adjust_hue(x: np.ndarray, shift: float) -> np.ndarray:
    """Adds `shift` turns to the HSV hue (torchvision and tf.image alike)."""
    if shift == 0.0:
        return x
    return _adjust_hsv(x, hue=shift)


def _adjust_hsv(x: np.ndarray, hue: float = 0.0, saturation: float = 1.0) -> np.ndarray:
    """RGB -> HSV -> shift hue, scale saturation -> RGB, vectorised in float32.

    With V = max, chroma C = V * S = max - min and hue h in [0, 6), each output channel is
    V - C * clip(min(k, 4 - k), 0, 1) for k = (n + h) mod 6, n = 5, 3, 1 for R, G, B (the
    closed form of the HSV sextants); scaling S by f, clipped at 1, scales C to min(f*C, V).
    """
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    value = np.maximum(np.maximum(r, g), b)  # elementwise: faster than reducing an axis of 3
    chroma = value - np.minimum(np.minimum(r, g), b)
    inverse = np.divide(1.0, chroma, out=np.zeros_like(chroma), where=chroma > 0)
    h = np.where(value == r, g - b, np.where(value == g, b - r + 2 * chroma, r - g + 4 * chroma))
    h *= inverse
    h += 6.0 * hue
    np.mod(h, 6.0, out=h)
    if saturation != 1.0:
        chroma = np.minimum(chroma * saturation, np.maximum(value, 0.0))  # S = 0 where V <= 0
    out = np.empty_like(x)
    for channel, n in enumerate((5.0, 3.0, 1.0)):
        k = np.mod(h + n, 6.0)
        weight = np.clip(np.minimum(k, 4.0 - k, out=k), 0.0, 1.0, out=k)
        np.subtract(value, chroma * weight, out=out[..., channel])
    return out


_JITTERS = {
    "torchvision": {
        "brightness": adjust_brightness,
        "contrast": adjust_contrast,
        "saturation": adjust_saturation,
        "hue": adjust_hue,
    },
    "tf": {
        "brightness": adjust_brightness,
        "contrast": adjust_contrast_per_channel,
        "saturation": adjust_saturation_hsv,
        "hue": adjust_hue,
    },
}
_JITTER_ORDER = ("brightness", "contrast", "saturation", "hue")


@registry.register("transform", "dmvr_color")
def dmvr_color(
    p: float | tuple[float, ...] = 0.8,
    brightness: float = 32 / 255,
    saturation: tuple[float, float] = (0.6, 1.4),
    contrast: tuple[float, float] = (0.6, 1.4),
    hue: float = 0.2,
) -> Op:
    """DMVR's `color_default_augm` (scenic's ViViT recipes), with probability p per view, one
    draw for all its frames: brightness + U(-b, b) of full scale, HSV saturation x U(saturation)
    (clipped to [0, 1]), contrast x U(contrast) around each frame's channel means (tf.image on
    a [T, H, W, 3] video), HSV hue + U(-hue, hue) turns, in that order; clipped once, at the
    end."""
    if brightness < 0 or not 0 <= hue <= 0.5:
        raise ValueError(
            f"dmvr_color: need brightness >= 0 and hue in [0, 0.5], got {brightness}, {hue}"
        )
    for name, (low, high) in (("saturation", saturation), ("contrast", contrast)):
        if not 0 <= low <= high:
            raise ValueError(f"dmvr_color.{name}: need 0 <= min <= max, got {(low, high)}")

    def op(example: dict, rng: np.random.Generator) -> dict:
        video = checked_video(example, "dmvr_color")
        views = video.shape[0]
        apply = coin(rng, p, views, "dmvr_color.p")
        shift = rng.uniform(-brightness, brightness, views) * 255.0
        sat = rng.uniform(*saturation, views)
        con = rng.uniform(*contrast, views)
        turn = rng.uniform(-hue, hue, views)
        if not apply.any():
            return example
        out = video.copy()
        for v in np.flatnonzero(apply):
            x = video[v].astype(np.float32) + np.float32(shift[v])
            x = adjust_saturation_hsv(x, float(sat[v]))
            x = np.stack([adjust_contrast_per_channel(frame, float(con[v])) for frame in x])
            x = adjust_hue(x, float(turn[v]))
            out[v] = _to_uint8(np.clip(x, 0.0, 255.0))
        return {**example, "video": out}

    return op


@registry.register("transform", "grayscale")
def grayscale(p: float | tuple[float, ...] = 0.2) -> Op:
    """Replaces a view by its luma in all three channels with probability p."""

    def op(example: dict, rng: np.random.Generator) -> dict:
        video = checked_video(example, "grayscale")
        apply = coin(rng, p, video.shape[0], "grayscale.p")
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
        video = checked_video(example, "solarize")
        apply = coin(rng, p, video.shape[0], "solarize.p")
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
        video = checked_video(example, "gaussian_blur")
        views = video.shape[0]
        apply = coin(rng, p, views, "gaussian_blur.p")
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
        video = checked_video(example, "freq_aug")
        apply = coin(rng, p, video.shape[0], "freq_aug.p")
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


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """Rounds float values already inside [0, 255] to uint8."""
    return (x + 0.5).astype(np.uint8)
