"""What a test or prediction run leaves on disk, once its images are scored:

    metrics.json                                     the metrics (test), written last
    scores.csv (or predictions.csv), volumes.csv     one row per image / volume (`tables`)
    masks/, overlays/                                per-image PNGs (`image_files.ImageFiles`)
    plots/*.png                                      ROC, PR, PRO curves, score histogram (`plots`)
    report.html                                      one page linking all of the above (`report_html`),
                                                     with an operating-point panel (`operating_point`)

`outputs.Outputs` chooses which of them are written, and for which images (`--outputs`).
"""

from __future__ import annotations

import json
import time

import numpy as np

from ..evaluation.metrics import pixel_truth
from ..files import atomic_write_text
from ..scoring.calibration import Calibration
from ..scoring.masks import MaskRule
from ..scoring.pixel_histogram import PixelCurves, pixel_curves
from ..scoring.thresholds import promise_summary
from .examples import example_groups
from .image_files import ImageFiles, InMemory
from .operating_point import panel_data
from .plots import write_plots
from .report_html import render_report
from .selection import Outputs
from .tables import write_prediction_table, write_score_table, write_volume_table


def write_test_outputs(
    out_dir,
    imageset,
    scores,
    maps,
    metrics: dict,
    image_threshold: float,
    rule: MaskRule,
    settings: dict,
    volumes: list[dict] | None = None,
    outputs: Outputs | None = None,
    calibration: Calibration | None = None,
    run: str | None = None,
) -> dict:
    """The outputs of a labelled test run that `outputs` asks for (default: all of them, for
    every image; see the module docstring), from the whole set's `maps` in memory (`ImageFiles`
    and `finish_test_outputs` with one chunk); with `volumes` (rows of volumes.volume_results),
    also volumes.csv and a per-patient section in the report; with `calibration`, the report's
    operating-point panel (`run`: the run folder its command names). Returns `metrics`."""
    files = ImageFiles(out_dir, imageset, outputs or Outputs(), image_threshold, rule, InMemory(maps))
    files.add(np.arange(len(imageset)), scores, maps, [row for v in volumes or [] for row in v["top_rows"]])
    curves = None
    if metrics.get("pixel") and metrics["pixel"]["auroc"] is not None:
        curves = pixel_curves(np.asarray(maps), imageset.masks, pixel_truth(imageset))
    return finish_test_outputs(files, metrics, settings, volumes, curves, calibration, run)


def finish_test_outputs(
    files: ImageFiles,
    metrics: dict,
    settings: dict,
    volumes: list[dict] | None = None,
    curves: PixelCurves | None = None,
    calibration: Calibration | None = None,
    run: str | None = None,
) -> dict:
    """The rest of a test run's outputs once every image is in `files`: the files that
    needed all scores (examples, worst/best), scores.csv and volumes.csv, the plots (the pixel
    curves: `curves`) and report.html (with `calibration`, its operating-point panel, whose
    command names `run`), and metrics.json last, with the seconds spent on files
    ("files_seconds", added to what `files` spent so far) and on the report ("report_seconds")."""
    started = time.perf_counter()
    outputs, imageset, scores = files.outputs, files.imageset, files.scores
    groups = example_groups(imageset.labels, scores, files.image_threshold) if outputs.report else []
    examples = None
    if outputs.report:  # what the report shows: its examples and each volume's top slices
        shown = [index for _, index, _ in groups] + [np.asarray(v["top_rows"], int) for v in volumes or []]
        examples = np.unique(np.concatenate(shown).astype(int))
    rows = files.finish(examples)
    if outputs.scores:
        write_score_table(files.out, rows)
        if volumes:
            write_volume_table(files.out, volumes)
    timing = metrics.setdefault("timing", {})
    timing["files_seconds"] = round(files.seconds + time.perf_counter() - started, 3)
    started = time.perf_counter()
    if outputs.report:
        plots = write_plots(files.out / "plots", imageset, scores, curves, metrics)
        panel = None if calibration is None else operating_point(files, groups, metrics, curves, calibration, run)
        page = render_report(
            metrics, rows, plots, settings, imageset.notes, files.color_max(), groups, outputs, volumes, panel
        )
        atomic_write_text(files.out / "report.html", page)
    timing["report_seconds"] = round(time.perf_counter() - started, 3)
    if outputs.metrics:
        atomic_write_text(files.out / "metrics.json", json.dumps(metrics, indent=2))
    return metrics


def operating_point(
    files: ImageFiles,
    groups: list[tuple[str, np.ndarray, int]],
    metrics: dict,
    curves: PixelCurves | None,
    calibration: Calibration,
    run: str | None,
) -> dict:
    """The operating-point panel's data (`operating_point.panel_data`): the example sections'
    images with their maps (still in `files`' store) and truth masks."""
    examples = [
        (
            files.names[row],
            title.partition(":")[0],
            files.store[row],
            files.imageset.masks[row] if files.has_truth[row] else None,
        )
        for title, shown, _ in groups
        for row in shown
    ]
    promised = (
        []
        if calibration.expected_image_rate is None
        else [f"about {calibration.expected_image_rate:.1%} of new normal images expected at or above it"]
    )
    kept = metrics.get("promise")
    checked = [] if kept is None else [f"in this test, {promise_summary(kept).partition(', about')[0]}"]
    return panel_data(
        files.imageset.labels,
        files.scores,
        files.image_threshold,
        files.rule,
        calibration,
        examples,
        curves,
        "; ".join(promised + checked),
        run,
    )


def write_predictions(
    out_dir, imageset, scores, maps, image_threshold: float, rule: MaskRule, outputs: Outputs | None = None
) -> None:
    """Masks, overlays and predictions.csv for images without labels (as `outputs` says;
    default: all of them, for every image), from the whole set's `maps` in memory."""
    files = ImageFiles(out_dir, imageset, outputs or Outputs(), image_threshold, rule, InMemory(maps))
    files.add(np.arange(len(imageset)), scores, maps)
    finish_predictions(files)


def finish_predictions(files: ImageFiles) -> None:
    """The rest of a prediction run's outputs once every image is in `files`: the files that
    needed all scores (worst/best) and predictions.csv."""
    rows = files.finish()
    if files.outputs.scores:
        write_prediction_table(files.out, rows)
