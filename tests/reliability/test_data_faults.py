"""Broken inputs never crash the input pipeline: each one is skipped, counted and named, and a
run stops once they exceed config.data.max_skip_fraction. For video folders (a fuzz corpus of
61 broken files, tests/reliability/corpus.py) and for prepared TFDS datasets with a corrupted
ArrayRecord chunk.
"""

import collections
import json
import os
import shutil

import corpus
import numpy as np
import pytest
import runs

from vrl.data import manifests, pipeline, prepare, sources
from vrl.data.decode import DecodeError

DATASET = "reliability_toy"
WHOLE_CLIP = f"uniform_clip(frames={corpus.FRAMES}, stride=1)"  # every frame of a good video
BATCH = 8


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """ROOT/train.csv lists the broken corpus and good videos (the good ones come first)."""
    root = str(tmp_path_factory.mktemp("fuzz"))
    kinds = corpus.build(os.path.join(root, "broken"))
    os.makedirs(os.path.join(root, "good"))
    original = corpus.good_video(os.path.join(root, "good"), "h264", "h264_0.mp4")
    broken = [f"broken/{name}" for name in sorted(kinds)]
    # About 100 good videos, so that broken + good fill whole batches.
    good = [
        f"good/h264_{i}.mp4" for i in range(-(-(len(broken) + 100) // BATCH) * BATCH - len(broken))
    ]
    for name in good[1:]:
        shutil.copy(original, os.path.join(root, name))
    manifests.write_manifest(
        os.path.join(root, "train.csv"), [manifests.ManifestRow(p) for p in good + broken]
    )
    return {"root": root, "broken": broken, "kinds": kinds, "good": good}


def data_config(root: str, pp: str = WHOLE_CLIP, **kwargs) -> pipeline.DataConfig:
    source = {"name": "video_folder", "root": root, "manifest": "train.csv"}
    return pipeline.DataConfig(source=source, train_pp=pp, batch_size=BATCH, prefetch=0, **kwargs)


def test_the_corpus_has_at_least_50_broken_inputs_of_every_kind(folder):
    assert len(folder["broken"]) >= 50
    counts = collections.Counter(folder["kinds"].values())
    assert set(counts) == {
        "zero-byte",
        "random bytes",
        "truncated",
        "wrong extension",
        "huge declared size",
        "zero frames",
        "audio only",
        "corrupted header",
    }, counts


def test_every_broken_file_is_a_decode_error_naming_it_never_a_crash(folder):
    source = pipeline.make_source(data_config(folder["root"]), "train")
    ids = [source[i]["id"] for i in range(len(source))]  # listing and indexing never raise
    reasons = {}
    for index, name in enumerate(ids):
        if name not in folder["broken"]:
            continue
        with pytest.raises(DecodeError) as error:
            record = source[index]  # frames looped as the clip samplers do for short videos
            source.decode(record, np.arange(corpus.FRAMES) % record["num_frames"])
        assert os.path.basename(name) in str(error.value)
        reasons[name] = str(error.value)
    assert sorted(reasons) == sorted(folder["broken"])


def test_the_pipeline_skips_and_counts_each_broken_file(folder, monkeypatch):
    """One epoch of the real Grain pipeline: each broken file is named, every failure counted."""
    failures = []
    decode = sources.VideoFolder.decode

    def counting_decode(self, record, frame_indices):
        try:
            return decode(self, record, frame_indices)
        except DecodeError:
            failures.append(record["id"])
            raise

    monkeypatch.setattr(sources.VideoFolder, "decode", counting_decode)
    cfg = data_config(folder["root"], max_skip_fraction=1.0)
    total = len(folder["good"]) + len(folder["broken"])
    batches = pipeline.train_data(cfg).iterator(seed=0, process_index=0, process_count=1)
    skipped, named = 0, collections.Counter()
    for _, batch in zip(range(total // cfg.batch_size), batches):
        assert batch["video"].shape == (BATCH, corpus.FRAMES, 32, 32, 3)
        skipped += int(np.sum(batch["data/skipped"]))
        for ids in batch["data/bad_ids"]:
            named.update(filter(None, str(ids).split(";")))
    assert skipped == len(failures) == sum(named.values())
    assert set(named) == set(folder["broken"])  # every one of them, and nothing else


@pytest.mark.slow
def test_the_trainer_counts_unreadable_videos_and_stops_over_the_limit(folder, tmp_path):
    workdir = str(tmp_path / "run")
    run = runs.Run(workdir, steps=40, arg=f"videos={folder['root']}")
    assert run.wait() == 3, run.tail()
    lines = [ln for ln in run.output().splitlines() if ln.startswith("training stopped: ")]
    assert len(lines) == 1, run.tail()
    assert "videos were unreadable, more than config.data.max_skip_fraction=0.05" in lines[0]
    named = lines[0].split("bad files: ")[1].split(", ")
    assert named and set(named) <= set(folder["broken"]), named
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if '"data/skipped"' in line]
    counts = [r["data/skipped"] for r in rows]
    assert counts[-1] > 0 and counts == sorted(counts)
    assert all(r["data/seen"] == 8 * r["step"] + r["data/skipped"] for r in rows)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, folder):
    """The TFDS dataset DATASET of 8 good videos, then one record's ArrayRecord chunk damaged."""
    base = tmp_path_factory.mktemp("tfds")
    manifests.write_manifest(
        str(base / "train.csv"), [manifests.ManifestRow(p) for p in folder["good"][:8]]
    )
    prepare.prepare(
        folder["root"], str(base / "{split}.csv"), DATASET, ["train"], str(base / "out"), workers=1
    )
    shards = [
        os.path.join(d, n)
        for d, _, names in os.walk(base / "out" / DATASET)
        for n in names
        if ".array_record-" in n
    ]
    assert len(shards) == 1, shards
    with open(shards[0], "r+b") as f:
        f.seek(100)  # inside the first record's chunk (the file header is 64 bytes)
        f.write(bytes(32))
    return str(base / "out")


def test_a_corrupted_tfds_record_is_skipped_and_counted(prepared):
    cfg = pipeline.DataConfig(
        source={"name": "tfds", "dataset": DATASET, "data_dir": prepared},
        train_pp=WHOLE_CLIP,
        batch_size=8,
        prefetch=0,
        max_skip_fraction=1.0,
    )
    source = pipeline.make_source(cfg, "train")
    unreadable = []
    for index in range(len(source)):
        try:
            source.decode(source[index], np.arange(corpus.FRAMES))
        except DecodeError as e:
            assert "unreadable record" in str(e) and "Riegeli" in str(e), str(e)
            unreadable.append(f"{DATASET}/train/{index}")
    assert len(unreadable) == 1
    batch = next(iter(pipeline.train_data(cfg).iterator(seed=0, process_index=0, process_count=1)))
    named = [n for ids in batch["data/bad_ids"] for n in filter(None, str(ids).split(";"))]
    assert int(np.sum(batch["data/skipped"])) == len(named) >= 1
    assert set(named) == set(unreadable)


@pytest.mark.slow
def test_the_trainer_runs_on_a_tfds_dataset_with_a_corrupted_record(prepared, tmp_path):
    workdir = str(tmp_path / "run")
    runs.finish(workdir, "--config.data.max_skip_fraction=1.0", steps=3, arg=f"tfds={prepared}")
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if '"data/skipped"' in line]
    assert rows[-1]["step"] == 3 and rows[-1]["data/skipped"] >= 1
    assert rows[-1]["data/seen"] == 8 * 3 + rows[-1]["data/skipped"]
