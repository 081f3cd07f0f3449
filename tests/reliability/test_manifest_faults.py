"""Manifest mistakes are caught at start-up with the file and line; what is fine is accepted.

A byte-order mark is accepted, a Latin-1 file, extra fields and a path listed twice are
errors naming the line, paths that leave the root (`..`, absolute, a symlink) are refused
unless `allow_outside_root=True`, and several label columns are several label sets, through
the `video_folder` source and `prepare` alike.
"""

import os

import numpy as np
import pytest
import runs
import videos

from vrl import config as config_lib
from vrl.data import pipeline, prepare, sources

PP = "center_clip(frames=4, stride=1)|resize_short(size=16)|center_crop(size=16)"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """root/{a,b,c,d}.mp4, outside/e.mp4 beside the root, and root/link.mp4 -> outside/e.mp4."""
    base = tmp_path_factory.mktemp("manifests")
    (base / "root").mkdir()
    (base / "outside").mkdir()
    for name in ("root/a", "root/b", "root/c", "root/d", "outside/e"):
        videos.make_video(base / f"{name}.mp4", frames=8, size=(32, 32), fps=8, gop=4)
    os.symlink(base / "outside" / "e.mp4", base / "root" / "link.mp4")
    return base / "root"


def source(root, text: str | bytes, **kwargs) -> sources.Source:
    """The video_folder source the trainer would build on `root` with this manifest."""
    path = root.parent / "m.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    cfg = pipeline.DataConfig(
        source={"name": "video_folder", "root": str(root), "manifest": str(path), **kwargs},
        test_pp=PP,
        batch_size=4,
        prefetch=0,
    )
    return pipeline.make_source(cfg, "train")


def error(root, text: str | bytes, **kwargs) -> str:
    with pytest.raises(config_lib.ConfigError) as raised:
        source(root, text, **kwargs)
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_a_utf8_byte_order_mark_is_accepted(root):
    got = source(root, "\ufeffpath,label\na.mp4,x\nb.mp4,y\n")
    assert len(got) == 2 and got.label_names == {"label": ["x", "y"]}


def test_a_latin1_manifest_names_the_file_and_line(root):
    message = error(root, "path,label\na.mp4,x\nb.mp4,café\n".encode("latin-1"))
    assert (
        f"manifest {root.parent / 'm.csv'}, line 3: not UTF-8 (byte 0xe9 at column 10)" in message
    )


def test_extra_fields_and_a_path_listed_twice_name_the_line(root):
    extra = error(root, "path,label\na.mp4,x\nb.mp4,y,z\n")
    assert "line 3: 3 fields, the header has 2 (path, label)" in extra
    twice = error(root, "path,label\na.mp4,x\nb.mp4,y\n./a.mp4,x\n")
    assert "line 4: ./a.mp4 is listed twice (first on line 2)" in twice


@pytest.mark.parametrize(
    "path,reason",
    [
        ("../outside/e.mp4", "leaves the root with '..'"),
        ("{base}/outside/e.mp4", "is an absolute path"),
        ("link.mp4", "is a symlink to {base}/outside/e.mp4, outside the root"),
    ],
)
def test_paths_leaving_the_root_are_refused_unless_allowed(root, path, reason):
    path = path.format(base=root.parent)
    message = error(root, f"path,label\na.mp4,x\n{path},y\n")
    assert f"line 3: {path} {reason.format(base=root.parent)}" in message
    assert "set allow_outside_root=True" in message
    allowed = source(root, f"path,label\na.mp4,x\n{path},y\n", allow_outside_root=True)
    assert allowed.decode(allowed[1], np.arange(4)).shape == (4, 32, 32, 3)


MULTI = "path,motion,digit\na.mp4,left,3\nb.mp4,right,5\nc.mp4,left,0\nd.mp4,up,3\n"
MULTI_NAMES = {"motion": ["left", "right", "up"], "digit": [str(i) for i in range(6)]}


def test_several_label_columns_are_several_label_sets(root):
    folder = source(root, MULTI)
    assert folder.label_names == MULTI_NAMES
    assert folder[1]["labels"] == {"motion": 1, "digit": 5}
    cfg = pipeline.DataConfig(source={"name": "video_folder", "root": str(root),
                                      "manifest": str(root.parent / "m.csv")},
                              test_pp=PP, batch_size=4, prefetch=0)  # fmt: skip
    dataset, total = pipeline.eval_dataset(cfg, "train", batch_size=4)
    batch = next(iter(dataset))
    assert total == 4
    assert batch["label/motion"].tolist() == [0, 1, 0, 2]
    assert batch["label/digit"].tolist() == [3, 5, 0, 3]
    assert error(root, "path,motion,digit\na.mp4,left,3\nb.mp4,,5\n").endswith(
        "line 3: no 'motion' for b.mp4 while other rows have one (1 row(s) without); "
        "label every row or none"
    )


def test_prepare_keeps_every_label_set(root, tmp_path):
    (tmp_path / "train.csv").write_text(MULTI)
    prepare.prepare(str(root), str(tmp_path / "{split}.csv"), "multi_toy", ["train"],
                    str(tmp_path / "out"), workers=1)  # fmt: skip
    got = sources.PreparedDataset(dataset="multi_toy", data_dir=str(tmp_path / "out"))
    assert got.label_names == MULTI_NAMES
    by_id = {got[i]["id"]: got[i]["labels"] for i in range(len(got))}  # TFDS shuffles
    assert by_id["b.mp4"] == {"motion": 1, "digit": 5} and by_id["d.mp4"] == {
        "motion": 2,
        "digit": 3,
    }
    (tmp_path / "bad.csv").write_text("path,label\na.mp4,x\na.mp4,x\n")
    with pytest.raises(prepare.InputError, match="line 3: a.mp4 is listed twice"):
        prepare.prepare(str(root), str(tmp_path / "bad.csv"), "bad_toy", ["train"],
                        str(tmp_path / "out"), workers=1)  # fmt: skip


@pytest.mark.slow
def test_the_trainer_stops_at_start_up_on_a_path_listed_twice(root, tmp_path):
    (root / "train.csv").write_text("path,label\na.mp4,x\nb.mp4,y\na.mp4,x\n")
    try:
        run = runs.Run(str(tmp_path / "run"), steps=1, arg=f"videos={root}")
        assert run.wait() == 2, run.tail()
    finally:
        os.remove(root / "train.csv")
    line = run.output().strip().splitlines()[-1]
    assert line == (
        "config error: config.data.source (video_folder, split 'train'): manifest "
        f"{root}/train.csv, line 4: a.mp4 is listed twice (first on line 2)"
    ), run.tail()
