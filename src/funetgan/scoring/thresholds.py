"""Decision thresholds, from calibration data only (never from test labels).

A score or pixel value is predicted anomalous when it is ``>= threshold``. With labelled
anomalies in the calibration data a threshold maximises F1 there; otherwise it is a quantile
of the calibration normals' values, taken so that it keeps its promise on new normals: about
``1 - normal_quantile`` of them flagged (`rank_threshold`).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import binom
from sklearn.metrics import precision_recall_curve

from .pixel_histogram import PixelCurves, f1_scores


def labelled(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """The scores of images labelled 0 or 1 (not -1, unknown), and their labels as bool."""
    scores, labels = np.asarray(scores, float), np.asarray(labels)
    known = (labels == 0) | (labels == 1)
    return scores[known], labels[known].astype(bool)


def both_classes(labels: np.ndarray) -> bool:
    return bool(labels.any() and not labels.all())


def rank(count: int, q: float) -> int:
    """The rank k (1-based) of the smallest of `count` calibration values that a new
    exchangeable value reaches with probability at most 1 - q: k = ceil((count + 1) q) (split
    conformal prediction); above `count` when they are too few. Rounded first, so that
    100 x 0.99 is 99, not 99.00000000000001."""
    return math.ceil(round((count + 1) * q, 9))


def normals_needed(q: float) -> int:
    """The fewest calibration normals whose `q` threshold is not simply their maximum (99 for
    0.99): fewer, and new normals reach the threshold more often than 1 - q."""
    count = 1
    while rank(count, q) > count:
        count += 1
    return count


def rank_threshold(values, q: float) -> tuple[float, float]:
    """(threshold, the share of new normals expected at or above it): the k-th smallest of the
    calibration normals' `values` (`rank`). A new normal value, exchangeable with them, reaches
    it with probability (count + 1 - k) / (count + 1): 1 - q where the normals are enough
    (at least q / (1 - q) of them), else 1 / (count + 1), their maximum's."""
    values = np.sort(np.asarray(values, float))
    if not len(values):
        raise ValueError("a threshold needs the scores of calibration normals")
    k = min(rank(len(values), q), len(values))
    return float(values[k - 1]), (len(values) + 1 - k) / (len(values) + 1)


def expected_rate(normal_scores, threshold: float) -> float:
    """The share of new normal images expected at or above `threshold`, from the calibration
    normals' `normal_scores`: (1 + how many of them exceed it) / (count + 1). At one of their
    values, the k-th smallest, that is `rank_threshold`'s (count + 1 - k) / (count + 1); between
    two of them, the most a new exchangeable normal reaches it with (it must exceed the lower)."""
    values = np.asarray(normal_scores, float)
    if not len(values):
        raise ValueError("an expected rate needs the scores of calibration normals")
    return (1 + int(np.count_nonzero(values > threshold))) / (len(values) + 1)


def f1_image_threshold(scores, labels) -> float:
    """The F1-optimal threshold of image `scores` for `labels` (0 normal, 1 anomalous, -1
    unknown and left out), which must hold both classes."""
    scores, labels = labelled(scores, labels)
    if not both_classes(labels):
        raise ValueError("an F1-optimal threshold needs normal and anomalous images")
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    # The last precision/recall pair (recall 0) has no threshold.
    return float(thresholds[np.argmax(f1_scores(precision[:-1], recall[:-1]))])


def f1_pixel_threshold(curves: PixelCurves) -> float:
    """The F1-optimal pixel threshold on binned pixel curves (`pixel_histogram.PixelHistogram`): exact
    up to 65,536 distinct values, else to one bin."""
    if not curves.defined:
        raise ValueError("an F1-optimal pixel threshold needs normal and anomalous pixels")
    return float(curves.thresholds[np.argmax(curves.f1)])


def quantile_pixel_threshold(curves: PixelCurves, q: float) -> float:
    """The lowest threshold that flags at most 1 - q of the normal pixels counted in `curves`
    (thresholds descend, so the allowed ones are a prefix; the top bin when none is)."""
    if not curves.negatives:
        raise ValueError("a pixel threshold needs the maps of calibration normals")
    # (1 - 0.9) * 50 is 4.999...: round the allowance so that exactly 10 % counts as allowed.
    allowed = curves.false_pos <= round((1 - q) * curves.negatives, 9)
    return float(curves.thresholds[max(np.count_nonzero(allowed) - 1, 0)])


# The promise is reported broken above this multiple of the expected rate (issue 26).
BROKEN_PROMISE = 3.0


def promise(flagged: int, normals: int, expected: float | None) -> dict | None:
    """How a test set's normal images fared against the image threshold's promise: `flagged`
    of `normals` at or above it where about `expected` of them should be (None: no promise, an
    F1-optimal or a user's threshold). With a plain warning above BROKEN_PROMISE x `expected`,
    and the binomial chance of at least this many flags were the promise kept, so a small test
    set's one unlucky flag can be told from a broken calibration."""
    if expected is None or not normals:
        return None
    rate = flagged / normals
    chance = float(binom.sf(flagged - 1, normals, expected)) if flagged else 1.0
    warning = None
    if rate > BROKEN_PROMISE * expected:
        warning = (
            f"{flagged} of {normals} normal images flagged where about {expected:.2%} were expected "
            f"(chance {chance:.2g} were the promise kept): the test normals differ from the calibration "
            f"normals, or the calibration set is too small"
        )
    return {
        "normals": int(normals),
        "flagged": int(flagged),
        "rate": rate,
        "expected_rate": float(expected),
        "chance": chance,
        "warning": warning,
    }


def promise_summary(kept: dict) -> str:
    """A `promise` in words, as `funetgan test` prints it and the report shows it."""
    return (
        f"normal images flagged: {kept['flagged']} of {kept['normals']} ({kept['rate']:.1%}), "
        f"about {kept['expected_rate']:.1%} expected"
    )
