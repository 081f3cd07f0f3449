"""Decoding real encoded files: exact frames, window-only work, timestamps, and every failure."""

import os

import av
import numpy as np
import pytest
import videos

from vrl.data import decode
from vrl.data.decode import DecodeError

FRAMES = 40


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """One 40-frame 30 fps file per codec (keyframe every 10 frames): codec -> path."""
    folder = tmp_path_factory.mktemp("codecs")
    out = {}
    for codec, ext in videos.EXTENSIONS.items():
        out[codec] = str(folder / f"clip_{codec}{ext}")
        videos.make_video(out[codec], codec, frames=FRAMES, fps=30, gop=10)
    return out


def indices_shown(frames: np.ndarray) -> list[int]:
    return [videos.read_index(f) for f in frames.reshape(-1, *frames.shape[-3:])]


@pytest.mark.parametrize("codec", list(videos.EXTENSIONS))
def test_frames_equal_plain_full_decode(clips, codec):
    path = clips[codec]
    full = videos.full_decode(path)
    assert len(full) == FRAMES
    wanted = np.array([[5, 3, 4, 4], [39, 30, 0, 21]])  # unsorted, repeated, two windows
    got = decode.decode_frames(path, wanted)
    assert got.shape == (2, 4, 48, 64, 3) and got.dtype == np.uint8
    for view in range(2):
        for t in range(4):
            np.testing.assert_array_equal(got[view, t], full[wanted[view, t]])
    assert indices_shown(got) == wanted.reshape(-1).tolist()


@pytest.mark.parametrize("codec", list(videos.EXTENSIONS))
def test_probe_reads_headers(clips, codec):
    info = decode.probe(clips[codec])
    assert (info.num_frames, info.fps, info.width, info.height) == (FRAMES, 30.0, 64, 48)
    assert info.duration == pytest.approx(FRAMES / 30, abs=2e-3)
    assert decode.probe(clips[codec], fps=15).num_frames == FRAMES // 2


@pytest.mark.parametrize("codec", ["h264", "vp9", "vp8_ogg"])
@pytest.mark.parametrize("fps", [None, 15.0, 12.5, 45.0])
def test_iter_frames_agrees_with_probe_and_decode(clips, codec, fps):
    path = clips[codec]
    frames = list(decode.iter_frames(path, fps=fps))
    info = decode.probe(path, fps)
    assert len(frames) == info.num_frames
    np.testing.assert_array_equal(
        np.stack(frames), decode.decode_frames(path, np.arange(info.num_frames), fps=fps)
    )


def test_real_footage_windows_decode_far_fewer_frames():
    path = videos.footage("bikes.mp4")  # 250 frames, 640x272, 25 fps, real keyframe spacing
    info = decode.probe(path)
    assert (info.num_frames, info.fps, info.width, info.height) == (250, 25.0, 640, 272)
    wanted = np.array([np.arange(100, 116, 2), np.arange(200, 216, 2)])
    stats = decode.DecodeStats()
    got = decode.decode_frames(path, wanted, stats=stats)
    full = videos.full_decode(path)
    for view in range(2):
        for t in range(8):
            np.testing.assert_array_equal(got[view, t], full[wanted[view, t]])
    assert stats.seeks >= 2  # one seek per window
    assert stats.frames_decoded < 80, stats  # vs 250 for the whole file

    stats = decode.DecodeStats()
    decode.decode_frames(path, np.array([249]), stats=stats)
    assert stats.frames_decoded < 20, stats  # the last frame costs one GOP, not the file


def test_times_just_before_a_b_frame_keyframe_do_not_seek_back(tmp_path):
    """MP4 indexes keyframes by decoding time, two frames ahead of presentation with x264's
    B-frames: frame 58, before the keyframe shown at 60 (indexed at 58), must not look like a
    time past that keyframe, or the seek lands on frame 30 and decodes 30..58 a second time
    (41 frames decoded instead of 23)."""
    path = str(tmp_path / "gop30.mp4")
    params = "keyint=30:min-keyint=30:scenecut=0:bframes=3:b-pyramid=normal"
    with av.open(path, "w") as container:
        stream = container.add_stream(
            "libx264", rate=30, options={"preset": "veryfast", "x264-params": params}
        )
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(90):
            frame = av.VideoFrame.from_ndarray(videos.draw(i, (64, 48)), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame.reformat(format="yuv420p")))
        container.mux(stream.encode(None))
    wanted = np.array([40, 54, 56, 58, 60, 62])
    stats = decode.DecodeStats()
    got = decode.decode_frames(path, wanted, stats=stats)
    assert indices_shown(got) == wanted.tolist()
    assert stats.frames_decoded < 30, stats  # frames 30..62 at most once each, less B-frames


def test_real_footage_ntsc_rate_and_resize():
    path = videos.footage("carphone_pristine.mp4")  # 120 frames, 176x144, 30000/1001 fps
    info = decode.probe(path)
    assert info.num_frames == 120 and info.fps == pytest.approx(30000 / 1001)
    full = videos.full_decode(path)
    wanted = np.array([0, 1, 59, 60, 119])
    np.testing.assert_array_equal(decode.decode_frames(path, wanted), np.stack(full)[wanted])
    small = decode.decode_frames(path, wanted, short_side=72)
    assert small.shape == (5, 72, 88, 3)
    # Resizing is an area filter of the same frames: close to a box-downsampled full frame.
    box = np.stack(full)[wanted].reshape(5, 72, 2, 88, 2, 3).mean(axis=(2, 4))
    assert np.abs(small.astype(np.float64) - box).mean() < 4


def test_bytes_and_file_objects_decode_like_paths(clips):
    path = clips["h264"]
    with open(path, "rb") as f:
        data = f.read()
    wanted = np.array([1, 17, 33])
    expected = decode.decode_frames(path, wanted)
    np.testing.assert_array_equal(decode.decode_frames(data, wanted), expected)
    with open(path, "rb") as f:
        np.testing.assert_array_equal(decode.decode_frames(f, wanted), expected)
    assert decode.probe(data).num_frames == FRAMES


@pytest.mark.parametrize("codec", ["h264", "vp9"])
def test_fps_resampling_picks_frames_by_time(clips, codec):
    path = clips[codec]  # 30 fps; vp9/WebM stores millisecond-rounded timestamps
    assert indices_shown(decode.decode_frames(path, np.arange(20), fps=15)) == list(range(0, 40, 2))
    # 12.5 fps: time i / 12.5 s shows the 30 fps frame floor(i * 2.4).
    expected = [int(np.floor(i * 2.4 + 1e-9)) for i in range(16)]
    assert indices_shown(decode.decode_frames(path, np.arange(16), fps=12.5)) == expected
    # 45 fps (upsampling): frames repeat.
    expected = [i * 2 // 3 for i in range(60)]
    assert indices_shown(decode.decode_frames(path, np.arange(60), fps=45)) == expected


def test_variable_frame_rate_by_timestamps(tmp_path):
    path = str(tmp_path / "vfr.mp4")
    # Durations alternate 40 ms and 120 ms (one and three frames at 25 fps).
    times = videos.make_video(path, "h264", frames=20, fps=25, vfr=True)
    assert times[:4] == pytest.approx([0.0, 0.04, 0.16, 0.2])
    info = decode.probe(path, fps=25)
    assert info.num_frames == round((times[-1] + 0.04) * 25)
    got = indices_shown(decode.decode_frames(path, np.arange(info.num_frames), fps=25))
    expected = [max(k for k, t in enumerate(times) if t <= i / 25 + 1e-9) for i in range(len(got))]
    assert got == expected
    assert got[:8] == [0, 1, 1, 1, 2, 3, 3, 3]
    # At the native (average) rate every index is still resolved by time, not by count.
    native = decode.probe(path)
    assert native.num_frames == 20 and native.fps == pytest.approx(20 / (times[-1] + 0.04), 1e-3)
    got = indices_shown(decode.decode_frames(path, np.arange(20)))
    assert got == [max(k for k, t in enumerate(times) if t <= i / native.fps) for i in range(20)]


def test_index_past_the_end_raises(clips):
    with pytest.raises(DecodeError, match="past the last decodable frame"):
        decode.decode_frames(clips["vp9"], np.array([0, FRAMES]))
    with pytest.raises(DecodeError, match="past the last decodable frame"):
        decode.decode_frames(clips["h264"], np.array([20]), fps=15)  # 20 frames at 15 fps


def test_bad_indices_are_caller_errors(clips):
    with pytest.raises(ValueError, match="integers"):
        decode.decode_frames(clips["h264"], np.array([0.5]))
    with pytest.raises(ValueError, match=">= 0"):
        decode.decode_frames(clips["h264"], np.array([-1]))
    empty = decode.decode_frames(clips["h264"], np.zeros((2, 0), np.int32), short_side=24)
    assert empty.shape == (2, 0, 24, 32, 3)


# --- damaged and non-video inputs ------------------------------------------------------------


def _audio_plus_empty_video(path) -> None:
    with av.open(str(path), "w", format="matroska") as container:
        video = container.add_stream("libx264", rate=30)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream("aac", rate=16000)
        samples = av.AudioFrame.from_ndarray(
            np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
        )
        samples.sample_rate, samples.pts = 16000, 0
        container.mux(audio.encode(samples))
        container.mux(audio.encode(None))
        container.mux(video.encode(None))


def test_truncated_stream_keeps_early_frames_and_rejects_late_ones(tmp_path):
    cut = str(tmp_path / "cut.mov")
    videos.make_truncated(cut, frames=60)
    assert decode.probe(cut).num_frames == 60  # the header still declares every frame
    assert indices_shown(decode.decode_frames(cut, np.array([0, 10, 20]))) == [0, 10, 20]
    with pytest.raises(DecodeError, match=r"cut\.mov: time .* past the last decodable frame"):
        decode.decode_frames(cut, np.array([0, 50]))
    assert 20 < len(list(decode.iter_frames(cut))) < 60


CORRUPT = {
    "truncated (index at the end, cut off)": ("cut.mp4", "not a readable video container"),
    "zero bytes": ("zero.mp4", "empty"),
    "random bytes": ("random.mp4", "not a readable video container"),
    "text with a video extension": ("notes.mp4", "not a readable video container"),
    "jpeg with a video extension": ("photo.mp4", "still image"),
    "audio only (wav)": ("tone.wav", r"no video stream \(streams: audio\)"),
    "audio only (m4a)": ("tone.m4a", r"no video stream \(streams: audio\)"),
    "video stream without frames (y4m)": ("empty.y4m", "no packets|no frames"),
    "video stream without frames (mkv)": ("silent.mkv", "no frames|no decodable"),
    "huge declared frame size": ("huge.y4m", "exceeds the limit"),
    "missing file": ("absent.mp4", "no such file"),
}


@pytest.fixture(scope="module")
def corrupt(tmp_path_factory, clips):
    folder = tmp_path_factory.mktemp("corrupt")
    with open(clips["h264"], "rb") as f:
        h264 = f.read()
    (folder / "cut.mp4").write_bytes(h264[: len(h264) // 2])
    (folder / "zero.mp4").write_bytes(b"")
    (folder / "random.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    (folder / "notes.mp4").write_text("path,label\nclip.mp4,1\n")
    from PIL import Image

    Image.fromarray(videos.draw(3, (64, 48))).save(folder / "photo.mp4", format="JPEG")
    videos.make_audio(folder / "tone.wav", fmt="wav")
    videos.make_audio(folder / "tone.m4a", fmt="mp4")
    (folder / "empty.y4m").write_bytes(b"YUV4MPEG2 W64 H48 F30:1 Ip A1:1 C420jpeg\n")
    _audio_plus_empty_video(folder / "silent.mkv")
    header = b"YUV4MPEG2 W20000 H64 F30:1 Ip A1:1 C420jpeg\nFRAME\n"
    (folder / "huge.y4m").write_bytes(header + bytes(4096))
    return folder


@pytest.mark.parametrize("kind", list(CORRUPT))
def test_damaged_inputs_raise_decode_error_naming_the_file(corrupt, kind):
    name, reason = CORRUPT[kind]
    path = str(corrupt / name)
    with pytest.raises(DecodeError, match=reason) as raised:
        decode.probe(path)
        decode.decode_frames(path, np.array([0, 1]))
    assert name in str(raised.value)
    with pytest.raises(DecodeError):
        decode.decode_frames(path, np.array([0]))
    if os.path.exists(path):
        with open(path, "rb") as f:
            data = f.read()
        with pytest.raises(DecodeError, match="video-bytes"):
            decode.decode_frames(data, np.array([0]), name="video-bytes")


def test_content_decides_the_format_not_the_extension(tmp_path, clips):
    renamed = tmp_path / "actually_webm.mp4"
    with open(clips["vp9"], "rb") as f:
        renamed.write_bytes(f.read())
    assert indices_shown(decode.decode_frames(str(renamed), np.array([7]))) == [7]
