"""prepare -> tfds.data_source -> decode round trips, resuming, failure summaries, manifests."""

import csv
import io
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import videos

from vrl import config, storage
from vrl.data import decode, manifests, prepare, sources

LENGTHS = {"cat/a.mp4": 30, "cat/b.webm": 24, "dog/c.avi": 36}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Three good clips (30 fps), one unreadable, one truncated; train/test manifests."""
    train = ["cat/a.mp4", "dog/broken.mp4", "dog/c.avi", "dog/cut.mov"]
    base = tmp_path_factory.mktemp("prepare")
    return videos.labelled_folder(base, LENGTHS, train, ["cat/b.webm"])


def build(inputs, name, workers=1, **options):
    return prepare.prepare(
        str(inputs / "videos"),
        str(inputs / "{split}.csv"),
        name,
        ["train", "test"],
        str(inputs / "out"),
        options=prepare.Options(**options),
        workers=workers,
    )


def shown(frames: np.ndarray) -> list[int]:
    return [videos.read_index(f) for f in frames]


def test_video_store_copies_bytes_and_summarises_bad_inputs(inputs):
    summary = build(inputs, "toy_copy")
    assert summary["train"].examples == 2 and summary["test"].examples == 1
    failed = dict(summary["train"].failed)
    assert sorted(failed) == ["dog/broken.mp4", "dog/cut.mov"]
    assert "not a readable video container" in failed["dog/broken.mp4"]
    assert "past the last decodable frame" in failed["dog/cut.mov"]
    with open(inputs / "out" / "_work" / "toy_copy" / "failed_train.csv") as f:
        assert [row["path"] for row in csv.DictReader(f)] == ["dog/broken.mp4", "dog/cut.mov"]

    source = sources.PreparedDataset(
        dataset="toy_copy", data_dir=str(inputs / "out"), split="train"
    )
    assert len(source) == 2 and source.label_names == {"label": ["cat", "dog"]}
    records = sorted((source[i] for i in range(2)), key=lambda r: r["id"])
    for record, rel, label in zip(records, ["cat/a.mp4", "dog/c.avi"], [0, 1]):
        path = inputs / "videos" / rel
        assert record["id"] == rel and record["labels"] == {"label": label}
        assert (record["num_frames"], record["fps"]) == (LENGTHS[rel], 30.0)
        assert record["video"] == path.read_bytes()  # no options: the original bytes
        wanted = np.array([[0, 1], [LENGTHS[rel] - 1, 7]])
        np.testing.assert_array_equal(
            source.decode(record, wanted), decode.decode_frames(str(path), wanted)
        )


def test_video_store_reencodes_to_fps_and_size_in_a_process_pool(inputs):
    summary = build(inputs, "toy_h264", workers=2, fps=15.0, short_side=24)
    assert summary["train"].examples == 2 and len(summary["train"].failed) == 2
    source = sources.PreparedDataset(dataset="toy_h264", data_dir=str(inputs / "out"), split="test")
    record = source[0]
    assert (record["id"], record["num_frames"], record["fps"]) == ("cat/b.webm", 12, 15.0)
    frames = source.decode(record, np.arange(12))
    assert frames.shape == (12, 24, 32, 3)
    # Each stored frame shows the original frame at the same time: 30 fps frame 2 i.
    assert shown(frames) == list(range(0, 24, 2))
    # Reading at another rate resamples again, by time.
    slower = config.component(
        "source",
        {"name": "tfds", "dataset": "toy_h264", "data_dir": str(inputs / "out"), "split": "test",
         "fps": 5.0},
        "data.source",
    )  # fmt: skip
    slower = pickle.loads(pickle.dumps(slower))  # as Grain hands it to worker processes
    record = slower[0]
    assert (record["num_frames"], record["fps"]) == (4, 5.0)
    assert shown(slower.decode(record, np.arange(4))) == [0, 6, 12, 18]


def test_frames_store_round_trip_and_resume(inputs):
    out = inputs / "out"
    first = build(inputs, "toy_jpeg", workers=2, store="frames", fps=10.0)
    assert first["train"].transcoded == 2 and first["train"].cached == 0
    source = sources.PreparedDataset(dataset="toy_jpeg", data_dir=str(out), split="train")
    records = sorted((source[i] for i in range(len(source))), key=lambda r: r["id"])
    assert [(r["id"], r["num_frames"], r["fps"]) for r in records] == [
        ("cat/a.mp4", 10, 10.0),
        ("dog/c.avi", 12, 10.0),
    ]
    jpegs = source.frame_bytes(records[1], np.arange(12))
    assert all(frame[:2] == b"\xff\xd8" for frame in jpegs)  # JPEG
    frames = source.decode(records[1], np.array([[11, 0], [3, 3]]))
    assert frames.shape == (2, 2, 48, 64, 3)
    assert shown(frames.reshape(-1, 48, 64, 3)) == [33, 0, 9, 9]
    resized = sources.PreparedDataset(
        dataset="toy_jpeg", data_dir=str(out), split="train", short_side=24, fps=5.0
    )
    record = next(resized[i] for i in range(2) if resized[i]["id"] == "dog/c.avi")
    assert record["num_frames"] == 6
    assert resized.decode(record, np.arange(6)).shape == (6, 24, 32, 3)
    assert shown(resized.decode(record, np.arange(6))) == [0, 6, 12, 18, 24, 30]
    with pytest.raises(decode.DecodeError, match="frame 12 requested, the record has 12"):
        source.decode(records[1], np.array([12]))

    # Done already: nothing to do.
    assert build(inputs, "toy_jpeg", workers=2, store="frames", fps=10.0) == {}
    # The writing was lost (e.g. killed mid-way): every finished input comes from the work dir.
    shutil.rmtree(out / "toy_jpeg")
    again = build(inputs, "toy_jpeg", workers=2, store="frames", fps=10.0)
    assert again["train"].transcoded == 0 and again["train"].cached == 2
    assert len(again["train"].failed) == 2  # unreadable inputs are retried, and fail again
    reread = sources.PreparedDataset(dataset="toy_jpeg", data_dir=str(out), split="train")
    fifth = sorted(reread.frame_bytes(reread[i], np.array([5])) for i in range(2))
    assert fifth == sorted(source.frame_bytes(r, np.array([5])) for r in records)


def test_frames_store_chunks_read_only_the_records_a_clip_needs(inputs):
    """Chunks of 4 frames: every frame of every video comes back from its own chunk record."""
    build(inputs, "toy_chunks", store="frames", chunk_frames=4)
    source = sources.PreparedDataset(dataset="toy_chunks", data_dir=str(inputs / "out"))
    first = source._reader._first
    assert len(source) == 2 and first[1] - first[0] == 1 + -(-LENGTHS[source[0]["id"]] // 4)
    for index in range(2):
        record = source[index]
        every = np.arange(record["num_frames"])
        assert shown(source.decode(record, every)) == every.tolist()
        assert shown(source.decode(record, np.array([13, 2, 13]))) == [13, 2, 13]
    # The record table is checked against the records it points at.
    source._reader._first = [first[0] + 1, first[1]]
    with pytest.raises(decode.DecodeError, match="should hold chunk 0 of it"):
        source.decode(source[0], np.array([0]))


def test_a_split_missing_from_an_existing_dataset_is_an_error(inputs):
    build(inputs, "toy_splits")
    (inputs / "val.csv").write_text("path,label\ncat/a.mp4,cat\n")
    with pytest.raises(
        prepare.InputError, match=r"splits \['test', 'train'\], not 'val'.*--overwrite"
    ):
        prepare.prepare(
            str(inputs / "videos"), str(inputs / "{split}.csv"), "toy_splits", ["train", "val"],
            str(inputs / "out"), workers=1,
        )  # fmt: skip
    with pytest.raises(ValueError, match="toy_splits.*no split 'val'"):
        sources.PreparedDataset(dataset="toy_splits", data_dir=str(inputs / "out"), split="val")


def test_bad_arguments(inputs):
    videos_dir, manifest = str(inputs / "videos"), str(inputs / "{split}.csv")
    with pytest.raises(ValueError, match="lower_snake_case"):
        prepare.prepare(videos_dir, manifest, "Bad-Name", ["train"], str(inputs / "out"))
    with pytest.raises(prepare.InputError, match="is not a directory"):
        prepare.prepare(str(inputs / "nope"), manifest, "ok", ["train"], str(inputs / "out"))
    (inputs / "gap.csv").write_text("path,label\ncat/zzz.mp4,cat\n")
    with pytest.raises(prepare.InputError, match="1 of 1 listed video"):
        prepare.prepare(videos_dir, str(inputs / "gap.csv"), "ok", ["x"], str(inputs / "out"))


def test_command_line(inputs, tmp_path):
    command = [
        sys.executable, "-m", "vrl.data.prepare", f"--videos={inputs / 'videos'}",
        f"--manifest={inputs / '{split}.csv'}", "--name=toy_cli", "--split=test",
        f"--out={tmp_path}", "--store=frames", "--short_side=24", "--workers=1",
    ]  # fmt: skip
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "toy_cli/test: 1 examples" in done.stderr
    source = sources.PreparedDataset(dataset="toy_cli", data_dir=str(tmp_path), split="test")
    record = source[0]
    assert record["num_frames"] == 24
    assert shown(source.decode(record, np.array([5, 23]))) == [5, 23]


# --- manifests from official annotation files -----------------------------------------------


def touch(path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def read(path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(storage.path(path).read_text(), newline="")))


@pytest.fixture(params=["local", "bucket"])
def place(request, tmp_path):
    """Where the annotation files and videos are read from and manifests written to: tmp_path
    itself, or a copy of it in a bucket (the Cloud Storage emulator)."""
    if request.param == "local":
        return lambda: str(tmp_path)
    folder = request.getfixturevalue("gcs_dir")

    def upload() -> str:
        storage.copy(tmp_path, folder)
        return folder

    return upload


def test_kinetics_manifest(tmp_path, place):
    train = tmp_path / "k600" / "train"
    touch(train / "abc_000010_000020.mp4")
    touch(train / "abseiling" / "x-y_000000_000010.mp4")  # class folders work too
    (tmp_path / "train.csv").write_text(
        "label,youtube_id,time_start,time_end,split\n"
        '"passing American football (in game)",abc,10,20,train\n'
        "abseiling,x-y,0,10,train\n"
        "abseiling,gone,5,15,train\n"
        "abseiling,abc,30,40,val\n"
    )
    touch(tmp_path / "k600" / "val" / "abc_000030_000040.mp4")
    root = place()
    written = manifests.kinetics_manifest(
        f"{root}/train.csv", f"{root}/k600", f"{root}/m/{{split}}.csv"
    )
    assert written == {"train": 2, "validation": 1}
    assert read(f"{root}/m/train.csv") == [
        {"path": "train/abc_000010_000020.mp4", "label": "passing American football (in game)"},
        {"path": "train/abseiling/x-y_000000_000010.mp4", "label": "abseiling"},
    ]
    assert read(f"{root}/m/validation.csv") == [
        {"path": "val/abc_000030_000040.mp4", "label": "abseiling"}
    ]


def test_ucf101_manifest_and_class_index(tmp_path, place):
    videos_dir, lists = tmp_path / "UCF-101", tmp_path / "ucfTrainTestlist"
    for rel in ["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "YoYo/v_YoYo_g01_c01.avi"]:
        touch(videos_dir / rel)
    lists.mkdir()
    (lists / "trainlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\n")
    (lists / "testlist01.txt").write_text("YoYo/v_YoYo_g01_c01.avi\n")
    (lists / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 YoYo\n")
    root = place()
    written = manifests.ucf101_manifest(
        f"{root}/ucfTrainTestlist", f"{root}/UCF-101", f"{root}/{{split}}.csv", fold=1
    )
    assert written == {"train": 1, "test": 1}
    assert read(f"{root}/test.csv") == [{"path": "YoYo/v_YoYo_g01_c01.avi", "label": "YoYo"}]
    classes = manifests.read_classes(f"{root}/ucfTrainTestlist/classInd.txt")
    assert classes == ["ApplyEyeMakeup", "YoYo"]


def test_hmdb51_manifest(tmp_path, place):
    videos_dir, splits = tmp_path / "hmdb51", tmp_path / "splits"
    for rel in ["brush_hair/a.avi", "brush_hair/b.avi", "brush_hair/c.avi"]:
        touch(videos_dir / rel)
    splits.mkdir()
    (splits / "brush_hair_test_split1.txt").write_text("a.avi 1 \nb.avi 2 \nc.avi 0 \n")
    (splits / "brush_hair_test_split2.txt").write_text("a.avi 2 \nb.avi 1 \nc.avi 1 \n")
    root = place()
    written = manifests.hmdb51_manifest(
        f"{root}/splits", f"{root}/hmdb51", f"{root}/{{split}}.csv", fold=1
    )
    assert written == {"train": 1, "test": 1}
    assert read(f"{root}/train.csv") == [{"path": "brush_hair/a.avi", "label": "brush_hair"}]
    assert read(f"{root}/test.csv") == [{"path": "brush_hair/b.avi", "label": "brush_hair"}]
