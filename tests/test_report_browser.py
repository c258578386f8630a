"""report.html's operating-point panel in a real browser: headless Chromium (Debian's chromium
and chromium-driver, driven by selenium, nothing downloaded) opens a report built from
hand-made scores and maps, the sliders are moved to set positions, and what the page shows is
compared with the same figures computed here from scores.csv and the maps: the counts
exactly, and the redrawn masks pixel for pixel against the mask rule's."""

import csv
import json
import time
from pathlib import Path

import numpy as np
import pytest

from funetgan.data import ImageSet
from funetgan.evaluation.metrics import evaluate
from funetgan.outputs.report import write_test_outputs
from funetgan.scoring.calibration import Calibration
from funetgan.scoring.masks import MaskRule
from funetgan.scoring.thresholds import expected_rate

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the test extra: pip install -e .[test])")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and DRIVER.exists()),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
    "chromium-driver; .ci/run installs them)",
)
N_NORMAL, N_ANOMALOUS, S = 24, 16, 16
RUN = "runs/brick run"  # a path with a space: the command must quote it


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1300,1800"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A test set of 24 normals and 16 anomalies (a 5 x 5 square each, with its mask), maps of
    noise plus the squares, scores with ties (two decimals), and a calibration with normals'
    scores; written by the report's own function."""
    rng = np.random.default_rng(0)
    n = N_NORMAL + N_ANOMALOUS
    labels = np.r_[np.zeros(N_NORMAL, int), np.ones(N_ANOMALOUS, int)]
    masks = np.zeros((n, S, S), bool)
    for i in range(N_NORMAL, n):
        y, x = rng.integers(0, S - 5, 2)
        masks[i, y : y + 5, x : x + 5] = True
    maps = (rng.random((n, S, S)) + 1.5 * masks).astype(np.float32)
    scores = np.round(maps.max((1, 2)) + rng.normal(0, 0.3, n), 2)
    images = ImageSet(
        images=rng.integers(0, 255, (n, S, S, 1), dtype=np.uint8),
        labels=labels,
        paths=[f"d/test/{'crack' if label else 'good'}/{i:03d}.png" for i, label in enumerate(labels)],
        kinds=["crack" if label else "good" for label in labels],
        sizes=np.full((n, 2), S),
        masks=masks,
    )
    calibration = Calibration(
        levels={},
        image_threshold=float(np.sort(scores[:N_NORMAL])[-3]),
        pixel_threshold=0.9,
        blur_sigma=1.0,
        normals=30,
        anomalous=0,
        rule="normal quantile 0.99",
        expected_image_rate=3 / 31,
        unit_scale={"score": {"median": 1.0, "spread": 0.8}, "map": {"median": 0.5, "spread": 0.5}},
        normal_scores=np.sort(np.round(rng.normal(1.2, 0.3, 30), 2)).tolist(),
    )
    rule = MaskRule(calibration.pixel_threshold)
    out = tmp_path_factory.mktemp("report")
    metrics = evaluate(scores, maps, images, calibration.image_threshold, rule)
    write_test_outputs(
        out, images, scores, maps, metrics, calibration.image_threshold, rule, {}, calibration=calibration, run=RUN
    )
    return out, maps, masks, calibration


@pytest.fixture(scope="module")
def page(browser, report):
    started = time.perf_counter()
    browser.get((report[0] / "report.html").as_uri())
    while not browser.execute_script("return Boolean(window.operatingPoint && window.operatingPoint.ready)"):
        assert time.perf_counter() - started < 10, "the panel did not get ready"
        time.sleep(0.02)
    return browser


def move(browser, slider: str, position: int) -> dict:
    """Moves a slider as a user's drag does (its value, then an input event); the figures."""
    return browser.execute_script(
        "const slider = document.getElementById(arguments[0]); slider.value = arguments[1];"
        "slider.dispatchEvent(new Event('input')); return window.operatingPoint;",
        slider,
        position,
    )


def test_the_counts_at_three_image_thresholds_equal_those_from_scores_csv(page, report):
    out, _, _, calibration = report
    rows = list(csv.DictReader((out / "scores.csv").open()))
    scores, labels = np.array([float(r["score"]) for r in rows]), np.array([int(r["label"]) for r in rows])
    thresholds = sorted({*scores.tolist(), calibration.image_threshold})  # the slider's positions
    calibrated = thresholds.index(calibration.image_threshold)
    assert page.execute_script("return Number(document.getElementById('op-image').max)") == len(thresholds) - 1
    for position in (2, calibrated, len(thresholds) - 4):
        shown = move(page, "op-image", position)["image"]
        t = thresholds[position]
        flagged = scores >= t
        tp, fp = int((flagged & (labels == 1)).sum()), int((flagged & (labels == 0)).sum())
        fn, tn = N_ANOMALOUS - tp, N_NORMAL - fp
        assert shown["threshold"] == t
        assert (shown["tp"], shown["fp"], shown["tn"], shown["fn"]) == (tp, fp, tn, fn)
        assert shown["precision"] == tp / (tp + fp) and shown["recall"] == tp / N_ANOMALOUS
        assert shown["f1"] == 2 * tp / (2 * tp + fp + fn) and shown["specificity"] == tn / N_NORMAL
        assert shown["expected"] == expected_rate(calibration.normal_scores, t)
        assert page.find_element("id", "op-fp").text == f"{fp} of {N_NORMAL}"
        command = page.find_element("id", "op-command").text
        assert command.startswith("funetgan calibrate --run 'runs/brick run' --threshold ")
        assert float(command.split("--threshold ")[1].split()[0]) == t  # the very number
    # At the calibrated threshold the panel agrees with metrics.json.
    shown = move(page, "op-image", calibrated)["image"]
    image = json.loads((out / "metrics.json").read_text())["image"]
    assert (shown["tp"], shown["fp"]) == (image["counts"]["tp"], image["counts"]["fp"])
    assert shown["f1"] == image["f1"]


def test_the_redrawn_masks_at_three_pixel_thresholds_equal_the_mask_rules(page, report):
    out, maps, masks, calibration = report
    names = [row["name"] for row in csv.DictReader((out / "scores.csv").open())]
    shown_names = page.execute_script(
        "return Array.from(document.querySelectorAll('canvas.op-mask')).map((c) => c.dataset.name)"
    )
    assert len(shown_names) >= 20  # the report's examples: false positives, detections, normals
    start = page.execute_script("return window.operatingPoint.pixel.index")
    last = page.execute_script("return Number(document.getElementById('op-pixel').max)")
    assert move(page, "op-pixel", start)["pixel"]["threshold"] == np.float32(calibration.pixel_threshold)
    for position in (start // 3, start, (start + last) // 2):
        t = move(page, "op-pixel", position)["pixel"]["threshold"]
        predicted = MaskRule(t)(maps)
        assert 0 < predicted.sum() < predicted.size  # a threshold that decides something
        for name in shown_names:
            alpha = np.array(
                page.execute_script(
                    "const c = document.querySelector(`canvas.op-mask[data-name='${arguments[0]}']`);"
                    "return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)"
                    ".filter((_, i) => i % 4 === 3);",
                    name,
                )
            ).reshape(S, S)
            np.testing.assert_array_equal(alpha > 0, predicted[names.index(name)], err_msg=f"{name} at {t}")
        tp, fp = int((predicted & masks).sum()), int((predicted & ~masks).sum())
        figures = page.execute_script("return window.operatingPoint.pixel")
        assert figures["dice"] == 2 * tp / (tp + fp + int(masks.sum()))
        assert figures["normalShare"] == fp / int((~masks).sum())
        command = page.find_element("id", "op-command").text
        assert float(command.split("--pixel-threshold ")[1]) == t


def test_the_panel_works_from_disk_without_errors(page):
    errors = [entry for entry in page.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
    assert "Calibrated image threshold" in page.find_element("id", "op-calibrated").text


@pytest.mark.slow
def test_a_10000_image_report_opens_in_under_5_seconds(browser, tmp_path):
    """A Fashion-MNIST-sized test set (10,000 images of 32 px, 1,000 anomalous with masks),
    the default outputs: the page's size and the seconds from opening it to the panel drawn."""
    from funetgan.outputs.selection import TEST_DEFAULT, Outputs

    rng = np.random.default_rng(0)
    n, anomalous, size = 10_000, 1_000, 32
    labels = np.r_[np.zeros(n - anomalous, int), np.ones(anomalous, int)]
    masks = np.zeros((n, size, size), bool)
    masks[n - anomalous :, 8:16, 8:16] = True
    maps = (rng.random((n, size, size)) + masks).astype(np.float32)
    scores = maps.mean((1, 2)) + rng.normal(0, 0.01, n)
    images = ImageSet(
        images=rng.integers(0, 255, (n, size, size, 1), dtype=np.uint8),
        labels=labels,
        paths=[f"d/test/{'bad' if label else 'good'}/{i:05d}.png" for i, label in enumerate(labels)],
        kinds=["bad" if label else "good" for label in labels],
        sizes=np.full((n, 2), size),
        masks=masks,
    )
    threshold = float(np.quantile(scores[labels == 0], 0.99))
    calibration = Calibration(
        levels={},
        image_threshold=threshold,
        pixel_threshold=1.2,
        blur_sigma=1.0,
        normals=1000,
        anomalous=0,
        rule="normal quantile 0.99",
        expected_image_rate=0.01,
        unit_scale={"score": {"median": 0.5, "spread": 0.05}, "map": {"median": 0.5, "spread": 0.5}},
        normal_scores=np.sort(rng.choice(scores[labels == 0], 1000)).tolist(),
    )
    rule = MaskRule(1.2)
    metrics = evaluate(scores, maps, images, threshold, rule)
    write_test_outputs(
        tmp_path,
        images,
        scores,
        maps,
        metrics,
        threshold,
        rule,
        {},
        outputs=Outputs.parse(TEST_DEFAULT),
        calibration=calibration,
        run="run",
    )
    page = tmp_path / "report.html"
    started = time.perf_counter()
    browser.get(page.as_uri())
    while not browser.execute_script("return Boolean(window.operatingPoint && window.operatingPoint.ready)"):
        assert time.perf_counter() - started < 30, "the panel did not get ready"
        time.sleep(0.01)
    seconds = time.perf_counter() - started
    moved = move(browser, "op-image", 5000)["image"]
    print(f"report.html {page.stat().st_size / 1e6:.2f} MB; opened and panel ready in {seconds:.2f} s")
    assert moved["tp"] + moved["fn"] == anomalous and moved["fp"] + moved["tn"] == n - anomalous
    assert seconds < 5
