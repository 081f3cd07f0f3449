"""Probe jobs on a checkpoint: result JSON, pictures, metrics lines, multi-view, other sources."""

import json
import os

import numpy as np
import pytest
import videos
from PIL import Image
from test_probe_checkpoint import TEST_PP, fresh_copy

from vrl import config as config_lib
from vrl.probe import main as probe_main
from vrl.probe import plots, views


def read_json(workdir: str, name: str) -> dict:
    with open(os.path.join(workdir, "probe", f"{name}.json")) as f:
        return json.load(f)


def check_classification(metrics: dict, num_test: int, num_classes: int) -> None:
    assert 0.0 <= metrics["top1"] <= metrics["top5"] <= 100.0
    assert metrics["num_test"] == num_test
    assert len(metrics["per_class_accuracy"]) == num_classes
    assert all(0.0 <= a <= 100.0 for a in metrics["per_class_accuracy"])
    confusion = np.array(metrics["confusion"])
    assert confusion.shape == (num_classes, num_classes) and confusion.sum() == num_test
    assert metrics["top1"] == pytest.approx(100.0 * np.trace(confusion) / num_test)


def test_knn_job_writes_json_pictures_and_metrics_for_each_encoder(tmp_path):
    workdir = fresh_copy(tmp_path)
    results = probe_main.run_job(
        {
            "checkpoint": workdir,
            "probe": {"name": "knn", "k": 5},
            "encoders": ("pretrained", "random"),
            "label_sets": ("motion",),
            "test_views": (2, 3),
        }
    )
    assert set(results) == {"knn_motion_pretrained", "knn_motion_random"}
    for name, metrics in results.items():
        check_classification(metrics, num_test=16, num_classes=8)
        assert 0.0 <= metrics["recall@1"] <= metrics["recall@20"] <= 100.0
        record = read_json(workdir, name)
        assert record["metrics"] == json.loads(json.dumps(metrics))
        assert record["step"] == 2
        assert record["encoder"] == name.rsplit("_", 1)[1]
        assert record["class_names"][:2] == ["left", "right"]
        assert record["config"]["probe"] == {"name": "knn", "k": 5}
        assert record["test_pp"].startswith("multiview_clips(num_clips=2, frames=4, stride=2")
        assert record["test_pp"].endswith("three_crop(size=16)")
        assert "git_commit" in record
        for kind in ("per_class", "confusion", "pca"):
            with Image.open(os.path.join(workdir, "probe", f"{name}_{kind}.png")) as image:
                assert image.size[0] > 200 and image.size[1] > 200
    # A random encoder is not the trained one: the two see different neighbourhoods.
    pretrained, random = results["knn_motion_pretrained"], results["knn_motion_random"]
    assert pretrained["confusion"] != random["confusion"]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    probe_rows = [r for r in rows if "knn_motion_pretrained/top1" in r]
    assert len(probe_rows) == 1 and probe_rows[0]["step"] == 2
    assert probe_rows[0]["knn_motion_pretrained/recall@5"] == pretrained["recall@5"]


def test_probes_run_on_a_video_folder(tmp_path):
    """The checkpoint was trained on synthetic clips; the probe reads encoded video files."""
    root = tmp_path / "videos"
    for split, count in (("train", 4), ("test", 2)):
        for cls, pattern in (("bars", "bar"), ("blocks", "bits")):
            os.makedirs(root / split / cls)
            for i in range(count):
                path = root / split / cls / f"{i}.mp4"
                videos.make_video(path, frames=12, size=(32, 32), pattern=pattern)
    workdir = fresh_copy(tmp_path)
    results = probe_main.run_job(
        {
            "checkpoint": workdir,
            "probe": {"name": "linear", "solver": "ridge"},
            "encoders": ("pretrained",),
            "data": {"source": {"name": "video_folder", "root": str(root / "{split}")}},
            "plots": False,
        }
    )
    metrics = results["linear_label_pretrained"]
    check_classification(metrics, num_test=4, num_classes=2)
    assert metrics["num_train"] == 8
    assert read_json(workdir, "linear_label_pretrained")["class_names"] == ["bars", "blocks"]
    assert not os.path.exists(os.path.join(workdir, "probe", "linear_label_pretrained_pca.png"))


def test_job_errors_name_the_key(tmp_path):
    workdir = fresh_copy(tmp_path)
    with pytest.raises(config_lib.ConfigError, match="config.label_sets: 'colour' not in the data"):
        probe_main.run_job({"checkpoint": workdir, "label_sets": ("colour",)})
    with pytest.raises(config_lib.ConfigError, match="config.encoders: unknown encoder 'ema'"):
        probe_main.run_job({"checkpoint": workdir, "encoders": ("ema",)})
    with pytest.raises(config_lib.ConfigError, match="config.probe.name: unknown probe 'svm'"):
        probe_main.run_job({"checkpoint": workdir, "probe": {"name": "svm"}})
    with pytest.raises(config_lib.ConfigError, match="config.checkpoint: required"):
        probe_main.run_job({})


def test_multi_view_pipelines_are_derived_from_the_test_pipeline():
    assert views.multiview(TEST_PP, 5, 3) == (
        "multiview_clips(num_clips=5, frames=4, stride=2, short='loop')"
        "|resize_short(size=16)|three_crop(size=16)"
    )
    assert views.multiview("center_clip|center_crop(size=8)", 1, 1) == (
        "multiview_clips(num_clips=1, frames=16, stride=2, short='loop')|center_crop(size=8)"
    )
    with pytest.raises(config_lib.ConfigError, match="three crops need the test pipeline"):
        views.multiview("center_clip(frames=4)|resize_short(size=16)", 2, 3)
    with pytest.raises(config_lib.ConfigError, match="crops 1 or 3"):
        views.multiview(TEST_PP, 2, 2)
    assert views.finetune_train(TEST_PP, area=(0.5, 1.0), flip=True) == (
        "uniform_clip(frames=4, stride=2, short='loop')"
        "|random_resized_crop(size=16, area=(0.5, 1.0))|flip"
    )


def test_pca_finds_the_direction_of_largest_variance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5)) * np.array([0.1, 5.0, 0.1, 1.0, 0.1])
    points, ratio = plots.pca_2d(x)
    assert points.shape == (200, 2)
    np.testing.assert_allclose(np.abs(points[:, 0]), np.abs(x[:, 1] - x[:, 1].mean()), atol=0.1)
    assert 0.9 < ratio[0] < 1.0 and ratio[1] < 0.1
    assert plots.pca_2d(x[:, None].repeat(3, axis=1))[0].shape == (200, 2)  # views averaged
