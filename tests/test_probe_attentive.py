"""Attentive probe: learns from tokens, trains a grid of probes in one step and chooses among
them on held-out train videos only, groups segments; the `:vjepa` config."""

import numpy as np
import pytest

from configs.probe import attentive as attentive_config
from vrl import config as config_lib
from vrl.probe import attentive, job, scores


def attentive_probe(**kwargs) -> attentive.AttentiveProbe:
    return config_lib.component("probe", {"name": "attentive", **kwargs}, "config.probe")


def toy_tokens(n: int, views: int, seed: int, tokens: int = 6, dim: int = 16, classes: int = 4):
    """Every token is its class centre plus noise: linearly separable [n, views, tokens, dim]."""
    centres = 3.0 * np.random.default_rng(100).normal(size=(classes, dim))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    x = centres[labels][:, None, None] + rng.normal(size=(n, views, tokens, dim))
    return x.astype(np.float32), labels


# lr 0 never moves from its initialisation, 3e-3 learns: the held-out choice is clear.
GRID_PROBE = dict(lrs=(0.0, 3e-3), weight_decays=(0.01,), holdout_fraction=0.25, epochs=10)


def run_grid(test_y_of=lambda y: y) -> dict:
    train_x, train_y = toy_tokens(48, 1, seed=0)
    test_x, test_y = toy_tokens(32, 1, seed=1)
    probe = attentive_probe(**GRID_PROBE, batch_size=16)
    return probe.run(train_x[:, 0], train_y, test_x[:, 0], test_y_of(test_y), 4)


@pytest.fixture(scope="module")
def grid_metrics() -> dict:
    return run_grid()


def test_the_point_chosen_on_held_out_train_videos_is_reported(grid_metrics):
    metrics = grid_metrics
    assert metrics["top1"] == 100.0  # the chosen probe, trained again on all of train
    assert (metrics["chosen_lr"], metrics["chosen_weight_decay"]) == (3e-3, 0.01)
    by_lr = {p["lr"]: p for p in metrics["probes"]}
    # The grid's hyperparameters really are per probe inside the one vmapped step.
    assert by_lr[0.0]["holdout_top1"] < 60.0 and by_lr[3e-3]["holdout_top1"] == 100.0
    # Every grid point has its held-out number and no test number: test measures one probe.
    assert all(set(p) == {"lr", "weight_decay", "holdout_top1"} for p in metrics["probes"])
    _, held = scores.holdout_split(toy_tokens(48, 1, seed=0)[1], 0.25, seed=0)
    assert metrics["num_holdout"] == len(held) > 0
    assert metrics["num_train"] == 48 and metrics["heads"] == 16


def test_the_choice_never_looks_at_test_labels(grid_metrics, monkeypatch):
    """Permuted test labels change the test score but not the choice nor a held-out number,
    and the test split is predicted once, by the chosen probe alone."""
    predicted = []
    predict = attentive.AttentiveProbe.predict

    def spy(self, model, params, x):
        out = predict(self, model, params, x)
        predicted.append((len(x), out.shape[0]))
        return out

    monkeypatch.setattr(attentive.AttentiveProbe, "predict", spy)
    permuted = run_grid(lambda y: np.random.default_rng(7).permutation(y))
    assert permuted["top1"] < grid_metrics["top1"]
    for key in ("chosen_lr", "chosen_weight_decay", "probes", "num_holdout"):
        assert permuted[key] == grid_metrics[key]
    held = grid_metrics["num_holdout"]
    assert predicted == [(held, 2), (32, 1)]  # the grid on held-out train, then test


def test_one_point_trains_on_all_of_train_with_segments():
    """V-JEPA's protocol: one (lr, wd), no held-out part; 2 segments of one train view, 2
    segments x 3 views at test."""
    train_x, train_y = toy_tokens(48, 2, seed=4, tokens=3)
    test_x, test_y = toy_tokens(16, 6, seed=5, tokens=3)
    probe = attentive_probe(lrs=(3e-3,), segments=2, epochs=10, batch_size=16)
    metrics = probe.run(train_x, train_y, test_x, test_y, 4)
    assert metrics["top1"] >= 90.0
    assert (metrics["chosen_lr"], metrics["chosen_weight_decay"]) == (3e-3, 0.01)
    assert metrics["num_holdout"] == 0 and "probes" not in metrics
    assert metrics["num_train"] == 48


def test_heads_default_to_vjepas_16_and_must_divide_the_width():
    assert attentive_probe().heads == 16
    assert attentive_config.get_config().probe.heads == 16
    train_x, train_y = toy_tokens(8, 1, seed=0, dim=24)
    with pytest.raises(config_lib.ConfigError, match=r"heads=16 does not divide the token width"):
        attentive_probe().run(train_x, train_y, train_x, train_y, 4)
    assert attentive_probe(heads=4).checked_heads(24) == 4
    with pytest.raises(config_lib.ConfigError, match=r"heads must be >= 1"):
        attentive_probe(heads=0)


def test_vjepa_config_probes_the_target_encoder():
    config = attentive_config.get_config("vjepa")
    checked = job.check(config_lib.drop_unset(config.to_dict()), "config")
    assert checked.encoders == ("target",)  # jepa's eval: checkpoint_key target_encoder
    assert checked.probe["heads"] == 16 and len(attentive_probe(**checked.probe).grid) == 1
    config.encoders = ("pretrained", "target", "random")  # the others stay selectable
    assert job.check(config_lib.drop_unset(config.to_dict()), "config").encoders[0] == "pretrained"
    assert attentive_config.get_config().encoders == ("pretrained",)


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
    model = attentive.AttentiveClassifier(num_classes=4, heads=16)
    params = probe.train(model, train_x, train_y, probe.grid)
    both = probe.predict(model, params, test_x)
    assert both.shape == (2, 8, 4)  # [probes, videos, classes]
    each = np.stack([probe.predict(model, params, test_x[:, v : v + 1]) for v in range(3)])
    np.testing.assert_allclose(both, each.mean(axis=0), atol=1e-5)


def test_bad_settings_fail_at_config_time():
    with pytest.raises(config_lib.ConfigError, match="lrs / weight_decays"):
        attentive_probe(lrs=())
    with pytest.raises(config_lib.ConfigError, match="segments"):
        attentive_probe(segments=0)
    with pytest.raises(config_lib.ConfigError, match=r"holdout_fraction: the 2 \(lr, weight"):
        attentive_probe(lrs=(1e-3, 3e-3), holdout_fraction=0.0)
    attentive_probe(lrs=(1e-3,), holdout_fraction=0.0)  # one point: nothing to choose


def test_optimizer_decays_weight_decay_on_a_cosine_and_clips_gradients():
    """jepa's `init_opt`: weight decay from wd to final_wd on a cosine over the run;
    `clip_grad_norm_(classifier.parameters(), 1.0)` before AdamW."""
    import jax.numpy as jnp

    hyper = {"lr": 0.1, "wd": 0.01, "final_wd": 1e-6, "clip": 1.0}
    hyper = {k: jnp.float32(v) for k, v in hyper.items()}
    tx = attentive._optimizer(hyper, total=10, warmup=0)
    params = {"kernel": jnp.ones(3), "bias": jnp.ones(3)}
    state = tx.init(params)
    zero = {"kernel": jnp.zeros(3), "bias": jnp.zeros(3)}
    decays = []
    for step in range(6):  # zero gradients: the update is -lr(step) * wd(step) * kernel
        updates, state = tx.update(zero, state, params)
        lr = 0.1 * 0.5 * (1 + np.cos(np.pi * step / 10))
        decays.append(-float(updates["kernel"][0]) / lr)
        assert float(updates["bias"][0]) == 0.0  # biases are not decayed
    np.testing.assert_allclose(decays[0], 0.01, rtol=1e-5)
    np.testing.assert_allclose(decays[5], 1e-6 + (0.01 - 1e-6) * 0.5, rtol=1e-4)
    # A gradient of norm 10 enters Adam's first moment clipped to norm 1 (mu = 0.1 * g).
    state = tx.init(params)
    big = {"kernel": jnp.full(3, 10 / np.sqrt(6)), "bias": jnp.full(3, 10 / np.sqrt(6))}
    _, state = tx.update(big, state, params)
    mu = state[1].mu
    norm = np.sqrt(sum(float(jnp.sum(m**2)) for m in (mu["kernel"], mu["bias"])))
    np.testing.assert_allclose(norm, 0.1, rtol=1e-5)
    assert attentive_config.get_config("vjepa").probe.clip_norm == 1.0
    assert attentive_config.get_config("vjepa").probe.final_weight_decay == 1e-6
