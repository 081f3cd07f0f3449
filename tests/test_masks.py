"""Token masks: shapes, exact ratios, fixed K, and the structure each mask type promises."""

import numpy as np
import pytest

from vrl import config, registry
from vrl.data import masks

GRID = (4, 8, 8)
N = 4 * 8 * 8


def moving_square_video(frames=8, size=64, seed=0):
    """Static texture everywhere; a bright square moves inside the top-left 32 x 32 quadrant."""
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    video = np.repeat(texture[None], frames, axis=0)
    for f in range(frames):
        top, left = (3 * f) % 20, (5 * f) % 20
        video[f, top : top + 12, left : left + 12] = 255
    return video


def make(name, **kwargs):
    return config.instantiate(registry.get("transform", name), kwargs, f"pp[{name}]", grid=GRID)


MAKERS = {
    "random_mask": dict(ratio=0.75),
    "tube_mask": dict(ratio=0.75),
    "running_cell_mask": dict(ratio=0.5, suffix=""),
    "motion_mask": dict(ratio=0.75),
    "noise_mask": dict(ratio=0.75),
    "multiblock_mask": dict(num_blocks=4, scale=0.15),
}


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_shapes_dtypes_and_fixed_keep_count(name):
    assert registry.get("transform", name).stage == "mask"
    op = make(name, **MAKERS[name])
    counts = set()
    for seed in range(12):
        example = op({"video": moving_square_video(seed=seed)}, np.random.default_rng(seed))
        mask, keep = example["mask"], example["keep_idx"]
        assert mask.shape == (N,) and mask.dtype == bool
        assert keep.dtype == np.int32 and keep.ndim == 1
        np.testing.assert_array_equal(keep, np.flatnonzero(~mask))  # sorted, exactly ~mask
        counts.add(len(keep))
    assert len(counts) == 1, counts


@pytest.mark.parametrize("name", ["random_mask", "tube_mask", "motion_mask", "noise_mask"])
@pytest.mark.parametrize("ratio", [0.5, 0.9])
def test_achieved_ratio_is_exact(name, ratio):
    example = make(name, ratio=ratio)({"video": moving_square_video()}, np.random.default_rng(0))
    per = 64 if name == "tube_mask" else N  # tube ratios are taken on the spatial plane
    assert example["mask"].sum() == round(ratio * per) * (N // per)


def test_random_masks_differ_between_seeds():
    op = make("random_mask", ratio=0.5)
    a, b = (op({}, np.random.default_rng(s))["mask"] for s in (0, 1))
    assert not np.array_equal(a, b)


def test_tube_mask_repeats_one_spatial_mask():
    mask = make("tube_mask", ratio=0.75)({}, np.random.default_rng(3))["mask"]
    slots = mask.reshape(4, 64)
    np.testing.assert_array_equal(slots, np.broadcast_to(slots[:1], slots.shape))


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_running_cell_pattern(ratio):
    grid = (8, 6, 4)
    example = masks.running_cell_mask(grid=grid, ratio=ratio)({}, np.random.default_rng(1))
    assert set(example) == {"mask/decoder", "keep_idx/decoder"}
    cells = example["mask/decoder"].reshape(8, 3, 2, 2, 2).transpose(0, 1, 3, 2, 4)
    cells = cells.reshape(8, 6, 4)  # [slot, cell, position in cell]
    per_cell = round(4 * ratio)
    np.testing.assert_array_equal(cells.sum(axis=-1), per_cell)
    # Every cell shows the same pattern, and it changes every slot ("running").
    np.testing.assert_array_equal(cells, np.broadcast_to(cells[:, :1], cells.shape))
    assert all(not np.array_equal(cells[s, 0], cells[s + 1, 0]) for s in range(7))
    # Over any 4 consecutive slots each position is hidden exactly per_cell times.
    for s in range(5):
        np.testing.assert_array_equal(cells[s : s + 4, 0].sum(axis=0), per_cell)


def test_running_cell_rejects_bad_configs():
    with pytest.raises(ValueError, match="allowed: 0.25, 0.5, 0.75"):
        masks.running_cell_mask(grid=(2, 4, 4), ratio=0.3)
    with pytest.raises(ValueError, match="even"):
        masks.running_cell_mask(grid=(2, 7, 8))


def test_motion_mask_hides_what_moves():
    video = moving_square_video()
    in_quadrant = np.zeros((4, 8, 8), bool)
    in_quadrant[:, :4, :4] = True  # the square never leaves the top-left 32 x 32 pixels
    in_quadrant = in_quadrant.reshape(-1)
    sharp = make("motion_mask", ratio=0.1, temperature=0.05)
    fractions = []
    for seed in range(5):
        mask = sharp({"video": video}, np.random.default_rng(seed))["mask"]
        fractions.append(in_quadrant[mask].mean())
    assert min(fractions) > 0.95
    # A hot temperature is close to random masking: about a quarter land in the quadrant.
    flat = make("motion_mask", ratio=0.2, temperature=1000.0)
    hot = [
        in_quadrant[flat({"video": video}, np.random.default_rng(s))["mask"]].mean()
        for s in range(20)
    ]
    assert 0.15 < np.mean(hot) < 0.35
    # A view axis is accepted and the mask is shared by the views.
    stacked = {"video": np.stack([video, video])}
    two_views = make("motion_mask", ratio=0.2)(stacked, np.random.default_rng(0))
    assert two_views["mask"].shape == (N,)
    with pytest.raises(ValueError, match="token grid"):
        make("motion_mask")({"video": video[:, :60]}, np.random.default_rng(0))


def neighbour_agreement(mask, grid):
    """Fraction of hidden tokens whose right-hand neighbour is hidden too."""
    m = mask.reshape(grid)
    hidden = m[:, :, :-1]
    return (hidden & m[:, :, 1:]).sum() / hidden.sum()


def test_noise_mask_is_spatially_structured():
    grid = (8, 14, 14)
    smooth = masks.noise_mask(grid=grid, ratio=0.5)
    white = masks.noise_mask(grid=grid, ratio=0.5, exponent=0.0)
    rng = np.random.default_rng(4)
    structured = np.mean([neighbour_agreement(smooth({}, rng)["mask"], grid) for _ in range(20)])
    unstructured = np.mean([neighbour_agreement(white({}, rng)["mask"], grid) for _ in range(20)])
    assert structured > 0.65
    assert abs(unstructured - 0.5) < 0.05


def test_multiblock_spans_all_frames_and_keeps_exactly_k():
    grid = (8, 14, 14)
    op = masks.multiblock_mask(grid=grid, num_blocks=8, scale=0.15, truncate_targets=False)
    keeps, ratios = set(), []
    for seed in range(30):
        example = op({}, np.random.default_rng(seed))
        mask, target = example["mask"], example["target_mask"]
        keeps.add(len(example["keep_idx"]))
        assert target.dtype == bool and target.shape == mask.shape
        assert np.all(mask[target])  # every scored token is hidden from the context
        slots = target.reshape(8, 14 * 14)
        np.testing.assert_array_equal(slots, np.broadcast_to(slots[:1], slots.shape))
        ratios.append(target.mean())
    assert len(keeps) == 1
    assert 0.3 < np.mean(ratios) < 0.9


@pytest.mark.parametrize("drop", ["tail", "random"])
def test_multiblock_drop_and_target_truncation(drop):
    """drop="tail" keeps the first K visible tokens in t-major order (the reference's
    `mask_e[:min_keep_enc]`); targets are the first K_pred block tokens
    (`mask_p[:min_keep_pred]`)."""
    grid = (8, 14, 14)
    op = masks.multiblock_mask(grid=grid, num_blocks=8, scale=0.15, drop=drop)
    full = masks.multiblock_mask(grid=grid, num_blocks=8, scale=0.15, truncate_targets=False)
    k, k_pred = masks._batch_minima(grid, 8, 0.15, (0.75, 1.5), 24)
    tails = []
    for seed in range(20):
        example = op({}, np.random.default_rng(seed))
        union = full({}, np.random.default_rng(seed))["target_mask"]  # the same draws
        keep, target = example["keep_idx"], example["target_mask"]
        assert len(keep) == k and target.sum() <= k_pred
        assert not np.any(target[keep])
        np.testing.assert_array_equal(target, union & (np.cumsum(union) <= k_pred))
        visible = np.flatnonzero(~union)
        tails.append(np.array_equal(keep, visible[:k]))
    assert all(tails) if drop == "tail" else not any(tails)


def test_keep_batch_is_the_expected_batch_minimum():
    """K and K_pred are the reference's expected batch minima (24 clips, one block size per
    batch); keep_batch=None falls back to the keep_quantile quantile of one clip's sizes."""
    grid = (8, 14, 14)
    assert masks._batch_minima(grid, 8, 0.15, (0.75, 1.5), 24) == (364, 753)
    assert masks._batch_minima(grid, 2, 0.7, (0.75, 1.5), 24) == (100, 1103)
    # One clip per batch: the expected sizes; a larger batch has a smaller minimum.
    mean_context, _ = masks._batch_minima(grid, 8, 0.15, (0.75, 1.5), 1)
    assert mean_context > masks._batch_minima(grid, 8, 0.15, (0.75, 1.5), 96)[0] > 0
    rng = np.random.default_rng(0)
    outside = [
        (
            ~masks._MultiBlock(
                "m",
                grid,
                8,
                0.15,
                (0.75, 1.5),
                keep_batch=None,
                keep_quantile=0.5,
                keep=None,
                drop="tail",
                truncate_targets=False,
            ).blocks(rng)
        ).sum()
        * 8
        for _ in range(300)
    ]
    assert abs(mean_context - np.mean(outside)) < 0.03 * mean_context
    quantile = masks.multiblock_mask(grid=grid, keep_batch=None, keep_quantile=0.1)
    assert (
        len(quantile({}, rng)["keep_idx"]) == masks._quantiles(grid, 8, 0.15, (0.75, 1.5), 0.1)[0]
    )


def test_single_block_is_a_rectangle_of_the_requested_size():
    grid, scale = (2, 14, 14), 0.15
    op = masks.multiblock_mask(grid=grid, num_blocks=1, scale=scale, keep=200)
    for seed in range(30):
        block = op({}, np.random.default_rng(seed))["target_mask"].reshape(grid)[0]
        rows, cols = np.flatnonzero(block.any(axis=1)), np.flatnonzero(block.any(axis=0))
        height, width = np.ptp(rows) + 1, np.ptp(cols) + 1
        assert block.sum() == height * width  # a filled rectangle
        assert abs(height * width - int(14 * 14 * scale)) <= max(height, width)
        assert 0.75 / 1.4 <= height / width <= 1.5 * 1.4


def test_multiblock_fallback_and_errors():
    # K larger than any draw leaves: blocks are partly revealed, K still exact.
    op = masks.multiblock_mask(grid=(2, 6, 6), num_blocks=4, scale=0.5, keep=70)
    example = op({}, np.random.default_rng(0))
    assert len(example["keep_idx"]) == 70
    assert np.all(example["mask"][example["target_mask"]])
    with pytest.raises(ValueError, match="0 < K < N"):
        masks.multiblock_mask(grid=(2, 6, 6), keep=72)
    with pytest.raises(ValueError, match="scale"):
        masks.multiblock_mask(scale=1.5)
    with pytest.raises(ValueError, match="drop"):
        masks.multiblock_mask(drop="head")
    with pytest.raises(ValueError, match="keep_batch"):
        masks.multiblock_mask(keep_batch=0)


def test_vjepa_masks_two_types():
    grid = (8, 14, 14)
    op = masks.vjepa_masks(grid=grid)
    rng = np.random.default_rng(5)
    examples = [op({}, rng) for _ in range(20)]
    assert set(examples[0]) == {
        f"{k}/{i}" for k in ("mask", "keep_idx", "target_mask", "target_idx") for i in (0, 1)
    }
    for i in (0, 1):
        assert len({len(e[f"keep_idx/{i}"]) for e in examples}) == 1
        # A static number of scored tokens, all hidden, exactly those of target_mask.
        assert len({len(e[f"target_idx/{i}"]) for e in examples}) == 1
        for e in examples:
            assert e[f"mask/{i}"][e[f"target_idx/{i}"]].all()
            np.testing.assert_array_equal(
                np.flatnonzero(e[f"target_mask/{i}"]), e[f"target_idx/{i}"]
            )
    short = np.mean([e["target_mask/0"].mean() for e in examples])
    long = np.mean([e["target_mask/1"].mean() for e in examples])
    assert long > short
    with pytest.raises(ValueError, match="same, nonzero length"):
        masks.vjepa_masks(num_blocks=(8,), scale=(0.15, 0.7))


def test_config_checks_mask_arguments():
    factory = registry.get("transform", "tube_mask")
    with pytest.raises(config.ConfigError, match="unknown key; allowed: ratio, suffix"):
        config.instantiate(factory, {"ratio": 0.9, "grid": (1, 2, 3)}, "pp[tube_mask]", grid=GRID)
    with pytest.raises(ValueError, match="ratio"):
        masks.random_mask(grid=GRID, ratio=1.0)
    with pytest.raises(ValueError, match="grid"):
        masks.random_mask(grid=(0, 8, 8))
