"""Attentive probe: learns from tokens, trains a grid of probes in one step, groups segments."""

import numpy as np
import pytest

from vrl import config as config_lib
from vrl.probe import attentive, scores


def attentive_probe(**kwargs) -> attentive.AttentiveProbe:
    return config_lib.component("probe", {"name": "attentive", **kwargs}, "config.probe")


def toy_tokens(n: int, views: int, seed: int, tokens: int = 6, dim: int = 16, classes: int = 4):
    """Every token is its class centre plus noise: linearly separable [n, views, tokens, dim]."""
    centres = 3.0 * np.random.default_rng(100).normal(size=(classes, dim))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    x = centres[labels][:, None, None] + rng.normal(size=(n, views, tokens, dim))
    return x.astype(np.float32), labels


def test_separable_tokens_reach_full_accuracy_and_every_probe_is_reported():
    train_x, train_y = toy_tokens(64, 1, seed=0)
    test_x, test_y = toy_tokens(32, 1, seed=1)
    probe = attentive_probe(lrs=(0.0, 3e-3), weight_decays=(0.01,), epochs=10, batch_size=16)
    metrics = probe.run(train_x[:, 0], train_y, test_x[:, 0], test_y, 4)
    assert metrics["top1"] == 100.0
    by_lr = {p["lr"]: p for p in metrics["probes"]}
    # The lr-0 probe never moves from its initialisation, the other one learns: the grid's
    # hyperparameters really are per probe inside the one vmapped step.
    assert by_lr[0.0]["top1"] < 60.0
    assert by_lr[3e-3]["top1"] == 100.0
    assert metrics["best_lr"] == 3e-3 and metrics["best_weight_decay"] == 0.01
    assert metrics["selected_by"] == "test"
    assert metrics["heads"] == 1 and metrics["num_train"] == 64
    assert attentive.default_heads(1024) == 16 and attentive.default_heads(192) == 3


def test_grid_is_lrs_times_weight_decays():
    probe = attentive_probe(lrs=(1e-3, 1e-4), weight_decays=(0.0, 0.1, 0.4))
    assert probe.grid == [
        (1e-3, 0.0),
        (1e-3, 0.1),
        (1e-3, 0.4),
        (1e-4, 0.0),
        (1e-4, 0.1),
        (1e-4, 0.4),
    ]


def test_segments_are_concatenated_and_spatial_views_kept():
    """Views come segment-major (clip s, crop c -> s * 3 + c), as multiview_clips|three_crop."""
    probe = attentive_probe(segments=2)
    n, tokens, dim = 2, 5, 4
    x = np.arange(n * 6 * tokens * dim, dtype=np.float32).reshape(n, 6, tokens, dim)
    grouped = probe.group_segments(x, "test")
    assert grouped.shape == (n, 3, 2 * tokens, dim)
    for crop in range(3):
        np.testing.assert_array_equal(grouped[:, crop, :tokens], x[:, crop])  # segment 0
        np.testing.assert_array_equal(grouped[:, crop, tokens:], x[:, 3 + crop])  # segment 1
    with pytest.raises(config_lib.ConfigError, match="5 views per video, not a multiple"):
        probe.group_segments(x[:, :5], "test")


def test_test_views_are_averaged_as_probabilities():
    train_x, train_y = toy_tokens(32, 1, seed=2)
    test_x, _ = toy_tokens(8, 3, seed=3)
    probe = attentive_probe(lrs=(1e-3, 3e-3), epochs=2, batch_size=16)
    model = attentive.AttentiveClassifier(num_classes=4, heads=1)
    params = probe.train(model, train_x, train_y)
    both = probe.predict(model, params, test_x)
    assert both.shape == (2, 8, 4)  # [probes, videos, classes]
    each = np.stack([probe.predict(model, params, test_x[:, v : v + 1]) for v in range(3)])
    np.testing.assert_allclose(both, each.mean(axis=0), atol=1e-5)


def test_holdout_selection_and_multi_segment_training():
    train_x, train_y = toy_tokens(48, 2, seed=4)  # 2 segments of one view
    test_x, test_y = toy_tokens(16, 6, seed=5)  # 2 segments x 3 views
    probe = attentive_probe(
        lrs=(0.0, 3e-3), segments=2, holdout_fraction=0.25, epochs=10, batch_size=16
    )
    metrics = probe.run(train_x, train_y, test_x, test_y, 4)
    assert metrics["selected_by"] == "holdout"
    assert all("holdout_top1" in p for p in metrics["probes"])
    assert metrics["best_lr"] == 3e-3
    assert metrics["top1"] >= 90.0
    fit, held = scores.holdout_split(train_y, 0.25, seed=0)
    assert metrics["num_train"] == len(fit) < 48  # held-out videos never train a probe


def test_bad_settings_fail_at_config_time():
    with pytest.raises(config_lib.ConfigError, match="lrs / weight_decays"):
        attentive_probe(lrs=())
    with pytest.raises(config_lib.ConfigError, match="segments"):
        attentive_probe(segments=0)
