"""vrl's V-JEPA masks have the statistics of the reference's mask collator.

The reference is facebookresearch/jepa `src/masks/multiblock3d.py` (`MaskCollator`,
`_MaskGenerator`) with the mask section of `configs/pretrain/vitl16.yaml`: per collator call
(one per-GPU batch of 24 clips) it draws ONE block size from a generator seeded with the call
counter, places `num_blocks` blocks per clip with the global rng, redraws a clip whose context
is empty, and cuts every clip's context and target index lists (sorted, t-major) to the batch
minimum, keeping the first indices. `reference_masks` below ports that to numpy, vectorised
over clips. vrl's context size K is static (the expected batch minimum) and its op sees one
clip at a time, so the comparison is of statistics: mean context size, mean number of scored
target tokens, and the per-position probability of being context / target.
"""

import math

import numpy as np
import pytest

from vrl.data import masks

GRID = (8, 14, 14)  # 16 frames x 224 pixels, 2 x 16 x 16 tubelets
BATCH = 24  # vitl16.yaml data.batch_size (per GPU)
# vitl16.yaml `mask`: (num_blocks, spatial_scale, temporal_scale, aspect_ratio,
# max_temporal_keep); max_keep is null.
MASK_CFGS = (
    (8, (0.15, 0.15), (1.0, 1.0), (0.75, 1.5), 1.0),
    (2, (0.7, 0.7), (1.0, 1.0), (0.75, 1.5), 1.0),
)
REFERENCE_BATCHES = (1000, 5000)  # enough that the reference's own sampling error is < 0.5%
VRL_CLIPS = 2000


# ------------------------------------------------------------------------ the reference


def sample_block_size(generator, duration, height, width, temporal, spatial, aspect):
    """`_MaskGenerator._sample_block_size`: three uniform draws from the seeded generator."""
    rand = generator.random()
    t = max(1, int(duration * (temporal[0] + rand * (temporal[1] - temporal[0]))))
    rand = generator.random()
    spatial_num_keep = int(height * width * (spatial[0] + rand * (spatial[1] - spatial[0])))
    rand = generator.random()
    ratio = aspect[0] + rand * (aspect[1] - aspect[0])
    h = min(int(round(math.sqrt(spatial_num_keep * ratio))), height)
    w = min(int(round(math.sqrt(spatial_num_keep / ratio))), width)
    return t, h, w


def reference_masks(num_batches, cfg, seed=0, map_batches=512, chunk=256):
    """The reference's masks after its truncation to the batch minimum, for `num_batches`
    collator calls of 24 clips: (context sizes [B * 24], target sizes [B * 24], bool context
    masks, bool target masks [about map_batches * 24, N]); only the sizes of every batch (the
    cut is a cumulative sum over N tokens, the slow part: the maps need fewer clips)."""
    npred, spatial, temporal, aspect, max_temporal_keep = cfg
    duration, height, width = GRID
    max_context_duration = max(1, int(duration * max_temporal_keep))
    rng = np.random.default_rng(seed)  # stands in for torch's global rng (block positions)
    sizes_e, sizes_p, contexts, targets = [], [], [], []
    for first in range(0, num_batches, chunk):
        steps = range(first, min(first + chunk, num_batches))
        # `seed = self.step(); g.manual_seed(seed)`: one block size per collator call.
        sizes = np.array(
            [
                sample_block_size(
                    np.random.default_rng(step), duration, height, width, temporal, spatial, aspect
                )
                for step in steps
            ]
        )
        sizes = np.repeat(sizes, BATCH, axis=0)  # [R, 3]: every clip of a batch
        context = np.zeros((len(sizes), duration, height * width), bool)
        todo = np.arange(len(sizes))
        while len(todo):  # `while empty_context`
            t, h, w = (sizes[todo, i, None] for i in range(3))
            shape = (len(todo), npred)
            top = np.floor(rng.random(shape) * (height - h + 1)).astype(int)
            left = np.floor(rng.random(shape) * (width - w + 1)).astype(int)
            start = np.floor(rng.random(shape) * (duration - t + 1)).astype(int)
            mask_e = np.ones((len(todo), duration, height * width), bool)
            for b in range(npred):  # `mask_e *= self._sample_block_mask(p_size)`
                in_t = _inside(duration, start[:, b], t[:, 0])
                in_hw = (
                    _inside(height, top[:, b], h[:, 0])[:, :, None]
                    & _inside(width, left[:, b], w[:, 0])[:, None, :]
                )
                mask_e &= ~(in_t[:, :, None] & in_hw.reshape(len(todo), 1, -1))
                mask_e[:, max_context_duration:] = False
            context[todo] = mask_e
            todo = todo[~mask_e.any(axis=(1, 2))]
        context = context.reshape(-1, BATCH, duration * height * width)
        target = ~context  # `mask_p = argwhere(mask_e == 0)`
        least_e = context.sum(axis=2).min(axis=1)  # min_keep_enc
        least_p = target.sum(axis=2).min(axis=1)  # min_keep_pred
        sizes_e.append(np.repeat(least_e, BATCH))
        sizes_p.append(np.repeat(least_p, BATCH))
        if first < map_batches:
            # `cm[:min_keep]` over the sorted indices: the first batch-minimum ones.
            for kept, least in ((context, least_e), (target, least_p)):
                rank = np.cumsum(kept.view(np.uint8), axis=2, dtype=np.int16)
                kept &= rank <= least[:, None, None]
            contexts.append(context.reshape(-1, context.shape[-1]))
            targets.append(target.reshape(-1, target.shape[-1]))
    return (
        np.concatenate(sizes_e),
        np.concatenate(sizes_p),
        np.concatenate(contexts),
        np.concatenate(targets),
    )


def _inside(length, start, size):
    """bool [R, length]: start <= i < start + size."""
    i = np.arange(length)
    return (i >= start[:, None]) & (i < (start + size)[:, None])


@pytest.fixture(scope="module")
def reference():
    return [
        reference_masks(batches, cfg, seed=i)
        for i, (batches, cfg) in enumerate(zip(REFERENCE_BATCHES, MASK_CFGS))
    ]


def vrl_masks(clips=VRL_CLIPS, seed=0, **kwargs):
    """vrl's context and scored targets [clips, N] per mask type, at the published settings."""
    op = masks.vjepa_masks(
        grid=GRID,
        num_blocks=tuple(cfg[0] for cfg in MASK_CFGS),
        scale=tuple(cfg[1][0] for cfg in MASK_CFGS),
        aspect=MASK_CFGS[0][3],
        **kwargs,
    )
    rng = np.random.default_rng(seed)
    examples = [op({}, rng) for _ in range(clips)]
    return [
        (
            np.stack([~e[f"mask/{i}"] for e in examples]),
            np.stack([e[f"target_mask/{i}"] for e in examples]),
        )
        for i in range(len(MASK_CFGS))
    ]


def statistics(context, target, context_sizes=None, target_sizes=None):
    return {
        "context size": np.mean(context.sum(axis=1) if context_sizes is None else context_sizes),
        "target size": np.mean(target.sum(axis=1) if target_sizes is None else target_sizes),
        "context map": context.mean(axis=0),
        "target map": target.mean(axis=0),
    }


def differences(ours, reference):
    """Relative differences of the mean sizes; mean absolute differences of the maps."""
    context_sizes, target_sizes, context, target = reference
    a, b = statistics(*ours), statistics(context, target, context_sizes, target_sizes)
    return {
        key: (
            abs(a[key] - b[key]) / b[key]
            if key.endswith("size")
            else float(np.abs(a[key] - b[key]).mean())
        )
        for key in a
    }


# ------------------------------------------------------------------------------ tests


def test_reference_port_keeps_the_batch_minimum(reference):
    """The port itself: every clip of a batch has the batch-minimum sizes."""
    for context_sizes, target_sizes, context, target in reference:
        clips = len(context)
        np.testing.assert_array_equal(context.sum(axis=1), context_sizes[:clips])
        np.testing.assert_array_equal(target.sum(axis=1), target_sizes[:clips])
        assert not np.any(context & target)


def test_statistics_match_the_reference(reference):
    ours = vrl_masks()
    for i, (mine, theirs) in enumerate(zip(ours, reference)):
        for key, value in differences(mine, theirs).items():
            assert value < 0.02, (i, key, value)
        # Tail truncation: context thins out from the first frame to the last, as there.
        frames = mine[0].reshape(len(mine[0]), GRID[0], -1).mean(axis=(0, 2))
        assert np.all(np.diff(frames) <= 1e-3) and frames[-1] < 0.25 * frames[0], frames


def test_random_drop_would_fail_the_check(reference):
    """The check is sharp: dropping surplus context at random (vrl's old rule) misses the
    reference's per-position context probability by far more than the 2% tolerance."""
    ours = vrl_masks(clips=400, drop="random")
    for mine, theirs in zip(ours, reference):
        assert differences(mine, theirs)["context map"] > 0.04
