import numpy as np
import pytest

from funetgan.thresholds import calibrate_image_threshold, calibrate_pixel_threshold


def test_image_threshold_f1_optimal_with_both_classes():
    # Candidate thresholds and F1: 0.8 -> 2/3, 0.4 -> 1/2, 0.35 -> 4/5, 0.1 -> 2/3.
    assert calibrate_image_threshold([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.35


def test_image_threshold_quantile_of_normals():
    scores = np.arange(101.0)  # 0..100: the 0.9 quantile is 90
    assert calibrate_image_threshold(scores, normal_quantile=0.9) == pytest.approx(90.0)
    # Normals only (anomalous-free labels, unknown -1 ignored): same rule on the normals.
    labels = np.r_[np.zeros(101, int), -1]
    assert calibrate_image_threshold(np.r_[scores, 1e9], labels, 0.9) == pytest.approx(90.0)


def test_image_threshold_needs_normals():
    with pytest.raises(ValueError):
        calibrate_image_threshold([0.5, 0.7], [1, 1])


def test_pixel_threshold_f1_optimal_with_masks():
    # Truth: the bottom row of image 0 (0.6, 0.7, 0.9); image 1 has a normal pixel at 0.7.
    # F1 by threshold: 0.9 -> 2/4, 0.7 -> 4/6, 0.6 -> 6/7 (best), 0.5 -> 6/8.
    maps = np.zeros((2, 3, 3), np.float32)
    maps[0] = [[0.0, 0.1, 0.2], [0.3, 0.4, 0.5], [0.6, 0.7, 0.9]]
    maps[1, 2, 2] = 0.7
    masks = np.zeros(maps.shape, bool)
    masks[0, 2] = True
    assert calibrate_pixel_threshold(maps, masks) == pytest.approx(0.6)  # few values: exact


def test_pixel_threshold_quantile_of_normal_pixels():
    maps = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)  # values 0..999
    threshold = calibrate_pixel_threshold(maps, normal_quantile=0.99)
    # At most 1% (10 pixels: 990..999) flagged, and as low as that allows.
    assert np.count_nonzero(maps >= threshold) == 10 and threshold == 990
    # Empty masks mean all pixels are normal: the same rule.
    assert calibrate_pixel_threshold(maps, np.zeros(maps.shape, bool), 0.99) == threshold


def test_pixel_threshold_quantile_ignores_an_outlier():
    """100,000 values and one at 1e6: linear bins put the threshold near 1e6 and flagged one pixel."""
    maps = np.random.default_rng(0).random((10, 100, 100)).astype(np.float32)
    maps[0, 0, 0] = 1e6
    threshold = calibrate_pixel_threshold(maps, normal_quantile=0.99)
    assert threshold == pytest.approx(np.quantile(maps, 0.99), abs=1e-3)
    assert np.count_nonzero(maps >= threshold) == pytest.approx(1000, abs=15)
