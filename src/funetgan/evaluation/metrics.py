"""Image- and pixel-level anomaly metrics of a test set.

Conventions: higher scores are more anomalous; a score (or pixel value) is predicted
anomalous when it is ``>= threshold``. Metrics that are undefined on the given data (one
class absent, nothing predicted) are ``None``, so results stay JSON-serialisable.

The pixel ranking metrics (AUROC, AP, AUPRO) come from binned histograms of the map values
(`pixel_histogram.PixelHistogram`), accumulated chunk by chunk (`Evaluation`), so a test set
scored volume by volume gives the same figures as the whole set in memory.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from ..data.base import row_chunks
from ..scoring.masks import MaskRule
from ..scoring.pixel_histogram import PixelCurves, PixelHistogram, f1_scores
from ..scoring.thresholds import both_classes, labelled


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator / denominator) if denominator > 0 else None


def image_metrics(scores, labels, threshold: float) -> dict:
    """Detection metrics of image scores; images with label -1 (unknown) are left out."""
    scores, labels = labelled(scores, labels)
    predicted = scores >= threshold
    tp, fp = int(np.sum(predicted & labels)), int(np.sum(predicted & ~labels))
    fn, tn = int(np.sum(~predicted & labels)), int(np.sum(~predicted & ~labels))
    ranked = both_classes(labels)
    return {
        "auroc": float(roc_auc_score(labels, scores)) if ranked else None,
        "ap": float(average_precision_score(labels, scores)) if ranked else None,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn) if tp + fn else None,
        "precision": _ratio(tp, tp + fp),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "f1_max": _best_f1(labels, scores) if ranked else None,
        "threshold": float(threshold),
        "n_normal": tn + fp,
        "n_anomalous": tp + fn,
        "counts": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
    }


def _best_f1(labels: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(labels, scores)
    return float(np.max(f1_scores(precision, recall)))


class PixelTally:
    """What the pixel metrics need, added chunk by chunk, per group of images: the value
    histogram (`PixelHistogram`) and, of the predicted masks, the pixel confusion counts and
    each image's Hausdorff distance."""

    def __init__(self, thresholds: dict[str, float], groups: int = 1):
        self.thresholds = thresholds  # what the predicted masks were made with, for the record
        self.histogram = PixelHistogram(groups)
        self.confusion = np.zeros((groups, 3), np.int64)  # tp, fp, fn
        self.distances: list[list[tuple[int, float]]] = [[] for _ in range(groups)]  # (row, distance)

    def add(self, rows, maps, masks, predicted, region=None, groups=None, spacing=None) -> None:
        """Images `rows` (their numbers: they order the Hausdorff mean) with their maps, true
        masks and `predicted` masks (N x S x S bool); `spacing` (N x 2): their pixels' size in
        original pixels (None: 1)."""
        groups = np.zeros(len(rows), np.int64) if groups is None else np.asarray(groups)
        self.histogram.add(maps, masks, region, groups)
        for chunk in row_chunks(np.arange(len(rows)), np.asarray(maps[0]).shape):
            predicted_chunk, truth = np.asarray(predicted[chunk], bool), np.asarray(masks[chunk], bool)
            if region is not None:
                inside = np.asarray(region[chunk], bool)
                predicted_chunk, truth = predicted_chunk & inside, truth & inside
            counts = np.stack(
                [
                    np.count_nonzero(predicted_chunk & truth, axis=(1, 2)),
                    np.count_nonzero(predicted_chunk & ~truth, axis=(1, 2)),
                    np.count_nonzero(~predicted_chunk & truth, axis=(1, 2)),
                ],
                1,
            )
            np.add.at(self.confusion, groups[chunk], counts)
            for i, pred, true in zip(chunk, predicted_chunk, truth):
                if pred.any() and true.any():
                    step = (1.0, 1.0) if spacing is None else spacing[i]
                    self.distances[groups[i]].append((int(rows[i]), hausdorff_distance(pred, true, step)))

    def metrics(self, groups=None) -> dict:
        """The pixel metrics of the images of `groups` (indices; None: all)."""
        chosen = range(len(self.distances)) if groups is None else groups
        curves = self.histogram.curves(groups)
        tp, fp, fn = (int(v) for v in self.confusion[list(chosen)].sum(0))
        distances = [d for _, d in sorted(pair for g in chosen for pair in self.distances[g])]
        defined = curves.defined
        return {
            "auroc": curves.auroc() if defined else None,
            "ap": curves.ap() if defined else None,
            "aupro": curves.aupro() if defined else None,
            "dice": _ratio(2 * tp, 2 * tp + fp + fn),
            "iou": _ratio(tp, tp + fp + fn),
            "hausdorff": float(np.mean(distances)) if distances else None,
            "f1_max": float(curves.f1.max()) if defined else None,
            **self.thresholds,
        }


def pixel_metrics(maps, masks, threshold: float, sizes=None, has_mask=None, region=None) -> dict:
    """Segmentation metrics of anomaly maps against ground-truth masks, a pixel predicted
    anomalous when its value is ``>= threshold``.

    Only images where `has_mask` is true count (None: all), and only the pixels of `region`
    (N x S x S bool; None: all). Dice and IoU are micro-averaged:
    true/false positives and false negatives are summed over all pixels of those images,
    then combined once (normal images add only false positives). Hausdorff distance is the
    mean over anomalous images with a predicted region, in pixels of the original image
    (`sizes`, N x 2 (H, W); None: model-size pixels).
    """
    maps, masks = np.asarray(maps), np.asarray(masks, bool)
    rows = np.arange(len(maps)) if has_mask is None else np.flatnonzero(has_mask)
    if len(rows) == 0:
        raise ValueError("pixel metrics need at least one image with pixel truth")
    tally = PixelTally({"threshold": float(threshold)})
    inside = None if region is None else np.asarray(region)[rows]
    tally.add(
        rows,
        maps[rows],
        masks[rows],
        maps[rows] >= threshold,
        inside,
        spacing=None if sizes is None else np.asarray(sizes)[rows] / maps.shape[1:],
    )
    return tally.metrics()


def hausdorff_distance(a: np.ndarray, b: np.ndarray, spacing=(1.0, 1.0)) -> float:
    """Hausdorff distance between the pixel sets of two non-empty masks, with pixel `spacing`
    (rows, columns). A Euclidean distance transform gives every pixel its distance to the
    other set, which is O(pixels) where point-set Hausdorff is O(|a| x |b|) on large masks.
    Cropping to the masks' joint bounding box first is exact: every point lies inside it."""
    box = ndimage.find_objects((a | b).astype(np.uint8))[0]
    a, b = a[box], b[box]
    to_b = ndimage.distance_transform_edt(~b, sampling=spacing)
    to_a = ndimage.distance_transform_edt(~a, sampling=spacing)
    return float(max(to_b[a].max(), to_a[b].max()))


class Evaluation:
    """`evaluate` chunk by chunk, for test sets too large to hold every anomaly map: `add`
    each image's map and predicted mask once, in any order and chunking, then
    `result(scores)`. Memory: the pixel histograms (`PixelTally`) and one number per image,
    whatever the set's size. `mask_thresholds`: what the predicted masks were made with
    (reported with the pixel metrics)."""

    def __init__(self, imageset, image_threshold: float, mask_thresholds: dict[str, float]):
        self.imageset, self.image_threshold = imageset, image_threshold
        self.labels = np.asarray(imageset.labels)
        self.kinds = np.asarray(imageset.kinds, dtype=object)
        self.truth = pixel_truth(imageset)
        self.anomalous_kinds = sorted(set(self.kinds[self.labels == 1]))
        # Pixel groups: 0 the normals, k the images of the k-th anomalous kind, the last the
        # rest (unlabelled images of other kinds: in the overall figures only).
        self.group = np.full(len(self.labels), len(self.anomalous_kinds) + 1)
        for k, kind in enumerate(self.anomalous_kinds, 1):
            self.group[(self.kinds == kind) & (self.labels != 0)] = k
        self.group[self.labels == 0] = 0
        self.tally = PixelTally(mask_thresholds, len(self.anomalous_kinds) + 2)

    def add(self, rows, maps, predicted, region=None) -> None:
        """The anomaly maps and predicted masks of images `rows` of the set (N x S x S),
        `region` the pixels that count (N x S x S bool; None: all)."""
        rows = np.asarray(rows)
        counted = self.truth[rows]
        if not counted.any():
            return
        if not counted.all():  # a copy only of a part: `evaluate`'s whole set is taken as it is
            rows, maps, predicted = rows[counted], np.asarray(maps)[counted], np.asarray(predicted)[counted]
            region = None if region is None else np.asarray(region)[counted]
        maps = np.asarray(maps)
        sizes = np.asarray(self.imageset.sizes)[rows]
        self.tally.add(
            rows,
            maps,
            np.asarray(self.imageset.masks[rows], bool),
            predicted,
            region,
            self.group[rows],
            sizes / maps.shape[1:],
        )

    def result(self, scores) -> dict:
        """All metrics, as `evaluate` returns them, once every image has been added."""
        scores = np.asarray(scores, float)
        labels = self.labels

        def metrics_of(rows: np.ndarray, groups) -> dict:
            result = {"image": image_metrics(scores[rows], labels[rows], self.image_threshold)}
            if (self.truth & rows & (labels == 1)).any():
                result["pixel"] = self.tally.metrics(groups)
            return result

        result = metrics_of(np.ones(len(labels), bool), None)
        normal = labels == 0
        result["per_kind"] = {
            kind: metrics_of(normal | (self.kinds == kind), [0, k]) for k, kind in enumerate(self.anomalous_kinds, 1)
        }
        return result

    def curves(self) -> PixelCurves:
        """The overall pixel curves (for the report's plots)."""
        return self.tally.histogram.curves()


def evaluate(scores, maps, imageset, image_threshold: float, mask_rule, region=None) -> dict:
    """All metrics of a test set: overall, and each anomalous kind against the normals, the
    predicted masks those of `mask_rule` (`masks.MaskRule`; a number: a plain threshold). Pixel
    metrics count only the pixels of `region` (N x S x S bool, e.g. the lung; None: all).

    ``{"image": ..., "pixel": ..., "per_kind": {kind: {"image": ..., "pixel": ...}}}``; a
    "pixel" entry is there only when some of its anomalous images have pixel truth.
    (`Evaluation` with the whole set as one chunk.)
    """
    rule = mask_rule if callable(mask_rule) else MaskRule(float(mask_rule))
    evaluation = Evaluation(imageset, image_threshold, rule.thresholds())
    predicted = rule(maps, np.asarray(scores) >= image_threshold)
    if region is not None:
        predicted = predicted & np.asarray(region, bool)
    evaluation.add(np.arange(len(imageset)), maps, predicted, region)
    return evaluation.result(scores)


def pixel_truth(imageset) -> np.ndarray:
    """Which images have real pixel truth."""
    if imageset.masks is None:
        return np.zeros(len(imageset), bool)
    return np.asarray(imageset.has_mask, bool)
