"""The Grain pipeline on real video files: batches, repeated sampling, bad files, resuming,
process slicing, prepare -> tfds round trips, and start-up errors through `python -m vrl.main`."""

import fractions
import gc
import os
import re
import subprocess
import sys

import av
import numpy as np
import pytest
import videos

from vrl import config, evaluators
from vrl.data import decode, masks, pipeline, prepare, stats
from vrl.data.types import ClipSpec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAMES = 40
SIZE = (64, 48)
# Six real clips in three codecs, two classes; every frame shows its index (videos.read_index).
GOOD = {
    "cat/a.mp4": "h264", "cat/b.webm": "vp9", "cat/c.avi": "mpeg4",
    "dog/d.mp4": "h264", "dog/e.webm": "vp9", "dog/f.avi": "mpeg4",
}  # fmt: skip
PLAIN_PP = "uniform_clip(frames=4, stride=2)"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline") / "videos"
    for rel, codec in GOOD.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        videos.make_video(root / rel, codec, frames=FRAMES, size=SIZE, fps=30)
    return root


def data_config(root, pp=PLAIN_PP, **kwargs) -> pipeline.DataConfig:
    fields = dict(
        source={"name": "video_folder", "root": str(root)},
        train_pp=pp,
        test_pp="center_clip(frames=4, stride=2)",
        batch_size=4,
        prefetch=0,  # decode on demand, so decode counts belong to the batches taken
    )
    return pipeline.DataConfig(**{**fields, **kwargs})


def train_data(cfg) -> pipeline.TrainData:
    source = pipeline.make_source(cfg, cfg.train_split)
    return pipeline.train_data(cfg, source, pipeline.make_ops(cfg.train_pp, "config.data.train_pp"))


def iterator(cfg, seed=0, index=0, processes=1):
    data = train_data(cfg)
    return iter(data.iterator(seed=seed, process_index=index, process_count=processes))


def batches(cfg, count, seed=0, index=0, processes=1):
    it = iterator(cfg, seed, index, processes)
    return [next(it) for _ in range(count)]


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def shown(clip: np.ndarray) -> list[int]:
    return [videos.read_index(frame) for frame in clip]


# ------------------------------------------------------------------ batches from real files


def test_video_folder_batches_hold_the_sampled_frames(folder):
    (batch,) = batches(data_config(folder), 1)
    assert batch["video"].shape == (4, 4, SIZE[1], SIZE[0], 3)
    assert batch["video"].dtype == np.uint8
    assert batch["label/label"].dtype == np.int32 and batch["label/label"].shape == (4,)
    assert batch["data/skipped"].tolist() == [0, 0, 0, 0]
    for clip, vid, label, start, stride in zip(
        batch["video"], batch["id"], batch["label/label"], batch["temporal/start"],
        batch["temporal/stride"],
    ):  # fmt: skip
        assert str(vid) in GOOD and label == ("cat", "dog").index(str(vid).split("/")[0])
        expected = (start[0] + stride[0] * np.arange(4)) % FRAMES
        assert shown(clip) == expected.tolist(), vid


def test_augmented_and_multiview_batches(folder):
    pp = "cvrl_clips(frames=4, stride=2)|random_resized_crop(size=32)|flip"
    (batch,) = batches(data_config(folder, pp), 1)
    assert batch["video"].shape == (4, 2, 4, 32, 32, 3) and batch["video"].dtype == np.uint8
    assert batch["temporal/start"].shape == (4, 2)
    pp = "uniform_clip(frames=8, stride=1)|random_resized_crop(size=32)|flip"
    (batch,) = batches(data_config(folder, pp, batch_size=2), 1)
    assert batch["video"].shape == (2, 8, 32, 32, 3)


def test_repeated_sampling_decodes_each_video_once(folder, monkeypatch):
    calls = []
    stats = decode.DecodeStats()
    real = decode.decode_frames

    def counting(path, indices, **kwargs):
        calls.append((os.path.relpath(path, folder), np.shape(indices)))
        return real(path, indices, stats=stats, **kwargs)

    cfg = data_config(folder, batch_size=4, repeated_samples=2)
    it = iterator(cfg)  # decodes example 0 for the clip shape, before the counting starts
    monkeypatch.setattr(decode, "decode_frames", counting)
    got = [next(it) for _ in range(3)]
    assert len(calls) == 6  # 3 batches x 2 videos, each opened and decoded once
    assert all(shape == (2, 4) for _, shape in calls)  # both clips' windows in one call
    assert stats.frames_decoded < 6 * FRAMES  # windows only, never whole files
    for batch in got:
        ids = batch["id"].tolist()
        assert ids[0] == ids[1] and ids[2] == ids[3] and ids[0] != ids[2]
        assert batch["video"].shape == (4, 4, SIZE[1], SIZE[0], 3)
        for clip, start in zip(batch["video"], batch["temporal/start"][:, 0]):
            assert shown(clip)[0] == start
    assert [c[0] for c in calls] == [i for b in got for i in b["id"].tolist()[::2]]
    # Two clips of a video are two random windows, not one clip twice.
    starts = np.concatenate([b["temporal/start"][:, 0].reshape(-1, 2) for b in got])
    assert (starts[:, 0] != starts[:, 1]).any()
    # Only the first clip of a decoded video carries its skip count.
    assert all(b["data/skipped"].tolist() == [0, 0, 0, 0] for b in got)


# --------------------------------------------------------------------------- the data handle


def test_train_data_decodes_example_0_once_for_the_clip_and_checks_its_length(folder, monkeypatch):
    cfg = data_config(folder, "cvrl_clips(frames=4, stride=2)|random_resized_crop(size=32)")
    source = pipeline.make_source(cfg, cfg.train_split)
    ops = pipeline.make_ops(cfg.train_pp, "config.data.train_pp")
    calls = []
    real = decode.decode_frames
    monkeypatch.setattr(decode, "decode_frames", lambda *a, **k: calls.append(a) or real(*a, **k))
    data = pipeline.train_data(cfg, source, ops)
    assert len(calls) == 1  # example 0, once
    assert data.clip == ClipSpec(frames=4, height=32, width=32, views=2)
    assert data.num_examples == len(GOOD) and data.label_names == {"label": ["cat", "dog"]}
    assert data.source is source and data.ops == ops
    # The objective's mask ops run after the train ops, on the clip the handle reported.
    mask = ("mask", masks.tube_mask(grid=(2, 4, 4), ratio=0.5))
    batches = data.iterator(seed=0, process_index=0, process_count=1, extra_ops=[mask])
    batch = next(iter(batches))
    assert batch["video"].shape == (4, 2, 4, 32, 32, 3) and batch["mask"].shape == (4, 32)
    first = data.examples(seed=0, extra_ops=[mask])[0]
    assert_same(first, {k: v[0] for k, v in batch.items()})

    too_long = data_config(folder, "uniform_clip(frames=30, stride=2)")
    ops = pipeline.make_ops(too_long.train_pp, "config.data.train_pp")
    with pytest.raises(config.ConfigError, match=r"a clip spans 59 frames .*\(at most 40 frames"):
        pipeline.train_data(too_long, source, ops)


# ------------------------------------------------------------------------- unreadable files


def broken_folder(base, good: int, bad: int):
    """`good` real clips and `bad` unreadable ones (garbage, empty, audio only, truncated)."""
    root = base / "mixed"
    (root / "cat").mkdir(parents=True)
    for i in range(good):
        videos.make_video(root / "cat" / f"good{i}.mp4", "h264", frames=FRAMES, size=SIZE)
    makers = [
        lambda p: p.with_suffix(".mp4").write_bytes(np.random.default_rng(1).bytes(2000)),
        lambda p: p.with_suffix(".mp4").write_bytes(b""),
        lambda p: videos.make_audio(p.with_suffix(".m4v"), fmt="mp4"),
        lambda p: videos.make_truncated(p.with_suffix(".mov"), frames=60),
    ]
    for i in range(bad):
        makers[i % len(makers)](root / "cat" / f"bad{i}")
    return root


def test_unreadable_files_are_replaced_deterministically_and_counted(tmp_path):
    root = broken_folder(tmp_path, good=4, bad=3)
    pp = "uniform_clip(frames=4, stride=2)|random_resized_crop(size=32)"
    cfg = data_config(root, pp, batch_size=7)  # one epoch per batch: every bad file is drawn
    first, again = batches(cfg, 2), batches(cfg, 2)
    for a, b in zip(first, again):
        assert_same(a, b)  # replacements come from the record's rng
    skipped = sum(int(b["data/skipped"].sum()) for b in first)
    named = [i for b in first for ids in b["data/bad_ids"] for i in str(ids).split(";") if i]
    assert skipped == len(named) >= 6
    assert set(named) == {"cat/bad0.mp4", "cat/bad1.mp4", "cat/bad2.m4v"}
    assert all(str(i).startswith("cat/good") for b in first for i in b["id"])
    # The trainer's counter reads the same host keys.
    counter = stats.DataStats(max_fraction=1.0)
    for batch in first:
        counter.update(pipeline.split_host_keys(batch)[1])
    assert counter.metrics() == {"data/skipped": skipped, "data/seen": 14 + skipped}
    assert set(counter.bad) == set(named)


def test_trainer_stops_listing_bad_files_above_the_allowed_fraction(tmp_path):
    root = broken_folder(tmp_path, good=4, bad=6)
    config = {  # the smallest model: the run stops at its first steps
        "total_steps": 50,
        "data": {
            "source": {"name": "video_folder", "root": str(root)},
            "train_pp": "uniform_clip(frames=2, stride=2)|random_resized_crop(size=16)",
            "batch_size": 32,
            "prefetch": 0,
            "max_skip_fraction": 0.2,
        },
        "model": {"name": "vit", "size": "Ti", "width": 16, "depth": 1, "heads": 1,
                  "patch": (2, 8, 8)},
        "objective": {"name": "supervised", "num_classes": 1},
        "optim": {"name": "sgd", "lr": 0.1},
    }  # fmt: skip
    with pytest.raises(decode.DecodeError) as raised:
        evaluators.train_and_evaluate(config, str(tmp_path / "run"))
    message = str(raised.value)
    assert "videos were unreadable, more than config.data.max_skip_fraction=0.2" in message
    listed = message.split("bad files: ")[1].split(", ")
    bad = {p.relative_to(root).as_posix() for p in root.glob("cat/bad*")}
    assert len(listed) >= 3 and set(listed) <= bad


# ----------------------------------------------------------------- resuming and processes


@pytest.mark.parametrize("workers", [0, 2])
def test_restored_iterator_state_gives_the_same_next_batch(folder, workers):
    pp = "uniform_clip(frames=4, stride=2)|random_resized_crop(size=32)|flip"
    cfg = data_config(folder, pp, batch_size=2, num_workers=workers, prefetch=2)
    it = iterator(cfg, seed=3)
    for _ in range(2):
        next(it)
    state = it.get_state()
    expected = [next(it), next(it)]
    resumed = iterator(cfg, seed=3)
    resumed.set_state(state)
    for want in expected:
        assert_same(want, next(resumed))


@pytest.mark.parametrize("repeats", [1, 2])
def test_two_processes_read_the_slices_of_one_process_batches(folder, repeats):
    pp = "uniform_clip(frames=4, stride=2)|random_resized_crop(size=32)|flip"
    cfg = data_config(folder, pp, batch_size=4, repeated_samples=repeats)
    whole = batches(cfg, 3)
    parts = [batches(cfg, 3, index=i, processes=2) for i in range(2)]
    for step, batch in enumerate(whole):
        assert parts[0][step]["video"].shape[0] == 2
        joined = {k: np.concatenate([p[step][k] for p in parts]) for k in batch}
        assert_same(batch, joined)


# ------------------------------------------------------------------ prepare -> tfds source


def test_prepared_dataset_feeds_the_same_clips_as_the_folder(folder, tmp_path):
    manifest = tmp_path / "train.csv"
    manifest.write_text("path,label\n" + "".join(f"{p},{p.split('/')[0]}\n" for p in GOOD))
    for store in ("video", "frames"):
        prepare.prepare(
            str(folder), str(tmp_path / "{split}.csv"), f"rt_{store}", ["train"],
            str(tmp_path / "tfds"), options=prepare.Options(store=store), workers=1,
        )  # fmt: skip

    def clips(source: dict) -> dict:
        cfg = data_config(folder, source=source)
        ds, total = pipeline.eval_dataset(cfg, "train", batch_size=2)
        out = {}
        for batch in ds:
            for vid, video, label in zip(batch["id"], batch["video"], batch["label/label"]):
                out[str(vid)] = (video, int(label))
        assert total == len(out) == len(GOOD)
        return out

    on_disk = clips({"name": "video_folder", "root": str(folder)})
    as_video = clips({"name": "tfds", "dataset": "rt_video", "data_dir": str(tmp_path / "tfds")})
    as_frames = clips({"name": "tfds", "dataset": "rt_frames", "data_dir": str(tmp_path / "tfds")})
    for vid, (video, label) in on_disk.items():
        np.testing.assert_array_equal(as_video[vid][0], video)  # the same bytes, decoded
        assert as_video[vid][1] == as_frames[vid][1] == label
        assert shown(as_frames[vid][0]) == shown(video)  # JPEG frames: same frames, lossy
        assert np.abs(as_frames[vid][0].astype(int) - video).mean() < 3
    cfg = data_config(
        folder, "uniform_clip(frames=4, stride=2)|random_resized_crop(size=32)", batch_size=6,
        source={"name": "tfds", "dataset": "rt_frames", "data_dir": str(tmp_path / "tfds")},
    )  # fmt: skip
    (batch,) = batches(cfg, 1)
    assert batch["video"].shape == (6, 4, 32, 32, 3) and batch["video"].dtype == np.uint8
    assert sorted(map(str, batch["id"])) == sorted(GOOD)  # one epoch: each video once


# ----------------------------------------------------------------- start-up errors (main)

CONFIG = """
from vrl.config import load_file


def get_config(arg=None):
    c = load_file({quickstart!r}, "runlocal")
    c.data.source = {source!r}
    c.evals = {{}}
    return c
"""


def test_startup_errors_stop_main_with_one_line(folder, tmp_path):
    (tmp_path / "empty.csv").write_text("path,label\n")
    (tmp_path / "gone.csv").write_text("path,label\ncat/a.mp4,cat\ncat/gone.mp4,cat\n")
    (tmp_path / "labels.csv").write_text("path,label\ncat/a.mp4,cat\ndog/d.mp4,dog\n")
    cases = {
        "missing_root": ({"root": str(tmp_path / "nope")}, "root .*nope is not a directory"),
        "empty": ({"manifest": str(tmp_path / "empty.csv")}, "is empty: it has a header"),
        "missing_file": (
            {"manifest": str(tmp_path / "gone.csv")}, "1 of 2 listed video.* missing.*gone.mp4"
        ),
        "label": (
            {"manifest": str(tmp_path / "labels.csv"), "classes": ["cat"]},
            "not in the class list .*'dog'",
        ),
    }  # fmt: skip
    running = {}
    for name, (source, _) in cases.items():
        source = {"name": "video_folder", "root": str(folder), **source}
        path = tmp_path / f"{name}.py"
        quickstart = os.path.join(REPO, "configs", "quickstart.py")
        path.write_text(CONFIG.format(quickstart=quickstart, source=source))
        command = [sys.executable, "-m", "vrl.main", f"--config={path}",
                   f"--workdir={tmp_path / name}"]  # fmt: skip
        running[name] = subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    for name, process in running.items():
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 2, (name, stderr)
        lines = [line for line in stderr.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("config error: ")]
        assert len(errors) == 1 and "Traceback" not in stderr, (name, stderr)
        assert errors[0].startswith("config error: config.data.source (video_folder"), errors[0]
        assert re.search(cases[name][1], errors[0]), (name, errors[0])
    assert not (tmp_path / "missing_root").exists()  # stopped before writing anything


# ---------------------------------------------------------------- decoding only what is shown


def make_bframes(path, times: list[float], size=(64, 48)) -> str:
    """H.264 with B-frames (half of them referenced by no other frame), one keyframe."""
    time_base = fractions.Fraction(1, 1000)
    params = "keyint=1000:scenecut=0:bframes=3:b-pyramid=normal"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(
            "libx264", rate=30, options={"preset": "veryfast", "crf": "18", "x264-params": params}
        )
        stream.width, stream.height, stream.pix_fmt = *size, "yuv420p"
        stream.codec_context.time_base = time_base
        for i, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(videos.draw(i, size), format="rgb24")
            frame = frame.reformat(format="yuv420p")
            frame.pts, frame.time_base = round(t * 1000), time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return str(path)


def test_frames_no_request_shows_are_skipped_not_decoded(tmp_path):
    path = make_bframes(tmp_path / "b.mp4", [i / 30 for i in range(150)])
    stats = decode.DecodeStats()
    (frame,) = decode.decode_frames(path, np.array([100]), stats=stats)
    assert videos.read_index(frame) == 100
    assert stats.packets_skippable > 90  # everything before frame 98 could be dropped ...
    assert stats.frames_decoded < 70  # ... and the unreferenced half of it was (vs 101)
    windows = np.array([np.arange(20, 36, 2), np.arange(110, 126, 2)])
    got = decode.decode_frames(path, windows)
    assert [shown(w) for w in got] == windows.tolist()


def test_a_dropped_frame_that_must_be_shown_is_decoded_again(tmp_path, monkeypatch):
    """Variable frame rate with gaps of 10 frame periods (3.6 average ones): the frame shown
    at a time in a gap lies more than the skip margin (one average period) before it, so it may
    have been dropped; the answer stays exact."""
    steps = [10 if i % 5 == 0 else 1 for i in range(150)]
    times = [sum(steps[:i]) / 30 for i in range(150)]
    path = make_bframes(tmp_path / "vfr.mp4", times)
    redone = []
    restart = decode._Reader._restart

    def counting(self, ticks, must=False):
        redone.append(must)
        return restart(self, ticks, must)

    monkeypatch.setattr(decode._Reader, "_restart", counting)
    info = decode.probe(path)
    rng = np.random.default_rng(0)
    for _ in range(30):
        indices = np.sort(rng.integers(0, info.num_frames, 12))
        got = shown(decode.decode_frames(path, indices))
        want = [int(np.searchsorted(times, i / info.fps + 1e-3, side="right")) - 1 for i in indices]
        assert got == want, indices
    assert any(redone)  # the exact re-decode did happen


def test_decoding_leaves_no_reference_cycle_holding_the_decoder(tmp_path):
    """A decoder kept alive until the garbage collector runs held ~250 MB per worker."""
    path = make_bframes(tmp_path / "b.mp4", [i / 30 for i in range(60)])
    gc.collect()
    gc.disable()  # whatever is garbage now stays visible until collected
    try:
        decode.decode_frames(path, np.array([[3, 5], [40, 50]]))
        list(decode.iter_frames(path))
        alive = [o for o in gc.get_objects() if type(o) is decode._Reader]
    finally:
        gc.enable()
    assert alive == []
