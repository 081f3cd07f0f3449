"""Clip samplers and temporal ops: distributions, determinism, looping, index ranges."""

import numpy as np
import pytest
from scipy import stats

from vrl import config, registry
from vrl.data import temporal

SAMPLERS = ("uniform_clip", "cvrl_clips", "multiview_clips", "center_clip")
WINDOW_OPS = ("tempo", "frame_skip", "reverse")


def gap_cdf(x, power):
    """CDF of x = t / M for density ~ 1 - x**power on [0, 1] (integrated by hand)."""
    return ((power + 1) * x - x ** (power + 1)) / power


def video(n, **extra):
    return {"id": f"v{n}", "num_frames": n, "fps": 25.0, **extra}


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_gap_sampler_matches_density(power):
    x = temporal.sample_cvrl_gap(np.random.default_rng(1), power, 20_000)
    assert np.all((x >= 0) & (x < 1))
    assert stats.kstest(x, lambda v: gap_cdf(v, power)).pvalue > 1e-3
    # The test has power: the other exponent's CDF is clearly rejected.
    other = 3.0 - power
    assert stats.kstest(x, lambda v: gap_cdf(v, other)).pvalue < 1e-6


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_cvrl_clips_gap_first_start_and_order(power):
    n, frames, stride = 2000, 16, 2
    max_start = n - temporal.window_span(frames, stride)
    op = temporal.cvrl_clips(frames=frames, stride=stride, power=power)
    rng = np.random.default_rng(2)
    starts = np.array([op(video(n), rng)["temporal/start"] for _ in range(6000)])
    gaps = np.abs(starts[:, 1] - starts[:, 0])
    assert gaps.max() <= max_start
    # Integer gaps, jittered inside their unit bin, against the analytic CDF of t / (M + 1).
    jitter = np.random.default_rng(3).random(len(gaps))
    x = (gaps + jitter) / (max_start + 1)
    assert stats.kstest(x, lambda v: gap_cdf(v, power)).pvalue > 1e-3
    # The earlier start is uniform on [0, M - t].
    first = starts.min(axis=1)
    u = (first + np.random.default_rng(4).random(len(first))) / (max_start - gaps + 1)
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    # The two clips come in random order.
    later_first = np.mean(starts[gaps > 0, 0] > starts[gaps > 0, 1])
    assert abs(later_first - 0.5) < 0.03


def test_cvrl_clips_windows_and_records():
    example = temporal.cvrl_clips(frames=8, stride=3)(video(300), np.random.default_rng(0))
    indices = example["frame_indices"]
    assert indices.shape == (2, 8) and indices.dtype == np.int32
    np.testing.assert_array_equal(indices, example["temporal/start"][:, None] + 3 * np.arange(8))
    np.testing.assert_array_equal(example["temporal/stride"], [3, 3])
    assert example["id"] == "v300" and example["fps"] == 25.0  # other keys pass through


def test_uniform_clip_start_is_uniform():
    n, frames, stride = 50, 16, 2  # span 31: starts 0..19
    op = temporal.uniform_clip(frames=frames, stride=stride)
    rng = np.random.default_rng(5)
    starts = np.array([op(video(n), rng)["temporal/start"][0] for _ in range(4000)])
    counts = np.bincount(starts, minlength=20)
    assert len(counts) == 20
    assert stats.chisquare(counts).pvalue > 1e-3


@pytest.mark.parametrize("name", ["uniform_clip", "cvrl_clips"])
def test_short_videos_loop(name):
    n = 10  # shorter than the 31-frame span
    op = registry.get("transform", name)(frames=16, stride=2)
    rng = np.random.default_rng(6)
    for _ in range(50):
        example = op(video(n), rng)
        start = example["temporal/start"]
        assert np.all((start >= 0) & (start < n))
        expected = (start[:, None] + 2 * np.arange(16)) % n
        np.testing.assert_array_equal(example["frame_indices"], expected)


def test_short_videos_clamp():
    example = temporal.center_clip(frames=8, stride=2, short="clamp")(video(5), None)
    np.testing.assert_array_equal(example["frame_indices"], [[0, 2, 4, 4, 4, 4, 4, 4]])


def test_multiview_clips_evenly_spaced_and_deterministic():
    n, frames, stride = 200, 16, 2
    max_start = n - temporal.window_span(frames, stride)
    op = temporal.multiview_clips(num_clips=5, frames=frames, stride=stride)
    a = op(video(n), np.random.default_rng(0))
    b = op(video(n), np.random.default_rng(99))
    np.testing.assert_array_equal(a["frame_indices"], b["frame_indices"])
    starts = a["temporal/start"]
    assert starts[0] == 0 and starts[-1] == max_start
    assert np.ptp(np.diff(starts)) <= 1  # equal spacing up to rounding
    np.testing.assert_array_equal(a["frame_indices"], starts[:, None] + stride * np.arange(frames))
    single = temporal.multiview_clips(num_clips=1, frames=frames, stride=stride)(video(n), None)
    assert single["temporal/start"][0] == max_start // 2


def test_multiview_clips_in_segments_as_vjepa():
    """jepa `VideoDataset` with num_clips: window i inside part i of the video, at the part's
    start for testing, at a uniform offset that keeps it in the part for training."""
    n, frames, stride, clips = 640, 16, 4, 8  # parts of 80 frames, windows of 61
    span = temporal.window_span(frames, stride)
    test = temporal.multiview_clips(clips, frames, stride, segments=True)(video(n), None)
    np.testing.assert_array_equal(test["temporal/start"], np.arange(clips) * 80)
    train = temporal.multiview_clips(clips, frames, stride, segments=True, random=True)
    offsets = []
    for seed in range(200):
        starts = train(video(n), np.random.default_rng(seed))["temporal/start"]
        offsets.append(starts - np.arange(clips) * 80)
    offsets = np.array(offsets)
    assert offsets.min() == 0 and offsets.max() == 80 - span  # every offset reachable, in part
    assert len(np.unique(offsets[:, 0])) > 10
    with pytest.raises(ValueError, match="random: needs segments=True"):
        temporal.multiview_clips(random=True)


def test_center_clip_is_centred():
    example = temporal.center_clip(frames=16, stride=2)(video(101), None)
    first, last = example["frame_indices"][0, [0, -1]]
    assert abs(first - (100 - last)) <= 1


def test_tempo_rescales_stride_and_fits_window():
    base = temporal.uniform_clip(frames=8, stride=2)
    dense = temporal.uniform_clip(frames=8, stride=1)
    rng = np.random.default_rng(7)
    fast, slow = temporal.tempo(rates=(2.0,)), temporal.tempo(rates=(0.5,))
    for _ in range(30):
        example = base(video(60), rng)
        sped = fast(example, rng)
        np.testing.assert_array_equal(np.diff(sped["frame_indices"][0]), 4)  # no wrap: moved back
        assert sped["frame_indices"].max() < 60
        np.testing.assert_array_equal(sped["temporal/tempo"], [2.0])
        np.testing.assert_array_equal(np.diff(slow(example, rng)["frame_indices"][0]), 1)
        slowed = slow(dense(video(60), rng), rng)["frame_indices"][0]
        np.testing.assert_array_equal(slowed[0::2], slowed[1::2])  # every frame shown twice
        np.testing.assert_array_equal(np.diff(slowed[0::2]), 1)


def test_tempo_per_view_probability():
    example = temporal.cvrl_clips(frames=8, stride=2)(video(500), np.random.default_rng(0))
    out = temporal.tempo(rates=(2.0,), p=(1.0, 0.0))(example, np.random.default_rng(1))
    np.testing.assert_array_equal(out["temporal/tempo"], [2.0, 1.0])
    np.testing.assert_array_equal(out["frame_indices"][1], example["frame_indices"][1])


def test_frame_skip_uniform_and_random():
    rng = np.random.default_rng(8)
    base = temporal.uniform_clip(frames=8, stride=2)
    uniform = temporal.frame_skip(mode="uniform", skips=(3,))
    random = temporal.frame_skip(mode="random", max_skip=3)
    for _ in range(30):
        example = base(video(1000), rng)
        out = uniform(example, rng)
        np.testing.assert_array_equal(np.diff(out["frame_indices"][0]), 6)
        np.testing.assert_array_equal(out["temporal/skip"], [3.0])
        out = random(example, rng)
        steps = np.diff(out["frame_indices"][0])
        assert set(steps) <= {2, 4, 6}
        assert out["temporal/skip"][0] == pytest.approx(steps.mean() / 2)
    unchanged = temporal.frame_skip(mode="random", p=0.0)(example, rng)
    np.testing.assert_array_equal(unchanged["frame_indices"], example["frame_indices"])


def test_reverse_and_composition():
    rng = np.random.default_rng(9)
    example = temporal.cvrl_clips(frames=8, stride=2)(video(500), rng)
    out = temporal.reverse(p=(1.0, 0.0))(example, rng)
    np.testing.assert_array_equal(out["frame_indices"][0], example["frame_indices"][0, ::-1])
    np.testing.assert_array_equal(out["frame_indices"][1], example["frame_indices"][1])
    np.testing.assert_array_equal(out["temporal/reversed"], [True, False])
    # A later tempo keeps the reversal.
    sped = temporal.tempo(rates=(2.0,))(out, rng)
    np.testing.assert_array_equal(np.diff(sped["frame_indices"][0]), -4)
    np.testing.assert_array_equal(np.diff(sped["frame_indices"][1]), 4)


def test_tempo_after_random_skip_is_refused():
    rng = np.random.default_rng(10)
    example = temporal.uniform_clip(frames=8, stride=2)(video(500), rng)
    example = temporal.frame_skip(mode="random", max_skip=4)(example, rng)
    with pytest.raises(ValueError, match="not regular"):
        temporal.tempo()(example, rng)


def test_indices_always_in_range():
    rng = np.random.default_rng(11)
    chains = [
        [temporal.uniform_clip(frames=16, stride=4), temporal.tempo(), temporal.reverse()],
        [temporal.cvrl_clips(frames=8, stride=2, power=2.0), temporal.frame_skip(mode="random")],
        [temporal.multiview_clips(num_clips=3, frames=4, stride=8), temporal.frame_skip()],
        [
            temporal.center_clip(frames=16, stride=2, short="clamp"),
            temporal.tempo(rates=(3.0,), short="clamp"),
        ],
    ]
    for chain in chains:
        for n in list(range(1, 40)) + [97, 1000]:
            example = video(n)
            for op in chain:
                example = op(example, rng)
            indices = example["frame_indices"]
            assert indices.dtype == np.int32 and indices.ndim == 2
            assert indices.min() >= 0 and indices.max() < n, (n, indices)


def test_registry_stage_and_config_errors():
    for name in SAMPLERS + WINDOW_OPS:
        assert registry.get("transform", name).stage == "temporal"
    factory = registry.get("transform", "cvrl_clips")
    with pytest.raises(
        config.ConfigError, match="unknown key; allowed: frames, power, short, stride"
    ):
        config.instantiate(factory, {"frames": 8, "gap": 2}, "pp[cvrl_clips]")
    with pytest.raises(config.ConfigError, match="'loop', 'clamp'"):
        config.instantiate(factory, {"short": "wrap"}, "pp[cvrl_clips]")
    with pytest.raises(ValueError, match="power"):
        temporal.cvrl_clips(power=0.0)
    with pytest.raises(ValueError, match="3 values for 2 views"):
        rng = np.random.default_rng(0)
        temporal.reverse(p=(0.5, 0.5, 0.5))(temporal.cvrl_clips()(video(100), rng), rng)
    with pytest.raises(ValueError, match="num_frames=0"):
        temporal.uniform_clip()(video(0), np.random.default_rng(0))
    with pytest.raises(ValueError, match="window sampler"):
        temporal.reverse()(video(10), np.random.default_rng(0))
