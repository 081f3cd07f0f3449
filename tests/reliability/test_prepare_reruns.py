"""`python -m vrl.data.prepare` run again: the same inputs and options find nothing to do; other
inputs or options are refused, naming the difference, unless --overwrite; and every input
error (missing manifest, no readable video) is one line and exit code 2.
"""

import os
import subprocess
import sys

import pytest
import videos

from vrl.data import manifests, sources

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
NAME = "rerun_toy"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """videos/v0..v4.mp4 and a broken file; manifests first/train.csv (3 videos), second/ (5)
    and broken/ (the broken file alone)."""
    base = tmp_path_factory.mktemp("reruns")
    root = base / "videos"
    root.mkdir()
    for i in range(5):
        videos.make_video(root / f"v{i}.mp4", frames=8, size=(32, 32), fps=8, gop=4)
    (root / "bad.mp4").write_bytes(b"not a video at all")
    for folder, names in {
        "first": ["v0", "v1", "v2"],
        "second": ["v0", "v1", "v2", "v3", "v4"],
        "broken": ["bad"],
    }.items():
        rows = [
            manifests.ManifestRow(f"{n}.mp4", "a" if i % 2 else "b") for i, n in enumerate(names)
        ]
        manifests.write_manifest(str(base / folder / "train.csv"), rows)
    return base


def prepare_cli(base, manifest: str, *flags: str, name: str = NAME):
    command = [
        sys.executable, "-m", "vrl.data.prepare", f"--videos={base / 'videos'}",
        f"--manifest={base / manifest}", f"--name={name}", f"--out={base / 'out'}",
        "--workers=1", *flags,
    ]  # fmt: skip
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def one_line_error(result) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("vrl.data.prepare: "), result.stderr[-3000:]
    return line


def test_a_rerun_with_other_inputs_or_options_is_refused_unless_overwrite(inputs):
    first = prepare_cli(inputs, "first/train.csv")
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"{NAME}/train: 3 examples" in first.stderr

    again = prepare_cli(inputs, "first/train.csv")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already prepared" in again.stderr and "from the same inputs and options" in again.stderr

    more_videos = one_line_error(prepare_cli(inputs, "second/train.csv"))
    assert "prepared from other inputs or options: split 'train' had 3 videos, now 5" in more_videos
    assert "Add --overwrite to replace it" in more_videos

    resized = one_line_error(prepare_cli(inputs, "first/train.csv", "--short_side=16"))
    assert "--short_side=None then, 16 now" in resized

    replaced = prepare_cli(inputs, "second/train.csv", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert f"{NAME}/train: 5 examples" in replaced.stderr
    source = sources.PreparedDataset(dataset=NAME, data_dir=str(inputs / "out"), split="train")
    assert len(source) == 5


@pytest.mark.parametrize(
    "manifest,message",
    [
        ("missing/train.csv", "manifest {base}/missing/train.csv does not exist"),
        (
            "broken/train.csv",
            "split 'train': none of its 1 input(s) could be read ({base}/videos/bad",
        ),
    ],
)
def test_input_errors_are_one_line_and_exit_2(inputs, manifest, message):
    line = one_line_error(prepare_cli(inputs, manifest, name="errors_toy"))
    assert message.format(base=inputs) in line, line
    assert not os.path.exists(inputs / "out" / "errors_toy" / "1.0.0" / "dataset_info.json")
