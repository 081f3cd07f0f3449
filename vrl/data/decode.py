"""Frame-accurate, window-only video decoding with PyAV.

Frame index i means "the frame shown at time i / fps", where fps is the requested rate (the
stream's average rate when None). For each requested time the decoder returns the frame with
the largest presentation timestamp at or before it, so variable-frame-rate files and
resampling to another rate both work by timestamps rather than by counting frames. A frame
counts as shown at t when its timestamp is at most 1 ms (or a tenth of a frame, if less) after
t, because containers such as WebM round timestamps to milliseconds.

Only what a clip needs is decoded: the requested times are visited in order, and before a
time that lies well ahead of the decoder the container seeks back to the keyframe preceding
it (a per-window seek), instead of decoding everything in between. Between the keyframe and
the requested frames, packets that no requested time can show are sent with FFmpeg's
`skip_frame=NONREF`: the codec drops them if no other frame references them (H.264/HEVC
B-frames, about half of a typical stream) and decodes them otherwise, so the reference chain
stays intact. Whether a packet can be shown is judged from its presentation timestamp before
decoding; if a dropped frame turns out to be the one to show (a gap in a variable-frame-rate
stream), that window is decoded again without skipping, so results are always exact.

Every failure (unreadable container, no video stream, damaged or truncated data, an index
past the last decodable frame) raises `DecodeError` naming the file and the reason.
"""

import bisect
import contextlib
import dataclasses
import functools
import io
import math
import os
from collections.abc import Iterator, Sequence
from typing import IO, Any

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from vrl import storage

VideoInput = str | os.PathLike | bytes | bytearray | memoryview | IO[bytes]

MAX_SIDE = 16384  # larger declared frames are treated as corrupt headers, not decoded
MAX_PIXELS = 1 << 26  # ~67 Mpixel: above 8K UHD
# Without a keyframe index, seek only when the next time is this far ahead of the decoder.
_SEEK_GAP_S = 1.0
# Containers lacking durations are counted by demuxing (not decoding) every packet, at most:
_MAX_PROBE_PACKETS = 1_000_000
# num_frames at a rate = the indices whose time i / fps falls before the end, less a margin of
# _COUNT_SLACK frames that absorbs millisecond-rounded durations (60.03 -> 60, 59.97 -> 60).
_COUNT_SLACK = 0.1
# Packets whose frame lies less than this many frame periods before a requested time are
# always decoded: at a constant rate the frame shown at a time is the one at it, so between
# strided frames of a clip the unreferenced ones are dropped too.
_SKIP_MARGIN_FRAMES = 1
# Containers that hold a still image, not a video (FFmpeg opens them as one-frame streams).
_IMAGE_FORMATS = ("image2", "_pipe")


class DecodeError(RuntimeError):
    """A record that cannot be decoded (corrupt, truncated, empty); the pipeline skips it."""


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What `probe` learns from a video's headers: frames at `fps`, size and length (seconds)."""

    num_frames: int
    fps: float
    width: int
    height: int
    duration: float


@dataclasses.dataclass
class DecodeStats:
    """Work counters one can pass to `decode_frames` (benchmarks and tests read them)."""

    frames_decoded: int = 0
    seeks: int = 0
    # Packets sent with skip_frame=NONREF (the codec drops those no frame references).
    packets_skippable: int = 0


def probe(
    file_or_bytes: VideoInput, fps: float | None = None, *, name: str | None = None
) -> VideoInfo:
    """Frame count at `fps` (native average rate when None), size and duration of a video.

    Reads headers only; a full demux pass (packets, no decoding) happens only for streams that
    declare neither a frame count nor any duration.
    """
    label = _label(file_or_bytes, name)
    _check_rate(fps, label)
    with _open(file_or_bytes, label) as container:
        stream = _video_stream(container, label)
        try:
            native = _native_fps(container, stream, label)
            duration = _duration(container, stream, native, label)
        except av.FFmpegError as e:
            raise DecodeError(f"{label}: cannot read the video stream: {e}") from e
        width, height = stream.codec_context.width, stream.codec_context.height
    if fps is None:
        count = _count(duration, native)
        if stream.frames > 0:  # a VFR stream's average rate may put its last indices past the end
            count = min(stream.frames, count) if count > 0 else stream.frames
        rate = native
    else:
        count, rate = _count(duration, fps), float(fps)
    if count <= 0:
        raise DecodeError(f"{label}: the video stream has no frames")
    return VideoInfo(num_frames=count, fps=rate, width=width, height=height, duration=duration)


def decode_frames(
    file_or_bytes: VideoInput,
    frame_indices: np.ndarray,
    *,
    fps: float | None = None,
    short_side: int | None = None,
    name: str | None = None,
    stats: DecodeStats | None = None,
) -> np.ndarray:
    """uint8 RGB frames [*frame_indices.shape, H, W, 3] at integer indices (times i / fps).

    `short_side` resizes (area filter) so min(H, W) == short_side, keeping the aspect ratio.
    `name` labels error messages when decoding bytes; `stats` accumulates decoder work.
    """
    label = _label(file_or_bytes, name)
    indices = _check_indices(frame_indices, label)
    _check_rate(fps, label)
    if short_side is not None and short_side <= 0:
        raise ValueError(f"{label}: short_side must be positive, got {short_side}")
    stats = stats if stats is not None else DecodeStats()
    with _open(file_or_bytes, label) as container:
        stream = _video_stream(container, label)
        try:
            return _decode(container, stream, indices, fps, short_side, label, stats)
        except av.FFmpegError as e:
            raise DecodeError(f"{label}: decoding failed: {e}") from e


def iter_frames(
    file_or_bytes: VideoInput,
    *,
    fps: float | None = None,
    short_side: int | None = None,
    name: str | None = None,
) -> Iterator[np.ndarray]:
    """Every frame in order, resampled to `fps` when given: one sequential pass, O(1) memory.

    Used to transcode whole videos; the frame at index i is the one `decode_frames` returns
    for i, and the number of frames is `probe(..., fps).num_frames` (or fewer if truncated).
    """
    label = _label(file_or_bytes, name)
    _check_rate(fps, label)
    with _open(file_or_bytes, label) as container:
        stream = _video_stream(container, label)
        reader = None
        try:
            native = _native_fps(container, stream, label)
            _threads(stream)
            reader = _Reader(container, stream, native, label, DecodeStats())
            to_rgb = _ToRGB(_output_size(stream, short_side))
            rate = float(fps) if fps is not None else native
            index = 0
            while True:
                ticks = reader.ticks(index / rate)
                frame = reader.frame_at(ticks, allow_end=True)
                if frame is None:
                    return
                yield to_rgb(frame)
                index += 1
        except av.FFmpegError as e:
            raise DecodeError(f"{label}: decoding failed: {e}") from e
        finally:
            if reader is not None:
                reader.close()


def decode_jpegs(
    images: Sequence[bytes], *, short_side: int | None = None, name: str = "<jpeg frames>"
) -> np.ndarray:
    """uint8 RGB [N, H, W, 3] from N JPEG images of one size (a `--store=frames` video).

    FFmpeg's MJPEG decoder and the colour conversion (and `short_side` area resize) that
    `decode_frames` uses, so both stores give the same pixels for the same YUV data; it also
    beats PIL's JPEG decoding by 20-30% here. Damaged data raises DecodeError: truncated images
    are caught (err_detect=explode), which FFmpeg would otherwise fill in grey.
    """
    if short_side is not None and short_side <= 0:
        raise ValueError(f"{name}: short_side must be positive, got {short_side}")
    context = av.CodecContext.create("mjpeg", "r")
    context.thread_count = 1  # one image per call: threads would only add start-up work
    context.options = {"err_detect": "explode"}
    out, to_rgb, size = None, None, None
    for position, data in enumerate(images):
        try:
            frames = context.decode(av.Packet(data)) if len(data) else []
        except av.FFmpegError as e:
            raise DecodeError(f"{name}: unreadable JPEG frame {position}: {e}") from e
        if len(frames) != 1:
            raise DecodeError(f"{name}: unreadable JPEG frame {position}: no image in it")
        frame = frames[0]
        if out is None:
            size = (frame.width, frame.height)
            to_rgb = _ToRGB(_scaled(*size, short_side))
            out = np.empty((len(images), to_rgb.size[1], to_rgb.size[0], 3), np.uint8)
        elif (frame.width, frame.height) != size:
            raise DecodeError(
                f"{name}: JPEG frame {position} is {frame.width}x{frame.height}, frame 0 is "
                f"{size[0]}x{size[1]}; the frames of a video must share one size"
            )
        out[position] = to_rgb(frame)
    return out if out is not None else np.zeros((0, 0, 0, 3), np.uint8)


def num_frames_at(num_frames: int, native_fps: float, fps: float | None) -> int:
    """Frames of a `num_frames`-long video at `native_fps` when resampled to `fps`."""
    if fps is None or fps == native_fps:
        return num_frames
    return _count(num_frames / native_fps, fps)


def resample_indices(frame_indices: np.ndarray, native_fps: float, fps: float | None) -> np.ndarray:
    """Native frame indices for indices at `fps`: the last native frame at or before each time.

    The same rule as `decode_frames`, for sources that store frames at a fixed rate.
    """
    indices = np.asarray(frame_indices, np.int64)
    if fps is None or fps == native_fps:
        return indices
    return np.floor(indices * (native_fps / fps) + 1e-3).astype(np.int64)


# --- internals ----------------------------------------------------------------------------


class _Reader:
    """A forward cursor over decoded frames that seeks per window of requested times.

    Once `targets` is set (the sorted timestamps, in ticks, that will be asked for), packets
    that cannot be shown at any of them are sent with skip_frame=NONREF; while it is None,
    every frame is decoded.
    """

    def __init__(self, container, stream, native_fps: float, label: str, stats: DecodeStats):
        self.container, self.stream, self.label, self.stats = container, stream, label, stats
        self.time_base = float(stream.time_base)
        self.start = stream.start_time if stream.start_time is not None else 0
        self.period = 1.0 / (native_fps * self.time_base)  # one native frame, in ticks
        self.tolerance = min(1e-3 / self.time_base, 0.1 * self.period)
        self.targets: list[int] | None = None
        # A frame this close before a target may be the one shown at it: always decoded.
        self.margin = _SKIP_MARGIN_FRAMES * self.period
        self.skipped: list[int] = []  # timestamps of packets sent as skippable since the restart
        self.frames: Iterator[Any] | None = None
        self.prev = self.ahead = None  # last frame at or before the cursor; the next frame
        self.prev_ticks = self.ahead_ticks = None
        self.from_start = False  # decoding began at the start of the stream
        self.error: str | None = None  # why decoding stopped early (damaged or truncated data)

    def close(self) -> None:
        """Drops the frame generator, which refers back to the reader: without this the pair
        is a reference cycle that keeps the decoder's frame buffers alive until the garbage
        collector runs (hundreds of MB in a busy worker)."""
        if self.frames is not None and hasattr(self.frames, "close"):
            self.frames.close()
        self.frames = self.prev = self.ahead = None

    def ticks(self, seconds: float) -> int:
        """A time (seconds from the stream start) as a timestamp in stream ticks, tolerance in."""
        return self.start + math.floor(seconds / self.time_base + self.tolerance)

    def frame_at(self, ticks: int, allow_end: bool = False):
        """The frame with the largest timestamp <= ticks (None past the end if allow_end)."""
        if self.frames is None:
            self._restart(None if ticks - self.start < self.period else ticks)
        elif self._worth_seeking(ticks):
            self._restart(ticks)
        self._advance(ticks)
        if self._dropped_before(ticks):  # a dropped frame may be the one to show: redo exactly
            self.targets = None
            self._restart(ticks, must=True)
            self._advance(ticks)
        if self.prev is None and not self.from_start:  # the seek landed after the time
            self._restart(None)
            self._advance(ticks)
        if self.prev is None:  # a time before the first frame (inexact start): the first frame
            if self.ahead is None:
                reason = f": {self.error}" if self.error else ""
                raise DecodeError(f"{self.label}: no decodable video frames{reason}")
            self._take_ahead()
        if self.ahead is None and ticks >= self.prev_ticks + self._duration(self.prev):
            if allow_end:
                return None
            seconds = (ticks - self.start) * self.time_base
            last = (self.prev_ticks - self.start) * self.time_base
            reason = f" ({self.error})" if self.error else ""
            raise DecodeError(
                f"{self.label}: time {seconds:.3f}s is past the last decodable frame "
                f"(at {last:.3f}s){reason}; the file may be truncated"
            )
        return self.prev

    def _advance(self, ticks: int) -> None:
        """Decodes until the next frame lies after `ticks`, or the stream ends."""
        while True:
            if self.ahead is None:
                self.ahead, self.ahead_ticks = self._next()
                if self.ahead is None:
                    return
            if self.ahead_ticks > ticks:
                return
            self._take_ahead()

    def _take_ahead(self) -> None:
        self.prev, self.prev_ticks = self.ahead, self.ahead_ticks
        self.ahead = self.ahead_ticks = None

    def _next(self):
        try:
            frame = next(self.frames)
        except StopIteration:
            return None, None
        except av.FFmpegError as e:  # damaged data: the stream ends at the last good frame
            self.error = f"decoding stopped: {e}"
            self.frames = iter(())
            return None, None
        self.stats.frames_decoded += 1
        if frame.pts is not None:
            return frame, frame.pts
        last = self.ahead_ticks if self.ahead_ticks is not None else self.prev_ticks
        return frame, self.start if last is None else last + round(self.period)

    def _duration(self, frame) -> float:
        return frame.duration if frame.duration else self.period

    def _worth_seeking(self, ticks: int) -> bool:
        """Seek when the keyframe before `ticks` lies after the decoder's position."""
        position = self.ahead_ticks if self.ahead is not None else self.prev_ticks
        if position is None or ticks <= position:
            return False
        if self.keyframes is not None:
            slot = np.searchsorted(self.keyframes, ticks, side="right") - 1
            return slot >= 0 and self.keyframes[slot] > position
        return (ticks - position) * self.time_base > _SEEK_GAP_S

    def _restart(self, ticks: int | None, must: bool = False) -> None:
        """Seeks to the keyframe before `ticks` (None: decode from the start, no seek first).

        A failed seek keeps decoding forward, unless `must`: then decoding restarts from the
        start (or raises DecodeError when that is impossible too).
        """
        if ticks is None and self.frames is not None:
            try:
                self.container.seek(int(self.start), backward=True, stream=self.stream)
            except av.FFmpegError as e:
                raise DecodeError(f"{self.label}: cannot seek back to the start: {e}") from e
            self.stats.seeks += 1
        elif ticks is not None:
            try:
                self.container.seek(int(ticks), backward=True, stream=self.stream)
                self.stats.seeks += 1
            except av.FFmpegError:
                if self.frames is not None and must:
                    return self._restart(None)
                if self.frames is not None:
                    return  # not seekable: keep decoding forward, just slower
                ticks = None  # decode from where the container opened: the start
        self.frames = self._decoded()
        self.skipped = []
        self.prev = self.ahead = self.prev_ticks = self.ahead_ticks = None
        self.from_start = ticks is None
        self.error = None

    def _decoded(self) -> Iterator[Any]:
        """Decoded frames from the current position, skippable packets marked NONREF."""
        context = self.stream.codec_context
        mode = None
        for packet in self.container.demux(self.stream):
            skip = self._skippable(packet.pts)
            if skip != mode:
                context.skip_frame = "NONREF" if skip else "DEFAULT"
                mode = skip
            if skip:
                self.skipped.append(packet.pts)
                self.stats.packets_skippable += 1
            yield from packet.decode()

    def _skippable(self, pts: int | None) -> bool:
        """No target lies within `margin` at or after `pts`: its frame is shown at none."""
        if self.targets is None or pts is None:
            return False
        slot = bisect.bisect_left(self.targets, pts)  # per packet: bisect beats numpy here
        return slot == len(self.targets) or self.targets[slot] >= pts + self.margin

    def _dropped_before(self, ticks: int) -> bool:
        """Whether a packet sent as skippable lies after the frame found for `ticks` (so it was
        dropped, and may have been the frame to show)."""
        if not self.skipped:
            return False
        after = self.prev_ticks if self.prev is not None else None
        if after is not None and ticks - after < self.margin:
            return False  # the frame found is within the margin, where nothing is skipped
        return any(q <= ticks and (after is None or q > after) for q in self.skipped)

    @functools.cached_property
    def keyframes(self) -> np.ndarray | None:
        """Keyframe presentation timestamps from the container's index (built only if a window
        needs it).

        MP4 indexes hold decoding timestamps, which run ahead of presentation by the B-frame
        reorder delay: x264's keyframe shown at frame 250 is indexed at 248. Taken as is, a time
        between the two looks like it lies past that keyframe, the seek lands on the keyframe
        before, and everything from there is decoded a second time. The index is shifted by
        its first keyframe's lead on the stream start (zero for indexes of presentation times).
        """
        try:
            keys = [e.timestamp for e in self.stream.index_entries if e.is_keyframe]
        except (AttributeError, av.FFmpegError):
            return None
        if len(keys) <= 1:
            return None
        keys = np.asarray(sorted(keys), np.int64)
        return keys + max(0, self.start - int(keys[0]))


def _decode(container, stream, indices, fps, short_side, label, stats) -> np.ndarray:
    native = _native_fps(container, stream, label)
    size = _output_size(stream, short_side)
    rate = float(fps) if fps is not None else native
    flat = indices.reshape(-1)
    out = np.empty((flat.size, size[1], size[0], 3), np.uint8)
    if flat.size == 0:
        return out.reshape(*indices.shape, size[1], size[0], 3)
    _threads(stream)
    reader = _Reader(container, stream, native, label, stats)
    order = np.argsort(flat, kind="stable")
    targets = [reader.ticks(int(i) / rate) for i in flat[order]]
    reader.targets = targets
    to_rgb = _ToRGB(size)
    last_frame, last_rgb = None, None  # times come in order: only the latest frame can repeat
    try:
        for position, ticks in zip(order, targets):
            frame = reader.frame_at(ticks)
            if frame is not last_frame:
                last_frame, last_rgb = frame, to_rgb(frame)
            out[position] = last_rgb
    finally:
        reader.close()
    return out.reshape(*indices.shape, size[1], size[0], 3)


class _ToRGB:
    """Frame -> uint8 RGB [H, W, 3] at `size` (area filter), through one reused swscale
    context: building a context per frame costs several times the conversion itself."""

    def __init__(self, size: tuple[int, int]):
        self.size = size
        self.reformatter = VideoReformatter()

    def __call__(self, frame) -> np.ndarray:
        width, height = self.size
        rgb = self.reformatter.reformat(
            frame, width=width, height=height, format="rgb24", interpolation="AREA"
        )
        return rgb.to_ndarray()


def _output_size(stream, short_side: int | None) -> tuple[int, int]:
    return _scaled(stream.codec_context.width, stream.codec_context.height, short_side)


def _scaled(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(width, height) resized so the short side is `short_side` (unchanged when None)."""
    if short_side is None:
        return width, height
    scale = short_side / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _threads(stream) -> None:
    try:
        stream.codec_context.thread_type = "AUTO"
    except (AttributeError, ValueError, av.FFmpegError):
        pass  # a codec without threading decodes single-threaded


@contextlib.contextmanager
def _open(file_or_bytes: VideoInput, label: str) -> Iterator[Any]:
    """The container of a video given as bytes, a file object, a local path or a bucket URL.

    A URL is read through a file object, so that a clip fetches only the byte ranges the
    decoder asks for, not the whole object.
    """
    opened = None
    if isinstance(file_or_bytes, (bytes, bytearray, memoryview)):
        if len(file_or_bytes) == 0:
            raise DecodeError(f"{label}: empty input (0 bytes)")
        source: Any = io.BytesIO(file_or_bytes)
    elif isinstance(file_or_bytes, (str, os.PathLike)) and storage.is_remote(file_or_bytes):
        try:
            source = opened = storage.path(file_or_bytes).open("rb")
        except FileNotFoundError:
            raise DecodeError(f"{label}: no such file") from None
        except OSError as e:
            raise DecodeError(f"{label}: cannot read: {e}") from e
        if getattr(source, "size", None) == 0:
            source.close()
            raise DecodeError(f"{label}: empty file (0 bytes)")
    elif isinstance(file_or_bytes, (str, os.PathLike)):
        path = os.fspath(file_or_bytes)
        if not os.path.isfile(path):
            raise DecodeError(f"{label}: no such file")
        if os.path.getsize(path) == 0:
            raise DecodeError(f"{label}: empty file (0 bytes)")
        source = path
    else:
        source = file_or_bytes
    try:
        try:
            container = av.open(source, mode="r")
        except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
            raise DecodeError(f"{label}: not a readable video container: {e}") from e
        with container:
            if any(part in container.format.name for part in _IMAGE_FORMATS):
                raise DecodeError(
                    f"{label}: is a still image ({container.format.name}), not a video"
                )
            yield container
    finally:
        if opened is not None:
            opened.close()


def _video_stream(container, label: str):
    if not container.streams.video:
        kinds = ", ".join(sorted({s.type for s in container.streams})) or "none"
        raise DecodeError(f"{label}: no video stream (streams: {kinds})")
    stream = container.streams.video[0]
    width, height = stream.codec_context.width, stream.codec_context.height
    if width <= 0 or height <= 0:
        raise DecodeError(f"{label}: the video stream declares no frame size ({width}x{height})")
    if max(width, height) > MAX_SIDE or width * height > MAX_PIXELS:
        raise DecodeError(
            f"{label}: declared frame size {width}x{height} exceeds the limit "
            f"({MAX_SIDE} per side, {MAX_PIXELS} pixels); the header is likely corrupt"
        )
    return stream


def _native_fps(container, stream, label: str) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0 and float(rate) < 1000:
            return float(rate)
    duration = _duration(container, stream, None, label)
    if stream.frames > 0 and duration > 0:
        return stream.frames / duration
    raise DecodeError(f"{label}: the video stream declares no frame rate")


def _duration(container, stream, native_fps: float | None, label: str) -> float:
    """Seconds from the first frame to the end of the last (headers first, then a demux pass)."""
    if stream.duration:
        return float(stream.duration * stream.time_base)
    tagged = _tag_seconds(stream.metadata.get("DURATION") or stream.metadata.get("duration"))
    if tagged is not None:  # Matroska/WebM writers store per-stream durations as tags
        return tagged
    if container.duration:
        return container.duration / av.time_base
    if stream.frames > 0 and native_fps:
        return stream.frames / native_fps
    return _demux_duration(container, stream, label)


def _tag_seconds(text: str | None) -> float | None:
    """Seconds from an "HH:MM:SS.fraction" duration tag (None when absent or malformed)."""
    try:
        hours, minutes, seconds = (text or "").split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None


def _demux_duration(container, stream, label: str) -> float:
    first = last = None
    count = 0
    for packet in container.demux(stream):
        if packet.pts is None or packet.size == 0:
            continue
        end = packet.pts + (packet.duration or 0)
        first = packet.pts if first is None else min(first, packet.pts)
        last = end if last is None else max(last, end)
        count += 1
        if count > _MAX_PROBE_PACKETS:
            break
    container.seek(0)
    if first is None:
        raise DecodeError(f"{label}: the video stream has no packets")
    return float((last - first) * stream.time_base)


def _count(duration: float, fps: float) -> int:
    return max(0, math.ceil(duration * fps - _COUNT_SLACK))


def _check_indices(frame_indices: np.ndarray, label: str) -> np.ndarray:
    indices = np.asarray(frame_indices)
    if indices.size and not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f"{label}: frame indices must be integers, got dtype {indices.dtype}")
    indices = indices.astype(np.int64)
    if indices.size and indices.min() < 0:
        raise ValueError(f"{label}: frame indices must be >= 0, got {int(indices.min())}")
    return indices


def _check_rate(fps: float | None, label: str) -> None:
    if fps is not None and not fps > 0:
        raise ValueError(f"{label}: fps must be positive, got {fps}")


def _label(file_or_bytes: VideoInput, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(file_or_bytes, (str, os.PathLike)):
        return os.fspath(file_or_bytes)
    if isinstance(file_or_bytes, (bytes, bytearray, memoryview)):
        return f"<{len(file_or_bytes)} bytes>"
    return getattr(file_or_bytes, "name", None) or "<stream>"
