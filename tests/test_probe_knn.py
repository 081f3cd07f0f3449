"""kNN classification and clip retrieval against a plain numpy reference."""

import numpy as np
import pytest

from vrl import config as config_lib
from vrl.probe import knn


def knn_probe(**kwargs) -> knn.KNNProbe:
    return config_lib.component("probe", {"name": "knn", **kwargs}, "config.probe")


def reference(train_x, train_y, test_x, test_y, num_classes, k, temperature, recall_at):
    """Loops over queries and views, as the InstDisc / DINO and IIC papers describe them."""
    unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)
    train_x = train_x[:, None] if train_x.ndim == 2 else train_x
    test_x = test_x[:, None] if test_x.ndim == 2 else test_x
    bank = unit(unit(train_x.astype(np.float64)).mean(axis=1))
    scores, recalls = [], {r: [] for r in recall_at}
    for query_views, label in zip(unit(test_x.astype(np.float64)), test_y):
        per_view = []
        for q in query_views:
            sims = bank @ q
            nearest = np.argsort(-sims)[:k]
            votes = np.zeros(num_classes)
            for i in nearest:
                votes[train_y[i]] += np.exp(sims[i] / temperature)
            per_view.append(votes / votes.sum())
        scores.append(np.mean(per_view, axis=0))
        ranking = np.argsort(-(bank @ query_views.mean(axis=0)))
        for r in recall_at:
            recalls[r].append(label in train_y[ranking[:r]])
    scores = np.array(scores)
    top1 = 100 * np.mean(scores.argmax(-1) == test_y)
    return scores, top1, {r: 100 * np.mean(v) for r, v in recalls.items()}


@pytest.mark.parametrize("train_views,test_views", [(1, 1), (2, 3)])
def test_knn_and_retrieval_equal_the_numpy_reference(train_views, test_views):
    rng = np.random.default_rng(0)
    num_classes, dim = 5, 12
    centres = rng.normal(size=(num_classes, dim))
    train_y = rng.integers(0, num_classes, 60)
    test_y = rng.integers(0, num_classes, 23)
    # Noisy enough that neighbours disagree, so votes, ties and recall all matter.
    train_x = centres[train_y][:, None] + 1.5 * rng.normal(size=(60, train_views, dim))
    test_x = centres[test_y][:, None] + 1.5 * rng.normal(size=(23, test_views, dim))
    if train_views == 1:
        train_x, test_x = train_x[:, 0], test_x[:, 0]
    probe = knn_probe(k=7, temperature=0.1, recall_at=(1, 5, 10, 20), chunk=8)
    metrics = probe.run(train_x, train_y, test_x, test_y, num_classes)
    scores, top1, recalls = reference(
        train_x, train_y, test_x, test_y, num_classes, 7, 0.1, (1, 5, 10, 20)
    )
    assert metrics["top1"] == pytest.approx(top1)
    assert 0 < metrics["top1"] < 100
    for r, value in recalls.items():
        assert metrics[f"recall@{r}"] == pytest.approx(value)
    recall = [metrics[f"recall@{r}"] for r in (1, 5, 10, 20)]
    assert recall == sorted(recall)
    expected_pred = scores.argmax(-1)
    confusion = np.zeros((num_classes, num_classes), int)
    np.add.at(confusion, (test_y, expected_pred), 1)
    np.testing.assert_array_equal(metrics["confusion"], confusion)
    assert metrics["k"] == 7 and metrics["num_train"] == 60 and metrics["num_test"] == 23


def test_separable_features_are_classified_and_retrieved_perfectly():
    rng = np.random.default_rng(1)
    centres = 10 * np.eye(4, 16)
    train_y, test_y = rng.integers(0, 4, 40), rng.integers(0, 4, 20)
    train_x = centres[train_y] + rng.normal(size=(40, 16))
    test_x = centres[test_y] + rng.normal(size=(20, 16))
    metrics = knn_probe(k=5).run(train_x, train_y, test_x, test_y, 4)
    assert metrics["top1"] == 100.0
    assert metrics["recall@1"] == 100.0


def test_test_views_vote_with_averaged_scores_not_by_majority():
    """View 0 is sure of class 0, views 1 and 2 lean weakly to class 1: the average says 0."""
    train_x = np.array([[1.0, 0.0], [0.0, 1.0]])
    train_y = np.array([0, 1])
    test_x = np.array([[[1.0, 0.1], [0.5, 0.55], [0.5, 0.55]]])
    probe = knn_probe(k=2, temperature=0.1, recall_at=(1,))
    label = np.array([0])
    per_view = [probe.run(train_x, train_y, test_x[:, v], label, 2)["top1"] for v in range(3)]
    assert per_view == [100.0, 0.0, 0.0]
    assert probe.run(train_x, train_y, test_x, np.array([0]), 2)["top1"] == 100.0


def test_bad_settings_fail_at_config_time():
    with pytest.raises(config_lib.ConfigError, match="knn needs k >= 1"):
        knn_probe(k=0)
    with pytest.raises(config_lib.ConfigError, match="temperature"):
        knn_probe(temperature="warm")
