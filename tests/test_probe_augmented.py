"""Probes trained on freshly augmented clips (`probe.train_augmented`): new pixels every epoch, the
encoder frozen, better than chance like the cached probes; `:cvrl` / `:vjepa` select it."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from configs.probe import attentive as attentive_config
from configs.probe import linear as linear_config
from vrl import config as config_lib
from vrl.data import pipeline
from vrl.models import layers
from vrl.probe import augmented, features
from vrl.probe import encoder as encoder_lib
from vrl.probe import job as job_lib
from vrl.probe import plan as plan_lib

# One large object per video on a flat background: a random encoder's pooled features tell
# some of the 6 shapes apart (`appearance`), so a probe on them beats chance.
SOURCE = {
    "name": "synthetic",
    "frames": 16,
    "size": 32,
    "num_videos": 64,
    "background_contrast": 0.0,
    "noise": 0.0,
    "radius": (0.25, 0.3),
    "objects": 1,
}
DATA = {
    "source": SOURCE,
    "test_pp": "center_clip(frames=4, stride=2)|resize_short(size=32)|center_crop(size=32)",
    "num_workers": 0,
}
AUGMENT_PP = "uniform_clip(frames=4, stride=2)|random_resized_crop(size=32, area=(0.8, 1.0))|flip"
CHANCE = 100.0 / 6


@pytest.fixture(scope="module")
def encoder() -> encoder_lib.Encoder:
    """A one-block ViT at a random initialisation, on all 8 devices."""
    module = config_lib.component(
        "model",
        {"name": "vit", "size": "Ti", "width": 32, "depth": 1, "heads": 2, "patch": (2, 8, 8)},
        "config.model",
    )
    x = layers.to_model_input(np.zeros((1, 4, 32, 32, 3), np.uint8), module)
    init = jax.jit(lambda key: module.init(key, x, train=False))
    variables = nn.meta.unbox(init(jax.random.key(0)))
    return encoder_lib.Encoder(module, variables, {}, 0, "encoder", batch_size=32)


class Subject:
    """What a plan measures (`plan.Subject`), with a fixed encoder."""

    workdir, step, config = "unused", 0, {}

    def __init__(self, encoder):
        self.encoder = encoder

    def features(self, which, data, split, pp, kind, batch_size):
        return features.extract(self.encoder, data, split, pp=pp, kind=kind)


def measure(encoder, probe: dict, train_pp: str | None, data: dict = DATA, **job) -> dict:
    cfg = {"checkpoint": "unused", "probe": probe, "train_pp": train_pp, "plots": False, **job}
    plan = plan_lib.make(job_lib.check(cfg, "config"), data, "config")
    return {label_set: result for _, _, label_set, result in plan.measure(Subject(encoder))}


def host(tree):
    return jax.tree.map(np.asarray, tree)


def test_each_epoch_sees_new_pixels_of_the_same_videos(encoder):
    data = {**DATA, "source": {**SOURCE, "num_videos": 8}}
    stream, labels = features.extract(
        encoder, data, "train", pp=AUGMENT_PP, kind=augmented.PREFIX + "pooled"
    )
    assert isinstance(stream, augmented.Stream) and labels == {} and len(stream) == 8
    epochs = []  # one batch of the 8 videos per epoch, each epoch in its own order
    for x, y, ids in stream.labelled("appearance").batches(epochs=2, batch_size=8, seed=0):
        order = np.argsort(ids)
        epochs.append((np.asarray(x)[order], np.asarray(y)[order], ids[order]))
    (x0, y0, ids0), (x1, y1, ids1) = epochs
    np.testing.assert_array_equal(ids0, ids1)
    np.testing.assert_array_equal(y0, y1)
    assert x0.shape == (8, 32)
    # Every clip is a new window, crop and flip: no video's features repeat.
    assert (np.abs(x0 - x1).max(axis=1) > 1e-4).all()


def test_augmented_linear_probe_beats_chance_and_leaves_the_encoder_alone(encoder):
    before = host(encoder.variables)
    probe = {"name": "linear", "epochs": 10, "batch_size": 16, "lr": 3.0, "standardize": False}
    cached = measure(encoder, probe, None, label_sets=("appearance",))["appearance"]
    probe.update(train_augmented=True, warmup_epochs=1.0)
    result = measure(encoder, probe, AUGMENT_PP, label_sets=("appearance",))["appearance"]
    assert result["num_train"] == 64 and result["num_test"] == 64
    assert result["top1"] > CHANCE + 5.0 and cached["top1"] > CHANCE + 5.0
    jax.tree.map(np.testing.assert_array_equal, host(encoder.variables), before)


def test_augmented_attentive_probe_groups_segments(encoder):
    """Two augmented segments per train video, grouped as at test."""
    probe = {"name": "attentive", "heads": 2, "segments": 2, "epochs": 1, "batch_size": 8}
    train_pp = "multiview_clips(num_clips=2, frames=4, stride=2)|random_resized_crop(size=32)|flip"
    data = {**DATA, "source": {**SOURCE, "num_videos": 8}}
    result = measure(
        encoder,
        {**probe, "train_augmented": True},
        train_pp,
        data,
        test_views=(2, 1),
        label_sets=("appearance",),
    )["appearance"]
    assert result["num_train"] == 8 and result["num_test"] == 8
    assert (result["chosen_lr"], result["chosen_weight_decay"]) == (1e-3, 0.01)
    assert 0.0 <= result["top1"] <= 100.0


def test_configs_select_the_augmented_path():
    cvrl = linear_config.get_config("cvrl").to_dict()
    assert cvrl["probe"]["train_augmented"] and cvrl["probe"]["warmup_epochs"] == 5.0
    assert (cvrl["probe"]["lr"], cvrl["probe"]["batch_size"], cvrl["probe"]["epochs"]) == (
        32.0,
        1024,
        100,
    )
    assert (
        not linear_config.get_config().probe.train_augmented
    )  # the cached probe stays the default
    assert not attentive_config.get_config().probe.train_augmented
    data = {"source": {"name": "synthetic", "num_videos": 8}}
    plans = {}
    for name, config in (("cvrl", cvrl), ("vjepa", attentive_config.get_config("vjepa"))):
        config = config_lib.drop_unset(config if isinstance(config, dict) else config.to_dict())
        plans[name] = plan_lib.make(job_lib.check(config, "config"), data, "config")
        assert plans[name].train_augmented
        ops = [op for op, _ in pipeline.parse_pp(plans[name].job.train_pp)]
        assert "random_resized_crop" in ops
    assert "flip" in pipeline.parse_pp(plans["cvrl"].job.train_pp)[-1][0]
    vjepa_ops = [op for op, _ in pipeline.parse_pp(plans["vjepa"].job.train_pp)]
    assert {"rand_augment", "random_erasing"} <= set(vjepa_ops) and "flip" not in vjepa_ops
    assert plans["vjepa"].probe.segments == 8 and plans["vjepa"].probe.epochs == 20
    for plan in plans.values():  # every op of the pipelines exists (augment.py's included)
        pipeline.make_ops(plan.job.train_pp, "config.train_pp")


def test_what_the_augmented_path_refuses(encoder):
    linear = lambda **kw: config_lib.component("probe", {"name": "linear", **kw}, "config.probe")
    attentive = lambda **kw: config_lib.component("probe", {"name": "attentive", **kw}, "p")
    with pytest.raises(config_lib.ConfigError, match="train_augmented: trains SGD"):
        linear(train_augmented=True, solver="logistic", standardize=False)
    with pytest.raises(config_lib.ConfigError, match="train_augmented: trains SGD"):
        linear(train_augmented=True)  # standardize needs statistics of a fixed train set
    with pytest.raises(config_lib.ConfigError, match="grid of 2"):
        attentive(train_augmented=True, lrs=(1e-3, 3e-4))
    with pytest.raises(config_lib.ConfigError, match="config.train_pp"):
        features.extract(encoder, DATA, "train", kind=augmented.PREFIX + "pooled")
