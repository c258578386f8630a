"""The pixel-value histogram and the ROC, PR and PRO curves read off it.

Pixel metrics are computed from histograms of the map values (`PixelHistogram`): one bin per
distinct value up to ``N_BINS`` of them (exact), else bins of a fixed relative width, the
finest that fit (2^-11 of the value, about 0.05 %, for values spread over 16 octaves),
accumulated image chunk by image chunk. The bins do not depend on the chunking, so a test set
scored volume by volume gives the same figures as the whole set in memory;
time is O(pixels x log chunk) and memory O(bins + chunk), whatever the size of the test set.
A pixel value counts as flagged at a threshold when it is ``>= threshold``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from sklearn.metrics import auc

from ..data.base import row_chunks

N_BINS = 1 << 16  # most histogram bins (values are merged beyond): 2 MiB of counts per group
PRO_FPR_LIMIT = 0.3  # AUPRO is integrated up to this false-positive rate (MVTec AD)
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)  # MVTec AD's definition of a defect region


def f1_scores(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """Element-wise F1 of precision/recall arrays (0 where both are 0)."""
    total = precision + recall
    return np.divide(2 * precision * recall, total, out=np.zeros_like(total, dtype=float), where=total > 0)


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
        return _area_up_to(np.r_[0.0, self.fpr], np.r_[0.0, self.region_overlap], fpr_limit) / fpr_limit


def _area_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under y(x) on [x[0], x_max], y interpolated at x_max; x non-decreasing."""
    k = int(np.searchsorted(x, x_max, side="right"))
    if k < len(x):  # x[k - 1] <= x_max < x[k]
        y_cut = np.interp(x_max, x[k - 1 : k + 1], y[k - 1 : k + 1])
        x, y = np.r_[x[:k], x_max], np.r_[y[:k], y_cut]
    return float(auc(x, y))


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
        for chunk in row_chunks(np.arange(len(maps)), np.asarray(maps[0]).shape):
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
        overlap = (
            np.zeros((n, g))
            if weights is None
            else np.bincount(run * g + code // 2, weights=weights[order], minlength=n * g).reshape(n, g)
        )
        self._merge(keys[starts], np.minimum.reduceat(values, starts), counts, overlap)

    def _merge(self, keys, lows, counts, overlap) -> None:
        keys = np.r_[self.keys, keys]
        order = np.argsort(keys, kind="stable")
        self._combine(
            keys[order],
            np.r_[self.lows, lows][order],
            np.r_[self.counts, counts][order],
            np.r_[self.overlap, overlap][order],
        )
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
        low, high = (
            float(lows[np.searchsorted(ends, rank, side="right")]) for rank in (np.floor(position), np.ceil(position))
        )
        return low + (high - low) * (position - np.floor(position))


def pixel_curves(
    maps: np.ndarray,
    masks: np.ndarray | None = None,
    has_mask: np.ndarray | None = None,
    n_bins: int = N_BINS,
    region: np.ndarray | None = None,
) -> PixelCurves:
    """Binned ROC/PR/PRO curves of `maps` (N x S x S) against `masks` (N x S x S bool; None:
    every pixel is normal), over the images where `has_mask` is true (None: all) and, with
    `region` (N x H x W bool, e.g. the lung), over its pixels only; at most `n_bins` bins
    (`PixelHistogram`)."""
    rows = np.arange(len(maps)) if has_mask is None else np.flatnonzero(has_mask)
    if len(rows) == 0:
        raise ValueError("pixel curves need at least one image with pixel truth")
    histogram = PixelHistogram(max_bins=n_bins)
    for chunk in row_chunks(rows, maps[0].shape):
        histogram.add(maps[chunk], None if masks is None else masks[chunk], None if region is None else region[chunk])
    return histogram.curves()
