"""Spatial ops (geometry and colour): temporal consistency, per-view randomness, correctness."""

import collections
import random

import numpy as np
import pytest
from scipy import stats

from vrl import registry
from vrl.data import color, spatial


def still_video(views=2, frames=4, height=48, width=64, seed=0):
    """Identical frames in every view: any frame-to-frame difference comes from the op."""
    image = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return np.ascontiguousarray(np.broadcast_to(image, (views, frames, height, width, 3)))


def run(op, video, seed=0, **extra):
    return op({"id": "clip", "video": video, **extra}, np.random.default_rng(seed))


ALL_OPS = {
    "random_resized_crop": dict(size=32),
    "multi_scale_crop": dict(size=32),
    "flip": dict(p=1.0),
    "color_jitter": dict(p=1.0),
    "grayscale": dict(p=1.0),
    "gaussian_blur": dict(p=1.0),
    "solarize": dict(p=1.0),
    "resize_short": dict(size=30),
    "center_crop": dict(size=40),
    "three_crop": dict(size=40),
    "freq_aug": dict(p=1.0, mode="both"),
}
# Ops whose random parameters are continuous, so two views almost surely differ.
PER_VIEW_RANDOM = ("random_resized_crop", "color_jitter", "gaussian_blur")


@pytest.mark.parametrize("name", sorted(ALL_OPS))
def test_every_frame_of_a_view_gets_the_same_transform(name):
    op = registry.get("transform", name)(**ALL_OPS[name])
    assert getattr(registry.get("transform", name), "stage", "spatial") == "spatial"
    out = run(op, still_video())["video"]
    assert out.dtype == np.uint8 and out.ndim == 5
    np.testing.assert_array_equal(out, np.broadcast_to(out[:, :1], out.shape))
    if name in PER_VIEW_RANDOM:
        assert not np.array_equal(out[0], out[1])


def test_flip():
    video = still_video()
    np.testing.assert_array_equal(run(spatial.flip(p=1.0), video)["video"], video[:, :, :, ::-1])
    np.testing.assert_array_equal(run(spatial.flip(p=0.0), video)["video"], video)
    out = run(spatial.flip(p=(0.0, 1.0)), video)["video"]
    np.testing.assert_array_equal(out[0], video[0])
    np.testing.assert_array_equal(out[1], video[1, :, :, ::-1])


def test_grayscale():
    video = still_video()
    out = run(color.grayscale(p=1.0), video)["video"]
    assert np.all(out[..., 0] == out[..., 1]) and np.all(out[..., 1] == out[..., 2])
    luma = video.astype(np.float64) @ [0.299, 0.587, 0.114]
    assert np.abs(out[..., 0] - luma).max() <= 0.51
    np.testing.assert_array_equal(run(color.grayscale(p=0.0), video)["video"], video)


def test_solarize():
    video = still_video()
    out = run(color.solarize(p=(0.0, 1.0), threshold=128), video)["video"]
    np.testing.assert_array_equal(out[0], video[0])
    np.testing.assert_array_equal(out[1], np.where(video[1] >= 128, 255 - video[1], video[1]))


def test_sample_crop_box_respects_area_and_aspect():
    rng = np.random.default_rng(1)
    for height, width in [(120, 160), (160, 90)]:
        for _ in range(300):
            left, top, right, bottom = spatial.sample_crop_box(
                rng, height, width, (0.3, 1.0), (0.5, 2.0)
            )
            assert 0 <= left < right <= width and 0 <= top < bottom <= height
            w, h = right - left, bottom - top
            assert 0.5 * 0.97 <= w / h <= 2.0 * 1.03  # up to rounding of w and h
            assert 0.3 * 0.97 <= w * h / (height * width) <= 1.0
    # No crop of >= 30% area fits a 10 x 200 strip with aspect <= 2: centred fallback.
    assert spatial.sample_crop_box(rng, 10, 200, (0.3, 1.0), (0.5, 2.0)) == (90, 0, 110, 10)


def test_random_resized_crop_reads_the_sampled_box():
    # R encodes x, G encodes y, so the output's value range reveals the crop box.
    y, x = np.mgrid[0:200, 0:250]
    image = np.stack([x, y, np.zeros_like(x)], axis=-1).clip(0, 255).astype(np.uint8)
    video = np.broadcast_to(image, (1, 2, 200, 250, 3)).copy()
    op = spatial.random_resized_crop(size=32, area=(0.3, 1.0), aspect=(0.5, 2.0))
    areas = []
    for seed in range(40):
        out = run(op, video, seed)["video"]
        assert out.shape == (1, 2, 32, 32, 3)
        rng = np.random.default_rng(seed)
        left, top, right, bottom = spatial.sample_crop_box(rng, 200, 250, (0.3, 1.0), (0.5, 2.0))
        r, g = out[0, 0, ..., 0].astype(int), out[0, 0, ..., 1].astype(int)
        assert abs(r.min() - left) <= 4 and abs(r.max() - (right - 1)) <= 4
        assert abs(g.min() - top) <= 4 and abs(g.max() - (bottom - 1)) <= 4
        areas.append((right - left) * (bottom - top) / (200 * 250))
    assert min(areas) >= 0.29 and max(areas) <= 1.0 and np.ptp(areas) > 0.3


class ReferenceMultiScaleCrop:
    """MCG-NJU/VideoMAE `transforms.GroupMultiScaleCrop`'s box sampling, copied in plain Python
    (square input_size; Python's `random`, as theirs)."""

    def __init__(self, input_size, scales, max_distort=1, fix_crop=True, more_fix_crop=True):
        self.scales, self.max_distort = scales, max_distort
        self.fix_crop, self.more_fix_crop = fix_crop, more_fix_crop
        self.input_size = [input_size, input_size]

    def pairs(self, image_w, image_h):
        base_size = min(image_w, image_h)
        crop_sizes = [int(base_size * x) for x in self.scales]
        crop_h = [self.input_size[1] if abs(x - self.input_size[1]) < 3 else x for x in crop_sizes]
        crop_w = [self.input_size[0] if abs(x - self.input_size[0]) < 3 else x for x in crop_sizes]
        pairs = []
        for i, h in enumerate(crop_h):
            for j, w in enumerate(crop_w):
                if abs(i - j) <= self.max_distort:
                    pairs.append((w, h))
        return pairs

    def _sample_crop_size(self, im_size, rand):
        image_w, image_h = im_size
        crop_pair = rand.choice(self.pairs(image_w, image_h))
        if not self.fix_crop:
            w_offset = rand.randint(0, image_w - crop_pair[0])
            h_offset = rand.randint(0, image_h - crop_pair[1])
        else:
            offsets = self.fill_fix_offset(self.more_fix_crop, image_w, image_h, *crop_pair)
            w_offset, h_offset = rand.choice(offsets)
        return crop_pair[0], crop_pair[1], w_offset, h_offset

    @staticmethod
    def fill_fix_offset(more_fix_crop, image_w, image_h, crop_w, crop_h):
        w_step = (image_w - crop_w) // 4
        h_step = (image_h - crop_h) // 4
        ret = [(0, 0), (4 * w_step, 0), (0, 4 * h_step), (4 * w_step, 4 * h_step)]
        ret.append((2 * w_step, 2 * h_step))
        if more_fix_crop:
            ret += [(0, 2 * h_step), (4 * w_step, 2 * h_step), (2 * w_step, 4 * h_step)]
            ret += [(2 * w_step, 0 * h_step), (1 * w_step, 1 * h_step), (3 * w_step, 1 * h_step)]
            ret += [(1 * w_step, 3 * h_step), (3 * w_step, 3 * h_step)]
        return ret

    def exact(self, image_w, image_h):
        """{(w, h, left, top): probability} of a fixed-offset draw, duplicates counted."""
        pairs, out = self.pairs(image_w, image_h), collections.Counter()
        for w, h in pairs:
            offsets = self.fill_fix_offset(self.more_fix_crop, image_w, image_h, w, h)
            for left, top in offsets:
                out[w, h, left, top] += 1 / (len(pairs) * len(offsets))
        return out


MULTI_SCALE_CASES = [
    # height, width, size, fix_crop, more_fix_crop: Kinetics at short side 320; a portrait
    # frame whose 0.875 side (225) snaps to 224; the :runlocal shape; TSN's 5-corner variant.
    (320, 426, 224, True, True),
    (426, 258, 224, True, True),
    (64, 64, 32, True, True),
    (240, 320, 224, True, False),
]


@pytest.mark.parametrize("height, width, size, fix, more", MULTI_SCALE_CASES)
def test_multi_scale_crop_boxes_follow_the_reference(height, width, size, fix, more):
    scales, draws = (1.0, 0.875, 0.75, 0.66), 6000
    ref = ReferenceMultiScaleCrop(size, list(scales), 1, fix, more)
    rand, rng = random.Random(0), np.random.default_rng(0)
    theirs = collections.Counter(ref._sample_crop_size((width, height), rand) for _ in range(draws))
    ours = collections.Counter()
    for _ in range(draws):
        left, top, right, bottom = spatial.multi_scale_crop_box(
            rng, height, width, size, scales, 1, fix, more
        )
        ours[right - left, bottom - top, left, top] += 1
    exact = ref.exact(width, height)
    assert set(ours) == set(theirs) == set(exact)
    support = sorted(exact)
    expected = [exact[box] * draws for box in support]
    for counts in (ours, theirs):
        assert stats.chisquare([counts[box] for box in support], expected).pvalue > 1e-3


def test_multi_scale_crop_free_offsets_follow_the_reference():
    ref = ReferenceMultiScaleCrop(32, [1.0, 0.875, 0.75, 0.66], fix_crop=False)
    rand, rng = random.Random(0), np.random.default_rng(0)
    theirs = [ref._sample_crop_size((64, 48), rand) for _ in range(4000)]
    boxes = [spatial.multi_scale_crop_box(rng, 48, 64, 32, fix_crop=False) for _ in range(4000)]
    ours = [(r - left, b - top, left, top) for left, top, r, b in boxes]
    for draws in (ours, theirs):
        sizes = collections.Counter((w, h) for w, h, _, _ in draws)
        assert set(sizes) == set(ref.pairs(64, 48))  # sides (48, 42, 36, 31 -> 32), 10 pairs
        for (w, h), n in sizes.items():
            lefts = {left for w2, h2, left, _ in draws if (w2, h2) == (w, h)}
            assert min(lefts) == 0 and max(lefts) == 64 - w  # every position, edges included
            assert abs(n / len(draws) - 0.1) < 0.025


def test_multi_scale_crop_reads_the_sampled_box():
    video = still_video(views=3, frames=2, height=80, width=100)
    op = spatial.multi_scale_crop(size=32)
    for seed in range(5):
        out = run(op, video, seed)["video"]
        rng = np.random.default_rng(seed)
        for v in range(3):  # one box per view, drawn in view order
            left, top, right, bottom = spatial.multi_scale_crop_box(rng, 80, 100, 32)
            expected = spatial.resize_frames(video[v, :, top:bottom, left:right], 32, 32)
            np.testing.assert_array_equal(out[v], expected)
    with pytest.raises(ValueError, match="scales"):
        spatial.multi_scale_crop(scales=(1.0, 1.5))


def test_color_jitter_identity_cases():
    video = still_video()
    for op in (
        color.color_jitter(p=0.0),
        color.color_jitter(p=1.0, brightness=0, contrast=0, saturation=0, hue=0),
    ):
        np.testing.assert_array_equal(run(op, video)["video"], video)


def test_color_jitter_brightness_scales_every_pixel_alike():
    video = still_video(height=32, width=32)
    op = color.color_jitter(p=1.0, brightness=0.5, contrast=0, saturation=0, hue=0)
    for seed in range(10):
        out = run(op, video, seed)["video"].astype(float)
        for v in range(2):  # one factor per view
            unclipped = video[v] < 150  # x * 1.5 stays below 255
            factor = out[v][unclipped].sum() / video[v][unclipped].sum()
            assert 0.5 - 1e-3 <= factor <= 1.5 + 1e-3
            assert np.abs(out[v][unclipped] - video[v][unclipped] * factor).max() <= 0.6


def test_color_jitter_saturation_and_hue_keep_grays():
    video = still_video(height=32, width=32).astype(np.int16)
    video = (video // 4 + 96).astype(np.uint8)  # mid-range colours: no clipping
    video[:, :, :4] = 77  # a gray band
    luma = video.astype(float) @ [0.299, 0.587, 0.114]
    for style in ("torchvision", "tf"):
        for saturation, hue in ((0.8, 0.0), (0.0, 0.2)):
            op = color.color_jitter(
                p=1.0, brightness=0, contrast=0, saturation=saturation, hue=hue, style=style
            )
            out = run(op, video, 3)["video"]
            np.testing.assert_array_equal(out[:, :, :4], 77)
            assert not np.array_equal(out, video)
            if style == "torchvision" and saturation:  # blending with luma keeps luma
                assert np.abs(out.astype(float) @ [0.299, 0.587, 0.114] - luma).max() <= 1.5


@pytest.mark.parametrize("name", ["contrast", "saturation", "hue"])
def test_color_jitter_torchvision_style_equals_torchvision(name):
    torch = pytest.importorskip("torch")
    tvf = pytest.importorskip("torchvision.transforms.functional")
    image = still_video(views=1, frames=1, height=24, width=20, seed=4)[0, 0]
    value = 0.13 if name == "hue" else 1.6
    adjust = {
        "contrast": color.adjust_contrast,
        "saturation": color.adjust_saturation,
        "hue": color.adjust_hue,
    }[name]
    ours = np.clip(adjust(image.astype(np.float32), value), 0, 255)
    tensor = torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1)
    theirs = getattr(tvf, f"adjust_{name}")(tensor, value).permute(1, 2, 0).numpy() * 255
    np.testing.assert_allclose(ours, theirs, atol=0.05)


def test_color_jitter_tf_style_equals_tf_image_formulas():
    import colorsys

    image = still_video(views=1, frames=3, height=6, width=5, seed=2)[0].astype(np.float32)
    # tf.image.adjust_contrast: (x - mean) * f + mean, the mean per channel over the clip.
    mean = image.reshape(-1, 3).mean(axis=0)
    ours = color.adjust_contrast_per_channel(image.copy(), 1.7)
    np.testing.assert_allclose(ours, (image - mean) * 1.7 + mean, rtol=1e-5, atol=1e-3)
    # tf.image.adjust_saturation / adjust_hue: HSV, saturation scaled and clipped, hue shifted.
    sat = color.adjust_saturation_hsv(image.copy(), 1.5)
    hue = color.adjust_hue(image.copy(), -0.3)
    for pixel, s_out, h_out in zip(image.reshape(-1, 3), sat.reshape(-1, 3), hue.reshape(-1, 3)):
        h, s, v = colorsys.rgb_to_hsv(*(pixel / 255))
        np.testing.assert_allclose(
            s_out, np.array(colorsys.hsv_to_rgb(h, min(s * 1.5, 1), v)) * 255, atol=1e-3
        )
        np.testing.assert_allclose(
            h_out, np.array(colorsys.hsv_to_rgb((h - 0.3) % 1, s, v)) * 255, atol=1e-3
        )
    with pytest.raises(ValueError, match="color_jitter.style: 'pil'; allowed: torchvision, tf"):
        color.color_jitter(style="pil")


def test_sample_crop_box_tf_draws_as_sample_distorted_bounding_box():
    rng = np.random.default_rng(0)
    boxes = np.array(
        [spatial.sample_crop_box_tf(rng, 120, 160, (0.3, 1.0), (0.5, 2.0)) for _ in range(4000)]
    )
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 160).all() and (boxes[:, 3] <= 120).all()
    area = w * h / (120 * 160)
    assert area.min() >= 0.3 - 1e-9 and area.max() <= 1.0
    # TF offsets are Uniform(H - h): never the last position, unlike torchvision's.
    partial = h < 120
    assert (boxes[partial, 1] < 120 - h[partial]).all()

    # The aspect is uniform on [0.5, 2] (mean 1.25; torchvision's log-uniform has mean
    # 1.5 / ln 4 = 1.082). Small crops of a square frame: every draw fits at the first try.
    def mean_aspect(sample):
        boxes = np.array([sample(rng, 160, 160, (0.3, 0.35), (0.5, 2.0)) for _ in range(4000)])
        return np.mean((boxes[:, 2] - boxes[:, 0]) / (boxes[:, 3] - boxes[:, 1]))

    assert abs(mean_aspect(spatial.sample_crop_box_tf) - 1.25) < 0.03
    assert abs(mean_aspect(spatial.sample_crop_box) - 1.082) < 0.03
    # No >= 30% crop with aspect <= 2 fits a 10 x 200 strip: TF takes the whole frame.
    assert spatial.sample_crop_box_tf(rng, 10, 200, (0.3, 1.0), (0.5, 2.0)) == (0, 0, 200, 10)
    with pytest.raises(ValueError, match="random_resized_crop.sampler: 'keras'"):
        spatial.random_resized_crop(sampler="keras")


def test_color_jitter_contrast_keeps_view_mean_luma():
    video = (still_video(height=32, width=32) // 2 + 64).astype(np.uint8)
    op = color.color_jitter(p=1.0, brightness=0, contrast=0.8, saturation=0, hue=0)
    out = run(op, video, 5)["video"]
    luma = lambda v: (v.astype(float) @ [0.299, 0.587, 0.114]).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(luma(out), luma(video), atol=0.6)
    assert not np.array_equal(out, video)


def laplacian_energy(video):
    x = video.astype(float)
    lap = 4 * x[..., 1:-1, 1:-1, :] - x[..., :-2, 1:-1, :] - x[..., 2:, 1:-1, :]
    lap -= x[..., 1:-1, :-2, :] + x[..., 1:-1, 2:, :]
    return np.abs(lap).mean(axis=(1, 2, 3, 4))


def test_gaussian_blur_removes_detail_per_view():
    video = still_video()
    out = run(color.gaussian_blur(p=(1.0, 0.0), sigma=(1.0, 2.0)), video)["video"]
    np.testing.assert_array_equal(out[1], video[1])
    before, after = laplacian_energy(video), laplacian_energy(out)
    assert after[0] < 0.3 * before[0]


def test_resize_short_and_center_crop():
    video = still_video(height=48, width=64)
    assert run(spatial.resize_short(size=24), video)["video"].shape == (2, 4, 24, 32, 3)
    portrait = still_video(height=64, width=48)
    assert run(spatial.resize_short(size=24), portrait)["video"].shape == (2, 4, 32, 24, 3)
    flat = np.full((1, 2, 48, 64, 3), 90, np.uint8)
    np.testing.assert_array_equal(run(spatial.resize_short(size=20), flat)["video"], 90)
    out = run(spatial.center_crop(size=40), video)["video"]
    np.testing.assert_array_equal(out, video[:, :, 4:44, 12:52])
    with pytest.raises(ValueError, match="resize_short"):
        run(spatial.center_crop(size=50), video)


@pytest.mark.parametrize("height,width", [(48, 80), (80, 48)])
def test_three_crop_positions_and_view_major_order(height, width):
    video = np.stack([still_video(1, 3, height, width, seed=s)[0] for s in (1, 2)])
    temporal_start = np.array([5, 9], np.int32)
    out = run(spatial.three_crop(size=40), video, **{"temporal/start": temporal_start})
    assert out["video"].shape == (6, 3, 40, 40, 3)
    np.testing.assert_array_equal(out["temporal/start"], [5, 5, 5, 9, 9, 9])
    np.testing.assert_array_equal(out["spatial/crop"], [0, 1, 2, 0, 1, 2])
    centre = (min(height, width) - 40) // 2
    for v in range(2):
        for c, offset in enumerate((0, (max(height, width) - 40) // 2, max(height, width) - 40)):
            top, left = (offset, centre) if height > width else (centre, offset)
            expected = video[v, :, top : top + 40, left : left + 40]
            np.testing.assert_array_equal(out["video"][3 * v + c], expected)


def spectrum_at(video, t_bin, x_bin):
    x = video[0].astype(float).mean(axis=-1)
    return np.abs(np.fft.fftn(x - x.mean())[t_bin, 0, x_bin])


def test_freq_aug_removes_low_frequencies():
    frames, height, width = 16, 32, 64
    t = 2 * np.pi * np.arange(frames)[:, None, None] / frames
    x = 2 * np.pi * np.arange(width)[None, None, :] / width
    # (temporal, spatial) cycles per clip: static coarse (0, 2), static texture (0, 16),
    # slow-flickering texture (1, 16), fast-flickering texture (4, 16), fast coarse (4, 2).
    components = {(0, 2): 20, (0, 16): 15, (1, 16): 15, (4, 16): 15, (4, 2): 15}
    signal = 128 + sum(a * np.cos(ft * t) * np.cos(fx * x) for (ft, fx), a in components.items())
    image = np.broadcast_to(signal, (frames, height, width))
    video = np.repeat(image[None, ..., None], 3, axis=-1).round().astype(np.uint8)
    before = {key: spectrum_at(video, *key) for key in components}
    # Cutoffs: spatial 0.05 cycles/pixel (2/64 is low, 16/64 high); temporal 0.1 cycles/frame
    # (0 and 1/16 are low, 4/16 high).
    kwargs = dict(p=1.0, spatial_cutoff=0.05, temporal_cutoff=0.1)
    removed = {
        "spatial": {(0, 2), (4, 2)},
        "temporal": {(0, 2), (0, 16), (1, 16)},
        "both": {(0, 2), (0, 16), (1, 16), (4, 2)},
    }
    for mode, lows in removed.items():
        out = run(color.freq_aug(mode=mode, **kwargs), video)["video"]
        for key in components:
            after = spectrum_at(out, *key)
            if key in lows:
                assert after < 0.05 * before[key], (mode, key)
            else:
                assert after == pytest.approx(before[key], rel=0.05), (mode, key)
        assert abs(out.mean() - video.mean()) < 1.0  # the mean is kept


def fft_high_pass(x, spatial_cutoff, temporal_cutoff):
    """Reference: zero the low components of the full 3-D FFT (float64)."""
    frames, height, width, _ = x.shape
    ft = np.abs(np.fft.fftfreq(frames))[:, None, None]
    radius = np.hypot(np.fft.fftfreq(height)[:, None], np.fft.fftfreq(width)[None, :])
    low = (radius[None] < spatial_cutoff) | (ft < temporal_cutoff)
    spectrum = np.fft.fftn(x.astype(np.float64), axes=(0, 1, 2)) * (~low)[..., None]
    return np.fft.ifftn(spectrum, axes=(0, 1, 2)).real


@pytest.mark.parametrize("shape", [(16, 32, 40, 3), (5, 37, 50, 3)])
@pytest.mark.parametrize("cutoffs", [(0.01, 0.1), (0.05, 0.0), (0.0, 0.3), (0.2, 0.2), (0.75, 0.0)])
def test_high_pass_equals_the_fft_mask(shape, cutoffs):
    x = np.random.default_rng(0).integers(0, 256, shape).astype(np.float32)
    out = color.high_pass(x, *cutoffs)
    assert out.dtype == np.float32 and out.shape == shape
    np.testing.assert_allclose(out, fft_high_pass(x, *cutoffs), atol=2e-3)


def test_chain_views_and_errors():
    ops = [
        spatial.random_resized_crop(size=32),
        spatial.flip(),
        color.color_jitter(),
        color.grayscale(),
        color.gaussian_blur(p=(1.0, 0.1)),
        color.solarize(p=(0.0, 0.2)),
    ]
    example = {"video": still_video(views=2, frames=3)}
    rng = np.random.default_rng(0)
    for op in ops:
        example = op(example, rng)
    assert example["video"].shape == (2, 3, 32, 32, 3)
    with pytest.raises(ValueError, match="3 values for 2 views"):
        run(spatial.flip(p=(0.5, 0.5, 0.5)), still_video())
    with pytest.raises(ValueError, match=r"uint8 \[V, T, H, W, 3\]"):
        run(spatial.flip(), still_video()[0])
    with pytest.raises(ValueError, match="hue"):
        color.color_jitter(hue=0.7)


def test_scale_jitter_crop_reads_a_box_of_the_jittered_scale():
    """DMVR: each side resized by U(0.9, 1.33), then a 224 crop: the crop covers 224 / factor
    source pixels per side, anywhere in the frame; the output reads that box."""
    y, x = np.mgrid[0:256, 0:320]
    image = np.stack([x * 255 // 319, y, np.zeros_like(x)], -1).astype(np.uint8)
    video = np.broadcast_to(image, (1, 2, 256, 320, 3)).copy()
    op = spatial.scale_jitter_crop(size=224, scale=(0.9, 1.33), p=1.0)
    heights, widths = [], []
    for seed in range(40):
        left, top, right, bottom = _box_of(op, seed, 256, 320)
        assert 0 <= left < right <= 320 and 0 <= top < bottom <= 256
        heights.append(bottom - top)
        widths.append(right - left)
        if seed < 3:
            out = run(op, video, seed)["video"]
            assert out.shape == (1, 2, 224, 224, 3)
            g = out[0, 0, ..., 1].astype(int)
            assert abs(g.min() - top) <= 3 and abs(g.max() - (bottom - 1)) <= 3
    assert 224 / 1.33 - 1 <= min(heights) and max(heights) <= 256
    assert 224 / 1.33 - 1 <= min(widths) and max(widths) <= 224 / 0.9 + 1
    assert abs(np.corrcoef(heights, widths)[0, 1]) < 0.5  # independent factors per side
    assert run(spatial.scale_jitter_crop(size=224, p=0.0), video)["video"].shape[2:4] == (224, 224)
    with pytest.raises(ValueError, match="scale_jitter_crop: crop 224 is larger"):
        run(spatial.scale_jitter_crop(size=224, scale=(0.5, 0.6), p=1.0), video)


def _box_of(op, seed, height, width):
    """The box `op` draws for one view with this seed (replaying its draws)."""
    boxes = []
    original = spatial._crop_views
    try:
        spatial._crop_views = lambda video, box, size: boxes.append(box(height, width)) or video
        op(
            {"id": "clip", "video": np.zeros((1, 1, height, width, 3), np.uint8)},
            np.random.default_rng(seed),
        )
    finally:
        spatial._crop_views = original
    return boxes[0]


def test_dmvr_color_is_color_default_augm():
    import colorsys

    video = still_video(views=1, frames=2, height=4, width=3, seed=6)
    video[0, 1] = video[0, 1] // 2 + 60  # frames with different means: contrast is per frame
    op = color.dmvr_color(p=1.0)
    out = run(op, video, 11)["video"][0].astype(np.float64)
    rng = np.random.default_rng(11)
    rng.random(1)  # the p coin
    shift = rng.uniform(-32 / 255, 32 / 255, 1)[0]
    sat, con, turn = (
        rng.uniform(0.6, 1.4, 1)[0],
        rng.uniform(0.6, 1.4, 1)[0],
        rng.uniform(-0.2, 0.2, 1)[0],
    )
    x = video[0].astype(np.float64) / 255 + shift  # tf.image.adjust_brightness: additive
    hsv = np.array([colorsys.rgb_to_hsv(*px) for px in x.reshape(-1, 3)])
    hsv[:, 1] = np.clip(hsv[:, 1] * sat, 0, 1)
    x = np.array([colorsys.hsv_to_rgb(*px) for px in hsv]).reshape(x.shape)
    mean = x.mean(axis=(1, 2), keepdims=True)  # per frame, per channel
    x = (x - mean) * con + mean
    hsv = np.array([colorsys.rgb_to_hsv(*px) for px in x.reshape(-1, 3)])
    hsv[:, 0] = (hsv[:, 0] + turn) % 1
    x = np.array([colorsys.hsv_to_rgb(*px) for px in hsv]).reshape(x.shape)
    expected = np.clip(x, 0, 1) * 255
    np.testing.assert_allclose(out, expected, atol=0.51)
    with pytest.raises(ValueError, match="dmvr_color.contrast"):
        color.dmvr_color(contrast=(1.2, 0.8))
