"""Token masks for masked-modelling objectives, made in the input pipeline with numpy.

A mask factory takes the token grid `grid = (t, h, w)` of the encoder (the objective fills it
in) and returns an op that writes, for N = t * h * w tokens in t-major order (the order of
`einops.rearrange(tokens, "t h w d -> (t h w) d")`):
  mask{suffix}       bool [N], True = hidden from the encoder
  keep_idx{suffix}   int32 [K], sorted indices of the visible tokens (exactly ~mask)
K is fixed by the config, never by the example, so examples stack into batches and the
encoder sees a static shape. Multi-block masks also write `target_mask{suffix}`, the tokens
the loss scores. One mask serves every view of an example.
"""

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from vrl import registry
from vrl.data.types import Op

Grid = tuple[int, int, int]
_DEFAULT_GRID: Grid = (8, 14, 14)  # 16 frames x 224 pixels with 2 x 16 x 16 tubelets.


def mask_op(name: str) -> Callable[[Any], Any]:
    """Registers a factory as transform `name` and marks it to run after augmentation."""

    def decorate(factory):
        factory.stage = "mask"
        return registry.register("transform", name)(factory)

    return decorate


# ---------------------------------------------------------------------------- MAE masks


@mask_op("random_mask")
def random_mask(grid: Grid = _DEFAULT_GRID, ratio: float = 0.9, suffix: str = "") -> Op:
    """Hides round(ratio * N) tokens chosen uniformly at random."""
    n = _num_tokens("random_mask", grid)
    hidden = _hidden_count("random_mask", ratio, n)

    def op(example: dict, rng: np.random.Generator) -> dict:
        mask = np.zeros(n, bool)
        mask[rng.permutation(n)[:hidden]] = True
        return _write(example, mask, suffix)

    return op


@mask_op("tube_mask")
def tube_mask(grid: Grid = _DEFAULT_GRID, ratio: float = 0.9, suffix: str = "") -> Op:
    """VideoMAE tube masking: one random spatial mask repeated over every temporal slot."""
    t, h, w = grid
    _num_tokens("tube_mask", grid)
    hidden = _hidden_count("tube_mask", ratio, h * w)

    def op(example: dict, rng: np.random.Generator) -> dict:
        spatial = np.zeros(h * w, bool)
        spatial[rng.permutation(h * w)[:hidden]] = True
        return _write(example, np.tile(spatial, t), suffix)

    return op


@mask_op("running_cell_mask")
def running_cell_mask(
    grid: Grid = _DEFAULT_GRID, ratio: float = 0.5, suffix: str = "/decoder"
) -> Op:
    """VideoMAE V2 decoder masking: a 2 x 2 cell pattern that runs round the cell over time.

    Each 2 x 2 cell hides round(4 * ratio) of its positions; from one temporal slot to the
    next the hidden positions move one step clockwise, so every position is visible in some
    nearby slot and the kept tokens still cover the whole clip. The starting phase is random.
    Writes `mask/decoder` and `keep_idx/decoder` by default (the decoder's own mask).
    """
    t, h, w = grid
    _num_tokens("running_cell_mask", grid)
    per_cell = round(4 * ratio)
    if not np.isclose(4 * ratio, per_cell) or not 0 < per_cell < 4:
        raise ValueError(
            f"running_cell_mask.ratio: {ratio} does not hide a whole number of a 2x2 cell's "
            f"positions; allowed: 0.25, 0.5, 0.75"
        )
    if h % 2 or w % 2:
        raise ValueError(f"running_cell_mask.grid: h and w must be even for 2x2 cells, got {grid}")
    # Clockwise order of the cell's positions: (0, 0), (0, 1), (1, 1), (1, 0).
    rows, cols = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 0])
    pattern = np.arange(4) < per_cell

    def op(example: dict, rng: np.random.Generator) -> dict:
        phase = rng.integers(4)
        mask = np.empty((t, h, w), bool)
        for slot in range(t):
            cell = np.empty((2, 2), bool)
            cell[rows, cols] = np.roll(pattern, phase + slot)
            mask[slot] = np.tile(cell, (h // 2, w // 2))
        return _write(example, mask.reshape(-1), suffix)

    return op


@mask_op("motion_mask")
def motion_mask(
    grid: Grid = _DEFAULT_GRID, ratio: float = 0.9, temperature: float = 0.5, suffix: str = ""
) -> Op:
    """Motion-guided masking: hides the tokens that move most, with some randomness.

    A token's motion is the mean absolute frame difference inside its tubelet (averaged over
    views when `video` has a view axis, since the views share the mask). Tokens are hidden by
    sampling without replacement with probabilities softmax(z / temperature) over the motion
    z-scores (Gumbel top-k): a small temperature hides strictly the most moving tokens, a
    large one approaches random masking. Needs the decoded `video` [T, H, W, 3] or
    [V, T, H, W, 3] with T, H, W multiples of the grid.
    """
    n = _num_tokens("motion_mask", grid)
    hidden = _hidden_count("motion_mask", ratio, n)
    if not temperature > 0:
        raise ValueError(f"motion_mask.temperature: must be > 0, got {temperature}")

    def op(example: dict, rng: np.random.Generator) -> dict:
        energy = tubelet_motion(example, grid).reshape(-1)
        z = (energy - energy.mean()) / (energy.std() + 1e-6)
        scores = z / temperature + rng.gumbel(size=n)
        mask = np.zeros(n, bool)
        mask[np.argsort(-scores)[:hidden]] = True
        return _write(example, mask, suffix)

    return op


def tubelet_motion(example: dict, grid: Grid) -> np.ndarray:
    """float32 [t, h, w]: mean absolute frame difference inside each token's tubelet."""
    video = example.get("video")
    if video is None:
        raise KeyError(f"motion_mask: example {example.get('id')!r} has no decoded 'video'")
    video = np.asarray(video)
    if video.ndim == 4:
        video = video[None]
    if video.ndim != 5:
        raise ValueError(
            f"motion_mask: 'video' must be [T,H,W,C] or [V,T,H,W,C], got {video.shape}"
        )
    views, frames, height, width, _ = video.shape
    t, h, w = grid
    if frames % t or height % h or width % w:
        raise ValueError(
            f"motion_mask: video of {frames}x{height}x{width} does not split into the token "
            f"grid {grid}; each of T, H, W must be a multiple of t, h, w"
        )
    channels = video.shape[-1]
    x = video.astype(np.float32) @ np.full(channels, 1.0 / channels, np.float32)  # [V, T, H, W]
    if frames > 1:
        diff = np.abs(np.diff(x, axis=1))
        diff = np.concatenate([diff[:, :1], diff], axis=1)  # frame 0 moves like frame 1
    else:
        diff = np.zeros_like(x)
    shape = (views, t, frames // t, h, height // h, w, width // w)
    return diff.reshape(shape).mean(axis=(0, 2, 4, 6))


@mask_op("noise_mask")
def noise_mask(
    grid: Grid = _DEFAULT_GRID, ratio: float = 0.9, exponent: float = 3.0, suffix: str = ""
) -> Op:
    """Structured-noise masking: hides the top `ratio` of low-pass filtered coloured noise.

    White noise on the token grid is shaped in 3-D Fourier space to a power spectrum
    ~ 1 / f**exponent (0 = white, 1 = pink, 2 = red; the default 3 gives blobs a few tokens
    wide on a 14 x 14 plane), so hidden tokens form clumps extending over space and time
    instead of isolated tokens. The noise is periodic, so clumps may wrap round the edges.
    The threshold is the (1 - ratio) quantile: exactly round(ratio * N) tokens are hidden.
    """
    t, h, w = grid
    n = _num_tokens("noise_mask", grid)
    hidden = _hidden_count("noise_mask", ratio, n)
    if exponent < 0:
        raise ValueError(f"noise_mask.exponent: must be >= 0, got {exponent}")
    radius = np.sqrt(
        np.fft.fftfreq(t)[:, None, None] ** 2
        + np.fft.fftfreq(h)[None, :, None] ** 2
        + np.fft.rfftfreq(w)[None, None, :] ** 2
    )
    amplitude = np.zeros_like(radius)
    np.power(radius, -exponent / 2, out=amplitude, where=radius > 0)  # drop the mean (DC)

    def op(example: dict, rng: np.random.Generator) -> dict:
        noise = np.fft.irfftn(
            np.fft.rfftn(rng.standard_normal((t, h, w))) * amplitude, s=(t, h, w)
        ).reshape(-1)
        mask = np.zeros(n, bool)
        mask[np.argsort(-noise, kind="stable")[:hidden]] = True
        return _write(example, mask, suffix)

    return op


# ---------------------------------------------------------------------- multi-block masks


@mask_op("multiblock_mask")
def multiblock_mask(
    grid: Grid = _DEFAULT_GRID,
    num_blocks: int = 8,
    scale: float = 0.15,
    aspect: tuple[float, float] = (0.75, 1.5),
    keep_quantile: float = 0.5,
    keep: int | None = None,
    suffix: str = "",
) -> Op:
    """V-JEPA 3-D multi-block mask: the union of `num_blocks` blocks spanning all frames.

    Each block covers about `scale` of the h x w plane with aspect (h/w) ~ U(aspect); one
    size per example, positions uniform. `target_mask` is the union (what the loss scores).
    The context keeps exactly K tokens: blocks are redrawn until at least K tokens are
    outside them, then surplus context tokens are dropped at random, so `mask` (= ~keep)
    may exceed `target_mask`. K is `keep` if given, else the `keep_quantile` quantile of the
    visible-token count under this config, estimated once with a fixed seed (0.5: about the
    expected ratio, half the draws accepted; lower values accept more draws and drop more
    context, as V-JEPA's truncation to the batch minimum does).
    """
    sampler = _MultiBlock("multiblock_mask", grid, num_blocks, scale, aspect, keep_quantile, keep)

    def op(example: dict, rng: np.random.Generator) -> dict:
        return sampler.write(example, rng, suffix)

    return op


@mask_op("vjepa_masks")
def vjepa_masks(
    grid: Grid = _DEFAULT_GRID,
    num_blocks: tuple[int, ...] = (8, 2),
    scale: tuple[float, ...] = (0.15, 0.7),
    aspect: tuple[float, float] = (0.75, 1.5),
    keep_quantile: float = 0.5,
) -> Op:
    """V-JEPA's two mask types per example: short-range (8 x 0.15) and long-range (2 x 0.7).

    Writes `mask/i`, `keep_idx/i` and `target_mask/i` for mask type i, each as multiblock_mask.
    """
    if len(num_blocks) != len(scale) or not num_blocks:
        raise ValueError(
            f"vjepa_masks: num_blocks {num_blocks} and scale {scale} need the same, nonzero length"
        )
    samplers = [
        _MultiBlock(f"vjepa_masks[{i}]", grid, blocks, s, aspect, keep_quantile, None)
        for i, (blocks, s) in enumerate(zip(num_blocks, scale))
    ]

    def op(example: dict, rng: np.random.Generator) -> dict:
        for i, sampler in enumerate(samplers):
            example = sampler.write(example, rng, f"/{i}")
        return example

    return op


class _MultiBlock:
    """Draws one multi-block mask type with a fixed number K of context tokens."""

    _TRIES = 20

    def __init__(self, what, grid, num_blocks, scale, aspect, keep_quantile, keep):
        self.what = what
        self.n = _num_tokens(what, grid)
        grid = tuple(int(g) for g in grid)
        self.t, self.h, self.w = grid
        if num_blocks < 1:
            raise ValueError(f"{what}.num_blocks: must be >= 1, got {num_blocks}")
        if not 0 < scale <= 1:
            raise ValueError(f"{what}.scale: must be in (0, 1], got {scale}")
        if not 0 < aspect[0] <= aspect[1]:
            raise ValueError(f"{what}.aspect: need 0 < min <= max, got {aspect}")
        if not 0 <= keep_quantile <= 1:
            raise ValueError(f"{what}.keep_quantile: must be in [0, 1], got {keep_quantile}")
        self.num_blocks, self.scale, self.aspect = num_blocks, scale, aspect
        if keep is None:
            keep = _expected_keep(grid, num_blocks, scale, tuple(aspect), keep_quantile)
        if not 0 < keep < self.n:
            raise ValueError(
                f"{what}: keeps {keep} of {self.n} tokens; need 0 < K < N (fewer or smaller "
                f"blocks, or set keep)"
            )
        self.keep = int(keep)

    def blocks(self, rng: np.random.Generator) -> np.ndarray:
        """bool [h, w]: union of the blocks on the spatial plane (they span every frame)."""
        return _block_union(rng, self.h, self.w, self.num_blocks, self.scale, self.aspect)[0]

    def write(self, example: dict, rng: np.random.Generator, suffix: str) -> dict:
        best = None
        for _ in range(self._TRIES):
            union = self.blocks(rng)
            if best is None or union.sum() < best.sum():
                best = union
            if self.t * (union.size - union.sum()) >= self.keep:
                break
        target = np.tile(best.reshape(-1), self.t)
        visible = np.flatnonzero(~target)
        if len(visible) < self.keep:
            # No draw left K tokens outside the blocks: reveal random block tokens instead.
            revealed = rng.choice(np.flatnonzero(target), self.keep - len(visible), replace=False)
            target[revealed] = False
            visible = np.flatnonzero(~target)
        kept = np.sort(rng.choice(visible, self.keep, replace=False))
        mask = np.ones(self.n, bool)
        mask[kept] = False
        example = _write(example, mask, suffix)
        example[f"target_mask{suffix}"] = target
        return example


def _block_union(rng, h, w, num_blocks, scale, aspect, draws: int = 1) -> np.ndarray:
    """bool [draws, h, w]: per draw, one block size (as V-JEPA) and `num_blocks` positions."""
    area = max(1, int(h * w * scale))
    ratio = rng.uniform(aspect[0], aspect[1], (draws, 1))
    block_h = np.clip(np.round(np.sqrt(area * ratio)), 1, h).astype(np.int64)
    block_w = np.clip(np.round(np.sqrt(area / ratio)), 1, w).astype(np.int64)
    tops = np.floor(rng.random((draws, num_blocks)) * (h - block_h + 1)).astype(np.int64)
    lefts = np.floor(rng.random((draws, num_blocks)) * (w - block_w + 1)).astype(np.int64)
    rows, cols = np.arange(h), np.arange(w)
    in_rows = (rows >= tops[..., None]) & (rows < (tops + block_h)[..., None])  # [D, B, h]
    in_cols = (cols >= lefts[..., None]) & (cols < (lefts + block_w)[..., None])  # [D, B, w]
    return np.any(in_rows[..., :, None] & in_cols[..., None, :], axis=1)


@functools.lru_cache(maxsize=64)
def _expected_keep(grid: Grid, num_blocks: int, scale: float, aspect, quantile: float) -> int:
    """The `quantile` of the context size over 4096 draws with a fixed seed (deterministic)."""
    t, h, w = grid
    rng = np.random.default_rng(0)
    union = _block_union(rng, h, w, num_blocks, scale, aspect, draws=4096)
    outside = h * w - union.sum(axis=(1, 2))
    return int(t * np.quantile(outside, quantile, method="lower"))


# ------------------------------------------------------------------------------- internals


def _num_tokens(what: str, grid) -> int:
    if len(grid) != 3 or any(int(g) < 1 for g in grid):
        raise ValueError(f"{what}.grid: need three positive sizes (t, h, w), got {grid}")
    return int(np.prod(grid))


def _hidden_count(what: str, ratio: float, n: int) -> int:
    """round(ratio * n) hidden tokens, refusing ratios that hide all or none."""
    hidden = int(round(ratio * n))
    if not 0 < ratio < 1 or not 1 <= hidden < n:
        raise ValueError(
            f"{what}.ratio: must be in (0, 1), hide at least one of the {n} tokens (a loss "
            f"over no token trains nothing) and leave one visible; got {ratio}"
        )
    return hidden


def _write(example: dict, mask: np.ndarray, suffix: str) -> dict:
    example = dict(example)
    example[f"mask{suffix}"] = mask
    example[f"keep_idx{suffix}"] = np.flatnonzero(~mask).astype(np.int32)
    return example
