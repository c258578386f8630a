"""The report's figures, as PNG files: the score histogram and the ROC, precision-recall and
PRO curves that the data allows (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

from ..scoring.pixel_histogram import PRO_FPR_LIMIT, PixelCurves
from ..scoring.thresholds import labelled


def write_plots(folder: Path, imageset, scores, curves: PixelCurves | None, metrics: dict) -> list[tuple[str, str]]:
    """The plots that the data allows (`curves`: the pixel curves, when there are pixel
    metrics); returns (title, path relative to the report)."""
    folder.mkdir(exist_ok=True)
    roc, pr, pro = {}, {}, {}
    if metrics["image"]["auroc"] is not None:
        known_scores, known_labels = labelled(scores, imageset.labels)
        fpr, tpr, _ = roc_curve(known_labels, known_scores)
        precision, recall, _ = precision_recall_curve(known_labels, known_scores)
        roc[f"image (AUROC {metrics['image']['auroc']:.3f})"] = (fpr, tpr)
        pr[f"image (AP {metrics['image']['ap']:.3f})"] = (recall, precision)
    pixel = metrics.get("pixel")
    if pixel and pixel["auroc"] is not None and curves is not None:
        roc[f"pixel (AUROC {pixel['auroc']:.3f})"] = (np.r_[0, curves.fpr], np.r_[0, curves.tpr])
        pr[f"pixel (AP {pixel['ap']:.3f})"] = (curves.tpr, curves.precision)
        pro[f"pixel (AUPRO {pixel['aupro']:.3f})"] = (np.r_[0, curves.fpr], np.r_[0, curves.region_overlap])
    histogram = _histogram(
        folder / "score_histogram.png",
        np.asarray(imageset.labels),
        np.asarray(scores, float),
        metrics["image"]["threshold"],
    )
    plots = [("Score histogram", histogram)]
    if roc:
        plots.append(("ROC curves", _curves(folder / "roc.png", roc, "false-positive rate", "true-positive rate")))
        plots.append(("Precision-recall curves", _curves(folder / "pr.png", pr, "recall", "precision")))
    if pro:
        plots.append(
            (
                f"PRO curve (FPR up to {PRO_FPR_LIMIT:.0%})",
                _curves(
                    folder / "pro.png", pro, "false-positive rate (pixels)", "per-region overlap", x_max=PRO_FPR_LIMIT
                ),
            )
        )
    return [(title, path.relative_to(folder.parent).as_posix()) for title, path in plots]


def _curves(path: Path, curves: dict, xlabel: str, ylabel: str, x_max: float = 1.0) -> Path:
    figure = Figure(figsize=(5, 4.2), dpi=100, layout="tight")
    axes = figure.subplots()
    for name, (x, y) in curves.items():
        axes.plot(x, y, label=name)
    axes.set(xlabel=xlabel, ylabel=ylabel, xlim=(0, x_max), ylim=(0, 1.02))
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.savefig(path)
    return path


def _histogram(path: Path, labels: np.ndarray, scores: np.ndarray, threshold: float) -> Path:
    figure = Figure(figsize=(5, 4.2), dpi=100, layout="tight")
    axes = figure.subplots()
    edges = np.histogram_bin_edges(scores, bins=40)
    for value, name in ((0, "normal"), (1, "anomalous"), (-1, "unlabelled")):
        if np.any(labels == value):
            axes.hist(scores[labels == value], bins=edges.tolist(), alpha=0.6, label=name)
    axes.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4g}")
    axes.set(xlabel="image score", ylabel="images")
    axes.legend()
    figure.savefig(path)
    return path
