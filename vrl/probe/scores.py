"""Classification metrics shared by every probe: scores in, numbers out."""

import numpy as np


def view_features(x: np.ndarray) -> np.ndarray:
    """[N, D] -> [N, 1, D]; [N, V, D] stays: every probe sees a view axis."""
    x = np.asarray(x, np.float32)
    return x[:, None] if x.ndim == 2 else x


def classification(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """top-1/top-5 (percent), per-class accuracy and the confusion matrix of [N, C] scores."""
    labels = np.asarray(labels)
    pred = scores.argmax(-1)
    top5 = np.argsort(-scores, axis=-1)[:, : min(5, num_classes)]
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
