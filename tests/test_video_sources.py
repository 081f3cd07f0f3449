"""The video_folder source (manifest and tree modes, start-up errors); tfds source errors."""

import pickle

import numpy as np
import pytest
import videos

from vrl import config, registry
from vrl.data import decode, sources


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """base/videos/{cat,dog}/... real clips of known lengths; base/lists/{train,test}.csv."""
    base = tmp_path_factory.mktemp("library")
    root = base / "videos"
    lengths = {"cat/a.mp4": 30, "cat/b.webm": 36, "dog/c.avi": 24, "dog/deep/d.mp4": 20}
    for rel, frames in lengths.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        codec = {"mp4": "h264", "webm": "vp9", "avi": "mpeg4"}[rel.rsplit(".", 1)[1]]
        videos.make_video(root / rel, codec, frames=frames, fps=30)
    (base / "lists").mkdir()
    (base / "lists" / "train.csv").write_text("path,label\ncat/a.mp4,cat\ndog/c.avi,dog\n")
    (base / "lists" / "test.csv").write_text("path,label\ncat/b.webm,cat\n")
    return root, lengths


def test_tree_mode_labels_from_sorted_folders(library):
    root, lengths = library
    source = sources.VideoFolder(root=str(root))
    assert source.label_names == {"label": ["cat", "dog"]}
    ids = [source[i]["id"] for i in range(len(source))]
    assert ids == ["cat/a.mp4", "cat/b.webm", "dog/c.avi", "dog/deep/d.mp4"]
    source = pickle.loads(pickle.dumps(source))  # as Grain hands it to worker processes
    record = source[3]
    assert record["labels"] == {"label": 1}
    assert record["num_frames"] == lengths["dog/deep/d.mp4"] and record["fps"] == 30.0
    frames = source.decode(record, np.array([[0, 5], [19, 19]]))
    assert frames.shape == (2, 2, 48, 64, 3)
    assert [videos.read_index(f) for f in frames.reshape(-1, 48, 64, 3)] == [0, 5, 19, 19]


def test_manifest_mode_with_split_pattern(library):
    root, lengths = library
    lists = str(root.parent / "lists" / "{split}.csv")  # an absolute manifest path
    train = sources.VideoFolder(root=str(root), manifest=lists, split="train")
    test = sources.VideoFolder(root=str(root), manifest=lists, split="test")
    # Class names come from every split's manifest, so indices agree across splits.
    assert train.label_names == test.label_names == {"label": ["cat", "dog"]}
    assert [train[i]["labels"]["label"] for i in range(2)] == [0, 1]
    assert len(test) == 1 and test[0]["labels"] == {"label": 0}
    assert test[0]["num_frames"] == lengths["cat/b.webm"]
    pinned = sources.VideoFolder(  # a manifest path relative to the root
        root=str(root), manifest="../lists/train.csv", classes=("dog", "cat", "cow")
    )
    assert [pinned[i]["labels"]["label"] for i in range(2)] == [1, 0]
    assert pinned.label_names == {"label": ["dog", "cat", "cow"]}


def test_integer_labels_and_unlabelled_manifests(tmp_path, library):
    root, _ = library
    (tmp_path / "ints.csv").write_text("path,label\ncat/a.mp4,3\ndog/c.avi,0\n")
    source = sources.VideoFolder(root=str(root), manifest=str(tmp_path / "ints.csv"))
    assert source.label_names == {"label": ["0", "1", "2", "3"]}
    assert source[0]["labels"] == {"label": 3}
    (tmp_path / "bare.csv").write_text("path\ncat/a.mp4\n")
    bare = sources.VideoFolder(root=str(root), manifest=str(tmp_path / "bare.csv"))
    assert bare.label_names == {} and bare[0]["labels"] == {}


def test_unreadable_video_fails_in_decode_not_in_indexing(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "broken.mp4").write_bytes(b"not a video at all")
    source = sources.VideoFolder(root=str(tmp_path))
    record = source[0]  # indexing stays cheap and never raises
    assert record["num_frames"] == 1 and record["id"] == "cat/broken.mp4"
    with pytest.raises(decode.DecodeError, match=r"cat/broken\.mp4: not a readable video"):
        source.decode(record, np.zeros((1, 4), np.int32))


def test_manifest_frame_counts_skip_the_probe(tmp_path, library, monkeypatch):
    root, _ = library
    (tmp_path / "m.csv").write_text("path,label,num_frames,fps\ncat/a.mp4,cat,30,30\n")
    source = sources.VideoFolder(root=str(root), manifest=str(tmp_path / "m.csv"), fps=15.0)

    def no_probe(*args, **kwargs):
        raise AssertionError("probe called although the manifest has num_frames and fps")

    monkeypatch.setattr(decode, "probe", no_probe)
    record = source[0]
    assert (record["num_frames"], record["fps"]) == (15, 15.0)


def test_fps_resamples_records_and_decoding(library):
    root, lengths = library
    source = sources.VideoFolder(root=str(root), manifest="../lists/train.csv", fps=10.0)
    record = source[0]
    assert (record["num_frames"], record["fps"]) == (lengths["cat/a.mp4"] // 3, 10.0)
    frames = source.decode(record, np.arange(record["num_frames"]))
    assert [videos.read_index(f) for f in frames] == list(range(0, 30, 3))
    small = sources.VideoFolder(root=str(root), manifest="../lists/train.csv", short_side=24)
    assert small.decode(small[0], np.array([0])).shape == (1, 24, 32, 3)


def test_built_from_config_through_the_registry(library):
    root, _ = library
    assert registry.get("source", "video_folder") is sources.VideoFolder
    assert registry.get("source", "tfds") is sources.PreparedDataset
    source = config.component(
        "source",
        {"name": "video_folder", "root": str(root), "manifest": "../lists/{split}.csv",
         "classes": ["cat", "dog"], "split": "test"},
        "data.source",
    )  # fmt: skip
    assert len(source) == 1 and source.classes == ("cat", "dog")
    bad = {"name": "video_folder", "root": ".", "manifests": {}}
    with pytest.raises(config.ConfigError, match="data.source.manifests: unknown key"):
        config.component("source", bad, "data.source")


# --- start-up errors -------------------------------------------------------------------------


def test_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"root {tmp_path}/nope is not a directory"):
        sources.VideoFolder(root=str(tmp_path / "nope"))


def test_missing_or_empty_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"manifest .*val\.csv does not exist"):
        sources.VideoFolder(root=str(tmp_path), manifest="{split}.csv", split="val")
    (tmp_path / "train.csv").write_text("path,label\n")
    with pytest.raises(ValueError, match=r"train\.csv is empty"):
        sources.VideoFolder(root=str(tmp_path), manifest="train.csv")
    (tmp_path / "nohead.csv").write_text("")
    with pytest.raises(ValueError, match="must name a 'path' column"):
        sources.VideoFolder(root=str(tmp_path), manifest="nohead.csv")


def test_bad_manifest_columns_and_labels(tmp_path, library):
    root, _ = library
    cases = {
        "path,label,my speed\ncat/a.mp4,cat,1\n": "line 1: column 'my speed' is not a label set",
        "path,label,num_frames\ncat/a.mp4,cat,3\n": "both num_frames and fps",
        "path,label\ncat/a.mp4,cat\ndog/c.avi,\n": "line 3: no 'label' for dog/c.avi while other",
        "path,label\ncat/a.mp4,cat\ndog/c.avi,1\n": "mix integers and names",
        "path,label,num_frames,fps\ncat/a.mp4,cat,many,30\n": "line 2: num_frames must be",
    }
    for i, (text, message) in enumerate(cases.items()):
        (tmp_path / f"m{i}.csv").write_text(text)
        with pytest.raises(ValueError, match=message):
            sources.VideoFolder(root=str(root), manifest=str(tmp_path / f"m{i}.csv"))


def test_missing_files_are_listed(tmp_path, library):
    root, _ = library
    rows = "".join(f"cat/gone{i}.mp4,cat\n" for i in range(8))
    (tmp_path / "m.csv").write_text("path,label\ncat/a.mp4,cat\n" + rows)
    with pytest.raises(FileNotFoundError) as raised:
        sources.VideoFolder(root=str(root), manifest=str(tmp_path / "m.csv"))
    message = str(raised.value)
    assert "8 of 9 listed video(s) are missing" in message
    assert "cat/gone0.mp4, cat/gone1.mp4" in message and "cat/gone7.mp4" not in message


def test_label_not_in_class_list(library):
    root, _ = library
    with pytest.raises(ValueError, match=r"not in the class list \(1 classes\): 'dog'"):
        sources.VideoFolder(root=str(root), manifest="../lists/train.csv", classes=("cat",))
    with pytest.raises(ValueError, match=r"class folder\(s\) not in `classes`: dog"):
        sources.VideoFolder(root=str(root), classes=("cat", "cow"))


def test_unknown_extensions(tmp_path, library):
    root, _ = library
    (tmp_path / "m.csv").write_text("path\ncat/a.mp4\n../lists/train.csv\n")
    with pytest.raises(ValueError, match=r"1 file\(s\) with an unknown extension, e\.g\. \.\./"):
        sources.VideoFolder(root=str(root), manifest=str(tmp_path / "m.csv"))
    (tmp_path / "tree" / "cat").mkdir(parents=True)
    (tmp_path / "tree" / "cat" / "notes.txt").write_text("not a video")
    with pytest.raises(ValueError, match=r"extension, e\.g\. cat/notes\.txt; allowed: \.mp4"):
        sources.VideoFolder(root=str(tmp_path / "tree"))
    assert len(sources.VideoFolder(root=str(tmp_path / "tree"), extensions=(".txt",))) == 1


def test_tree_mode_structure_errors(tmp_path):
    (tmp_path / "loose.mp4").write_bytes(b"")
    with pytest.raises(ValueError, match=r"files directly under the root \(loose\.mp4\)"):
        sources.VideoFolder(root=str(tmp_path))
    (tmp_path / "loose.mp4").unlink()
    (tmp_path / "cat").mkdir()
    with pytest.raises(ValueError, match="no videos found"):
        sources.VideoFolder(root=str(tmp_path))


def test_tfds_source_missing_dataset_says_how_to_prepare(tmp_path):
    with pytest.raises(FileNotFoundError) as raised:
        sources.PreparedDataset(dataset="ucf101_frames", data_dir=str(tmp_path), split="test")
    message = str(raised.value)
    assert "'ucf101_frames' not found" in message
    assert "python -m vrl.data.prepare" in message and "--name=ucf101_frames" in message
    assert f"--out={tmp_path}" in message and "--split=test" in message
