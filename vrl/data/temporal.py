"""Clip sampling and temporal augmentation: choose which frames to decode.

Temporal ops run before decoding, so all they write is integer frame indices; the decoder then
reads exactly those frames and nothing else. Every op is `op(example, rng) -> example` on numpy
values (it runs in Grain workers) and is made by a registered factory whose keyword arguments
are its config.

Keys written by the window samplers (uniform_clip, rho_clips, cvrl_clips, multiview_clips,
center_clip):
  frame_indices    int32 [V, T], V clips of T frames, every index in [0, num_frames)
  temporal/start   int32 [V], first frame of each window (before looping)
  temporal/stride  int32 [V], sampling stride in frames
Ops that reshape existing windows (tempo, frame_skip, reverse) rewrite `frame_indices` and
record what they did per view (`temporal/tempo`, `temporal/skip`, `temporal/reversed`), so a
temporal pretext objective can read the labels from the batch.

Videos shorter than a window are looped (index modulo num_frames, the CVRL recipe) or clamped
to the last frame, chosen by the `short` argument.
"""

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np

from vrl import registry
from vrl.data.types import Op

Short = Literal["loop", "clamp"]


def temporal_op(name: str) -> Callable[[Any], Any]:
    """Registers a factory as transform `name` and marks it to run before decoding."""

    def decorate(factory):
        factory.stage = "temporal"
        return registry.register("transform", name)(factory)

    return decorate


def per_view(value: float | Sequence[float], views: int, what: str) -> np.ndarray:
    """float64 [views] from one value for every view or one value per view."""
    values = np.atleast_1d(np.asarray(value, np.float64))
    if values.ndim != 1 or len(values) not in (1, views):
        raise ValueError(f"{what}: got {len(values)} values for {views} views; give 1 or {views}")
    return np.broadcast_to(values, (views,)).copy()


def window_span(frames: int, stride: int | float) -> int:
    """Frames covered by a window of `frames` frames taken every `stride` frames."""
    return int(np.floor((frames - 1) * stride)) + 1


def place(positions: np.ndarray, num_frames: int, short: Short) -> np.ndarray:
    """int32 frame indices from unbounded positions: looped or clamped into [0, num_frames)."""
    positions = np.asarray(positions, np.int64)
    if short == "loop":
        return np.mod(positions, num_frames).astype(np.int32)
    return np.clip(positions, 0, num_frames - 1).astype(np.int32)


def sample_cvrl_gap(rng: np.random.Generator, power: float, size: int) -> np.ndarray:
    """Gap fractions x = t / M in [0, 1) with density proportional to 1 - x**power.

    Rejection sampling against the uniform proposal: the density is at most 1, so a proposal
    is accepted with probability 1 - x**power (on average power / (power + 1) of them).
    """
    out = np.empty(size, np.float64)
    filled = 0
    while filled < size:
        need = size - filled
        draws = int(need * (power + 1.0) / power * 1.25) + 8
        x = rng.random(draws)
        accepted = x[rng.random(draws) < 1.0 - x**power][:need]
        out[filled : filled + len(accepted)] = accepted
        filled += len(accepted)
    return out


# ----------------------------------------------------------------------------- window samplers


@temporal_op("uniform_clip")
def uniform_clip(frames: int = 16, stride: int = 2, short: Short = "loop") -> Op:
    """One window at a uniformly random start (training)."""
    _check_window("uniform_clip", frames, stride)
    span = window_span(frames, stride)

    def op(example: dict, rng: np.random.Generator) -> dict:
        n = num_frames(example, "uniform_clip")
        return _write_windows(example, uniform_starts(rng, n, span, 1), frames, stride, n, short)

    return op


@temporal_op("rho_clips")
def rho_clips(num_clips: int = 2, frames: int = 8, stride: int = 8, short: Short = "loop") -> Op:
    """`num_clips` windows (the rho positives of Feichtenhofer et al. 2021), each start drawn
    independently and uniformly over the video, returned in temporal order as PySlowFast's
    decoder (`get_multiple_start_end_idx`) returns them."""
    _check_window("rho_clips", frames, stride)
    if num_clips < 1:
        raise ValueError(f"rho_clips.num_clips: must be >= 1, got {num_clips}")
    span = window_span(frames, stride)

    def op(example: dict, rng: np.random.Generator) -> dict:
        n = num_frames(example, "rho_clips")
        starts = np.sort(uniform_starts(rng, n, span, num_clips))
        return _write_windows(example, starts, frames, stride, n, short)

    return op


def uniform_starts(rng: np.random.Generator, n: int, span: int, count: int) -> np.ndarray:
    """`count` independent window starts, uniform over the starts where a window fits."""
    # A short video has no valid start; any start is as good once the frames loop.
    last_start = n - span if n >= span else n - 1
    return rng.integers(0, last_start + 1, size=count)


@temporal_op("cvrl_clips")
def cvrl_clips(frames: int = 16, stride: int = 2, power: float = 1.0, short: Short = "loop") -> Op:
    """Two windows whose start gap t favours small gaps: density ~ M**power - t**power on [0, M].

    M is the largest start (video length minus window span). The first start is uniform in
    [0, M - t], the second is t later, and the two are returned in random order. Videos
    shorter than a window get two independent uniform starts and looped frames.
    """
    _check_window("cvrl_clips", frames, stride)
    if not power > 0:
        raise ValueError(f"cvrl_clips.power: must be > 0, got {power}")
    span = window_span(frames, stride)

    def op(example: dict, rng: np.random.Generator) -> dict:
        n = num_frames(example, "cvrl_clips")
        max_start = n - span
        if max_start < 0:
            starts = rng.integers(0, n, size=2)
        else:
            gap = min(int(sample_cvrl_gap(rng, power, 1)[0] * (max_start + 1)), max_start)
            first = rng.integers(0, max_start - gap + 1)
            starts = np.array([first, first + gap])
            if rng.random() < 0.5:
                starts = starts[::-1]
        return _write_windows(example, starts, frames, stride, n, short)

    return op


@temporal_op("multiview_clips")
def multiview_clips(
    num_clips: int = 10,
    frames: int = 16,
    stride: int = 2,
    short: Short = "loop",
    segments: bool = False,
    random: bool = False,
) -> Op:
    """`num_clips` windows with evenly spaced starts from the first to the last (testing).

    `segments=True`: the video is cut into `num_clips` equal parts and window i starts at the
    start of part i, or (`random=True`) at a uniform offset inside it that keeps the window
    in the part where it fits: V-JEPA's `VideoDataset` with `num_clips` segments (random
    offsets for training, part starts for testing).
    """
    _check_window("multiview_clips", frames, stride)
    if num_clips < 1:
        raise ValueError(f"multiview_clips.num_clips: must be >= 1, got {num_clips}")
    if random and not segments:
        raise ValueError("multiview_clips.random: needs segments=True (random offsets per part)")
    span = window_span(frames, stride)

    def op(example: dict, rng: np.random.Generator) -> dict:
        n = num_frames(example, "multiview_clips")
        max_start = max(n - span, 0)
        if segments:
            part = n // num_clips
            starts = np.arange(num_clips, dtype=np.int64) * part
            if random:
                starts += rng.integers(0, max(part - span, 0) + 1, num_clips)
        elif num_clips == 1:
            starts = np.array([max_start // 2])
        else:
            starts = np.round(np.linspace(0, max_start, num_clips)).astype(np.int64)
        return _write_windows(example, starts, frames, stride, n, short)

    return op


@temporal_op("center_clip")
def center_clip(frames: int = 16, stride: int = 2, short: Short = "loop") -> Op:
    """One window in the middle of the video (deterministic evaluation)."""
    _check_window("center_clip", frames, stride)
    span = window_span(frames, stride)

    def op(example: dict, rng: np.random.Generator) -> dict:
        n = num_frames(example, "center_clip")
        start = max(n - span, 0) // 2
        return _write_windows(example, np.array([start]), frames, stride, n, short)

    return op


# ------------------------------------------------------------------- ops on existing windows


@temporal_op("tempo")
def tempo(
    rates: tuple[float, ...] = (0.5, 1.0, 2.0),
    p: float | tuple[float, ...] = 1.0,
    short: Short = "loop",
) -> Op:
    """Plays each view at a random rate from `rates` (with probability p, else rate 1).

    A rate r multiplies the window's stride: r = 2 plays twice as fast, r = 0.5 half as fast
    (with stride 1 every frame is shown twice). The window keeps its start unless the
    longer span would run off the end, in which case it moves back to fit. Records the total
    rate in `temporal/tempo`.
    """
    rates_arr = np.asarray(rates, np.float64)
    if rates_arr.size == 0 or np.any(rates_arr <= 0):
        raise ValueError(f"tempo.rates: need one or more positive rates, got {rates}")

    def op(example: dict, rng: np.random.Generator) -> dict:
        window = _Window.read(example, "tempo", short)
        views = window.views
        chosen = rng.choice(rates_arr, size=views)
        apply = rng.random(views) < per_view(p, views, "tempo.p")
        window.tempo = (window.tempo * np.where(apply, chosen, 1.0)).astype(np.float32)
        return window.write(example, window.regular_offsets())

    return op


@temporal_op("frame_skip")
def frame_skip(
    mode: Literal["uniform", "random"] = "uniform",
    skips: tuple[int, ...] = (1, 2, 4),
    max_skip: int = 3,
    p: float | tuple[float, ...] = 1.0,
    short: Short = "loop",
) -> Op:
    """Skips frames inside each window (with probability p per view).

    uniform: keep every k-th frame, k drawn from `skips` per view (a constant faster speed).
    random:  each step between consecutive frames skips a random 1..max_skip steps, so the
             clip plays at an irregular speed; it must come after tempo / uniform skipping.
    Records the mean skip factor per view in `temporal/skip` (1 where nothing was skipped).
    """
    if mode not in ("uniform", "random"):
        raise ValueError(f"frame_skip.mode: {mode!r} is not allowed; allowed: 'uniform', 'random'")
    skips_arr = np.asarray(skips, np.int64)
    if mode == "uniform" and (skips_arr.size == 0 or np.any(skips_arr < 1)):
        raise ValueError(f"frame_skip.skips: need one or more integers >= 1, got {skips}")
    if mode == "random" and max_skip < 1:
        raise ValueError(f"frame_skip.max_skip: must be >= 1, got {max_skip}")

    def op(example: dict, rng: np.random.Generator) -> dict:
        window = _Window.read(example, "frame_skip", short)
        views, frames = window.views, window.frames
        apply = rng.random(views) < per_view(p, views, "frame_skip.p")
        if mode == "uniform":
            factor = np.where(apply, rng.choice(skips_arr, size=views), 1)
            window.skip = (window.skip * factor).astype(np.float32)
            return window.write(example, window.regular_offsets())
        gaps = rng.integers(1, max_skip + 1, size=(views, frames - 1))
        gaps[~apply] = 1
        steps = np.concatenate([np.zeros((views, 1)), np.cumsum(gaps, axis=1)], axis=1)
        offsets = np.floor(steps * window.step()[:, None]).astype(np.int64)
        mean_gap = steps[:, -1] / (frames - 1) if frames > 1 else np.ones(views)
        window.skip = (window.skip * mean_gap).astype(np.float32)
        return window.write(example, offsets)

    return op


@temporal_op("reverse")
def reverse(p: float | tuple[float, ...] = 0.5) -> Op:
    """Plays views backwards with probability p; records `temporal/reversed` (bool [V])."""

    def op(example: dict, rng: np.random.Generator) -> dict:
        indices = _frame_indices(example, "reverse")
        views = indices.shape[0]
        flip = rng.random(views) < per_view(p, views, "reverse.p")
        example = dict(example)
        example["frame_indices"] = np.where(flip[:, None], indices[:, ::-1], indices)
        previous = example.get("temporal/reversed", np.zeros(views, bool))
        example["temporal/reversed"] = np.logical_xor(previous, flip)
        return example

    return op


# ------------------------------------------------------------------------------- internals


def num_frames(example: dict, op: str) -> int:
    """The example's frame count, checked: a clip needs at least one frame."""
    if "num_frames" not in example:
        raise KeyError(f"{op}: example {example.get('id')!r} has no 'num_frames'")
    n = int(example["num_frames"])
    if n < 1:
        raise ValueError(f"{op}: example {example.get('id')!r} has num_frames={n}; need >= 1")
    return n


def _check_window(op: str, frames: int, stride: int) -> None:
    if frames < 1:
        raise ValueError(f"{op}.frames: must be >= 1, got {frames}")
    if stride < 1:
        raise ValueError(f"{op}.stride: must be >= 1, got {stride}")


def _write_windows(
    example: dict, starts: np.ndarray, frames: int, stride: int, n: int, short: Short
) -> dict:
    starts = np.asarray(starts, np.int64)
    example = dict(example)
    example["frame_indices"] = place(starts[:, None] + np.arange(frames) * stride, n, short)
    example["temporal/start"] = starts.astype(np.int32)
    example["temporal/stride"] = np.full(len(starts), stride, np.int32)
    return example


def _frame_indices(example: dict, op: str) -> np.ndarray:
    indices = example.get("frame_indices")
    if indices is None or np.ndim(indices) != 2:
        raise ValueError(
            f"{op}: needs 'frame_indices' [V, T] from a window sampler earlier in the chain "
            f"(uniform_clip, rho_clips, cvrl_clips, multiview_clips, center_clip)"
        )
    return np.asarray(indices)


class _Window:
    """The regular windows behind `frame_indices`: start + floor(k * stride * tempo * skip)."""

    def __init__(self, example: dict, op: str, short: Short):
        self.op, self.short = op, short
        self.indices = _frame_indices(example, op)
        self.views, self.frames = self.indices.shape
        for key in ("temporal/start", "temporal/stride"):
            if key not in example:
                raise ValueError(f"{op}: needs {key!r}, written by the window samplers")
        self.n = num_frames(example, op)
        self.start = np.asarray(example["temporal/start"], np.int64)
        self.stride = np.asarray(example["temporal/stride"], np.int64)
        ones = np.ones(self.views, np.float32)
        self.tempo = np.asarray(example.get("temporal/tempo", ones), np.float32)
        self.skip = np.asarray(example.get("temporal/skip", ones), np.float32)
        self.reversed = np.asarray(example.get("temporal/reversed", np.zeros(self.views, bool)))

    @classmethod
    def read(cls, example: dict, op: str, short: Short) -> "_Window":
        """The windows of `example`; refuses irregular ones it could not rebuild faithfully."""
        window = cls(example, op, short)
        expected = window._indices(window.start, window.regular_offsets())
        if not np.array_equal(expected, window.indices):
            raise ValueError(
                f"{op}: the clip windows are not regular strided windows, so they cannot be "
                f"rescaled; put {op} before frame_skip(mode='random') and use the same `short` "
                f"({short!r}) as the window sampler"
            )
        return window

    def step(self) -> np.ndarray:
        """float64 [V]: frames between consecutive samples of each regular window."""
        return self.stride * self.tempo.astype(np.float64) * self.skip.astype(np.float64)

    def regular_offsets(self) -> np.ndarray:
        return np.floor(np.arange(self.frames) * self.step()[:, None]).astype(np.int64)

    def _indices(self, start: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        indices = place(start[:, None] + offsets, self.n, self.short)
        return np.where(self.reversed[:, None], indices[:, ::-1], indices)

    def write(self, example: dict, offsets: np.ndarray) -> dict:
        """Writes windows with these offsets, moving a start back where the window overruns."""
        span = offsets[:, -1] + 1
        start = np.where(self.start + span > self.n, np.maximum(self.n - span, 0), self.start)
        example = dict(example)
        example["frame_indices"] = self._indices(start, offsets)
        example["temporal/start"] = start.astype(np.int32)
        example["temporal/tempo"] = self.tempo.astype(np.float32)
        example["temporal/skip"] = self.skip.astype(np.float32)
        example["temporal/reversed"] = self.reversed.astype(bool)
        return example
