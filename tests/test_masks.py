"""Mask rules (masks.MaskRule) on hand-made maps: hysteresis, the smallest region, flagged images."""

import numpy as np
import pytest

from funetgan.scoring.masks import MaskRule

# Two regions above 1.0 in one 6 x 6 map: a 2 x 2 one peaking at 3.0 (top left) and a 3-pixel
# one peaking at 1.5 (bottom right); 0.5 elsewhere.
MAP = np.full((1, 6, 6), 0.5, np.float32)
MAP[0, 0:2, 0:2] = [[2.0, 3.0], [1.2, 1.1]]
MAP[0, 5, 3:6] = [1.1, 1.5, 1.2]


def test_a_plain_rule_is_the_threshold():
    np.testing.assert_array_equal(MaskRule(1.0, 1.0)(MAP), MAP >= 1.0)
    assert MaskRule(1.0, 1.0)(MAP).sum() == 7


def test_hysteresis_keeps_only_regions_whose_peak_reaches_the_region_threshold():
    mask = MaskRule(1.0, 2.5)(MAP)[0]
    assert mask.sum() == 4 and mask[0:2, 0:2].all()  # the bottom region peaks at 1.5 < 2.5: dropped
    assert MaskRule(1.0, 1.5)(MAP).sum() == 7  # a peak equal to the threshold counts
    assert MaskRule(1.0, 3.5)(MAP).sum() == 0


def test_regions_are_eight_connected_and_never_span_two_images():
    maps = np.zeros((2, 3, 3), np.float32)
    maps[0, 0, 0], maps[0, 1, 1] = 1.0, 5.0  # diagonal neighbours: one region, peak 5
    maps[1, 0, 0] = 1.0  # the same place in the next image: its own region, peak 1
    mask = MaskRule(1.0, 4.0)(maps)
    assert mask[0, 0, 0] and mask[0, 1, 1] and not mask[1].any()


def test_the_smallest_region_is_a_share_of_the_image():
    # 36 pixels: 0.1 of the image is 3.6 pixels, so the 4-pixel region stays and the 3-pixel one goes.
    mask = MaskRule(1.0, 1.0, min_area=0.1)(MAP)[0]
    assert mask.sum() == 4 and mask[0:2, 0:2].all()
    big = np.kron(MAP[0], np.ones((4, 4), np.float32))[None]  # the same map at 4 x the resolution
    assert MaskRule(1.0, 1.0, min_area=0.1)(big).sum() == 4 * 16  # the same decision at any size


def test_masks_only_in_flagged_images():
    maps = np.repeat(MAP, 2, axis=0)
    rule = MaskRule(1.0, 1.0, flagged_only=True)
    mask = rule(maps, np.array([False, True]))
    assert not mask[0].any() and mask[1].sum() == 7
    with pytest.raises(ValueError, match="needs the images' flags"):
        rule(maps)


def test_the_rule_records_its_numbers():
    assert MaskRule(1.0, 2.0, 0.01, True).thresholds() == {
        "threshold": 1.0,
        "region_threshold": 2.0,
        "min_area": 0.01,
        "flagged_only": True,
    }
