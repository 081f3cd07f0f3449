"""The built-in synthetic motion dataset: textured objects moving over textured backgrounds.

Why it exists: the quickstart and the tests need a dataset with no files on which a *video*
learner beats an image learner. Every video shows a few textured objects of one shape doing
one of eight motions, four time-reversed pairs (left/right, up/down, approach/recede,
clockwise/counterclockwise), over a drifting textured background.

Two design rules carry the purpose:
- No single frame tells the motion. Positions live on a torus (objects wrap around the edges)
  with a uniform start, orientations start uniform, and the log-scale runs as a sawtooth with
  a uniform phase, so at every frame position, orientation and size have one distribution
  whatever the motion. Only the change between frames tells the classes apart.
- Motion is what two clips of a video share, not looks. Objects live for `lifetime` frames and
  are replaced by a fresh object (new texture, colour, place, size) that keeps the video's
  shape and motion, and backgrounds come from a small shared pool; a contrastive learner that
  pairs clips of one video cannot tell videos apart by the look of their objects. A textured
  background still sits at a per-video offset, which a contrastive learner picks up within a
  few hundred steps: `background_contrast=0` (as configs/quickstart.py) leaves only motion
  and shape shared by the two clips.

Everything is a pure function of (seed, split, index, frame): records are cheap metadata and
`decode` renders only the requested frames, vectorised in numpy. Object instances (shape plus
texture id) come from disjoint texture pools per split, so the test split shows unseen objects.
Image axes: x to the right, y down; an angle increasing over time turns clockwise on screen.
"""

import dataclasses
import functools
import math
from typing import Any, Literal

import numpy as np

from vrl import registry
from vrl.data import sources

SPLITS = ("train", "test")
MOTIONS = (
    "left",
    "right",
    "up",
    "down",
    "approach",
    "recede",
    "clockwise",
    "counterclockwise",
)
SHAPES = ("disc", "square", "triangle", "cross", "star", "ring")

# Side of the square texture tile glued to every object, in texels.
_TEXTURE_SIZE = 32
# Tags that keep the random streams of videos, textures, noise and backgrounds apart.
_VIDEO_STREAM, _TEXTURE_STREAM, _NOISE_STREAM, _BACKGROUND_STREAM = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True)
class ObjectParams:
    """One object of a video: its look, its pose at t = 0 (lengths in pixels), when it shows.

    The pose is extrapolated to t = 0 even for an object that appears later, so that the pose
    at any frame is a uniform draw whatever the motion.
    """

    first_frame: int  # the object is on screen for first_frame <= t < end_frame
    end_frame: int
    texture_id: int
    radius: float  # radius at scale 1
    position: tuple[float, float]  # (x, y) at t = 0, on the torus [0, size)^2
    angle: float  # orientation at t = 0, radians
    scale_phase: float  # in [0, 1), where the log-scale sawtooth starts


@dataclasses.dataclass(frozen=True)
class VideoParams:
    """Everything that defines one video; a frame is a pure function of these and its index.

    All objects share the shape and the motion (the labels) and differ in look and start.
    `objects` lists every object of the video; each one shows in its own window of frames.
    Times are in frames. Each object's log-scale is a sawtooth:
    log(scale(t)) = log(lo) + frac(scale_phase + zoom * t) * log(hi / lo).
    """

    motion: int
    shape: int
    objects: tuple[ObjectParams, ...]  # drawn in order, later ones in front
    velocity: tuple[float, float]  # (vx, vy) pixels per frame
    spin: float  # radians per frame, > 0 is clockwise on screen
    zoom: float  # fraction of the log-scale range per frame, > 0 grows
    background_id: int  # index into the shared background pool
    noise_seed: int
    background_offset: tuple[float, float]  # (x, y) shift of the background at t = 0
    background_velocity: tuple[float, float]  # per frame, independent of the motion label


@registry.register("source", "synthetic")
@dataclasses.dataclass(frozen=True)
class SyntheticMotion(sources.Source):
    """Procedural motion videos; labels `motion` (8 chiral classes) and `appearance` (shape).

    Speeds are per frame and relative to `size`, so a larger render shows the same videos.
    """

    split: Literal["train", "test"] = "train"
    num_videos: int | None = None  # None: 2048 for train, 512 for test
    frames: int = 32
    size: int = 64
    fps: float = 25.0
    seed: int = 0
    objects: int = 3  # objects on screen at once, all with the video's shape and motion
    lifetime: int = 12  # frames an object lives before a fresh one replaces it; 0: forever
    speed: tuple[float, float] = (0.01, 0.03)  # translation, fraction of `size` per frame
    spin: tuple[float, float] = (0.05, 0.15)  # rotation, radians per frame
    zoom: tuple[float, float] = (0.01, 0.025)  # fraction of the log-scale range per frame
    scale_range: tuple[float, float] = (0.6, 1.8)  # object scale, sawtooth in log space
    radius: tuple[float, float] = (0.1, 0.15)  # object radius at scale 1, fraction of `size`
    background_drift: float = 0.005  # largest background speed, fraction of `size` per frame
    background_contrast: float = 0.12  # std of the background texture around its mean colour
    backgrounds: int = 8  # size of the background pool shared by all videos and splits
    noise: float = 0.02  # std of per-pixel noise, in [0, 1] intensity units
    textures_per_split: int = 256  # object texture pool of each split (pools are disjoint)

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ValueError(f"synthetic: split {self.split!r} is not allowed; allowed: {SPLITS}")
        if self.num_videos is not None and self.num_videos < 1:
            raise ValueError(f"synthetic: num_videos must be >= 1 or None, got {self.num_videos}")
        if self.frames < 1 or self.size < 8:
            raise ValueError(
                f"synthetic: need frames >= 1 and size >= 8, got frames={self.frames}, "
                f"size={self.size}"
            )
        for key in ("speed", "spin", "zoom", "scale_range", "radius"):
            lo, hi = getattr(self, key)
            if not 0 <= lo <= hi:
                raise ValueError(f"synthetic: {key} must be (low, high) with 0 <= low <= high")
        if self.scale_range[0] <= 0:
            raise ValueError(f"synthetic: scale_range must be positive, got {self.scale_range}")
        for key in ("objects", "backgrounds", "textures_per_split"):
            if getattr(self, key) < 1:
                raise ValueError(f"synthetic: {key} must be >= 1, got {getattr(self, key)}")
        if self.lifetime < 0:
            raise ValueError(f"synthetic: lifetime must be >= 0 (0: forever), got {self.lifetime}")

    # ---- records -------------------------------------------------------------------------

    def __len__(self) -> int:
        if self.num_videos is not None:
            return self.num_videos
        return 2048 if self.split == "train" else 512

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._check_index(index)
        motion, shape = self._labels(index)
        return {
            "id": f"synthetic/{self.split}/{index}",
            "num_frames": self.frames,
            "fps": self.fps,
            "labels": {"motion": motion, "appearance": shape},
            "index": index,
        }

    @property
    def label_names(self) -> dict[str, list[str]]:
        return {"motion": list(MOTIONS), "appearance": list(SHAPES)}

    def _labels(self, index: int) -> tuple[int, int]:
        # Balanced by construction: every run of len(MOTIONS) * len(SHAPES) indices holds each
        # (motion, shape) pair once.
        return index % len(MOTIONS), (index // len(MOTIONS)) % len(SHAPES)

    def _check_index(self, index: int) -> int:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"synthetic/{self.split}: index {index} out of range [0, {len(self)})")
        return index

    # ---- video parameters ----------------------------------------------------------------

    def video_params(self, index: int) -> VideoParams:
        """The parameters of video `index`, drawn from a stream keyed by (seed, split, index)."""
        index = self._check_index(index)
        motion, shape = self._labels(index)
        split_id = SPLITS.index(self.split)
        rng = np.random.default_rng([self.seed, _VIDEO_STREAM, split_id, index])
        size = self.size
        speed = rng.uniform(*self.speed) * size
        spin = rng.uniform(*self.spin)
        zoom = rng.uniform(*self.zoom)
        velocity = {
            "left": (-speed, 0.0),
            "right": (speed, 0.0),
            "up": (0.0, -speed),
            "down": (0.0, speed),
        }.get(MOTIONS[motion], (0.0, 0.0))
        objects = []
        for _ in range(self.objects):
            # Lives of one screen slot tile [0, frames), starting at a random phase.
            life = self.lifetime or self.frames
            first = -int(rng.integers(life)) if self.lifetime else 0
            while first < self.frames:
                objects.append(self._draw_object(rng, split_id, first, first + life))
                first += life
        drift_angle = rng.uniform(0, 2 * np.pi)
        drift = rng.uniform(0, self.background_drift) * size
        return VideoParams(
            motion=motion,
            shape=shape,
            objects=tuple(objects),
            velocity=velocity,
            spin={"clockwise": spin, "counterclockwise": -spin}.get(MOTIONS[motion], 0.0),
            zoom={"approach": zoom, "recede": -zoom}.get(MOTIONS[motion], 0.0),
            background_id=int(rng.integers(self.backgrounds)),
            noise_seed=int(rng.integers(2**31)),
            background_offset=(float(rng.uniform(0, size)), float(rng.uniform(0, size))),
            background_velocity=(drift * np.cos(drift_angle), drift * np.sin(drift_angle)),
        )

    def _draw_object(
        self, rng: np.random.Generator, split_id: int, first: int, end: int
    ) -> ObjectParams:
        size = self.size
        return ObjectParams(
            first_frame=max(first, 0),
            end_frame=min(end, self.frames),
            texture_id=split_id * self.textures_per_split
            + int(rng.integers(self.textures_per_split)),
            radius=float(rng.uniform(*self.radius) * size),
            position=(float(rng.uniform(0, size)), float(rng.uniform(0, size))),
            angle=float(rng.uniform(0, 2 * np.pi)),
            scale_phase=float(rng.uniform()),
        )

    # ---- rendering -----------------------------------------------------------------------

    def decode(self, record: dict[str, Any], frame_indices: np.ndarray) -> np.ndarray:
        """uint8 [*frame_indices.shape, size, size, 3]; renders only the requested frames."""
        params, t, inverse, shape = self._prepare(record, frame_indices)
        rgb, _ = self.render(params, t)
        return rgb[inverse].reshape(*shape, self.size, self.size, 3)

    def object_masks(self, record: dict[str, Any], frame_indices: np.ndarray) -> np.ndarray:
        """bool [*frame_indices.shape, size, size]: where objects are (for checks and plots)."""
        params, t, inverse, shape = self._prepare(record, frame_indices)
        _, mask = self.render(params, t)
        return mask[inverse].reshape(*shape, self.size, self.size)

    def _prepare(self, record: dict[str, Any], frame_indices: np.ndarray):
        prefix = f"synthetic/{self.split}/"
        if not str(record.get("id", "")).startswith(prefix):
            raise ValueError(
                f"synthetic/{self.split}: record {record.get('id')!r} is not from this split"
            )
        frame_indices = np.asarray(frame_indices)
        if frame_indices.size and not np.issubdtype(frame_indices.dtype, np.integer):
            raise ValueError(
                f"synthetic: frame indices must be integers, got dtype {frame_indices.dtype}"
            )
        if frame_indices.size and (frame_indices.min() < 0 or frame_indices.max() >= self.frames):
            raise ValueError(
                f"{record['id']}: frame indices must lie in [0, {self.frames}), got "
                f"[{frame_indices.min()}, {frame_indices.max()}]"
            )
        # Render each distinct frame once (looped clips repeat frames).
        t, inverse = np.unique(frame_indices.reshape(-1), return_inverse=True)
        return self.video_params(record["index"]), t, inverse, frame_indices.shape

    def render(self, params: VideoParams, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 rgb [F, size, size, 3], bool object mask [F, size, size]) at frame times `t`.

        A pure function of (params, t): any frame can be rendered alone, in any order.
        """
        size = self.size
        t = np.asarray(t, np.float32).reshape(-1)

        # Background: windows into a 2x2 tiling of a seamless tile, shifted by the drift.
        tile = _background(self.seed, params.background_id, size, self.background_contrast)
        tiles = np.tile(tile, (2, 2, 1))
        ox = np.round(params.background_offset[0] + params.background_velocity[0] * t)
        oy = np.round(params.background_offset[1] + params.background_velocity[1] * t)
        ox, oy = ox.astype(np.int64) % size, oy.astype(np.int64) % size
        pixels = np.empty((len(t), size, size, 3), np.float32)
        for i in range(len(t)):
            pixels[i] = tiles[oy[i] : oy[i] + size, ox[i] : ox[i] + size]

        masks = np.zeros((len(t), size, size), bool)
        for obj in params.objects:
            alive = (t >= obj.first_frame) & (t < obj.end_frame)
            if not alive.any():
                continue
            mask, colours = self._render_object(params, obj, t[alive])
            frame, y, x = np.nonzero(mask)  # in the order of `colours`
            frame = np.flatnonzero(alive)[frame]
            pixels[frame, y, x] = colours
            masks[frame, y, x] = True

        if self.noise > 0:
            pixels += _frame_noise(size, params.noise_seed, t, self.noise)
        pixels *= 255
        pixels += 0.5
        rgb = np.clip(pixels, 0, 255, out=pixels).astype(np.uint8)
        return rgb, masks

    def _render_object(
        self, params: VideoParams, obj: ObjectParams, t: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(bool mask [F, size, size], float32 colours [mask.sum(), 3]) of one object."""
        size = self.size
        tt = t[:, None, None]
        grid = np.arange(size, dtype=np.float32)
        # Pose at each frame; offsets from the object's centre wrap around the torus.
        cx = (obj.position[0] + params.velocity[0] * tt) % size
        cy = (obj.position[1] + params.velocity[1] * tt) % size
        dx = (grid[None, None, :] - cx + size / 2) % size - size / 2  # [F, 1, size]
        dy = (grid[None, :, None] - cy + size / 2) % size - size / 2  # [F, size, 1]
        lo, hi = math.log(self.scale_range[0]), math.log(self.scale_range[1])
        log_scale = lo + ((obj.scale_phase + params.zoom * tt) % 1.0) * (hi - lo)
        inverse_radius = np.exp(-log_scale) / obj.radius
        angle = obj.angle + params.spin * tt
        cos, sin = np.cos(angle) * inverse_radius, np.sin(angle) * inverse_radius
        # Object coordinates: the object is the shape inside the unit disc, turned by `angle`.
        u = cos * dx + sin * dy
        v = cos * dy - sin * dx
        mask = _SHAPE_TESTS[SHAPES[params.shape]](u, v)
        # The texture is glued to the object: it turns and scales with it.
        n = _TEXTURE_SIZE
        texels = _object_texture(self.seed, obj.texture_id).reshape(n * n, 3)
        tu = np.clip(((u[mask] + 1) * (n / 2)).astype(np.int32), 0, n - 1)
        tv = np.clip(((v[mask] + 1) * (n / 2)).astype(np.int32), 0, n - 1)
        return mask, texels[tv * n + tu]


# ---- shapes: boolean tests on object coordinates (u, v), all inside the unit disc ----------


def _polygon(u: np.ndarray, v: np.ndarray, sides: int, inradius: float) -> np.ndarray:
    inside = np.ones(u.shape, bool)
    for k in range(sides):
        phi = 2 * np.pi * k / sides - np.pi / 2
        inside &= u * np.cos(phi) + v * np.sin(phi) <= inradius
    return inside


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Five points: the boundary radius falls linearly from 1 at a tip to 0.45 between tips.
    phase = (np.arctan2(v, u) * (5 / (2 * np.pi)) + 0.25) % 1.0
    return np.hypot(u, v) <= 0.45 + 0.55 * np.abs(2 * phase - 1)


_SHAPE_TESTS = {
    "disc": lambda u, v: u * u + v * v <= 1.0,
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= 0.75,
    "triangle": lambda u, v: _polygon(u, v, 3, 0.55),
    "cross": lambda u, v: (
        (np.minimum(np.abs(u), np.abs(v)) <= 0.3) & (np.maximum(np.abs(u), np.abs(v)) <= 0.95)
    ),
    "star": _star,
    "ring": lambda u, v: (u * u + v * v <= 1.0) & (u * u + v * v >= 0.3),
}


# ---- textures ------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cycles: float, channels: int):
    """Periodic smooth noise [h, w, channels], unit std: white noise low-passed in Fourier space.

    `cycles` is the width of the Gaussian pass band in cycles per tile; the result tiles
    seamlessly, which the wrapping background relies on.
    """
    h, w = shape
    fy = np.fft.fftfreq(h)[:, None] * h
    fx = np.fft.rfftfreq(w)[None, :] * w
    gain = np.exp(-(fx**2 + fy**2) / (2 * cycles**2))
    gain[0, 0] = 0.0  # zero mean
    white = rng.standard_normal((channels, h, w))
    field = np.fft.irfft2(np.fft.rfft2(white) * gain, s=(h, w))
    field /= field.std(axis=(1, 2), keepdims=True) + 1e-8
    return np.moveaxis(field, 0, -1).astype(np.float32)


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
    return (v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)).astype(np.float32)


@functools.lru_cache(maxsize=1024)
def _object_texture(seed: int, texture_id: int) -> np.ndarray:
    """float32 [n, n, 3] texture of one object instance: two saturated colours in blobs."""
    rng = np.random.default_rng([seed, _TEXTURE_STREAM, texture_id])
    hue = rng.uniform()
    first = _hsv_to_rgb(hue, rng.uniform(0.7, 1.0), rng.uniform(0.75, 1.0))
    second = _hsv_to_rgb(
        (hue + rng.uniform(0.3, 0.7)) % 1.0, rng.uniform(0.6, 1.0), rng.uniform(0.35, 0.7)
    )
    blobs = _smooth_noise(rng, (_TEXTURE_SIZE, _TEXTURE_SIZE), rng.uniform(1.5, 3.0), 1)
    weight = 1 / (1 + np.exp(-4 * blobs))
    texture = first * weight + second * (1 - weight)
    texture.flags.writeable = False
    return texture


@functools.lru_cache(maxsize=64)
def _background(seed: int, background_id: int, size: int, contrast: float) -> np.ndarray:
    """float32 [size, size, 3] seamless tile: a pale colour with smooth light and colour noise."""
    rng = np.random.default_rng([seed, _BACKGROUND_STREAM, background_id, size])
    # One spectrum and a narrow range of pale colours: no background stands out by its style.
    base = _hsv_to_rgb(rng.uniform(), rng.uniform(0.0, 0.2), rng.uniform(0.4, 0.6))
    shade = _smooth_noise(rng, (size, size), 2.0, 1)
    tint = _smooth_noise(rng, (size, size), 2.0, 3)
    tile = base + contrast * (shade + 0.3 * tint)
    tile = np.clip(tile, 0, 1).astype(np.float32)
    tile.flags.writeable = False
    return tile


def _frame_noise(size: int, noise_seed: int, t: np.ndarray, std: float) -> np.ndarray:
    """float32 [F, size, size, 3] zero-mean uniform noise of std `std`, fixed per (video, frame).

    Uniform rather than Gaussian: several times cheaper to draw, as good at hiding exact pixels.
    """
    out = np.empty((len(t), size, size, 3), np.float32)
    for i, frame in enumerate(t.astype(np.int64)):
        np.random.default_rng([_NOISE_STREAM, noise_seed, int(frame)]).random(
            dtype=np.float32, out=out[i]
        )
    out -= 0.5
    out *= std * math.sqrt(12.0)
    return out
