"""The [0, 1] scale of scores and maps (unit_scale.py)."""

from dataclasses import replace

import numpy as np
import pytest

from funetgan.data.base import ImageSet
from funetgan.model import FUNetGAN
from funetgan.scoring.unit_scale import fit_unit_scale, to_unit


def test_fit_takes_the_median_and_the_quantile_of_normals():
    params = fit_unit_scale(np.arange(101.0), 0.99)  # median 50, 99th percentile 99
    assert params == {"median": 50.0, "spread": pytest.approx(49.0)}


def test_mapping_by_hand():
    params = {"median": 2.0, "spread": 4.0}
    # d = max(v - 2, 0): 0, 0, 4, 12 -> 0, 0, 4 / 8, 12 / 16
    np.testing.assert_allclose(to_unit([-5.0, 2.0, 6.0, 14.0], params), [0.0, 0.0, 0.5, 0.75])


def test_mapping_is_monotone_within_zero_and_one_and_keeps_large_values_apart_in_float16():
    params = fit_unit_scale(np.random.default_rng(0).gamma(2.0, size=1000), 0.99)
    values = np.sort(np.r_[-1e9, np.linspace(-10, 1e3, 5000), 1e12])
    mapped = to_unit(values, params)
    assert mapped.min() >= 0 and mapped.max() <= 1 and (np.diff(mapped) >= 0).all()
    # 10x and 20x the normals' top spread: a logistic curve gives both 1.0 in float16, this does not
    top = params["median"] + params["spread"]
    assert len(set(np.float16(to_unit([10 * top, 20 * top], params)).tolist())) == 2


def test_equal_normals_still_give_a_positive_spread():
    params = fit_unit_scale(np.full(10, 3.0), 0.99)
    assert params["median"] == 3.0 and params["spread"] > 0
    assert to_unit([3.0], params)[0] == 0 and 0 < to_unit([3.1], params)[0] < 1


def test_no_values_is_an_error():
    with pytest.raises(ValueError, match="no normal values"):
        fit_unit_scale([], 0.99)


def test_calibration_fits_the_scales_on_the_calibration_normals_only(random_images, tiny_config):
    normals = random_images(6, seed=1)
    anomalies = replace(random_images(3, seed=2), labels=np.ones(3, np.int64), kinds=["bright"] * 3)
    anomalies.images[:] = 255
    model = FUNetGAN(tiny_config()).fit(random_images(12), ImageSet.concat([normals, anomalies]))
    scales = model.calibration.unit_scale
    result = model.score(normals)
    assert scales["score"]["median"] == pytest.approx(float(np.median(result.scores)), rel=1e-5)
    assert scales["map"]["median"] == pytest.approx(float(np.median(result.maps)), rel=1e-5)
