"""The data of report.html's operating-point panel (`panel_data`), which the page's script
(templates/panel.js) turns into histograms, sliders, live counts and redrawn masks.

Everything the browser computes must equal what Python computes from scores.csv and the maps,
so the data is chosen to make that exact rather than close:
- image scores go as the same float64 numbers scores.csv holds (shortest round-trip text in
  both), sorted, with their labels as one string of 0/1: a count at a threshold is a
  comparison of the same doubles in both languages;
- the pixel slider moves over at most PIXEL_POSITIONS thresholds, each a float32 (the maps'
  type, so `map >= t` means the same in numpy and JS), and each example's map goes as a PNG of
  codes: a pixel's code is the number of those thresholds it reaches, so the mask at position
  i is `code >= i + 1`, pixel for pixel what `masks.MaskRule(threshold)` gives;
- the whole test set's pixel counts at each position come from the metrics' pixel curves (exact
  at each curve threshold, `pixel_histogram`), for Dice and the share of normal pixels flagged.
"""

from __future__ import annotations

import base64
import io
import shlex

import numpy as np
from PIL import Image

from ..scoring.calibration import Calibration
from ..scoring.masks import MaskRule
from ..scoring.pixel_histogram import PixelCurves
from ..scoring.thresholds import labelled

PIXEL_POSITIONS = 255  # pixel-threshold slider positions at most: a code fits one PNG byte
PANEL_MAP_SIZE = 160  # longest side of an example's map in the panel (its tile's size; larger maps are shrunk)


def panel_data(
    labels,
    scores,
    image_threshold: float,
    rule: MaskRule,
    calibration: Calibration,
    examples: list[tuple[str, str, np.ndarray, np.ndarray | None]],
    curves: PixelCurves | None,
    promise_line: str,
    run: str | None,
) -> dict:
    """The panel's data (JSON-ready): the labelled test images' `scores` and `labels`, the
    `image_threshold` this test used and the calibrated one with its promise (`promise_line`),
    the calibration normals' scores (None in older runs), the pixel slider's thresholds with
    the whole set's pixel counts at each (`curves`, None without pixel truth), and the
    `examples` (name, section title, map, truth mask or None) as code PNGs; `run` (None:
    unknown) goes into the command that makes the chosen thresholds the run's own."""
    known, truth = labelled(scores, labels)
    order = np.argsort(known, kind="stable")
    positions = pixel_positions(rule.pixel_threshold, calibration.unit_scale.get("map"), curves)
    return {
        "scores": known[order].tolist(),
        "labels": "".join("1" if label else "0" for label in truth[order]),
        "threshold": float(image_threshold),
        "calibrated": {"threshold": calibration.image_threshold, "promise": promise_line, "rule": calibration.rule},
        "unit": calibration.unit_scale.get("score"),
        "normals": calibration.normal_scores,
        "pixel": {
            "thresholds": positions.tolist(),
            "start": int(np.searchsorted(positions, np.float32(rule.pixel_threshold))),
            "unit": calibration.unit_scale.get("map"),
            "plain": rule == MaskRule(rule.pixel_threshold),
            "counts": None if curves is None or not curves.defined else pixel_counts(curves, positions),
        },
        "examples": [
            {"name": name, "title": title, "truth": mask is not None, "codes": code_png(anomaly_map, mask, positions)}
            for name, title, anomaly_map, mask in examples
        ],
        "run": None if run is None else shlex.quote(run),  # as the shell needs it in the command
    }


def pixel_positions(threshold: float, unit: dict[str, float] | None, curves: PixelCurves | None) -> np.ndarray:
    """The pixel slider's thresholds, ascending float32 values: `threshold` (the rule's), and
    about PIXEL_POSITIONS - 1 more spread evenly over the maps' [0, 1] scale (`unit`, the
    calibration's; without it, over the curves' range), each moved to the nearest threshold of
    the pixel `curves` (where their counts are exact) when there are curves."""
    spread = np.linspace(0, 1, PIXEL_POSITIONS + 1)[1:-1]
    if unit is not None:
        wanted = unit["median"] + unit["spread"] * spread / (1 - spread)  # `to_unit` inverted
    elif curves is not None and len(curves.thresholds):
        wanted = np.quantile(curves.thresholds, spread)
    else:
        wanted = threshold * 2 * spread
    if curves is not None and len(curves.thresholds):
        ascending = curves.thresholds[::-1]
        at = np.clip(np.searchsorted(ascending, wanted), 1, len(ascending) - 1)
        nearer_below = wanted - ascending[at - 1] < ascending[at] - wanted
        wanted = ascending[np.where(nearer_below, at - 1, at)]
    values = np.unique(np.r_[wanted, threshold].astype(np.float32))
    if len(values) > PIXEL_POSITIONS:  # keep the rule's threshold, drop the others evenly
        keep = np.unique(
            np.r_[
                np.linspace(0, len(values) - 1, PIXEL_POSITIONS - 1).round().astype(int),
                np.searchsorted(values, np.float32(threshold)),
            ]
        )
        values = values[keep[:PIXEL_POSITIONS]]
    return values.astype(np.float64)


def pixel_counts(curves: PixelCurves, positions: np.ndarray) -> dict:
    """Anomalous and normal pixels at or above each position (`curves` counts the pixels at or
    above each of its thresholds: exact at those, and everywhere while each distinct value has
    its own bin), with the totals."""
    reached = np.searchsorted(-curves.thresholds, -positions, side="right")  # thresholds >= each position
    true_pos, false_pos = np.r_[0.0, curves.true_pos], np.r_[0.0, curves.false_pos]
    return {
        "tp": true_pos[reached].astype(int).tolist(),
        "fp": false_pos[reached].astype(int).tolist(),
        "positives": int(curves.positives),
        "negatives": int(curves.negatives),
    }


def codes(anomaly_map: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """uint8 per pixel: how many of `positions` (float32 values, ascending) it reaches, so that
    `codes >= i + 1` is `MaskRule(positions[i])`'s mask (both compare float32 values exactly)."""
    return np.searchsorted(positions.astype(np.float32), panel_map(anomaly_map), side="right").astype(np.uint8)


def panel_map(anomaly_map: np.ndarray) -> np.ndarray:
    """The map as the panel shows it: as scored, or shrunk (bilinear) to PANEL_MAP_SIZE on its
    longest side."""
    anomaly_map = np.asarray(anomaly_map, np.float32)
    scale = PANEL_MAP_SIZE / max(anomaly_map.shape)
    if scale >= 1:
        return anomaly_map
    size = (max(round(anomaly_map.shape[1] * scale), 1), max(round(anomaly_map.shape[0] * scale), 1))
    return np.asarray(Image.fromarray(anomaly_map).resize(size, Image.Resampling.BILINEAR))


def code_png(anomaly_map: np.ndarray, truth: np.ndarray | None, positions: np.ndarray) -> str:
    """A data: URI of an RGB PNG: red the pixel's code (`codes`), green 255 on the truth mask."""
    red = codes(anomaly_map, positions)
    green = np.zeros_like(red)
    if truth is not None:
        green = np.asarray(
            Image.fromarray(np.asarray(truth, np.uint8) * 255).resize(red.shape[::-1], Image.Resampling.NEAREST)
        )
    buffer = io.BytesIO()
    Image.fromarray(np.dstack([red, green, np.zeros_like(red)])).save(buffer, "PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
