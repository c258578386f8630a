import numpy as np
import pytest

from funetgan.scoring.pixel_histogram import pixel_curves
from funetgan.scoring.thresholds import (
    expected_rate,
    f1_image_threshold,
    f1_pixel_threshold,
    normals_needed,
    promise,
    quantile_pixel_threshold,
    rank,
    rank_threshold,
)


def test_image_threshold_f1_optimal_with_both_classes():
    # Candidate thresholds and F1: 0.8 -> 2/3, 0.4 -> 1/2, 0.35 -> 4/5, 0.1 -> 2/3.
    assert f1_image_threshold([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.35
    with pytest.raises(ValueError):
        f1_image_threshold([0.5, 0.7], [1, 1])


def test_the_rank_is_the_conformal_one():
    # k = ceil((n + 1) q): 99 of 99 at 0.99 (exactly, not 100 from 99.00000000000001), 100 of 200.
    assert rank(99, 0.99) == 99 and rank(199, 0.5) == 100 and rank(24, 0.99) == 25
    assert normals_needed(0.99) == 99 and normals_needed(0.9) == 9 and normals_needed(0.5) == 1


def test_rank_threshold_and_the_share_of_new_normals_it_flags():
    scores = np.arange(1.0, 200.0)  # 199 normals: k = 198, the 198th smallest is 198
    threshold, expected = rank_threshold(scores[::-1], 0.99)
    assert threshold == 198.0 and expected == pytest.approx(2 / 200)
    # Too few normals: their maximum, which 1 in n + 1 new normals reach.
    assert rank_threshold(np.arange(24.0), 0.99) == (23.0, pytest.approx(1 / 25))
    with pytest.raises(ValueError):
        rank_threshold([], 0.99)


def test_the_expected_rate_at_any_threshold_agrees_with_the_rank_threshold():
    scores = np.arange(1.0, 200.0)[::-1]  # 199 normals, unsorted
    threshold, expected = rank_threshold(scores, 0.99)
    assert expected_rate(scores, threshold) == expected == 2 / 200  # 199 exceeds 198: (1 + 1) / 200
    # Between two normals' scores a new normal must exceed the lower one: 3 of 200 places.
    assert expected_rate(scores, 197.5) == 3 / 200
    assert expected_rate(scores, 1000.0) == 1 / 200 and expected_rate(scores, 0.0) == 1.0
    with pytest.raises(ValueError):
        expected_rate([], 1.0)


def test_the_rank_threshold_keeps_its_promise_on_fresh_normals():
    """In-distribution check: 300 calibration normals, 100,000 fresh ones, 200 repetitions:
    the fresh normals at or above the threshold average 1 - q, as promised."""
    rng = np.random.default_rng(0)
    rates = []
    for _ in range(200):
        threshold, expected = rank_threshold(rng.normal(size=300), 0.99)
        rates.append(np.mean(rng.normal(size=100_000) >= threshold))
    assert expected == pytest.approx(3 / 301)  # k = ceil(301 x 0.99) = ceil(297.99) = 298
    assert np.mean(rates) == pytest.approx(expected, abs=0.0015)


def test_pixel_threshold_f1_optimal_with_masks():
    # Truth: the bottom row of image 0 (0.6, 0.7, 0.9); image 1 has a normal pixel at 0.7.
    # F1 by threshold: 0.9 -> 2/4, 0.7 -> 4/6, 0.6 -> 6/7 (best), 0.5 -> 6/8.
    maps = np.zeros((2, 3, 3), np.float32)
    maps[0] = [[0.0, 0.1, 0.2], [0.3, 0.4, 0.5], [0.6, 0.7, 0.9]]
    maps[1, 2, 2] = 0.7
    masks = np.zeros(maps.shape, bool)
    masks[0, 2] = True
    assert f1_pixel_threshold(pixel_curves(maps, masks)) == pytest.approx(0.6)  # few values: exact


def test_pixel_threshold_quantile_of_normal_pixels():
    maps = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)  # values 0..999
    threshold = quantile_pixel_threshold(pixel_curves(maps), 0.99)
    # At most 1% (10 pixels: 990..999) flagged, and as low as that allows.
    assert np.count_nonzero(maps >= threshold) == 10 and threshold == 990


def test_pixel_threshold_quantile_ignores_an_outlier():
    """100,000 values and one at 1e6: linear bins put the threshold near 1e6 and flagged one pixel."""
    maps = np.random.default_rng(0).random((10, 100, 100)).astype(np.float32)
    maps[0, 0, 0] = 1e6
    threshold = quantile_pixel_threshold(pixel_curves(maps), 0.99)
    assert threshold == pytest.approx(np.quantile(maps, 0.99), abs=1e-3)
    assert np.count_nonzero(maps >= threshold) == pytest.approx(1000, abs=15)


def test_a_kept_promise_gives_the_rate_and_no_warning():
    kept = promise(1, 100, 0.01)
    assert kept["rate"] == 0.01 and kept["warning"] is None
    assert kept["chance"] == pytest.approx(1 - 0.99**100)  # P(at least 1 of 100 at 1 %)


def test_a_broken_promise_is_a_plain_warning_with_the_counts():
    broken = promise(41, 72, 0.01)
    assert broken["warning"].startswith("41 of 72 normal images flagged where about 1.00% were expected")
    assert "differ from the calibration normals" in broken["warning"] and broken["chance"] < 1e-50
    assert promise(3, 100, 0.01)["warning"] is None  # 3 x (1 - q) exactly: not above it
    assert promise(4, 100, 0.01)["warning"] is not None


def test_no_promise_without_an_expected_rate_or_normals():
    assert promise(5, 10, None) is None and promise(0, 0, 0.01) is None
