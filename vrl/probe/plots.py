"""Pictures of a probe result: per-class accuracy, confusion matrix, 2-D PCA of test features.

Figures are built with matplotlib's object API on the Agg canvas (no pyplot, no global
backend switch), so they render the same in a headless job and inside a notebook.
"""

import io
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vrl import storage

_MAX_ANNOTATED_CLASSES = 20


def per_class_accuracy(accuracy: Sequence[float], class_names: Sequence[str], title: str) -> Figure:
    """Bar chart of each class's test accuracy (percent)."""
    fig = _figure((max(4.0, 0.5 * len(class_names) + 1.5), 3.5))
    ax = fig.add_subplot()
    positions = np.arange(len(class_names))
    ax.bar(positions, accuracy, color="tab:blue")
    ax.set_xticks(positions, class_names, rotation=45 if len(class_names) > 6 else 0, ha="right")
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    return fig


def confusion_matrix(confusion: np.ndarray, class_names: Sequence[str], title: str) -> Figure:
    """Row-normalised confusion matrix (rows: true class, columns: prediction), counts shown."""
    confusion = np.asarray(confusion)
    rates = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    side = max(4.0, 0.45 * len(class_names) + 2.0)
    fig = _figure((side + 1.0, side))
    ax = fig.add_subplot()
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=90)
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if len(class_names) <= _MAX_ANNOTATED_CLASSES:
        for (i, j), count in np.ndenumerate(confusion):
            if count:
                colour = "white" if rates[i, j] > 0.5 else "black"
                ax.text(j, i, str(count), ha="center", va="center", color=colour, fontsize=8)
    return fig


def pca_2d(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(points [N, 2], explained variance ratio [2]) of features [N, D] (or [N, V, D], averaged)."""
    x = np.asarray(features, np.float64)
    if x.ndim == 3:
        x = x.mean(axis=1)
    x = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    components = vt[:2]
    points = x @ components.T
    if points.shape[1] < 2:  # one feature dimension or one example
        points = np.pad(points, ((0, 0), (0, 2 - points.shape[1])))
    variance = s**2
    ratio = variance[:2] / max(variance.sum(), 1e-12)
    return points.astype(np.float32), np.pad(ratio, (0, 2 - len(ratio)))


def pca_scatter(
    features: np.ndarray, labels: np.ndarray, class_names: Sequence[str], title: str
) -> Figure:
    """Test features projected on their first two principal components, coloured by class."""
    points, ratio = pca_2d(features)
    labels = np.asarray(labels)
    fig = _figure((5.5, 4.5))
    ax = fig.add_subplot()
    colours = _colours(len(class_names))
    for c, name in enumerate(class_names):
        mine = labels == c
        if mine.any():
            ax.scatter(points[mine, 0], points[mine, 1], s=12, color=colours[c], label=name)
    ax.set_xlabel(f"PC 1 ({100 * ratio[0]:.0f}% var.)")
    ax.set_ylabel(f"PC 2 ({100 * ratio[1]:.0f}% var.)")
    ax.set_title(title)
    if len(class_names) <= _MAX_ANNOTATED_CLASSES:
        ax.legend(fontsize=7, markerscale=1.5, loc="best")
    return fig


def write_result_plots(
    out_dir: storage.PathLike,
    name: str,
    metrics: dict,
    class_names: Sequence[str],
    test_features: np.ndarray | None = None,
    test_labels: np.ndarray | None = None,
) -> list[str]:
    """Writes <name>_per_class.png, <name>_confusion.png and (with features) <name>_pca.png."""
    figures = {
        "per_class": per_class_accuracy(metrics["per_class_accuracy"], class_names, name),
        "confusion": confusion_matrix(np.asarray(metrics["confusion"]), class_names, name),
    }
    if test_features is not None and test_labels is not None:
        title = f"{name}: test features"
        figures["pca"] = pca_scatter(test_features, test_labels, class_names, title)
    paths = []
    for kind, fig in figures.items():
        path = storage.path(out_dir) / f"{name}_{kind}.png"
        save(fig, path)
        paths.append(str(path))
    return paths


def save(fig: Figure, path: storage.PathLike) -> None:
    """Writes `fig` as a PNG to a local path or a bucket URL, whole (readers never see a part)."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    storage.write_atomic(path, buffer.getvalue())


def _figure(size: tuple[float, float]) -> Figure:
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _colours(n: int) -> list:
    cmap = colormaps["tab10" if n <= 10 else "tab20" if n <= 20 else "turbo"]
    return [cmap(i if n <= 20 else i / max(n - 1, 1)) for i in range(n)]
