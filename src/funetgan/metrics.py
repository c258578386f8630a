"""Image- and pixel-level anomaly metrics.

Conventions: higher scores are more anomalous; a score (or pixel value) is predicted
anomalous when it is ``>= threshold``. Metrics that are undefined on the given data (one
class absent, nothing predicted) are ``None``, so results stay JSON-serialisable.

Pixel metrics are computed from histograms of the map values (`PixelHistogram`): one bin per
distinct value up to ``N_BINS`` of them (exact), else bins of a fixed relative width, the
finest that fit (2^-11 of the value, about 0.05 %, for values spread over 16 octaves),
accumulated image chunk by image chunk. The bins do not depend on the chunking, so a test set
scored volume by volume (`Evaluation`) gives the same figures as the whole set in memory;
time is O(pixels x log chunk) and memory O(bins + chunk), whatever the size of the test set.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

from .data.base import CHUNK_PIXELS
from .masks import MaskRule

N_BINS = 1 << 16  # most histogram bins (values are merged beyond): 2 MiB of counts per group
PRO_FPR_LIMIT = 0.3  # AUPRO is integrated up to this false-positive rate (MVTec AD)
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)  # MVTec AD's definition of a defect region


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator / denominator) if denominator > 0 else None


def labelled(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """The scores of images labelled 0 or 1 (not -1, unknown), and their labels as bool."""
    scores, labels = np.asarray(scores, float), np.asarray(labels)
    known = (labels == 0) | (labels == 1)
    return scores[known], labels[known].astype(bool)


def both_classes(labels: np.ndarray) -> bool:
    return bool(labels.any() and not labels.all())


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


def f1_scores(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """Element-wise F1 of precision/recall arrays (0 where both are 0)."""
    total = precision + recall
    return np.divide(2 * precision * recall, total, out=np.zeros_like(total, dtype=float),
                     where=total > 0)


@dataclass(frozen=True)
class PixelCurves:
    """ROC, PR and PRO curves of pixel values, one point per bin edge, thresholds descending.

    Point k counts the pixels ``>= thresholds[k]``. Region overlap (PRO) is the mean, over
    connected ground-truth regions, of the fraction of each region's pixels that are flagged.
    """

    thresholds: np.ndarray
    true_pos: np.ndarray  # anomalous pixels flagged, cumulative
    false_pos: np.ndarray  # normal pixels flagged, cumulative
    region_overlap: np.ndarray  # PRO: mean over regions of the flagged fraction
    positives: int
    negatives: int

    @property
    def tpr(self) -> np.ndarray:
        return self.true_pos / max(self.positives, 1)

    @property
    def fpr(self) -> np.ndarray:
        return self.false_pos / max(self.negatives, 1)

    @property
    def precision(self) -> np.ndarray:
        flagged = self.true_pos + self.false_pos
        # Precision where nothing is flagged is irrelevant (recall does not move there).
        return np.divide(self.true_pos, flagged, out=np.ones(len(flagged)), where=flagged > 0)

    @property
    def f1(self) -> np.ndarray:
        return f1_scores(self.precision, self.tpr)

    @property
    def defined(self) -> bool:
        return self.positives > 0 and self.negatives > 0

    def auroc(self) -> float:
        return float(auc(np.r_[0.0, self.fpr], np.r_[0.0, self.tpr]))

    def ap(self) -> float:
        """Average precision as scikit-learn defines it: sum of precision x recall steps."""
        return float(np.sum(np.diff(np.r_[0.0, self.tpr]) * self.precision))

    def aupro(self, fpr_limit: float = PRO_FPR_LIMIT) -> float:
        """Area under PRO(FPR) for FPR in [0, fpr_limit], divided by fpr_limit (MVTec AD)."""
        return _area_up_to(np.r_[0.0, self.fpr], np.r_[0.0, self.region_overlap],
                           fpr_limit) / fpr_limit


def _area_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under y(x) on [x[0], x_max], y interpolated at x_max; x non-decreasing."""
    k = int(np.searchsorted(x, x_max, side="right"))
    if k < len(x):  # x[k - 1] <= x_max < x[k]
        y_cut = np.interp(x_max, x[k - 1:k + 1], y[k - 1:k + 1])
        x, y = np.r_[x[:k], x_max], np.r_[y[:k], y_cut]
    return float(auc(x, y))


def _chunks(rows: np.ndarray, image_pixels: int):
    step = max(1, CHUNK_PIXELS // image_pixels)
    return (rows[i:i + step] for i in range(0, len(rows), step))


def _sort_keys(values: np.ndarray) -> np.ndarray:
    """int64 keys in the order of float32 `values`: the float's bits, negated for negative
    numbers (-0.0 counts as 0.0). Dropping s low bits of a key (key >> s) merges neighbouring
    values into bins of 2^s representable floats: the same relative width (2^(s-23)) at every
    scale, so neither an outlier nor a pile of tiny values squeezes the others."""
    bits = (np.asarray(values, np.float32) + np.float32(0)).view(np.int32).astype(np.int64)
    return np.where(bits < 0, -(bits & 0x7FFFFFFF), bits)


def _region_weights(truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel weight 1/|region| of each connected truth region (0 off regions), and the
    number of regions of each image, for a chunk of masks. A pixel weighted so counts its
    region's overlap fraction, which makes PRO a weighted histogram instead of a regions x
    thresholds table."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = _EIGHT_CONNECTED  # connect within an image, never across images
    regions, _ = ndimage.label(truth, structure)
    sizes = np.bincount(regions.ravel()).astype(float)
    sizes[0] = np.inf
    image_of_region = [box[0].start for box in ndimage.find_objects(regions)]
    return 1.0 / sizes[regions], np.bincount(image_of_region, minlength=len(truth))


class PixelHistogram:
    """Counts of normal and anomalous pixels by map value, per group of images (e.g. the
    normals and each anomalous kind), added chunk by chunk; `curves` reads the ROC/PR/PRO
    curves of any union of groups off it, `quantile` a quantile of all counted values.

    Bins: each distinct float32 value has its own while there are at most `max_bins`; beyond
    that, neighbouring values are merged one key bit at a time (`_sort_keys`) until they fit.
    The bins depend on the set of values seen, not on their order or chunking (the final
    number of dropped bits is the least that fits them all), so chunked and whole-set counts
    are the same. Memory: O(max_bins x groups) plus one chunk of images."""

    def __init__(self, groups: int = 1, max_bins: int = N_BINS):
        self.groups, self.max_bins, self.shift = groups, max_bins, 0
        self.keys = np.zeros(0, np.int64)
        self.lows = np.zeros(0, np.float32)  # each bin's lowest value: its threshold
        self.counts = np.zeros((0, groups, 2), np.int64)  # (normal, anomalous) pixels per bin and group
        self.overlap = np.zeros((0, groups))  # PRO weights (`_region_weights`) per bin and group
        self.regions = np.zeros(groups, np.int64)  # connected truth regions per group

    def add(self, maps, truth=None, inside=None, groups=None) -> None:
        """Count N x H x W `maps` against `truth` (bool; None: all normal), only the pixels
        `inside` (bool; None: all), image i in group `groups[i]` (None: group 0)."""
        groups = np.zeros(len(maps), np.int64) if groups is None else np.asarray(groups, np.int64)
        for chunk in _chunks(np.arange(len(maps)), np.asarray(maps[0]).size):
            values = np.asarray(maps[chunk], np.float32)
            if not np.isfinite(values).all():
                raise ValueError("anomaly maps contain NaN or infinite values")
            inside_chunk = np.ones(values.shape, bool) if inside is None else np.asarray(inside[chunk], bool)
            truth_chunk = np.zeros(values.shape, bool) if truth is None else np.asarray(truth[chunk], bool)
            self._add(values, truth_chunk & inside_chunk, inside_chunk, groups[chunk])

    def _add(self, values, truth, inside, groups) -> None:
        weights = None  # no truth regions (normal images, or no truth at all): no PRO weights
        if truth.any():
            weights, found = _region_weights(truth)
            self.regions += np.bincount(groups, weights=found, minlength=self.groups).astype(np.int64)
            weights = weights[inside]
        code = (np.broadcast_to(groups[:, None, None] * 2, values.shape) + truth)[inside]  # group, class
        values = values[inside]
        if not len(values):
            return
        keys = _sort_keys(values) >> self.shift
        order = np.argsort(keys, kind="stable")
        keys, values, code = keys[order], values[order], code[order]
        coarser = 0  # merge this chunk's values first when they alone need more bins than allowed
        while np.count_nonzero(np.diff(keys >> coarser)) >= self.max_bins:
            coarser += 1
        if coarser:
            keys = keys >> coarser
            self.shift += coarser
            self._combine(self.keys >> coarser, self.lows, self.counts, self.overlap)
        first = np.r_[True, keys[1:] != keys[:-1]]
        starts, run = np.flatnonzero(first), np.cumsum(first) - 1
        n, g = len(starts), self.groups
        counts = np.bincount(run * 2 * g + code, minlength=n * 2 * g).reshape(n, g, 2)
        overlap = np.zeros((n, g)) if weights is None else np.bincount(
            run * g + code // 2, weights=weights[order], minlength=n * g).reshape(n, g)
        self._merge(keys[starts], np.minimum.reduceat(values, starts), counts, overlap)

    def _merge(self, keys, lows, counts, overlap) -> None:
        keys = np.r_[self.keys, keys]
        order = np.argsort(keys, kind="stable")
        self._combine(keys[order], np.r_[self.lows, lows][order], np.r_[self.counts, counts][order],
                      np.r_[self.overlap, overlap][order])
        while len(self.keys) > self.max_bins:
            self.shift += 1
            self._combine(self.keys >> 1, self.lows, self.counts, self.overlap)

    def _combine(self, keys, lows, counts, overlap) -> None:
        """Sorted `keys`' rows, those of equal keys summed into one bin."""
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.zeros(0, int)
        if not len(starts):
            return
        self.keys, self.lows = keys[starts], np.minimum.reduceat(lows, starts)
        self.counts, self.overlap = np.add.reduceat(counts, starts), np.add.reduceat(overlap, starts)

    def curves(self, groups=None) -> PixelCurves:
        """The curves of the pixels of `groups` (group indices; None: all), one point per
        non-empty bin, its threshold the bin's lowest value."""
        chosen = slice(None) if groups is None else list(groups)
        counts, overlap = self.counts[:, chosen].sum(1), self.overlap[:, chosen].sum(1)
        keep = counts.sum(1) > 0
        negatives, positives = counts[keep, 0].astype(float), counts[keep, 1].astype(float)
        top_down = slice(None, None, -1)
        return PixelCurves(
            thresholds=self.lows[keep][top_down].astype(np.float64),
            true_pos=np.cumsum(positives[top_down]),
            false_pos=np.cumsum(negatives[top_down]),
            region_overlap=np.cumsum(overlap[keep][top_down]) / max(int(self.regions[chosen].sum()), 1),
            positives=int(positives.sum()),
            negatives=int(negatives.sum()),
        )

    def quantile(self, q: float, groups=None) -> float:
        """The `q` quantile of every counted value of `groups` (group indices; None: all)
        (numpy's default: linear between the two nearest ranks); exact while each distinct
        value has its own bin, else within a bin."""
        chosen = slice(None) if groups is None else list(groups)
        counts = self.counts[:, chosen].sum((1, 2))
        keep = counts > 0
        ends, lows = np.cumsum(counts[keep]), self.lows[keep]
        if not len(ends):
            raise ValueError("no values counted")
        position = q * (ends[-1] - 1)
        low, high = (float(lows[np.searchsorted(ends, rank, side="right")])
                     for rank in (np.floor(position), np.ceil(position)))
        return low + (high - low) * (position - np.floor(position))


def pixel_curves(maps: np.ndarray, masks: np.ndarray | None = None,
                 has_mask: np.ndarray | None = None, n_bins: int = N_BINS,
                 region: np.ndarray | None = None) -> PixelCurves:
    """Binned ROC/PR/PRO curves of `maps` (N x S x S) against `masks` (N x S x S bool; None:
    every pixel is normal), over the images where `has_mask` is true (None: all) and, with
    `region` (N x H x W bool, e.g. the lung), over its pixels only; at most `n_bins` bins
    (`PixelHistogram`)."""
    rows = np.arange(len(maps)) if has_mask is None else np.flatnonzero(has_mask)
    if len(rows) == 0:
        raise ValueError("pixel curves need at least one image with pixel truth")
    histogram = PixelHistogram(max_bins=n_bins)
    for chunk in _chunks(rows, maps[0].size):
        histogram.add(maps[chunk], None if masks is None else masks[chunk],
                      None if region is None else region[chunk])
    return histogram.curves()


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
        for chunk in _chunks(np.arange(len(rows)), np.asarray(maps[0]).size):
            predicted_chunk, truth = np.asarray(predicted[chunk], bool), np.asarray(masks[chunk], bool)
            if region is not None:
                inside = np.asarray(region[chunk], bool)
                predicted_chunk, truth = predicted_chunk & inside, truth & inside
            counts = np.stack([np.count_nonzero(predicted_chunk & truth, axis=(1, 2)),
                               np.count_nonzero(predicted_chunk & ~truth, axis=(1, 2)),
                               np.count_nonzero(~predicted_chunk & truth, axis=(1, 2))], 1)
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
    tally.add(rows, maps[rows], masks[rows], maps[rows] >= threshold, None if region is None else np.asarray(region)[rows],
              spacing=None if sizes is None else np.asarray(sizes)[rows] / maps.shape[1:])
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
        self.tally.add(rows, maps, np.asarray(self.imageset.masks[rows], bool), predicted, region, self.group[rows],
                       sizes / maps.shape[1:])

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
        result["per_kind"] = {kind: metrics_of(normal | (self.kinds == kind), [0, k])
                              for k, kind in enumerate(self.anomalous_kinds, 1)}
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
