"""Linear probe: every solver separates separable features, sweeps choose on held-out train."""

import numpy as np
import pytest

from vrl import config as config_lib
from vrl.probe import scores


def linear(**kwargs):
    return config_lib.component("probe", {"name": "linear", **kwargs}, "config.probe")


def toy(n: int, views: int, seed: int, num_classes: int = 4, dim: int = 16, noise: float = 1.0):
    """Gaussian clusters around fixed, well separated centres; [n, views, dim] features."""
    centres = 4.0 * np.random.default_rng(100).normal(size=(num_classes, dim))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    x = centres[labels][:, None] + noise * rng.normal(size=(n, views, dim))
    return x.astype(np.float32), labels


@pytest.mark.parametrize(
    "settings",
    [
        {"solver": "sgd", "epochs": 20, "batch_size": 32},
        {"solver": "logistic", "max_iters": 50},
        {"solver": "ridge"},
    ],
    ids=["sgd", "logistic", "ridge"],
)
def test_separable_features_reach_full_accuracy(settings):
    train_x, train_y = toy(64, 1, seed=0)
    test_x, test_y = toy(40, 3, seed=1)
    metrics = linear(**settings).run(train_x[:, 0], train_y, test_x, test_y, 4)
    assert metrics["top1"] == 100.0
    assert metrics["top5"] == 100.0
    assert metrics["per_class_accuracy"] == [100.0] * 4
    assert np.trace(np.array(metrics["confusion"])) == 40
    assert metrics["num_train"] == 64 and metrics["num_test"] == 40


def test_random_labels_stay_near_chance():
    train_x, _ = toy(64, 1, seed=0)
    test_x, _ = toy(200, 1, seed=1)
    rng = np.random.default_rng(5)
    metrics = linear(solver="ridge").run(
        train_x, rng.integers(0, 4, 64), test_x, rng.integers(0, 4, 200), 4
    )
    assert 10.0 < metrics["top1"] < 45.0


def test_views_are_averaged_as_probabilities():
    """Scores of a two-view test video are the mean of its views' softmax outputs."""
    train_x, train_y = toy(64, 2, seed=2, noise=3.0)
    test_x, _ = toy(30, 2, seed=3, noise=12.0)
    probe = linear(solver="logistic", max_iters=30)
    predict = probe.fit(train_x, train_y, 4, probe.l2)
    both = predict(test_x)
    each = [predict(test_x[:, v : v + 1]) for v in (0, 1)]
    np.testing.assert_allclose(both, (each[0] + each[1]) / 2, atol=1e-6)
    np.testing.assert_allclose(both.sum(-1), 1.0, atol=1e-5)
    # The averaged decision differs from view 0's somewhere: averaging is not view selection.
    assert (both.argmax(-1) != each[0].argmax(-1)).any()


def test_sweep_chooses_on_held_out_train_videos():
    train_x, train_y = toy(80, 2, seed=4, noise=4.0)
    test_x, test_y = toy(40, 1, seed=5, noise=4.0)
    probe = linear(solver="logistic", sweep=(1e-4, 1e3), holdout_fraction=0.25, max_iters=40)
    metrics = probe.run(train_x, train_y, test_x, test_y, 4)
    # An l2 of 1000 shrinks every weight to ~0: it cannot beat a sensible penalty on held-out data.
    held = {entry["l2"]: entry["holdout_top1"] for entry in metrics["sweep"]}
    assert held[1e-4] > held[1e3]
    assert metrics["chosen_l2"] == 1e-4
    assert metrics["num_holdout"] == 20
    assert metrics["num_train"] == 160  # refit on all train videos x 2 views


def test_sgd_sweeps_learning_rates():
    train_x, train_y = toy(48, 1, seed=6)
    test_x, test_y = toy(20, 1, seed=7)
    metrics = linear(solver="sgd", epochs=5, batch_size=16, sweep=(0.0, 0.5)).run(
        train_x, train_y, test_x, test_y, 4
    )
    held = {entry["lr"]: entry["holdout_top1"] for entry in metrics["sweep"]}
    assert held[0.5] == 100.0 and held[0.0] < 50.0  # lr 0 leaves the zero-initialised layer
    assert metrics["chosen_lr"] == 0.5
    assert metrics["top1"] == 100.0


def test_holdout_split_is_stratified_and_disjoint():
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    fit, held = scores.holdout_split(labels, 0.2, seed=0)
    assert len(np.intersect1d(fit, held)) == 0
    assert len(fit) + len(held) == 100
    np.testing.assert_array_equal(np.bincount(labels[held]), [2, 4, 6, 8])
    with pytest.raises(ValueError, match="holdout_fraction"):
        scores.holdout_split(labels, 1.0, seed=0)


def test_unknown_solver_lists_the_allowed_ones():
    with pytest.raises(config_lib.ConfigError, match="'sgd', 'logistic', 'ridge'"):
        linear(solver="lbfgs")
