"""Fine-tuning probe: the training config it writes, and a run through `python -m vrl.probe`."""

import dataclasses
import json
import os

import numpy as np
import pytest
from test_probe_checkpoint import TEST_PP, fresh_copy, tiny_run_config
from test_probe_cli import probe_cli

from vrl import api, evaluators, setup
from vrl import config as config_lib
from vrl import optim as optim_lib
from vrl.data import pipeline
from vrl.probe import main as probe_main


def finetune_probe(**kwargs):
    return config_lib.component("probe", {"name": "finetune", **kwargs}, "config.probe")


def test_training_config_follows_the_videomae_recipe():
    run = tiny_run_config()
    probe = finetune_probe(epochs=3.0, warmup_epochs=1.0, batch_size=4, mixup=0.8, cutmix=1.0)
    train_pp = "uniform_clip(frames=4, stride=2)|random_resized_crop(size=16)"
    config = probe.training_config(
        "/runs/pre", 7, "encoder", run, run["data"], "motion", 8, train_pp
    )
    assert config["total_epochs"] == 3.0
    assert config["model"] == {**run["model"], "drop_path": 0.1}
    objective = config["objective"]
    assert objective["name"] == "supervised" and objective["num_classes"] == 8
    assert objective["init_from"] == "/runs/pre" and objective["init_step"] == 7
    assert objective["init_which"] == "encoder" and objective["label_set"] == "motion"
    assert objective["label_smoothing"] == 0.1
    assert (objective["mixup"], objective["cutmix"]) == (0.8, 1.0)
    optim = config["optim"]
    assert optim["name"] == "adamw" and optim["layer_decay"] == 0.75
    assert optim["schedule"] == "cosine" and optim["warmup_epochs"] == 1.0
    assert optim["lr"] == 1e-3 and optim["lr_base_batch"] == 256 and optim["weight_decay"] == 0.05
    assert config["data"]["train_pp"] == train_pp and config["data"]["batch_size"] == 4
    # The trainer accepts it as it is: 3 epochs x 16 videos / batch 4, tested at the end.
    s = setup.setup(config)
    assert s.length.total_steps == 12
    assert config["evals"]["classification"]["probe"] == {"name": "classification"}
    assert evaluators.build(s, "/runs/unused")[0].every_steps == 0
    # The random encoder is the same architecture trained from scratch.
    scratch = probe.training_config(
        "/runs/pre", 7, "random", run, run["data"], "motion", 8, train_pp
    )
    assert scratch["objective"]["init_from"] == ""


def test_models_without_drop_path_fine_tune_without_it():
    run = {**tiny_run_config(), "model": {"name": "cvrl_r3d", "depth": 18, "width": 0.25}}
    config = finetune_probe().training_config(
        "/runs/pre", 1, "encoder", run, run["data"], "motion", 8, TEST_PP
    )
    assert "drop_path" not in config["model"]


def test_cli_fine_tunes_from_the_checkpoint_with_multi_view_testing(tmp_path):
    """With lr 0 the fine-tuned encoder must still be exactly the pretrained one: proof that
    the run started from the checkpoint. Evaluated every 2 steps and on 2 clips x 3 crops, by
    the run's `classification` eval; a probe job of that kind on the run says the same."""
    workdir = fresh_copy(tmp_path)
    result = probe_cli(
        "configs/probe/finetune.py:runlocal", workdir, "--config.probe.lr=0.0",
        "--config.test_views=(2, 3)",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "finetune_motion_pretrained" in result.stdout
    name = "finetune_motion_pretrained"
    with open(os.path.join(workdir, "probe", f"{name}.json")) as f:
        record = json.load(f)
    metrics = record["metrics"]
    assert 0.0 <= metrics["top1"] <= metrics["top5"] <= 100.0 and metrics["num_test"] == 16
    assert metrics["step"] == 4  # 2 epochs x 16 videos / batch 8
    assert [h["step"] for h in metrics["history"]] == [2]
    assert metrics["test_pp"].endswith("three_crop(size=16)")
    assert metrics["drop_path"] == 0.1
    run_dir = os.path.join(workdir, "probe", name)
    assert metrics["run_dir"] == run_dir
    for kind in ("per_class", "confusion", "pca"):
        assert os.path.exists(os.path.join(workdir, "probe", f"{name}_{kind}.png"))

    # The fine-tuned run's own head, re-tested by a probe job, gives the final numbers again.
    job = {"checkpoint": run_dir, "probe": {"name": "classification"}, "test_views": (2, 3)}
    retested = probe_main.run_job({**job, "label_sets": ("motion",), "plots": False})
    assert retested["classification_motion_pretrained"]["confusion"] == metrics["confusion"]

    clips = np.random.default_rng(0).integers(0, 256, (4, 4, 16, 16, 3), np.uint8)
    pretrained = api.load_encoder(workdir).embed(clips)
    fine_tuned = api.load_encoder(run_dir)
    assert fine_tuned.step == 4
    np.testing.assert_allclose(fine_tuned.embed(clips), pretrained, atol=1e-5)


def test_videomae_recipe_is_the_released_k400_vit_b_fine_tuning():
    """configs/probe/finetune.py:videomae = VideoMAE finetune.sh (K400 ViT-B, e1600): 384 videos
    x 2 clips per step, lr 5e-4 x 384 / 256, 75 epochs (5 warmup) over the videos, RandAugment
    before the crop, random erasing after the flip, fc_norm on the mean-pooled tokens."""
    from configs.probe import finetune as finetune_config

    c = finetune_config.get_config("videomae")
    probe = finetune_probe(**{k: v for k, v in c.probe.to_dict().items() if k != "name"})
    train_pp = probe.train_pipeline(TEST_PP)
    names = [name for name, _ in pipeline.parse_pp(train_pp)]
    assert names == [
        "uniform_clip",
        "rand_augment",
        "random_resized_crop",
        "flip",
        "random_erasing",
    ]
    ops = dict(pipeline.parse_pp(train_pp))
    assert ops["rand_augment"] == {"num_ops": 4, "magnitude": 7.0, "magnitude_std": 0.5}
    assert ops["random_resized_crop"]["area"] == (0.08, 1.0)
    assert ops["random_resized_crop"]["aspect"] == (0.75, 1.3333)
    assert ops["random_erasing"] == {"p": 0.25}
    run = tiny_run_config()
    config = probe.training_config(
        "/runs/pre", 7, "encoder", run, run["data"], "motion", 8, train_pp
    )
    assert config["data"]["batch_size"] == 768 and config["data"]["repeated_samples"] == 2
    assert config["total_epochs"] == 150.0  # vrl epochs count clips: 75 passes over the videos
    optim = config["optim"]
    assert optim["warmup_epochs"] == 10.0 and optim["lr_base_batch"] == 512
    assert optim["lr"] == 5e-4 and optim["layer_decay"] == 0.75 and optim["b2"] == 0.999
    assert optim["end_lr"] == optim["warmup_init_lr"] == pytest.approx(1e-6 * 384 / 256)
    assert config["model"]["drop_path"] == 0.1
    assert config["objective"]["head_norm"] is True
    # VideoMAE's mean-pooling classifier has no final norm (Identity): the saved one is dropped.
    assert config["model"]["final_norm"] is False
    assert config["objective"]["init_drop"] == ("norm",)
    assert (config["objective"]["mixup"], config["objective"]["cutmix"]) == (0.8, 1.0)

    # On the tiny data: 16 videos / 4 per step = 4 steps per pass, 2 passes; peak lr scaled by
    # the 4 videos, not the 8 clips.
    small = dataclasses.replace(probe, epochs=2.0, warmup_epochs=0.5, batch_size=4)
    config = small.training_config(
        "/runs/pre", 7, "encoder", run, run["data"], "motion", 8, train_pp
    )
    s = setup.setup(config)
    assert s.length.total_steps == 8 and s.length.batch_size == 8
    schedule = optim_lib.learning_rate(s.optim, s.length)
    assert float(schedule(2)) == pytest.approx(5e-4 * 4 / 256, rel=1e-5)  # after 2 warmup steps


@pytest.mark.slow
def test_videomae_runlocal_fine_tunes_with_the_augmented_pipeline(tmp_path):
    workdir = fresh_copy(tmp_path)
    result = probe_cli("configs/probe/finetune.py:videomae,runlocal", workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(workdir, "probe", "finetune_motion_pretrained.json")) as f:
        metrics = json.load(f)["metrics"]
    assert metrics["step"] == 8  # 2 epochs x 16 videos / 4 videos (8 clips) per step
    assert "rand_augment(" in metrics["train_pp"] and "random_erasing(" in metrics["train_pp"]


def test_dropped_initial_weights_must_exist():
    from vrl import checkpoint as ckpt_lib
    from vrl import weights
    from vrl.objectives import base

    saved = {"params": {"blocks_0": {"w": 1}, "norm": {"scale": 2}}}
    source = base.InitialWeights("/runs/pre", drop=("norm",), key="config.objective.init_from")
    assert weights._without(saved, source) == {"params": {"blocks_0": {"w": 1}}}
    missing = base.InitialWeights("/runs/pre", drop=("fc_norm",), key="config.objective.init_from")
    with pytest.raises(ckpt_lib.CheckpointError, match="cannot drop 'fc_norm'.*blocks_0, norm"):
        weights._without(saved, missing)
