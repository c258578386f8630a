"""Scoring a set chunk by chunk, so that `test` and `predict` need memory for one chunk and
not for the whole set's anomaly maps: each volume's slices together (its 3-D figures and NIfTI
files need them all), other images `data.base.CHUNK_PIXELS` pixels at a time. Each chunk's
maps go to the metrics (`metrics.Evaluation`), the per-image files (`image_files.ImageFiles`) and the volume's outputs
(`volumes.volume_result`, `write_volume`) as soon as it is scored, and are dropped.

Every image is scored on its own (tiles, blur and normal levels are per image), so the maps do
not depend on the chunking; the metrics' histograms do not either (`pixel_histogram.PixelHistogram`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .data.base import ImageSet, row_chunks
from .evaluation.metrics import Evaluation
from .medical.dicom_outputs import check_outputs_possible
from .medical.volumes import add_voxels, pooled_voxel_ap, volume_metrics, volume_names, volume_result, write_volume
from .outputs.image_files import ImageFiles, MapStore
from .outputs.report import finish_predictions, finish_test_outputs
from .outputs.selection import Outputs
from .outputs.tables import write_volume_table
from .scoring.masks import MaskRule
from .scoring.pixel_histogram import PixelHistogram
from .scoring.scorer import Scorer
from .scoring.thresholds import promise

LUNG_SCORED = "lung (lung masks or data.lung_threshold, score.lung_only)"  # metrics.json scored_pixels


def chunks(images: ImageSet) -> Iterator[tuple[np.ndarray, str | None]]:
    """(rows, source): each volume's slices in slice order with its source path, then the
    other images in chunks of at most `data.base.CHUNK_PIXELS` pixels (source None)."""
    in_volume = np.zeros(len(images), bool)
    for source, rows in images.volume_rows().items():
        in_volume[rows] = True
        yield rows, source
    for rows in row_chunks(np.flatnonzero(~in_volume), images.images.shape[1:3]):
        yield rows, None


def score_in_chunks(
    model: Scorer,
    images: ImageSet,
    out,
    files: ImageFiles,
    image_threshold: float,
    rule: MaskRule,
    evaluation: Evaluation | None = None,
    voxels: PixelHistogram | None = None,
) -> tuple[np.ndarray, list[dict], dict]:
    """Scores `images` chunk by chunk, handing each chunk's maps and masks (`rule`) to
    `evaluation` (if any), `files` and, for a volume, its row of volumes.csv, its NIfTI (and
    DICOM) files in `out` and its voxels to `voxels` (if given: `volumes.add_voxels`). Returns
    the image scores, the volumes' rows and the seconds spent scoring and on metrics
    (`files.seconds` counts those spent on files, the volumes' included)."""
    scores = np.zeros(len(images))
    sources = list(images.volume_rows())
    check_outputs_possible(sources)
    names = dict(zip(sources, volume_names(sources)))
    volumes, seconds = [], {"scoring": 0.0, "metrics": 0.0}
    clock = time.perf_counter()

    def lap(phase: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[phase] += now - clock
        clock = now

    for rows, source in chunks(images):
        part = images.subset(rows)
        result = model.score(part)
        region = model.scoring_region(part)
        scores[rows] = result.scores
        flagged = result.scores >= image_threshold
        predicted = rule(result.maps, flagged)
        lap("scoring")
        if evaluation is not None:
            evaluation.add(rows, result.maps, predicted, region)
        volume = (
            None
            if source is None
            else volume_result(images, source, names[source], rows, result.scores, predicted, image_threshold)
        )
        if volume is not None and voxels is not None:
            add_voxels(voxels, images, rows, result.maps)
        lap("metrics")
        files.add(rows, result.scores, result.maps, [] if volume is None else volume["top_rows"])
        if volume is not None:
            started = time.perf_counter()
            write_volume(out, images, volume, rows, result.maps, flagged, rule, region)
            volumes.append(volume)
            files.seconds += time.perf_counter() - started
        clock = time.perf_counter()
    return scores, volumes, seconds


def run_test(
    model: Scorer,
    test: ImageSet,
    out: Path,
    outputs: Outputs,
    image_threshold: float,
    rule: MaskRule,
    timing: dict | None = None,
    run: str | None = None,
) -> dict:
    """Everything `funetgan test` writes for a labelled set, chunk by chunk; returns the
    metrics (`timing`: seconds measured before, to report with the rest; `run`: the run
    folder, for the report's command that makes chosen thresholds its own)."""
    evaluation, voxels = Evaluation(test, image_threshold, rule.thresholds()), PixelHistogram()
    store = MapStore(out)
    files = ImageFiles(out, test, outputs, image_threshold, rule, store)
    try:
        scores, volumes, seconds = score_in_chunks(model, test, out, files, image_threshold, rule, evaluation, voxels)
        started = time.perf_counter()
        metrics = evaluation.result(scores)
        whole = model.scoring_region(test) is None
        metrics["scored_pixels"] = "whole image" if whole else LUNG_SCORED
        metrics["promise"] = kept_promise(model, test, scores, image_threshold)
        if volumes:
            metrics["volume"] = volume_metrics(volumes, image_threshold, pooled_voxel_ap(voxels))
        metrics["timing"] = {
            "images": len(test),
            "seconds": round(seconds["scoring"], 3),
            "images_per_second": round(len(test) / max(seconds["scoring"], 1e-9), 1),
            **(timing or {}),
            "metrics_seconds": round(seconds["metrics"] + time.perf_counter() - started, 3),
        }
        curves = evaluation.curves() if metrics.get("pixel") else None
        return finish_test_outputs(files, metrics, model.config.to_dict(), volumes, curves, model.calibration, run)
    finally:  # after an error too: no more files written, the kept maps gone
        files.close()
        store.close()


def kept_promise(model: Scorer, test: ImageSet, scores: np.ndarray, image_threshold: float) -> dict | None:
    """The test normals flagged against the calibrated threshold's promise (`thresholds.promise`;
    None for a threshold the user set)."""
    calibration = model.calibration
    assert calibration is not None  # a model's thresholds come from it
    expected = calibration.expected_image_rate if image_threshold == model.image_threshold else None
    normal = np.asarray(test.labels) == 0
    return promise(int((np.asarray(scores)[normal] >= image_threshold).sum()), int(normal.sum()), expected)


def run_predict(
    model: Scorer, images: ImageSet, out: Path, outputs: Outputs, image_threshold: float, rule: MaskRule
) -> np.ndarray:
    """Everything `funetgan predict` writes, chunk by chunk; returns the image scores."""
    store = MapStore(out)
    files = ImageFiles(out, images, outputs, image_threshold, rule, store)
    try:
        scores, volumes, _ = score_in_chunks(model, images, out, files, image_threshold, rule)
        finish_predictions(files)
    finally:
        files.close()
        store.close()
    if volumes and outputs.scores:
        write_volume_table(out, volumes)
    return scores
