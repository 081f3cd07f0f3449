"""`vrl.data.prepare --runner=beam`: the DirectRunner gives the local runner's dataset exactly."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import videos
from test_launch import check_golden

from vrl.data import prepare, prepare_beam, sources

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENGTHS = {"cat/a.mp4": 30, "cat/b.webm": 24, "dog/c.avi": 36, "dog/d.mp4": 20}
BROKEN = ["dog/broken.mp4", "dog/cut.mov"]
# Two worker processes, as on a cluster: each imports vrl and transcodes its share.
TWO_PROCESSES = "--direct_num_workers=2 --direct_running_mode=multi_processing"
DATAFLOW = (
    "--runner=DataflowRunner --project=my-project --region=us-central1 "
    "--temp_location=gs://my-bucket/tmp --num_workers=64 --max_num_workers=64 "
    "--worker_machine_type=n2-highcpu-8 --number_of_worker_harness_threads=1 "
    "--sdk_container_image=us-docker.pkg.dev/my-project/vrl/prepare:latest"
)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Four good clips (30 fps), one unreadable, one truncated; train/test manifests."""
    train = ["cat/a.mp4", "dog/broken.mp4", "dog/c.avi", "dog/cut.mov", "dog/d.mp4"]
    base = tmp_path_factory.mktemp("prepare_beam")
    return videos.labelled_folder(base, LENGTHS, train, ["cat/b.webm"])


def build(inputs, out, beam_options=None, **options):
    return prepare.prepare(
        str(inputs / "videos"),
        str(inputs / "{split}.csv"),
        "toy",
        ["train", "test"],
        str(inputs / out),
        options=prepare.Options(**options),
        workers=2,
        beam_options=beam_options,
    )


def failed(inputs, out):
    with open(inputs / out / "_work" / "toy" / "failed_train.csv") as f:
        return list(csv.reader(f))


def assert_same_datasets(inputs, local, beam, store):
    """Every record field, and decoded frames, alike in both datasets (in record order)."""
    for split in ("train", "test"):
        a, b = (
            sources.PreparedDataset(dataset="toy", data_dir=str(inputs / out), split=split)
            for out in (local, beam)
        )
        assert len(a) == len(b) == {"train": 3, "test": 1}[split]
        assert a.label_names == b.label_names == {"label": ["cat", "dog"]}
        for index in range(len(a)):
            left, right = a[index], b[index]
            assert left.keys() == right.keys()
            for key in left:
                if key == "labels":
                    assert left[key] == right[key]
                else:
                    np.testing.assert_array_equal(left[key], right[key], err_msg=key)
            every = np.arange(left["num_frames"])
            frames = a.decode(left, every)
            np.testing.assert_array_equal(frames, b.decode(right, every))
            assert [videos.read_index(f) for f in frames] == [
                i * 30 // {"video": 30, "frames": 10}[store] for i in every
            ]
    # The same shards, byte for byte, and the same metadata (options, layout, inputs).
    a, b = (inputs / out / "toy" / "1.0.0" for out in (local, beam))
    assert sorted(os.listdir(a)) == sorted(os.listdir(b))
    for name in os.listdir(a):
        if name != "dataset_info.json":  # it holds the time of writing
            assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.mark.parametrize(
    "store, beam_options",
    [
        ("video", f"--runner=DirectRunner {TWO_PROCESSES}"),
        # In one process: the multi-process start-up (~10 s) once in this file is enough.
        ("frames", "--runner=DirectRunner --direct_running_mode=in_memory"),
    ],
)
def test_beam_runner_gives_the_local_runners_dataset(inputs, monkeypatch, store, beam_options):
    monkeypatch.setenv("PYTHONPATH", REPO, prepend=os.pathsep)  # Beam's worker processes import vrl
    monkeypatch.setattr(prepare_beam, "_TASKS_PER_FILE", 2)  # several files of tasks
    options = {"store": store} if store == "video" else {"store": store, "fps": 10.0}
    local = build(inputs, f"local_{store}", **options)
    beam = build(inputs, f"beam_{store}", beam_options, **options)
    for split in ("train", "test"):
        assert (beam[split].examples, beam[split].transcoded, beam[split].cached) == (
            local[split].examples,
            local[split].transcoded,
            local[split].cached,
        )
        assert sorted(beam[split].failed) == sorted(local[split].failed)
    assert [id_ for id_, _ in sorted(beam["train"].failed)] == BROKEN
    assert failed(inputs, f"beam_{store}") == failed(inputs, f"local_{store}")
    assert_same_datasets(inputs, f"local_{store}", f"beam_{store}", store)

    # Done already: nothing to do; the dataset lost: every finished input from the work dir.
    assert build(inputs, f"beam_{store}", beam_options, **options) == {}
    if store == "frames":
        prepare.storage.remove(str(inputs / f"beam_{store}" / "toy"))
        again = build(inputs, f"beam_{store}", beam_options, **options)
        assert (again["train"].transcoded, again["train"].cached) == (0, 3)
        assert_same_datasets(inputs, f"local_{store}", f"beam_{store}", store)


def test_bad_beam_options_are_one_line_errors(inputs):
    with pytest.raises(prepare.InputError, match="unknown option"):
        build(inputs, "bad", "--runner=DirectRunner --no_such_option=1")
    assert not (inputs / "bad").exists()


def run_command(*args):
    return subprocess.run(
        [sys.executable, "-m", "vrl.data.prepare", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_dry_run_prints_the_dataflow_command():
    args = [
        "--videos=gs://my-bucket/kinetics710/videos",
        "--manifest=gs://my-bucket/kinetics710/{split}.csv",
        "--name=kinetics710",
        "--split=train,val",
        "--out=gs://my-bucket/tfds",
        "--short_side=256",
        "--runner=beam",
        "--dry_run",
    ]
    out = run_command(*args, f"--beam_options={DATAFLOW}")
    assert out.returncode == 0, out.stderr
    check_golden("prepare_beam_dataflow_dry_run.txt", out.stdout)
    out = run_command(*args, "--beam_options=--runner=DataflowRunner --project=p")
    assert out.returncode == 2
    assert "DataflowRunner needs --region, --temp_location" in out.stderr


def test_beam_runner_into_a_bucket(inputs, gcs_dir):
    """--out in a bucket: the work dir (finished items, results, failed_train.csv) is there
    too, as for Dataflow workers, and the dataset reads back through the tfds source."""
    beam_options = "--runner=DirectRunner --direct_running_mode=in_memory"
    local = build(inputs, "local_bucket", store="frames", chunk_frames=8)
    summary = prepare.prepare(
        str(inputs / "videos"),
        str(inputs / "{split}.csv"),
        "toy",
        ["train", "test"],
        gcs_dir,
        options=prepare.Options(store="frames", chunk_frames=8),
        beam_options=beam_options,
    )
    assert summary["train"].examples == local["train"].examples == 3
    assert sorted(summary["train"].failed) == sorted(local["train"].failed)
    work = prepare.storage.path(gcs_dir) / "_work" / "toy"
    assert "dog/cut.mov" in (work / "failed_train.csv").read_text()
    assert not list(work.glob("beam/*"))  # task and result files are removed
    a = sources.PreparedDataset(dataset="toy", data_dir=str(inputs / "local_bucket"))
    b = sources.PreparedDataset(dataset="toy", data_dir=gcs_dir)
    assert [a[i]["id"] for i in range(3)] == [b[i]["id"] for i in range(3)]
    record = b[2]
    every = np.arange(record["num_frames"])
    np.testing.assert_array_equal(a.decode(a[2], every), b.decode(record, every))
