"""A fuzz corpus of broken video files, made at test time with PyAV and tests/videos.py.

Kinds: zero-byte, random bytes, truncated, wrong content behind a video extension, huge
declared frame size, zero frames, audio only, damaged headers. Every file carries a video
extension, so the source lists it, and none of them gives a clip: files that FFmpeg can still
read in part (an Ogg cut short reports its shorter length, an AVI with a damaged header is
re-synchronised, a GIF is a one-frame video) are left out.
"""

import gzip
import os
import zlib

import av
import numpy as np
import videos
from PIL import Image

from vrl.data.manifests import VIDEO_EXTENSIONS

FRAMES = 16  # length of the good videos; the tests ask for clips of all of them
SIZE = (32, 32)
GOOD_CODECS = ("h264", "vp9", "mpeg4", "vp8_ogg", "mjpeg")


def good_video(folder: str, codec: str, name: str | None = None) -> str:
    path = os.path.join(folder, name or f"good_{codec}{videos.EXTENSIONS[codec]}")
    videos.make_video(path, codec, frames=FRAMES, size=SIZE, fps=16, gop=4)
    return path


def _write(folder: str, name: str, data: bytes) -> str:
    path = os.path.join(folder, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def _y4m(width: int, height: int, frames: int = 1) -> bytes:
    header = f"YUV4MPEG2 W{width} H{height} F16:1 Ip A1:1 C420jpeg\n".encode()
    frame = b"FRAME\n" + bytes(min(width * height * 3 // 2, 4096))
    return header + frame * frames


def _streams(path: str, fmt: str, video_codec: str | None, audio: bool) -> None:
    """A container with an empty video stream and/or a short AAC audio stream."""
    with av.open(path, "w", format=fmt) as container:
        video = container.add_stream(video_codec, rate=16) if video_codec else None
        if video is not None:
            video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        if audio:
            stream = container.add_stream("aac", rate=16000)
            samples = av.AudioFrame.from_ndarray(
                np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
            )
            samples.sample_rate, samples.pts = 16000, 0
            container.mux(stream.encode(samples))
            container.mux(stream.encode(None))
        if video is not None:
            container.start_encoding()  # writes the header even though no frame follows
            container.mux(video.encode(None))


def _damaged(data: bytes, start: int, length: int, fill: int) -> bytes:
    out = bytearray(data)
    out[start : start + length] = bytes([fill]) * len(out[start : start + length])
    return bytes(out)


def build(folder: str) -> dict[str, str]:
    """Writes the corpus into `folder`; returns {file name: kind}."""
    os.makedirs(folder, exist_ok=True)
    kinds: dict[str, str] = {}
    rng = np.random.default_rng(0)

    def add(name: str, kind: str, data: bytes | None = None) -> None:
        if data is not None:
            _write(folder, name, data)
        kinds[name] = kind

    for ext in VIDEO_EXTENSIONS:
        add(f"zero{ext}", "zero-byte", b"")
    for size in (1, 64, 4096, 65536):
        for ext in (".mp4", ".mkv"):
            add(f"random_{size}{ext}", "random bytes", rng.bytes(size))

    scratch = os.path.join(folder, ".good")
    os.makedirs(scratch, exist_ok=True)
    good = {}
    for codec in GOOD_CODECS:
        with open(good_video(scratch, codec), "rb") as f:
            good[codec] = f.read()
    for codec, data in good.items():
        ext = videos.EXTENSIONS[codec]
        for fraction in TRUNCATIONS[codec]:
            add(
                f"cut{int(fraction * 100):02d}_{codec}{ext}",
                "truncated",
                data[: int(len(data) * fraction)],
            )
        for start, length, fill in HEADER_DAMAGE[codec]:
            add(
                f"header_{start}_{fill:02x}_{codec}{ext}",
                "corrupted header",
                _damaged(data, start, length, fill),
            )
    videos.make_truncated(os.path.join(folder, "cut_indexed_mjpeg.mov"), frames=FRAMES)
    kinds["cut_indexed_mjpeg.mov"] = "truncated"

    image = Image.fromarray(videos.draw(3, SIZE))
    image.save(os.path.join(folder, "photo_png.mp4"), format="PNG")
    image.save(os.path.join(folder, "photo_jpeg.avi"), format="JPEG")
    image.save(os.path.join(folder, "photo_tiff.webm"), format="TIFF")
    for name in ("photo_png.mp4", "photo_jpeg.avi", "photo_tiff.webm"):
        kinds[name] = "wrong extension"
    add("manifest.mkv", "wrong extension", b"path,label\nclip.mp4,1\n")
    add("config.mov", "wrong extension", b'{"name": "not a video"}\n')
    add("page.flv", "wrong extension", b"<html><body>404</body></html>\n")
    add("archive.mpg", "wrong extension", gzip.compress(b"not a video" * 100, mtime=0))
    add("deflate.3gp", "wrong extension", zlib.compress(bytes(range(256)) * 16))

    add("huge_wide.mp4", "huge declared size", _y4m(20000, 64))
    add("huge_tall.mkv", "huge declared size", _y4m(64, 20000))
    add("huge_area.avi", "huge declared size", _y4m(10000, 10000))
    add("huge_side.mov", "huge declared size", _y4m(16385, 16))

    add("no_frames.mp4", "zero frames", _y4m(32, 32, frames=0))
    _streams(os.path.join(folder, "no_frames_audio.mkv"), "matroska", "libx264", True)
    _streams(os.path.join(folder, "no_frames.mov"), "mov", "libx264", False)
    _streams(os.path.join(folder, "no_frames.webm"), "webm", "libvpx-vp9", False)
    for name in ("no_frames_audio.mkv", "no_frames.mov", "no_frames.webm"):
        kinds[name] = "zero frames"

    videos.make_audio(os.path.join(folder, "tone.m4v"), fmt="mp4")
    videos.make_audio(os.path.join(folder, "tone_wav.avi"), fmt="wav")
    _streams(os.path.join(folder, "tone_aac.mkv"), "matroska", None, True)
    for name in ("tone.m4v", "tone_wav.avi", "tone_aac.mkv"):
        kinds[name] = "audio only"
    return kinds


# Cut points (fraction of the file kept) that leave a codec's file unable to give every frame.
TRUNCATIONS = {
    "h264": (0.02, 0.3, 0.6, 0.9),  # mp4 with its index at the end: any cut loses it
    "vp9": (0.02, 0.3, 0.6),
    "mpeg4": (0.02, 0.3, 0.6),
    "vp8_ogg": (0.02,),  # Ogg reads its duration from the last page: a later cut is just shorter
    "mjpeg": (0.02, 0.3, 0.6, 0.9),
}
# (first byte, length, fill byte) overwritten in an otherwise good file.
HEADER_DAMAGE = {
    "h264": ((0, 64, 0x00), (0, 4096, 0xFF)),
    "vp9": ((0, 64, 0x00), (0, 4096, 0xFF)),
    "mpeg4": (),  # FFmpeg finds the MPEG-4 stream behind a damaged AVI header: still readable
    "vp8_ogg": ((0, 64, 0x00),),
    "mjpeg": ((0, 4096, 0xFF),),
}
