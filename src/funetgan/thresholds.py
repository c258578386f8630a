"""Decision thresholds, calibrated on validation data only (never on test labels).

A score or pixel value is predicted anomalous when it is ``>= threshold``. With labelled
anomalies in the validation data the threshold maximises F1 there; otherwise it is the
`normal_quantile` of the normal validation values, so about ``1 - normal_quantile`` of
normal images (or pixels) are flagged.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import precision_recall_curve

from .metrics import both_classes, f1_scores, labelled, pixel_curves


def calibrate_image_threshold(val_scores, val_labels=None, normal_quantile: float = 0.99) -> float:
    """F1-optimal threshold when `val_labels` has both classes, else the quantile of the
    normal scores (all scores when `val_labels` is None; label -1 means unknown)."""
    if val_labels is None:
        val_labels = np.zeros(len(val_scores), int)
    scores, labels = labelled(val_scores, val_labels)
    if both_classes(labels):
        precision, recall, thresholds = precision_recall_curve(labels, scores)
        # The last precision/recall pair (recall 0) has no threshold.
        return float(thresholds[np.argmax(f1_scores(precision[:-1], recall[:-1]))])
    normal = scores[~labels]
    if len(normal) == 0:
        raise ValueError("threshold calibration needs normal validation scores")
    return float(np.quantile(normal, normal_quantile))


def calibrate_pixel_threshold(val_maps, val_masks=None, normal_quantile: float = 0.99,
                              region=None) -> float:
    """F1-optimal pixel threshold when `val_masks` (N x S x S bool; normal images all False)
    mark anomalous pixels, else the quantile of the pixel values (all normal). Both are read
    from the binned curves of `pixel_curves`: exact up to 65,536 distinct values, else to
    one bin (values merged into bins of one relative width, the finest that fit), whatever
    the outliers.
    With `region` (N x H x W bool), only its pixels count."""
    curves = pixel_curves(np.asarray(val_maps), val_masks, region=region)
    if curves.defined:
        return float(curves.thresholds[np.argmax(curves.f1)])
    # Lowest threshold that flags no more than 1 - normal_quantile of the normal pixels.
    # (thresholds descend, so the allowed ones are a prefix; the top bin when none is).
    # (1 - 0.9) * 50 is 4.999...: round the allowance so that exactly 10 % counts as allowed.
    allowed = curves.false_pos <= round((1 - normal_quantile) * curves.negatives, 9)
    return float(curves.thresholds[max(np.count_nonzero(allowed) - 1, 0)])
