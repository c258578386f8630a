"""The operating-point panel's data (operating_point.py): what makes the browser's figures
exact (test_report_browser.py checks them in Chromium)."""

import base64
import io
import json

import numpy as np
from PIL import Image

from funetgan.outputs.operating_point import PIXEL_POSITIONS, codes, panel_data, pixel_counts, pixel_positions
from funetgan.outputs.report_html import _panel
from funetgan.scoring.calibration import Calibration
from funetgan.scoring.masks import MaskRule
from funetgan.scoring.pixel_histogram import pixel_curves

UNIT = {"median": 0.5, "spread": 0.5}


def calibration(**changes) -> Calibration:
    values = {
        "levels": {},
        "image_threshold": 0.5,
        "pixel_threshold": 0.9,
        "blur_sigma": 1.0,
        "normals": 3,
        "anomalous": 0,
        "rule": "normal quantile 0.99",
        "expected_image_rate": 0.25,
        "unit_scale": {"score": UNIT, "map": UNIT},
        "normal_scores": [0.1, 0.4, 0.6],
    }
    return Calibration(**{**values, **changes})


def test_a_maps_codes_give_the_mask_rules_mask_at_every_position():
    rng = np.random.default_rng(0)
    positions = pixel_positions(0.9, UNIT, None)
    assert len(positions) <= PIXEL_POSITIONS and np.all(np.diff(positions) > 0)
    assert np.float32(0.9) in positions.astype(np.float32)
    anomaly_map = rng.choice(np.r_[positions, rng.random(50) * 3], (12, 12)).astype(np.float32)  # ties
    found = codes(anomaly_map, positions)
    for i, threshold in enumerate(positions):
        np.testing.assert_array_equal(found >= i + 1, MaskRule(threshold)(anomaly_map[None])[0])


def test_positions_sit_on_the_curves_thresholds_and_count_exactly():
    rng = np.random.default_rng(1)
    maps = rng.random((6, 10, 10)).astype(np.float32)
    truth = maps > 0.8
    curves = pixel_curves(maps, truth)
    positions = pixel_positions(0.55, UNIT, curves)
    assert set(positions) - {float(np.float32(0.55))} <= set(curves.thresholds)
    counts = pixel_counts(curves, positions)
    flagged = maps[None] >= positions.astype(np.float32)[:, None, None, None]
    assert counts["tp"] == (flagged & truth).sum((1, 2, 3)).tolist()
    assert counts["fp"] == (flagged & ~truth).sum((1, 2, 3)).tolist()
    assert (counts["positives"], counts["negatives"]) == (truth.sum(), (~truth).sum())


def test_the_panel_data_of_a_small_set():
    anomaly_map = np.zeros((4, 4), np.float32)
    anomaly_map[1:3, 1:3] = 2.0
    truth = np.zeros((4, 4), bool)
    truth[1, 1] = True
    data = panel_data(
        [1, 0, -1, 0],
        [0.9, 0.2, 5.0, 0.7],
        0.5,
        MaskRule(0.9),
        calibration(normal_scores=None),
        [("a", "False positives", anomaly_map, truth)],
        None,
        "",
        "my runs/r1",
    )
    assert data["scores"] == [0.2, 0.7, 0.9] and data["labels"] == "001"  # the unlabelled image left out
    assert data["normals"] is None and data["pixel"]["counts"] is None  # an older run, no pixel truth
    assert data["run"] == "'my runs/r1'"
    pixel = data["pixel"]
    assert pixel["thresholds"][pixel["start"]] == float(np.float32(0.9)) and pixel["plain"]
    png = Image.open(io.BytesIO(base64.b64decode(data["examples"][0]["codes"].partition(",")[2])))
    red, green, _ = np.moveaxis(np.asarray(png), -1, 0)
    np.testing.assert_array_equal(red, codes(anomaly_map, np.array(pixel["thresholds"])))
    np.testing.assert_array_equal(green == 255, truth)


def test_no_text_in_the_data_can_end_its_script_element():
    data = panel_data([0, 1], [0.1, 0.9], 0.5, MaskRule(0.9), calibration(rule="</script><b>x"), [], None, "", None)
    page = _panel(data)
    assert "</script><b>" not in page and page.count("</script>") == 2
    payload = page.split('id="panel-data">')[1].split("</script>")[0]
    assert json.loads(payload)["calibrated"]["rule"] == "</script><b>x"
