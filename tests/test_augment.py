"""RandAugment and random erasing (`vrl.data.augment`) against timm's PIL ops and VideoMAE's
video rules: one draw of ops per clip applied to every frame, one erased box per clip."""

import math

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from vrl import registry
from vrl.data import augment

FILL = (128, 128, 128)
HPARAMS = {"translate_pct": 0.45, "fill": FILL, "resample": Image.Resampling.BICUBIC}


def image(seed=0, height=48, width=64) -> np.ndarray:
    """A frame with gradients, colour and noise (every histogram bin region populated)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x * 3.0 + 20, y * 4.0 + 10, (x + y) * 1.5 + 30], -1)
    return np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)


def timm_op(name: str, arg, frame: np.ndarray) -> np.ndarray:
    """timm's `auto_augment.py` op `name` on one PIL frame, as VideoMAE's hparams call it."""
    im = Image.fromarray(frame)
    kw = {"resample": Image.Resampling.BICUBIC, "fillcolor": FILL}
    base = name.removesuffix("Increasing")
    ops = {
        "AutoContrast": lambda: ImageOps.autocontrast(im),
        "Equalize": lambda: ImageOps.equalize(im),
        "Invert": lambda: ImageOps.invert(im),
        "Rotate": lambda: im.rotate(arg, **kw),
        "Posterize": lambda: im if arg >= 8 else ImageOps.posterize(im, arg),
        "Solarize": lambda: ImageOps.solarize(im, arg),
        "SolarizeAdd": lambda: im.point([min(255, i + arg) if i < 128 else i for i in range(256)] * 3),  # noqa: E501
        "Color": lambda: ImageEnhance.Color(im).enhance(arg),
        "Contrast": lambda: ImageEnhance.Contrast(im).enhance(arg),
        "Brightness": lambda: ImageEnhance.Brightness(im).enhance(arg),
        "Sharpness": lambda: ImageEnhance.Sharpness(im).enhance(arg),
        "ShearX": lambda: im.transform(im.size, Image.AFFINE, (1, arg, 0, 0, 1, 0), **kw),
        "ShearY": lambda: im.transform(im.size, Image.AFFINE, (1, 0, 0, arg, 1, 0), **kw),
        "TranslateXRel": lambda: im.transform(
            im.size, Image.AFFINE, (1, 0, arg * im.size[0], 0, 1, 0), **kw
        ),
        "TranslateYRel": lambda: im.transform(
            im.size, Image.AFFINE, (1, 0, 0, 0, 1, arg * im.size[1]), **kw
        ),
    }  # fmt: skip
    return np.asarray(ops[base]())


def test_the_op_lists_are_timms():
    assert len(augment.RAND_INCREASING_TRANSFORMS) == len(augment.RAND_TRANSFORMS) == 15
    assert augment.RAND_INCREASING_TRANSFORMS[4:11] == (
        "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd", "ColorIncreasing",
        "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing",
    )  # fmt: skip


def test_magnitude_to_argument_is_timms():
    arg = augment.level_to_arg
    assert arg("Rotate", 7.0, False) == pytest.approx(21.0)
    assert arg("Rotate", 7.0, True) == pytest.approx(-21.0)
    assert arg("ShearX", 5.0, True) == pytest.approx(-0.15)
    assert arg("TranslateXRel", 10.0, False) == pytest.approx(0.45)
    assert arg("PosterizeIncreasing", 7.0, False) == 4 - int(0.7 * 4) == 2
    assert arg("SolarizeIncreasing", 7.0, False) == 256 - int(0.7 * 256) == 77
    assert arg("SolarizeAdd", 7.0, False) == int(0.7 * 110) == 77
    assert arg("ContrastIncreasing", 7.0, False) == pytest.approx(1.63)
    assert arg("ContrastIncreasing", 7.0, True) == pytest.approx(0.37)
    assert arg("Contrast", 7.0, True) == pytest.approx(0.7 * 1.8 + 0.1)  # never negated
    assert arg("AutoContrast", 7.0, False) is None


@pytest.mark.parametrize("name", augment.RAND_INCREASING_TRANSFORMS + augment.RAND_TRANSFORMS)
def test_each_op_equals_timms_pil_op(name):
    frames = np.stack([image(0), image(1) // 2 + 60])  # two different frames
    for level in (0.0, 3.3, 7.0, 9.9):
        for negate in (False, True):
            arg = augment.level_to_arg(name, level, negate)
            if "Posterize" in name and arg == 0:
                continue  # Pillow >= 10 refuses 0 bits (vrl: all zero, as older Pillow)
            out = augment.apply_rand_augment(frames, [(name, level, negate)], HPARAMS)
            for t in range(len(frames)):
                expected = timm_op(name, arg, frames[t])
                diff = np.abs(out[t].astype(int) - expected.astype(int)).max()
                assert diff <= 1, (name, level, negate, t, diff)


def test_sampling_statistics_follow_rand_m7_n4_mstd05_inc1():
    rng = np.random.default_rng(0)
    names = augment.RAND_INCREASING_TRANSFORMS
    draws = [augment.sample_rand_augment(rng, names, 4, 7.0, 0.5) for _ in range(4000)]
    applied = [op for ops in draws for op in ops]
    assert abs(len(applied) / (4 * 4000) - 0.5) < 0.02  # each of the 4 ops with p = 0.5
    counts = np.array([sum(op[0] == n for op in applied) for n in names])
    expected = len(applied) / len(names)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 36.1  # 14 degrees of freedom, p = 0.001: uniform choice with replacement
    levels = np.array([op[1] for op in applied])
    assert abs(levels.mean() - 7.0) < 0.03 and abs(levels.std() - 0.5) < 0.03
    assert levels.min() >= 0 and levels.max() <= 10
    assert abs(np.mean([op[2] for op in applied]) - 0.5) < 0.02
    # Ops are drawn with replacement: 1 - 15*14*13*12 / 15**4 = 35% of clips repeat one.
    every = [augment.sample_rand_augment(rng, names, 4, 7.0, 0.5, 1.0) for _ in range(2000)]
    repeats = np.mean([len({n for n, _, _ in ops}) < 4 for ops in every])
    assert abs(repeats - 0.353) < 0.04
    # magnitude_std inf: uniform in [0, magnitude] (timm's newer option).
    uniform = [
        op[1]
        for _ in range(2000)
        for op in augment.sample_rand_augment(rng, names, 1, 7.0, math.inf, 1.0)
    ]
    assert abs(np.mean(uniform) - 3.5) < 0.15 and max(uniform) <= 7.0


def test_one_draw_per_view_applied_to_every_frame():
    op = registry.get("transform", "rand_augment")()
    clip = np.stack([image(t) for t in range(4)])
    video = np.stack([clip, clip])  # two identical views
    out = op({"video": video}, np.random.default_rng(3))["video"]
    # Replaying the rng: the first view got exactly the sampled ops on each frame.
    rng = np.random.default_rng(3)
    ops = augment.sample_rand_augment(rng, augment.RAND_INCREASING_TRANSFORMS, 4, 7.0, 0.5)
    np.testing.assert_array_equal(out[0], augment.apply_rand_augment(clip, ops))
    # A clip of one repeated frame stays a clip of one repeated frame.
    still = np.repeat(image(9)[None], 3, axis=0)[None]
    for seed in range(10):
        frames = op({"video": still}, np.random.default_rng(seed))["video"][0]
        assert all(np.array_equal(frames[0], f) for f in frames)
    # Views draw independently: some seed gives the two identical views different ops.
    assert any(
        not np.array_equal(*op({"video": video}, np.random.default_rng(s))["video"])
        for s in range(5)
    )


def erased_mask(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    return np.any(before != after, axis=-1)


def test_erasing_box_statistics_follow_timm():
    op = registry.get("transform", "random_erasing")(p=1.0)
    height, width = 80, 80
    video = np.zeros((1, 1, height, width, 3), np.uint8)
    video[...] = 255  # pixel values of N(0, 1) never all round back to 255
    areas, aspects = [], []
    rng = np.random.default_rng(0)
    for _ in range(1500):
        mask = erased_mask(video[0, 0], op({"video": video}, rng)["video"][0, 0])
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
        areas.append(h * w / (height * width))
        aspects.append(math.log(h / w))
    areas, aspects = np.array(areas), np.array(aspects)
    # area ~ U(0.02, 1/3), log aspect ~ U(log 0.3, log 1/0.3), up to rounding and the
    # box-fits rejection (which trims the largest, most elongated boxes).
    assert 0.015 < areas.min() and areas.max() < 0.36
    assert abs(np.median(areas) - (0.02 + 1 / 3) / 2) < 0.03
    assert np.all(np.abs(aspects) <= -math.log(0.3) + 0.1)
    assert abs(aspects.mean()) < 0.05 and aspects.std() > 0.5


def test_erasing_is_one_box_per_clip_with_fresh_noise_and_probability_p():
    op = registry.get("transform", "random_erasing")()  # p = 0.25, pixel, cube
    video = np.full((2, 4, 32, 32, 3), 255, np.uint8)
    rng = np.random.default_rng(1)
    erased_views, pixels = 0, []
    for _ in range(400):
        out = op({"video": video}, rng)["video"]
        for v in range(2):
            masks = [erased_mask(video[v, t], out[v, t]) for t in range(4)]
            if masks[0].any():
                erased_views += 1
                assert all(np.array_equal(masks[0], m) for m in masks)  # same box every frame
                assert not np.array_equal(out[v, 0][masks[0]], out[v, 1][masks[0]])  # new noise
                pixels.append(out[v, 0][masks[0]])
    assert abs(erased_views / 800 - 0.25) < 0.05
    # N(0, 1) in ImageNet-normalised space: mean 255 * mean, std 255 * std per channel.
    values = np.concatenate(pixels).astype(np.float64)
    assert np.allclose(values.mean(0), [124, 116, 104], atol=3)
    assert np.allclose(values.std(0), [58, 57, 57], atol=3)


def test_erasing_per_frame_and_constant_modes():
    video = np.full((1, 6, 32, 32, 3), 255, np.uint8)
    per_frame = registry.get("transform", "random_erasing")(p=1.0, cube=False)
    out = per_frame({"video": video}, np.random.default_rng(0))["video"][0]
    masks = [erased_mask(video[0, t], out[t]) for t in range(6)]
    assert all(m.any() for m in masks) and not all(np.array_equal(masks[0], m) for m in masks)
    const = registry.get("transform", "random_erasing")(p=1.0, mode="const")
    out = const({"video": video}, np.random.default_rng(0))["video"][0]
    assert {tuple(px) for px in out[0][erased_mask(video[0, 0], out[0])]} == {(124, 116, 104)}


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("rand_augment", {"magnitude": 11}, "rand_augment.magnitude"),
        ("rand_augment", {"num_ops": -1}, "rand_augment.num_ops"),
        ("rand_augment", {"interpolation": "nearest"}, "rand_augment.interpolation"),
        ("random_erasing", {"p": 1.5}, "random_erasing.p"),
        ("random_erasing", {"mode": "noise"}, "random_erasing.mode"),
        ("random_erasing", {"area": (0.5, 0.1)}, "random_erasing.area"),
    ],
)
def test_bad_arguments_name_the_op_and_argument(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        registry.get("transform", name)(**kwargs)
