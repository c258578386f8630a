"""Lung-only scoring: pixel metrics, the pixel threshold, the maps and the image residual
count only the lung (score.lung_only), against hand-computed values."""

import numpy as np
import pytest

from funetgan.config import ScoreConfig
from funetgan.evaluation.metrics import pixel_metrics
from funetgan.scoring.combine import combine
from funetgan.scoring.pixel_histogram import pixel_curves
from funetgan.scoring.terms import Terms, restrict
from funetgan.scoring.thresholds import quantile_pixel_threshold

# One 4 x 4 slice. Lung: the two left columns. In the lung, the lesion (0,0), (1,0) has the
# two highest values; outside, a rib at 0.95 and a lesion pixel at 0 would spoil the ranking.
MAP = np.array([[0.9, 0.1, 0.2, 0.95], [0.8, 0.2, 0.1, 0.1], [0.3, 0.1, 0.2, 0.0], [0.1, 0.4, 0.1, 0.1]])
TRUTH = np.zeros((4, 4), bool)
TRUTH[0:2, 0] = TRUTH[2, 3] = True
LUNG = np.zeros((4, 4), bool)
LUNG[:, :2] = True


def test_pixel_metrics_inside_the_lung_only():
    inside = pixel_metrics(MAP[None], TRUTH[None], 0.5, region=LUNG[None])
    assert inside["auroc"] == pytest.approx(1.0) and inside["ap"] == pytest.approx(1.0)
    assert inside["dice"] == pytest.approx(1.0) and inside["iou"] == pytest.approx(1.0)
    whole = pixel_metrics(MAP[None], TRUTH[None], 0.5)
    # Flagged (>= 0.5): (0,0), (1,0), (0,3): tp 2, fp 1; the pixel at (2,3) missed: fn 1.
    assert whole["dice"] == pytest.approx(4 / 6) and whole["iou"] == pytest.approx(2 / 4)
    # Of 13 normal pixels, 0.95 ranks above both lesion pixels; all 13 rank above (2,3) = 0.0.
    assert whole["auroc"] == pytest.approx((12 + 12 + 0) / (3 * 13), abs=1e-3)


def test_pixel_threshold_from_lung_pixels_only():
    maps = np.full((1, 10, 10), 10.0)  # outside the lung: large values (table, ribs)
    maps[0, :5] = np.arange(50).reshape(5, 10) / 100  # the lung: 0.00 .. 0.49
    lung = np.zeros((1, 10, 10), bool)
    lung[0, :5] = True
    # The 0.9 quantile of the 50 lung values flags at most 5: the threshold is 0.45 (one bin).
    assert quantile_pixel_threshold(pixel_curves(maps, region=lung), 0.9) == pytest.approx(0.45, abs=2e-3)
    assert quantile_pixel_threshold(pixel_curves(maps), 0.9) > 9


def test_map_and_image_residual_use_lung_pixels_only():
    residual = np.array([[[1.0, 2.0], [3.0, 4.0]]], np.float32)  # |x - G(E(x))| of one grey 2 x 2 image
    lung = np.array([[[True, False], [True, False]]])
    density = np.array([[[1.0, 8.0], [3.0, 8.0]]], np.float32)
    contrast = np.array([[[0.0, 5.0], [1.0, 5.0]]], np.float32)
    whole = Terms(
        dict(
            pixel_residual=residual,
            pixel_features=np.ones_like(residual),
            pixel_density=density,
            image_residual=np.array([[7.5]]),
            image_features=np.array([[1.0]]),
            latent_density=np.array([[3.0]]),
            pixel_contrast=contrast,
        )
    )
    terms = restrict(whole, lung)
    assert terms["pixel_residual"][0].tolist() == [[1.0, 0.0], [3.0, 0.0]]
    assert terms["pixel_features"][0].tolist() == [[1.0, 0.0], [1.0, 0.0]]
    assert terms["image_residual"].item() == pytest.approx((1 + 9) / 2)  # mean squared residual over lung pixels
    assert terms["latent_density"].item() == 3.0  # like D's global features, E's code is of the whole image
    levels = terms.normal_levels()
    assert levels["pixel_residual"] == pytest.approx(2.0)  # over lung pixels too
    assert (levels["pixel_contrast"], levels["pixel_contrast_std"]) == pytest.approx((0.5, 0.5))  # of 0 and 1
    assert levels["pixel_density"] == pytest.approx(2.0)  # of 1 and 3
    assert terms["pixel_density"][0].tolist() == [[1.0, 0.0], [3.0, 0.0]]
    norms = {
        **dict.fromkeys(("pixel_residual", "pixel_features", "image_residual", "image_features"), 1.0),
        "pixel_density": 2.0,
        "pixel_contrast": 2.0,
        "pixel_contrast_std": 1.0,
    }  # smoothness 2 and 1 in the lung, 0 outside
    settings = ScoreConfig(kappa=0.0, blur_sigma=1.0, image_score="max")
    scores, maps = combine(terms, norms, settings, 2)
    assert np.abs(maps[0, :, 1]).sum() == 0 and (maps[0, :, 0] > 0).all()  # 0 outside after the blur
    assert scores.item() == pytest.approx(maps.max())
