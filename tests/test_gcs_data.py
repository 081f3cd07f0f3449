"""Data in a bucket (the Cloud Storage emulator): video folders, manifests and prepared datasets
at gs:// URLs read, and are written, exactly like local ones; bad paths are one line."""

import os
import subprocess
import sys

import numpy as np
import pytest
import videos

from tests import gcs
from vrl import config as config_lib
from vrl import storage
from vrl.data import manifests, pipeline, prepare, show

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOOD = ("cat/a.mp4", "cat/b.mp4", "dog/c.mp4", "dog/d.mp4")
BROKEN = "dog/broken.mp4"
PP = "uniform_clip(frames=4, stride=2)"


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """videos/<class>/*.mp4 (one of them not a video) and manifests/{train,test}.csv: train
    lists every file, test only the good ones."""
    base = tmp_path_factory.mktemp("gcs_data")
    for rel in GOOD:
        (base / "videos" / rel).parent.mkdir(parents=True, exist_ok=True)
        videos.make_video(base / "videos" / rel, frames=16, size=(32, 32), fps=8, gop=4)
    (base / "videos" / BROKEN).write_bytes(b"not a video at all")
    for split, names in {"train": (*GOOD, BROKEN), "test": GOOD}.items():
        rows = [manifests.ManifestRow(n, n.split("/")[0]) for n in names]
        manifests.write_manifest(str(base / "manifests" / f"{split}.csv"), rows)
    return str(base)


@pytest.fixture(scope="module")
def remote(local, gcs_server):
    """The same files in the bucket."""
    folder = gcs.fresh_folder("gcs-data")
    storage.copy(local, folder)
    return folder


def data_config(source: dict, **kwargs) -> pipeline.DataConfig:
    fields = dict(source=source, train_pp=PP, test_pp="center_clip(frames=4, stride=2)",
                  batch_size=2, prefetch=0, max_skip_fraction=1.0)  # fmt: skip
    return pipeline.DataConfig(**{**fields, **kwargs})


def folder_source(base: str, manifest: bool = True) -> dict:
    source = {"name": "video_folder", "root": os.path.join(base, "videos")}
    if manifest:  # a manifest outside the root, by its full path or URL
        source["manifest"] = os.path.join(base, "manifests", "{split}.csv")
    return source


def epoch(cfg: pipeline.DataConfig) -> tuple[list[dict], int, list[str]]:
    """One epoch of training batches: the batches, videos skipped, and the ones named."""
    data = pipeline.train_data(cfg)
    out, skipped, named = [], 0, []
    it = data.iterator(seed=0, process_index=0, process_count=1)
    for _, batch in zip(range(len(data.source) // cfg.batch_size), it):
        out.append(batch)
        skipped += int(np.sum(batch["data/skipped"]))
        named += [v for ids in batch["data/bad_ids"] for v in str(ids).split(";") if v]
    return out, skipped, named


def evaluated(cfg: pipeline.DataConfig, split: str) -> dict[str, np.ndarray]:
    ds, total = pipeline.eval_dataset(cfg, split, batch_size=2)
    clips = {str(i): v for b in ds for i, v, ok in zip(b["id"], b["video"], b["valid"]) if ok}
    assert len(clips) == total
    return clips


def test_a_video_folder_in_a_bucket_reads_like_the_local_one(local, remote):
    for manifest in (True, False):  # a manifest, then the class-folder tree
        here = epoch(data_config(folder_source(local, manifest)))
        there = epoch(data_config(folder_source(remote, manifest)))
        assert there[1:] == here[1:] and here[2] == [BROKEN]  # skipped and named alike
        for a, b in zip(here[0], there[0], strict=True):
            assert sorted(a) == sorted(b)
            for key in a:
                np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    source = pipeline.make_source(data_config(folder_source(remote)), "train")
    assert source.label_names == {"label": ["cat", "dog"]}


def test_prepare_into_a_bucket_then_train_from_it(local, remote, tmp_path):
    out = f"{remote}/tfds"
    args = (f"{remote}/videos", f"{remote}/manifests/{{split}}.csv", "toy", ["train", "test"], out)
    summary = prepare.prepare(*args, workers=1)
    assert summary["train"].examples == 4 and [f for f, _ in summary["train"].failed] == [BROKEN]
    failed = storage.path(f"{out}/_work/toy/failed_train.csv").read_text()
    assert failed.splitlines()[1].startswith(f"{BROKEN},")
    assert storage.path(f"{out}/toy/1.0.0/dataset_info.json").exists()
    # Run again: found in the bucket; the same inputs do nothing, other options are refused.
    assert prepare.prepare(*args, workers=1) == {}
    with pytest.raises(prepare.InputError, match="exists, prepared from other inputs or options"):
        prepare.prepare(*args, workers=1, options=prepare.Options(store="frames"))
    # Read through Grain from gs://, in the loop and in a worker process.
    tfds_source = {"name": "tfds", "dataset": "toy", "data_dir": out}
    clips = evaluated(data_config(tfds_source), "test")
    for vid, clip in evaluated(data_config(folder_source(local)), "test").items():
        np.testing.assert_array_equal(clips[vid], clip)  # the original bytes, decoded
    batches = data_config(tfds_source, num_workers=1, prefetch=2, batch_size=4)
    (batch,) = epoch(batches)[0]
    assert sorted(map(str, batch["id"])) == sorted(GOOD)
    assert batch["video"].shape == (4, 4, 32, 32, 3)


def test_bad_urls_and_missing_buckets_are_one_line_at_start_up(remote):
    cases = {
        "gs:/vrl-test/videos": r"root 'gs:/vrl-test/videos' is not a valid URL: write gs://B",
        "gs://no-such-bucket/videos": "bucket gs://no-such-bucket does not exist",
    }
    for root, message in cases.items():
        cfg = data_config({"name": "video_folder", "root": root})
        with pytest.raises(config_lib.ConfigError, match=rf"config.data.source .*{message}"):
            pipeline.make_source(cfg, "train")
    cfg = data_config({"name": "tfds", "dataset": "toy", "data_dir": "gs://no-such-bucket/d"})
    with pytest.raises(config_lib.ConfigError, match="data_dir gs://no-such-bucket/d: bucket"):
        pipeline.make_source(cfg, "train")
    with pytest.raises(prepare.InputError, match="--out 'gs:/x/y' is not a valid URL"):
        prepare.prepare(f"{remote}/videos", f"{remote}/manifests/train.csv", "t", ["train"],
                        "gs:/x/y")  # fmt: skip


def test_show_writes_into_a_bucket(gcs_dir):
    config = config_lib.load_file(os.path.join(REPO, "configs", "quickstart.py"), "runlocal")
    paths = show.show(config, gcs_dir, num=1)
    assert paths == [f"{gcs_dir}/example_0.gif", f"{gcs_dir}/contact_sheet.png"]
    assert all(storage.path(p).read_bytes()[:3] in (b"GIF", b"\x89PN") for p in paths)


def test_remote_reads_benchmark_prints_its_tables():
    command = ["--videos=2", "--seconds=2", "--clips=8", "--rounds=1", "--noworkers",
               "--max_read_threads=4"]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.remote_reads", *command],
        cwd=REPO,
        env=dict(os.environ, JAX_NUM_CPU_DEVICES="1", JAX_PLATFORMS="cpu"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "remote / local" in done.stdout and "read_threads" in done.stdout, done.stdout
