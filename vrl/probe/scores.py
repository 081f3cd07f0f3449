"""Metrics and data handling shared by every probe: scores in, numbers out."""

import numpy as np


def view_features(x: np.ndarray) -> np.ndarray:
    """[N, D] -> [N, 1, D]; [N, V, D] stays: every probe sees a view axis."""
    x = np.asarray(x, np.float32)
    return x[:, None] if x.ndim == 2 else x


def view_tokens(x: np.ndarray) -> np.ndarray:
    """[N, n, D] -> [N, 1, n, D]; [N, V, n, D] stays."""
    x = np.asarray(x, np.float32)
    return x[:, None] if x.ndim == 3 else x


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def classification(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """top-1/top-5 (percent), per-class accuracy and the confusion matrix of [N, C] scores."""
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    pred = scores.argmax(-1)
    top5 = np.argsort(-scores, axis=-1, kind="stable")[:, : min(5, num_classes)]
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (labels, pred), 1)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(1), 1)
    return {
        "top1": float(100.0 * (pred == labels).mean()),
        "top5": float(100.0 * (top5 == labels[:, None]).any(-1).mean()),
        "per_class_accuracy": (100.0 * per_class).round(2).tolist(),
        "confusion": confusion.tolist(),
        "num_test": int(len(labels)),
    }


def top1(scores: np.ndarray, labels: np.ndarray) -> float:
    return float(100.0 * (np.asarray(scores).argmax(-1) == np.asarray(labels)).mean())


def holdout_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit indices, held-out indices): `fraction` of each class held out, at least one example
    overall, so hyperparameters are chosen without looking at the test split."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        held.extend(members[: int(round(fraction * len(members)))])
    if not held:
        held = [int(rng.integers(len(labels)))]
    mask = np.zeros(len(labels), bool)
    mask[held] = True
    if mask.all():
        raise ValueError(f"holdout_fraction={fraction} leaves no training examples")
    return np.flatnonzero(~mask), np.flatnonzero(mask)
