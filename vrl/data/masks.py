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
from typing import Any, Literal

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
    """VideoMAE V2 decoder masking: a 2 x 2 cell pattern that runs through the cell over time.

    As VideoMAEv2's `RunningCellMaskingGenerator`: a ring of 4 entries, round(4 * ratio) of
    them hidden, read from a pointer into the cell's positions in row-major order; the
    pointer moves one step per temporal slot, from a random start. Every cell of a slot shows
    the same pattern, and over any 4 consecutive slots each position is hidden
    round(4 * ratio) times, so the kept tokens cover the whole clip.
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
    position = np.arange(4)  # (0, 0), (0, 1), (1, 0), (1, 1)

    def op(example: dict, rng: np.random.Generator) -> dict:
        start = rng.integers(4)
        cells = (position + start + np.arange(t)[:, None]) % 4 < per_cell  # [t, 4]
        mask = np.tile(cells.reshape(t, 2, 2), (1, h // 2, w // 2))
        return _write(example, mask.reshape(-1), suffix)

    return op


@mask_op("motion_mask")
def motion_mask(
    grid: Grid = _DEFAULT_GRID,
    ratio: float = 0.9,
    temperature: float = 0.5,
    per_slot: bool = False,
    suffix: str = "",
) -> Op:
    """Motion-guided masking: hides the tokens that move most, with some randomness.

    A token's motion is the mean absolute frame difference inside its tubelet (averaged over
    views when `video` has a view axis, since the views share the mask). Tokens are hidden by
    sampling without replacement with probabilities softmax(z / temperature) over the motion
    z-scores (Gumbel top-k): a small temperature hides strictly the most moving tokens, a
    large one approaches random masking. With `per_slot` every temporal slot hides
    round(ratio * h * w) tokens (as tube masking and MGMAE's per-frame top-k do), else the
    clip hides round(ratio * N). Needs the decoded `video` [T, H, W, 3] or [V, T, H, W, 3]
    with T, H, W multiples of the grid.
    """
    n = _num_tokens("motion_mask", grid)
    t = grid[0]
    hidden = _hidden_count("motion_mask", ratio, n // t if per_slot else n)
    if not temperature > 0:
        raise ValueError(f"motion_mask.temperature: must be > 0, got {temperature}")

    def op(example: dict, rng: np.random.Generator) -> dict:
        energy = tubelet_motion(example, grid).reshape(-1)
        z = (energy - energy.mean()) / (energy.std() + 1e-6)
        scores = (z / temperature + rng.gumbel(size=n)).reshape(t if per_slot else 1, -1)
        order = np.argsort(-scores, axis=1)[:, :hidden]
        mask = np.zeros(scores.shape, bool)
        np.put_along_axis(mask, order, True, axis=1)
        return _write(example, mask.reshape(-1), suffix)

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

Drop = Literal["tail", "random"]

# The V-JEPA reference (facebookresearch/jepa src/masks/multiblock3d.py, config
# configs/pretrain/vitl16.yaml) draws one block size per collated batch of 24 clips per GPU,
# then cuts every clip's context and target index lists to the batch minimum, keeping the
# first indices in t-major order. vrl's K is static: the expected batch minimum (see
# `_batch_minima`), and the cut keeps the first K the same way (drop="tail").
REFERENCE_BATCH = 24


@mask_op("multiblock_mask")
def multiblock_mask(
    grid: Grid = _DEFAULT_GRID,
    num_blocks: int = 8,
    scale: float = 0.15,
    aspect: tuple[float, float] = (0.75, 1.5),
    keep_batch: int | None = REFERENCE_BATCH,
    keep_quantile: float = 0.5,
    keep: int | None = None,
    drop: Drop = "tail",
    truncate_targets: bool = True,
    suffix: str = "",
) -> Op:
    """3-D multi-block mask: the union of `num_blocks` blocks spanning all frames.

    Each block covers about `scale` of the h x w plane with aspect (h/w) ~ U(aspect); one
    size per example (the V-JEPA reference draws one per batch), positions uniform. The
    context keeps exactly K tokens: blocks are redrawn until at least K tokens are outside
    them, then the surplus is dropped: `drop="tail"` keeps the first K visible tokens in
    t-major order, as the reference truncates each clip's context to the batch minimum (so
    late frames lose context first); "random" drops surplus tokens at random. Dropped tokens
    are hidden (`mask` = ~keep) but not scored.

    K is `keep` if given; else, with `keep_batch` (default 24, the reference's per-GPU batch),
    the expected minimum of the context size over a batch of `keep_batch` clips that share
    one block size (the reference's mean context size); with keep_batch=None, the
    `keep_quantile` quantile of the context size (0.5: about the expected ratio).
    `target_mask` (what the loss scores) is the union of the blocks; with `truncate_targets`
    only its first K_pred tokens in t-major order, K_pred the expected batch minimum of the
    union size (or its `keep_quantile` quantile), as the reference's predictor predicts only
    the first batch-minimum target indices. Every estimate is made once with a fixed seed.
    """
    sampler = _MultiBlock(
        "multiblock_mask",
        grid,
        num_blocks,
        scale,
        aspect,
        keep_batch=keep_batch,
        keep_quantile=keep_quantile,
        keep=keep,
        drop=drop,
        truncate_targets=truncate_targets,
    )

    def op(example: dict, rng: np.random.Generator) -> dict:
        return sampler.write(example, rng, suffix)

    return op


@mask_op("vjepa_masks")
def vjepa_masks(
    grid: Grid = _DEFAULT_GRID,
    num_blocks: tuple[int, ...] = (8, 2),
    scale: tuple[float, ...] = (0.15, 0.7),
    aspect: tuple[float, float] = (0.75, 1.5),
    keep_batch: int | None = REFERENCE_BATCH,
    keep_quantile: float = 0.1,
    drop: Drop = "tail",
    truncate_targets: bool = True,
) -> Op:
    """V-JEPA's two mask types per example: short-range (8 x 0.15) and long-range (2 x 0.7).

    Writes `mask/i`, `keep_idx/i` and `target_mask/i` for mask type i, each as multiblock_mask
    with the same `keep_batch`, `keep_quantile`, `drop` and `truncate_targets` (defaults: the
    reference's context and target sizes and truncation).
    """
    if len(num_blocks) != len(scale) or not num_blocks:
        raise ValueError(
            f"vjepa_masks: num_blocks {num_blocks} and scale {scale} need the same, nonzero length"
        )
    samplers = [
        _MultiBlock(
            f"vjepa_masks[{i}]",
            grid,
            blocks,
            s,
            aspect,
            keep_batch=keep_batch,
            keep_quantile=keep_quantile,
            keep=None,
            drop=drop,
            truncate_targets=truncate_targets,
        )
        for i, (blocks, s) in enumerate(zip(num_blocks, scale))
    ]

    def op(example: dict, rng: np.random.Generator) -> dict:
        for i, sampler in enumerate(samplers):
            example = sampler.write(example, rng, f"/{i}")
        return example

    return op


class _MultiBlock:
    """Draws one multi-block mask type with K context tokens and at most K_pred targets."""

    _TRIES = 20

    def __init__(
        self,
        what,
        grid,
        num_blocks,
        scale,
        aspect,
        *,
        keep_batch,
        keep_quantile,
        keep,
        drop,
        truncate_targets,
    ):
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
        if keep_batch is not None and keep_batch < 1:
            raise ValueError(f"{what}.keep_batch: must be >= 1 or None, got {keep_batch}")
        if drop not in ("tail", "random"):
            raise ValueError(f"{what}.drop: must be 'tail' or 'random', got {drop!r}")
        self.num_blocks, self.scale, self.aspect = num_blocks, scale, tuple(aspect)
        self.drop = drop
        if keep_batch is not None:
            context, targets = _batch_minima(grid, num_blocks, scale, self.aspect, keep_batch)
        else:
            context, targets = _quantiles(grid, num_blocks, scale, self.aspect, keep_quantile)
        if keep is None:
            keep = context
        if not 0 < keep < self.n:
            raise ValueError(
                f"{what}: keeps {keep} of {self.n} tokens; need 0 < K < N (fewer or smaller "
                f"blocks, or set keep)"
            )
        self.keep = int(keep)
        self.keep_targets = max(1, int(targets)) if truncate_targets else None

    def blocks(self, rng: np.random.Generator) -> np.ndarray:
        """bool [h, w]: union of the blocks on the spatial plane (they span every frame)."""
        return _block_union(rng, self.h, self.w, self.num_blocks, self.scale, self.aspect)[0]

    def write(self, example: dict, rng: np.random.Generator, suffix: str) -> dict:
        best = None
        wanted_targets = self.keep_targets or 0
        for _ in range(self._TRIES):
            union = self.blocks(rng)
            if best is None or union.sum() < best.sum():
                best = union
            hidden = self.t * union.sum()
            if self.n - hidden >= self.keep and hidden >= wanted_targets:
                break
        target = np.tile(best.reshape(-1), self.t)
        visible = np.flatnonzero(~target)
        if len(visible) < self.keep:
            # No draw left K tokens outside the blocks: reveal random block tokens instead.
            revealed = rng.choice(np.flatnonzero(target), self.keep - len(visible), replace=False)
            target[revealed] = False
            visible = np.flatnonzero(~target)
        if self.drop == "tail":
            kept = visible[: self.keep]  # the reference's `mask_e[:min_keep_enc]`
        else:
            kept = np.sort(rng.choice(visible, self.keep, replace=False))
        mask = np.ones(self.n, bool)
        mask[kept] = False
        example = _write(example, mask, suffix)
        if self.keep_targets is not None:
            # `mask_p[:min_keep_pred]`: the first K_pred block tokens, a static count. Blocks
            # smaller than K_pred in every draw (rare) are topped up with dropped context.
            order = np.concatenate([np.flatnonzero(target), np.flatnonzero(mask & ~target)])
            target_idx = np.sort(order[: self.keep_targets]).astype(np.int32)
            target = np.zeros(self.n, bool)
            target[target_idx] = True
            example[f"target_idx{suffix}"] = target_idx
        example[f"target_mask{suffix}"] = target
        return example


def _block_union(rng, h, w, num_blocks, scale, aspect, draws: int = 1) -> np.ndarray:
    """bool [draws, h, w]: per draw one block size, aspect h/w ~ U(aspect), and `num_blocks`
    uniform positions (the size as the reference's `_sample_block_size`)."""
    ratio = rng.uniform(aspect[0], aspect[1], (draws, 1))
    block_h, block_w = _block_size(h, w, max(1, int(h * w * scale)), ratio)
    return _place_blocks(rng, h, w, num_blocks, block_h, block_w, draws)


def _place_blocks(rng, h, w, num_blocks, block_h, block_w, draws) -> np.ndarray:
    """bool [draws, h, w]: union of `num_blocks` uniformly placed blocks of the given sizes."""
    tops = np.floor(rng.random((draws, num_blocks)) * (h - block_h + 1)).astype(np.int64)
    lefts = np.floor(rng.random((draws, num_blocks)) * (w - block_w + 1)).astype(np.int64)
    rows, cols = np.arange(h), np.arange(w)
    in_rows = (rows >= tops[..., None]) & (rows < (tops + block_h)[..., None])  # [D, B, h]
    in_cols = (cols >= lefts[..., None]) & (cols < (lefts + block_w)[..., None])  # [D, B, w]
    return np.any(in_rows[..., :, None] & in_cols[..., None, :], axis=1)


def _block_size(h, w, area, ratio):
    """Block height and width: round(sqrt(area * ratio)), round(sqrt(area / ratio)), clipped."""
    block_h = np.clip(np.round(np.sqrt(area * ratio)), 1, h).astype(np.int64)
    block_w = np.clip(np.round(np.sqrt(area / ratio)), 1, w).astype(np.int64)
    return block_h, block_w


_ESTIMATE_DRAWS = 4096  # quantiles
_MINIMA_DRAWS = 16384  # batch minima: the tail matters


@functools.lru_cache(maxsize=64)
def _quantiles(grid: Grid, num_blocks: int, scale: float, aspect, quantile: float):
    """(context, target) sizes: the `quantile` of each over 4096 draws (fixed seed)."""
    t, h, w = grid
    rng = np.random.default_rng(0)
    union = _block_union(rng, h, w, num_blocks, scale, aspect, draws=_ESTIMATE_DRAWS)
    inside = union.sum(axis=(1, 2))
    context = int(t * np.quantile(h * w - inside, quantile, method="lower"))
    return context, int(t * np.quantile(inside, quantile, method="lower"))


@functools.lru_cache(maxsize=64)
def _batch_minima(grid: Grid, num_blocks: int, scale: float, aspect, batch: int):
    """(context, target) sizes: the reference's expected batch minima, rounded.

    The reference draws one block size per batch (aspect ~ U(aspect)), `num_blocks`
    positions per clip, redraws clips with no context left, and keeps the batch minimum of
    each size. Per block size (weighted by the share of the aspect range that gives it), the
    distribution X of one clip's size is exact where the placements are few enough to list
    (e.g. 2 blocks x 0.7 on 14 x 14), else that of 16384 draws (fixed seed), and
    E[min of `batch` clips] = sum over k >= 1 of P(X >= k) ** batch.
    """
    t, h, w = grid
    area = max(1, int(h * w * scale))
    ratios = aspect[0] + (np.arange(4096) + 0.5) / 4096 * (aspect[1] - aspect[0])
    sizes = np.stack(_block_size(h, w, area, ratios), axis=1)
    pairs, counts = np.unique(sizes, axis=0, return_counts=True)
    rng = np.random.default_rng(0)
    context = target = 0.0
    for (block_h, block_w), count in zip(pairs, counts):
        union = _all_placements(h, w, num_blocks, block_h, block_w)
        if union is None:
            union = _place_blocks(rng, h, w, num_blocks, block_h, block_w, _MINIMA_DRAWS)
        outside = h * w - union.sum(axis=(1, 2))
        outside = outside[outside > 0]  # the reference redraws clips with no context
        weight = count / len(ratios)
        context += weight * t * _expected_min(outside, batch, h * w)
        target += weight * t * _expected_min(h * w - outside, batch, h * w)
    return int(round(context)), int(round(target))


def _all_placements(h, w, num_blocks, block_h, block_w, limit: int = 1 << 16):
    """bool [P ** num_blocks, h, w]: the union for every placement of the blocks (each equally
    likely), or None where there are more than `limit` placements."""
    rows, cols = np.arange(h - block_h + 1), np.arange(w - block_w + 1)
    positions = len(rows) * len(cols)
    if positions**num_blocks > limit:
        return None
    single = (
        (np.arange(h)[None, :, None] - rows.repeat(len(cols))[:, None, None]) % h < block_h
    ) & ((np.arange(w)[None, None, :] - np.tile(cols, len(rows))[:, None, None]) % w < block_w)
    union = np.zeros((1, h, w), bool)
    for _ in range(num_blocks):
        union = (union[:, None] | single[None]).reshape(-1, h, w)
    return union


def _expected_min(values: np.ndarray, batch: int, top: int) -> float:
    """E[min of `batch` iid draws] from the empirical distribution of ints in [0, top]."""
    if len(values) == 0:
        return 0.0
    survival = np.cumsum(np.bincount(values, minlength=top + 1)[::-1])[::-1] / len(values)
    return float(np.sum(survival[1:] ** batch))


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
